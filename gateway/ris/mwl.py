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

from pydicom.charset import convert_encodings, decode_bytes, default_encoding, python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.valuerep import TEXT_VR_DELIMS

from gateway.dicom.modules import Code, ModuleError, Order, Patient, check_character_set
from gateway.dicom.rawdata import RawItem
from gateway.dicom.uids import InvalidUID, check_uid, new_uid
from gateway.ris.model import WorklistEntry, WorklistQuery

# pydicom logs what it dislikes in a value, with the value (a birth date, a
# name): patient data must stay out of the journal. While this thread reads a
# response, those records are dropped; the entry's warnings say it instead.
_parsing = threading.local()


class _QuietWhileParsing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_parsing, "active", False)


logging.getLogger("pydicom").addFilter(_QuietWhileParsing())

_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")

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
def _key(keyword: str) -> tuple[int, str]:
    """Tag and VR of a return key (the answer's own VR is not trusted)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return int(tag), dictionary_VR(tag)


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
_CHARSET_PROBLEM = "characters that do not fit the declared character set were replaced"


class _Reader:
    """Reads values out of one response (a RawItem: tag → bytes), collecting
    what was wrong with them.

    Values are decoded straight from the raw bytes with the response's
    character sets (pydicom's per-element conversion machinery costs more
    than the rest of the query for a 1,000-entry list)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.encodings: list[str] = [default_encoding]
        # The one Python codec when no ISO 2022 code extensions are in play.
        self.codec: str | None = default_encoding
        self.charset = "ISO_IR 6"

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def decode(self, data: bytes) -> str:
        if self.codec is not None:
            try:
                return data.decode(self.codec)
            except UnicodeDecodeError:
                self.warn(_CHARSET_PROBLEM)
                return data.decode(self.codec, "replace")
        # ISO 2022 code extensions: pydicom only *warns* (and logs, with the
        # value) about bytes that do not fit; those become this entry's warning.
        _parsing.active = True
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                text = decode_bytes(data, self.encodings, TEXT_VR_DELIMS)
        finally:
            _parsing.active = False
        if any("decode" in str(w.message).lower() for w in caught):
            self.warn(_CHARSET_PROBLEM)
        return text

    def string(self, item: RawItem, keyword: str, label: str) -> str | None:
        """A value decoded (text VRs with the response's character set), or
        None when absent or unreadable (the reason noted)."""
        tag, vr = _key(keyword)
        value = item.get(tag)
        if value is None:
            return None
        if not isinstance(value, bytes):
            self.warn(f"{label}: a sequence where a value was expected; ignored")
            return None
        if not value:
            return ""
        try:
            if vr in _TEXT_VRS:
                return self.decode(value.rstrip(b"\x00 "))
            text = value.decode("ascii", "replace").rstrip("\x00 ")
        except Exception as exc:  # whatever the bytes are, the list goes on
            self.warn(f"{label}: cannot be decoded ({type(exc).__name__})")
            return None
        if "\ufffd" in text:
            self.warn(f"{label}: non-ASCII bytes replaced")
        return text

    def items(self, item: RawItem, keyword: str, label: str) -> list[RawItem]:
        value = item.get(_key(keyword)[0])
        if value is None or isinstance(value, list):
            return value or []
        self.warn(f"{label}: not encoded as a sequence; ignored")
        return []

    def _one_clean_value(self, text: str, label: str, removed: str) -> str:
        """The first of several values, without control characters."""
        text = text.strip()
        if "\\" in text:
            self.warn(f"{label}: several values; the first is used")
            text = text.split("\\")[0].strip()
        if _CONTROL.search(text):
            self.warn(f"{label}: {removed}")
            text = _CONTROL.sub("", text)
        return text

    def text(
        self, item: RawItem, keyword: str, label: str, max_len: int, *, required: bool = False
    ) -> str:
        text = self.string(item, keyword, label)
        if text:
            text = self._one_clean_value(text, label, "illegal control characters removed")
            if len(text) > max_len:
                self.warn(f"{label}: {len(text)} characters, cut to {max_len}")
                text = text[:max_len]
            if text:
                return text
        if required:
            self.warn(f"{label} is missing")
        return ""

    def person(self, item: RawItem, keyword: str, label: str, *, required: bool = False) -> str:
        value = self.string(item, keyword, label)
        if not value:
            if required:
                self.warn(f"{label} is missing")
            return ""
        text = self._one_clean_value(value, label, "illegal characters removed")
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

    def date(self, item: RawItem, keyword: str, label: str) -> date | None:
        text = self.text(item, keyword, label, 64)
        if not text:
            return None
        try:
            if len(text) < 8 or not text[:8].isdigit():
                raise ValueError(text)
            return date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            self.warn(f"{label}: {text!r} is not a date (YYYYMMDD)")
            return None

    def time(self, item: RawItem, keyword: str, label: str) -> time | None:
        text = self.text(item, keyword, label, 64).replace(":", "")
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


def _first_item(reader: _Reader, response: RawItem) -> RawItem:
    seq = reader.items(response, "ScheduledProcedureStepSequence", "Scheduled Procedure Step")
    if not seq:
        reader.warn("Scheduled Procedure Step Sequence is missing")
        return {}
    if len(seq) > 1:
        reader.warn("several scheduled steps in one response; the first is used")
    return seq[0]


def _codes(reader: _Reader, step: RawItem) -> tuple[Code, ...]:
    seq = reader.items(step, "ScheduledProtocolCodeSequence", "Scheduled Protocol Code")
    out: list[Code] = []
    for item in seq:
        value = reader.text(item, "CodeValue", "Protocol Code Value", 16)
        scheme = reader.text(item, "CodingSchemeDesignator", "Protocol Coding Scheme", 16)
        meaning = reader.text(item, "CodeMeaning", "Protocol Code Meaning", 64)
        if value or meaning:
            out.append(Code(value=value, scheme=scheme, meaning=meaning))
    return tuple(out)


def _set_encodings(reader: _Reader, response: RawItem) -> None:
    reader.charset = _charset(reader, response)
    terms = reader.charset.split("\\")
    try:
        reader.encodings = list(convert_encodings(terms))
    except Exception:  # unknown terms were reported by _charset
        reader.encodings = [default_encoding]
    extended = any(t.strip().startswith("ISO 2022") for t in terms)
    reader.codec = reader.encodings[0] if len(reader.encodings) == 1 and not extended else None


def _writable_charset(charset: str) -> str:
    """The worklist's character set for our objects when we can write it;
    else UTF-8 (values are already decoded, so nothing is lost)."""
    try:
        return check_character_set(charset)
    except ModuleError:
        return "ISO_IR 192"


def _charset(reader: _Reader, response: RawItem) -> str:
    """The response's Specific Character Set. pydicom falls back to Latin-1
    for a term it does not know (and says so only once, at decoding time,
    outside our reach): check the terms here so the entry carries the warning."""
    value = reader.string(response, "SpecificCharacterSet", "Specific Character Set")
    if not value:
        return "ISO_IR 6"
    terms = value.split("\\")
    for term in terms:
        if term.strip() and term.strip() not in python_encoding:
            reader.warn(
                f"unknown character set {term.strip()!r}; names were read as Latin-1 "
                "and may be wrong"
            )
    return "\\".join(terms)


def parse_entry(response: RawItem) -> WorklistEntry:
    """One C-FIND response as an entry. Never raises for what the server
    sent: problems become `warnings`."""
    entry, reader = _parse(response)
    if len(reader.warnings) != len(entry.warnings):
        entry = replace(entry, warnings=tuple(reader.warnings))
    return entry


def _parse(ds: RawItem) -> tuple[WorklistEntry, _Reader]:
    r = _Reader()
    _set_encodings(r, ds)
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
    try:
        note = check_uid(study_uid, "Study Instance UID")
    except InvalidUID as exc:
        r.warn(
            f"Study Instance UID is missing or invalid ({exc}); the images will get a new "
            "study that the RIS may not link to the order"
        )
        study_uid = new_uid()
    else:
        if note is not None:  # an old RIS's leading zero: kept as sent
            logging.getLogger(__name__).info("worklist entry: %s; kept as sent", note)
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
    station = r.string(step, "ScheduledStationAETitle", "Scheduled Station AE Title") or ""
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
