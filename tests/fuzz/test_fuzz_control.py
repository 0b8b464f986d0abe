"""The control socket's framing and header (gateway/app/control.py,
control_server.py): JSON lines of any shape and bytes, cut anywhere.
Properties: the line reader gives objects, None at the end, or
ProtocolError; the header check gives files and subject, or RequestError."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.app.control import LineReader, ProtocolError
from gateway.app.control_server import RequestError, _parse_header
from tests.fuzz.conftest import executed

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=25,
)
file_entries = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=40), json_values),
        "size": st.one_of(st.integers(-5, 2**40), json_values),
        "mtime": st.one_of(st.floats(), st.integers(), json_values),
    },
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "op": st.one_of(st.just("import"), st.text(max_size=8)),
        "subject": st.one_of(
            st.dictionaries(
                st.sampled_from(["accession", "patient_id", "patient_name", "x"]),
                st.one_of(st.none(), st.text(max_size=20), json_values),
                max_size=4,
            ),
            json_values,
        ),
        "files": st.one_of(st.lists(st.one_of(file_entries, json_values), max_size=6), json_values),
    },
)


@given(st.one_of(headers, json_values))
def test_header_check(header: Any) -> None:
    executed("control_server._parse_header")
    if not isinstance(header, dict):
        return  # the line reader refuses what is not an object
    try:
        files, subject = _parse_header(header)
    except RequestError:
        return
    assert files and all(isinstance(n, str) and s >= 0 for n, s, _ in files)
    assert isinstance(subject, dict)


@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(st.one_of(headers, json_values), max_size=4).map(
            lambda xs: b"".join(json.dumps(x).encode() + b"\n" for x in xs)
        ),
    ),
    st.integers(1, 64),
)
def test_line_reader(data: bytes, step: int) -> None:
    executed("control.LineReader")
    reader = LineReader(Chunks(data, step))  # type: ignore[arg-type]
    for _ in range(len(data) + 2):
        try:
            message = reader.line()
        except ProtocolError:
            break
        if message is None:
            break
        assert isinstance(message, dict)


class Chunks:
    """A socket whose peer sent `data` in pieces of `step` bytes, then closed."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.pos = data, step, 0

    def recv(self, size: int) -> bytes:
        chunk = self.data[self.pos : self.pos + min(size, self.step)]
        self.pos += len(chunk)
        return chunk
