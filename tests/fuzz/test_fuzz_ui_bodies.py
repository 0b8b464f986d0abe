"""The touchscreen API's request bodies (gateway/ui/models.py): every body
model on JSON of any shape, and on bytes that are not JSON. Property: a body
validates or raises ValidationError, and the one-line message and the
per-field problems the API answers with (first_problem, field_problems) are
built from any such error without raising: a 4xx, never a 500."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from gateway.ui import models as m
from tests.fuzz.conftest import executed
from tests.fuzz.test_fuzz_control import json_values

BODIES: list[type[BaseModel]] = sorted(
    (
        c
        for c in vars(m).values()
        if isinstance(c, type) and issubclass(c, m._Body) and c is not m._Body
    ),
    key=lambda c: c.__name__,
)
FIELD_NAMES = sorted({name for c in BODIES for name in c.model_fields} | {"patient", "x"})
shaped = st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=6)


@given(
    st.sampled_from(BODIES),
    st.one_of(
        shaped.map(json.dumps),
        json_values.map(lambda v: json.dumps(v, allow_nan=True)),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    ),
)
def test_body_models(model: type[BaseModel], body: Any) -> None:
    executed("ui.models (request bodies)")
    try:
        model.model_validate_json(body)
    except ValidationError as exc:
        errors = [dict(e) for e in exc.errors()]
        assert isinstance(m.first_problem(errors), str)
        m.field_problems(errors)
