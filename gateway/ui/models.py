"""Request bodies and responses of the JSON API: bodies checked by FastAPI
before a handler runs, so a wrong type or an oversized field is a clear 4xx,
and both documented in the OpenAPI description from the same models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


def first_problem(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line naming the field and the problem (at most three of them)."""
    parts = []
    for err in list(errors)[:3]:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] == "body":  # where FastAPI says the field was
            loc = loc[1:]
        where = ".".join(loc) or "body"
        msg = "unknown field" if err.get("type") == "extra_forbidden" else str(err.get("msg"))
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


# -- responses ---------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Out):
    """Every refusal: one line, in words for the screen."""

    error: str


class SessionInfo(_Out):
    csrf: str
    logged_in: bool
    login_required: bool
    settings_unlocked: bool
    pin_set: bool


class LoggedIn(_Out):
    logged_in: bool


class Unlocked(_Out):
    unlocked: bool
    seconds: float | None = None


class PinSet(_Out):
    pin_set: bool


class ShotView(_Out):
    id: int
    kind: Literal["image", "clip"]
    frames: int
    thumb_url: str
    image_url: str


class PatientView(_Out):
    name: str
    id: str
    birth_date: str | None
    sex: str


class ExamView(_Out):
    id: str
    state: Literal["in_progress", "completed", "discontinued"]
    scheduled: bool
    patient: PatientView
    accession_number: str
    procedure: str
    started: str
    objects: list[ShotView]
    recording: bool
    discontinue_reason: str | None


class Recording(_Out):
    recording: bool


class Ended(_Out):
    state: Literal["completed", "discontinued"]
    queued: int


class Deleted(_Out):
    deleted: bool


class WorklistEntryView(_Out):
    key: str
    patient_name: str
    patient_id: str
    birth_date: str | None
    sex: str
    accession_number: str
    procedure: str
    scheduled: str | None
    modality: str
    location: str
    performed: bool
    warnings: list[str]


class WorklistView(_Out):
    configured: bool
    entries: list[WorklistEntryView]
    cached_at: str | None
    error: str | None
    warnings: list[str]


class EchoView(_Out):
    name: str
    ok: bool
    detail: str
    seconds: float
