"""Between WorklistQuery/WorklistEntry and the Modality Worklist identifier.

Responses come from a RIS we do not control: every value is read defensively.
A missing, over-long, badly encoded or illegal value becomes a plain warning on
that entry (and a cleaned value), never an exception, so one bad entry cannot
hide the rest of the list from the technician.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from dataclasses import replace
from datetime import date, datetime, time
from functools import cache
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes, default_encoding, python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import TEXT_VR_DELIMS

from gateway.dicom.modules import Code, ModuleError, Order, Patient, check_character_set
from gateway.dicom.uids import new_uid
from gateway.worklist.model import WorklistEntry, WorklistQuery

# pydicom logs what it dislikes in a value, with the value (a birth date, a
# name): patient data must stay out of the journal. While this thread reads a
# response, those records are dropped; the entry's warnings say it instead.
_parsing = threading.local()


class _QuietWhileParsing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_parsing, "active", False)


logging.getLogger("pydicom").addFilter(_QuietWhileParsing())

_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")

# Return keys: what Scheduled Workflow carries into the objects and what the
# technician needs to pick the right line.
_TOP_KEYS = (
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
)
_STEP_KEYS = (
    "Modality",
    "ScheduledStationAETitle",
    "ScheduledStationName",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepLocation",
)


@cache
def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return BaseTag(tag)


def _da(value: date) -> str:
    return value.strftime("%Y%m%d")


def build_identifier(query: WorklistQuery) -> Dataset:
    ds = Dataset()
    text = " ".join(v or "" for v in (query.patient_name, query.patient_id, query.accession_number))
    if not text.isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"
    else:
        # Asked for, so the server tells us which character set it answers in.
        ds.SpecificCharacterSet = ""
    for key in _TOP_KEYS:
        setattr(ds, key, "")
    if query.patient_name:
        ds.PatientName = query.patient_name
    if query.patient_id:
        ds.PatientID = query.patient_id
    if query.accession_number:
        ds.AccessionNumber = query.accession_number
    step = Dataset()
    for key in _STEP_KEYS:
        setattr(step, key, "")
    code = Dataset()
    code.CodeValue = code.CodingSchemeDesignator = code.CodeMeaning = ""
    step.ScheduledProtocolCodeSequence = Sequence([code])
    if query.modality:
        step.Modality = query.modality
    if query.station_ae_title:
        step.ScheduledStationAETitle = query.station_ae_title
    if query.date_from or query.date_to:
        start = _da(query.date_from) if query.date_from else ""
        end = _da(query.date_to) if query.date_to else ""
        step.ScheduledProcedureStepStartDate = start if start == end else f"{start}-{end}"
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})


class _Reader:
    """Reads values out of one response, collecting what was wrong with them.

    Values are decoded straight from the raw element bytes with the response's
    character sets (pydicom's own per-element conversion machinery costs more
    than the rest of the query for a 1,000-entry list)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.encodings: list[str] = [default_encoding]
        self.charset = "ISO_IR 6"

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def raw(self, ds: Dataset, keyword: str, label: str) -> Any:
        tag = _tag(keyword)
        try:
            elem = ds.get_item(tag)
            if elem is None:
                return None
            if not isinstance(elem, RawDataElement):
                return elem.value  # already decoded (a data set built in memory)
            vr = elem.VR or dictionary_VR(tag)
            if vr == "SQ":
                return ds[tag].value
            data = elem.value
            if not data:
                return ""
            if vr in _TEXT_VRS:
                return decode_bytes(data.rstrip(b"\x00 "), self.encodings, TEXT_VR_DELIMS)
            text = data.decode("ascii", "replace").rstrip("\x00 ")
            if "\ufffd" in text:
                self.warn(f"{label}: non-ASCII bytes replaced")
            return text
        except Exception as exc:  # whatever the bytes are, the list goes on
            self.warn(f"{label}: cannot be decoded ({type(exc).__name__})")
            return None

    def text(
        self, ds: Dataset, keyword: str, label: str, max_len: int, *, required: bool = False
    ) -> str:
        value = self.raw(ds, keyword, label)
        if value is None or value == "":
            if required:
                self.warn(f"{label} is missing")
            return ""
        if not isinstance(value, str) and hasattr(value, "__iter__"):
            value = "\\".join(str(v) for v in value)
        text = str(value).strip()
        if "\\" in text:
            self.warn(f"{label}: several values; the first is used")
            text = text.split("\\")[0].strip()
        if _CONTROL.search(text):
            self.warn(f"{label}: illegal control characters removed")
            text = _CONTROL.sub("", text)
        if len(text) > max_len:
            self.warn(f"{label}: {len(text)} characters, cut to {max_len}")
            text = text[:max_len]
        if required and not text:
            self.warn(f"{label} is missing")
        return text

    def person(self, ds: Dataset, keyword: str, label: str, *, required: bool = False) -> str:
        value = self.raw(ds, keyword, label)
        if value is None or str(value) == "":
            if required:
                self.warn(f"{label} is missing")
            return ""
        text = str(value).strip()
        if "\\" in text:
            self.warn(f"{label}: several values; the first is used")
            text = text.split("\\")[0].strip()
        if _CONTROL.search(text):
            self.warn(f"{label}: illegal characters removed")
            text = _CONTROL.sub("", text)
        groups = text.split("=")[:3]
        fixed = []
        for group in groups:
            parts = group.split("^")
            if len(parts) > 5:
                self.warn(f"{label}: more than five name components; extra ones dropped")
                parts = parts[:5]
            joined = "^".join(parts)
            if len(joined) > 64:
                self.warn(f"{label}: {len(joined)} characters, cut to 64")
                joined = joined[:64]
            fixed.append(joined)
        return "=".join(fixed)

    def date(self, ds: Dataset, keyword: str, label: str) -> date | None:
        text = self.text(ds, keyword, label, 64)
        if not text:
            return None
        try:
            if len(text) < 8 or not text[:8].isdigit():
                raise ValueError(text)
            return date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            self.warn(f"{label}: {text!r} is not a date (YYYYMMDD)")
            return None

    def time(self, ds: Dataset, keyword: str, label: str) -> time | None:
        text = self.text(ds, keyword, label, 64).replace(":", "")
        if not text:
            return None
        digits = text.split(".")[0]
        try:
            hour = int(digits[0:2])
            minute = int(digits[2:4] or 0)
            second = int(digits[4:6] or 0)
            return time(hour, minute, min(second, 59))
        except ValueError:
            self.warn(f"{label}: {text!r} is not a time (HHMMSS)")
            return None


def _charset_problem(message: str) -> str:
    return "characters that do not fit the declared character set were replaced"


def _first_item(reader: _Reader, ds: Dataset) -> Dataset:
    seq = reader.raw(ds, "ScheduledProcedureStepSequence", "Scheduled Procedure Step")
    if not seq:
        reader.warn("Scheduled Procedure Step Sequence is missing")
        return Dataset()
    if len(seq) > 1:
        reader.warn("several scheduled steps in one response; the first is used")
    item = seq[0]
    return item if isinstance(item, Dataset) else Dataset()


def _codes(reader: _Reader, step: Dataset) -> tuple[Code, ...]:
    seq = reader.raw(step, "ScheduledProtocolCodeSequence", "Scheduled Protocol Code") or []
    out: list[Code] = []
    for item in seq:
        value = reader.text(item, "CodeValue", "Protocol Code Value", 16)
        scheme = reader.text(item, "CodingSchemeDesignator", "Protocol Coding Scheme", 16)
        meaning = reader.text(item, "CodeMeaning", "Protocol Code Meaning", 64)
        if value or meaning:
            out.append(Code(value=value, scheme=scheme, meaning=meaning))
    return tuple(out)


def _encodings(reader: _Reader, ds: Dataset) -> list[str]:
    reader.charset = _charset(reader, ds)
    terms = reader.charset.split("\\")
    try:
        return list(convert_encodings(terms))
    except Exception:  # unknown terms were reported by _charset
        return [default_encoding]


def _writable_charset(charset: str) -> str:
    """The worklist's character set for our objects when we can write it;
    else UTF-8 (values are already decoded, so nothing is lost)."""
    try:
        return check_character_set(charset)
    except ModuleError:
        return "ISO_IR 192"


def _charset(reader: _Reader, ds: Dataset) -> str:
    """The response's Specific Character Set. pydicom falls back to Latin-1
    for a term it does not know (and says so only once, at decoding time,
    outside our reach): check the terms here so the entry carries the warning."""
    value = reader.raw(ds, "SpecificCharacterSet", "Specific Character Set")
    if not value:
        return "ISO_IR 6"
    terms = value.split("\\") if isinstance(value, str) else [str(v) for v in value]
    for term in terms:
        if term.strip() and term.strip() not in python_encoding:
            reader.warn(
                f"unknown character set {term.strip()!r}; names were read as Latin-1 "
                "and may be wrong"
            )
    return "\\".join(terms)


def parse_entry(ds: Dataset) -> WorklistEntry:
    """Never raises for what the server sent: problems become `warnings`."""
    # pydicom only *warns* (and logs, with the value) about bytes that do not
    # fit the character set: catch those here as the entry's warnings.
    _parsing.active = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            entry, reader = _parse(ds)
    finally:
        _parsing.active = False
    for w in caught:
        msg = str(w.message)
        if "decode" in msg.lower():
            reader.warn(_charset_problem(msg))
    if len(reader.warnings) != len(entry.warnings):
        entry = replace(entry, warnings=tuple(reader.warnings))
    return entry


def _parse(ds: Dataset) -> tuple[WorklistEntry, _Reader]:
    r = _Reader()
    r.encodings = _encodings(r, ds)
    step = _first_item(r, ds)
    # Sequence items inherit the response's character set.
    birth = r.date(ds, "PatientBirthDate", "Patient's Birth Date")
    sex = r.text(ds, "PatientSex", "Patient's Sex", 16).upper()
    if sex not in ("M", "F", "O", ""):
        r.warn(f"Patient's Sex: {sex!r} is not M, F or O; left empty")
        sex = ""
    name = r.person(ds, "PatientName", "Patient's Name", required=True)
    patient_id = r.text(ds, "PatientID", "Patient ID", 64, required=True)
    issuer = r.text(ds, "IssuerOfPatientID", "Issuer of Patient ID", 64)
    try:
        patient = Patient(
            name=name,
            id=patient_id,
            birth_date=birth,
            sex=sex,  # type: ignore[arg-type]  # checked just above
            issuer_of_id=issuer,
        )
    except ModuleError as exc:  # belt and braces: values were cleaned above
        r.warn(str(exc))
        patient = Patient(name="", id="")
    study_uid = r.text(ds, "StudyInstanceUID", "Study Instance UID", 64)
    if not study_uid or not _UID.match(study_uid):
        r.warn(
            "Study Instance UID is missing or invalid; the images will get a new study "
            "that the RIS may not link to the order"
        )
        study_uid = new_uid()
    start_date = r.date(step, "ScheduledProcedureStepStartDate", "Scheduled Start Date")
    start_time = r.time(step, "ScheduledProcedureStepStartTime", "Scheduled Start Time")
    try:
        order = Order(
            study_instance_uid=study_uid,
            accession_number=r.text(ds, "AccessionNumber", "Accession Number", 16),
            referring_physician=r.person(
                ds, "ReferringPhysicianName", "Referring Physician's Name"
            ),
            requested_procedure_id=r.text(ds, "RequestedProcedureID", "Requested Procedure ID", 16),
            requested_procedure_description=r.text(
                ds, "RequestedProcedureDescription", "Requested Procedure Description", 64
            ),
            scheduled_procedure_step_id=r.text(
                step, "ScheduledProcedureStepID", "Scheduled Procedure Step ID", 16
            ),
            scheduled_procedure_step_description=r.text(
                step, "ScheduledProcedureStepDescription", "Scheduled Step Description", 64
            ),
            scheduled_protocol_codes=_codes(r, step),
            specific_character_set=_writable_charset(r.charset),
        )
    except ModuleError as exc:  # belt and braces: values were cleaned above
        r.warn(str(exc))
        order = Order(study_instance_uid=study_uid)
    stations = r.raw(step, "ScheduledStationAETitle", "Scheduled Station AE Title")
    station = ""
    if stations:
        station = stations if isinstance(stations, str) else "\\".join(str(s) for s in stations)
    entry = WorklistEntry(
        patient=patient,
        order=order,
        scheduled_start=(
            datetime.combine(start_date, start_time or time(0, 0)) if start_date else None
        ),
        modality=r.text(step, "Modality", "Modality", 16),
        station_ae_title=station[:64],
        performing_physician=r.person(
            step, "ScheduledPerformingPhysicianName", "Performing Physician"
        ),
        location=r.text(step, "ScheduledProcedureStepLocation", "Location", 16),
        warnings=tuple(r.warnings),
    )
    return entry, r
