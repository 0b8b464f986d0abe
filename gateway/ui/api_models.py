"""Request bodies of the JSON API: checked before anything is touched, so a
wrong type or an oversized field is a clear 4xx, and documented in the
OpenAPI description from the same models."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PinBody(_Body):
    pin: str = Field(min_length=1, max_length=32)


class UnscheduledPatient(_Body):
    family_name: str = Field(min_length=1, max_length=64)
    given_name: str = Field(default="", max_length=64)
    id: str = Field(min_length=1, max_length=64)
    birth_date: date | None = Field(default=None, strict=False)
    sex: Literal["M", "F", "O", ""] = ""


class StartExam(_Body):
    worklist_key: str | None = Field(default=None, min_length=1, max_length=200)
    patient: UnscheduledPatient | None = None


class WorklistSearch(_Body):
    text: str = Field(default="", max_length=64)
    refresh: bool = False


class Discontinue(_Body):
    reason: str = Field(min_length=1, max_length=64)


class PedalPress(_Body):
    action: Literal["capture", "record"]


class EchoRequest(_Body):
    name: str = Field(min_length=1, max_length=64)


class SettingsUpdate(_Body):
    destinations: list[dict[str, Any]] | None = Field(default=None, max_length=16)
    worklist: dict[str, Any] | None = None
    capture: dict[str, Any] | None = None


def first_problem(exc: ValidationError) -> str:
    """One line naming the field and the problem."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
