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
    """The form's fields. Lengths are checked by the one unscheduled-patient
    rule (a name of at most 64 characters, family and given together), so
    the message names the field in words; these caps only bound the body."""

    family_name: str = Field(min_length=1, max_length=256)
    given_name: str = Field(default="", max_length=256)
    id: str = Field(min_length=1, max_length=256)
    birth_date: date | None = Field(default=None, strict=False)
    sex: Literal["M", "F", "O", ""] = ""


class StartExam(_Body):
    worklist_key: str | None = Field(default=None, min_length=1, max_length=200)
    patient: UnscheduledPatient | None = None


DateChoice = Literal["today", "around", "week", "any"]
StationChoice = Literal["mine", "all"]


class WorklistSearch(_Body):
    """`text` empty: the list for the dates and station; else the RIS is
    asked for it as name (wildcard), patient ID and accession."""

    text: str = Field(default="", max_length=64)
    dates: DateChoice = "today"
    station: StationChoice = "mine"
    refresh: bool = False


class Discontinue(_Body):
    reason: str = Field(min_length=1, max_length=64)
    # What becomes of the held images when the patient was the wrong one:
    # asked for, never assumed ("send" keeps the usual rule: they are sent).
    images: Literal["send", "delete"] | None = None


class PedalPress(_Body):
    action: Literal["capture", "record"]


class EchoRequest(_Body):
    name: str = Field(min_length=1, max_length=64)


class SettingsUpdate(_Body):
    destinations: list[dict[str, Any]] | None = Field(default=None, max_length=16)
    worklist: dict[str, Any] | None = None
    capture: dict[str, Any] | None = None


_FIELD_WORDS = {
    "date_from_datetime_parsing": "not a date; use YYYY-MM-DD",
    "date_parsing": "not a date; use YYYY-MM-DD",
    "date_from_datetime_inexact": "not a date; use YYYY-MM-DD",
    "string_too_long": "too long",
    "missing": "needed",
    "literal_error": "not one of the choices",
    "extra_forbidden": "unknown field",
}


def field_problems(errors: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Form field (the last part of where) → the problem in words."""
    out: dict[str, str] = {}
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if loc:
            words = _FIELD_WORDS.get(str(err.get("type")), str(err.get("msg")))
            out.setdefault(loc[-1], words[0].upper() + words[1:])
    return out


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
    """Every refusal: one line, in words for the screen; `fields` names the
    form fields it is about (field → message), `code` what the screen can do
    about it ("csrf": fetch a new token and try again; "confirm_images")."""

    error: str
    fields: dict[str, str] | None = None
    code: str | None = None
    wait_seconds: int | None = None
    tries_left: int | None = None
    held: int | None = None  # confirm_images: how many images are held


class SessionInfo(_Out):
    csrf: str
    logged_in: bool
    login_required: bool
    settings_unlocked: bool
    pin_set: bool
    pin_min_length: int = 6


class LoggedIn(_Out):
    logged_in: bool
    csrf: str | None = None  # the new session's token (login rotates it)


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
    # A clip: its length as the PACS plays it, and frames to play on screen.
    seconds: float | None = None
    preview_urls: list[str] = []
    # An H.264 clip: the same stream as fragmented MP4 for the page's <video>.
    video_url: str | None = None


class PatientView(_Out):
    name: str  # DICOM PN, as sent
    display_name: str  # the whole name in words (every screen shows this)
    id: str
    birth_date: str | None
    birth_text: str
    sex: str
    sex_text: str  # Male / Female / Other / Sex not given


class Counts(_Out):
    images: int
    clips: int


class ExamView(_Out):
    id: str
    state: Literal["in_progress", "completed", "discontinued"]
    scheduled: bool
    patient: PatientView
    accession_number: str
    procedure: str
    started: str
    objects: list[ShotView]
    counts: Counts
    recording: bool
    recording_seconds: float | None  # how long the running recording has run
    record_limit: float
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
    patient: PatientView
    patient_name: str
    patient_id: str
    birth_date: str | None
    sex: str
    accession_number: str
    procedure: str
    scheduled: str | None
    modality: str
    station: str
    location: str
    performed: bool
    warnings: list[str]


class WorklistView(_Out):
    configured: bool
    entries: list[WorklistEntryView]
    cached_at: str | None
    error: str | None
    warnings: list[str]
    dates: DateChoice = "today"
    range_label: str = ""  # "Tue 1 Dec", "Mon 30 Nov – Wed 2 Dec", "Any date"
    station: StationChoice = "mine"
    station_label: str = ""  # "this station (EDGE1)" / "all stations"
    text: str = ""  # what was searched for ("" for the plain list)


class OpenExam(_Out):
    id: str
    patient: PatientView
    accession_number: str
    started: str


class ConfirmView(_Out):
    """What the confirm dialog shows before an exam starts, checked by the
    rules Start applies, and the exam already open, if any, by name."""

    patient: PatientView
    accession_number: str
    procedure: str
    scheduled: str | None
    open_exam: OpenExam | None


class EchoView(_Out):
    name: str
    ok: bool
    detail: str
    seconds: float
