"""The information modules an object is built from, as typed values that
check themselves at construction: a wrong value is refused where it is made,
not discovered by the PACS."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

from gateway.dicom import uids
from gateway.dicom.uids import new_uid

# Control characters other than ESC (ISO 2022) are illegal in string VRs.
_CONTROL_RE = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")

Sex = Literal["M", "F", "O", ""]
# PS3.3 C.8.6.1: how the image was made. SYN: synthetic (test pattern).
ConversionType = Literal["DV", "DI", "DF", "WSD", "SD", "SI", "DRW", "SYN"]


class ModuleError(ValueError):
    """An attribute value that DICOM would not accept, naming the attribute."""


def check_uid(name: str, uid: str) -> str:
    """The one UID check (gateway.dicom.uids): a leading zero an old RIS or
    device sent is kept as sent; what is no UID at all is refused."""
    try:
        uids.check_uid(uid, name)
    except uids.InvalidUID:
        raise ModuleError(f"{name}: {uid!r} is not a valid UID") from None
    return uid


def check_text(name: str, value: str, max_len: int, *, allow_backslash: bool = False) -> str:
    if len(value) > max_len:
        raise ModuleError(f"{name}: {len(value)} characters, at most {max_len} allowed")
    if _CONTROL_RE.search(value):
        raise ModuleError(f"{name}: contains control characters")
    if not allow_backslash and "\\" in value:
        raise ModuleError(f"{name}: contains a backslash")
    return value


def check_person_name(name: str, value: str) -> str:
    """PN: up to three component groups (alphabetic=ideographic=phonetic) of at
    most 64 characters each, five components separated by ^."""
    groups = value.split("=")
    if len(groups) > 3:
        raise ModuleError(f"{name}: more than three '=' component groups")
    for group in groups:
        check_text(name, group, 64)
        if group.count("^") > 4:
            raise ModuleError(f"{name}: more than five '^' components")
    return value


@dataclass(frozen=True)
class Patient:
    name: str
    id: str
    birth_date: date | None = None
    sex: Sex = ""
    issuer_of_id: str = ""

    def __post_init__(self) -> None:
        check_person_name("Patient's Name", self.name)
        check_text("Patient ID", self.id, 64)
        check_text("Issuer of Patient ID", self.issuer_of_id, 64)
        if self.sex not in ("M", "F", "O", ""):
            raise ModuleError(f"Patient's Sex: {self.sex!r} is not M, F, O or empty")


@dataclass(frozen=True)
class Study:
    instance_uid: str = field(default_factory=new_uid)
    started: datetime = field(default_factory=lambda: datetime.now().astimezone())
    accession_number: str = ""
    referring_physician: str = ""
    study_id: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        check_uid("Study Instance UID", self.instance_uid)
        check_text("Accession Number", self.accession_number, 16)
        check_person_name("Referring Physician's Name", self.referring_physician)
        check_text("Study ID", self.study_id, 16)
        check_text("Study Description", self.description, 64)


@dataclass(frozen=True)
class Series:
    modality: str
    number: int = 1
    instance_uid: str = field(default_factory=new_uid)
    description: str = ""

    def __post_init__(self) -> None:
        check_uid("Series Instance UID", self.instance_uid)
        if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", self.modality):
            raise ModuleError(f"Modality: {self.modality!r} is not a code string")
        if not 0 <= self.number < 2**31:
            raise ModuleError(f"Series Number: {self.number} out of range")
        check_text("Series Description", self.description, 64)


@dataclass(frozen=True)
class Equipment:
    manufacturer: str
    model_name: str
    software_versions: str
    station_name: str = ""
    institution_name: str = ""
    device_serial_number: str = ""

    def __post_init__(self) -> None:
        check_text("Manufacturer", self.manufacturer, 64)
        check_text("Manufacturer's Model Name", self.model_name, 64)
        check_text("Software Versions", self.software_versions, 64)
        check_text("Station Name", self.station_name, 16)
        check_text("Institution Name", self.institution_name, 64)
        check_text("Device Serial Number", self.device_serial_number, 64)


@dataclass(frozen=True)
class ImageInfo:
    """What is particular to one image: when, which, and how it was made."""

    instance_number: int
    conversion_type: ConversionType
    content_time: datetime = field(default_factory=lambda: datetime.now().astimezone())
    sop_instance_uid: str = field(default_factory=new_uid)

    def __post_init__(self) -> None:
        check_uid("SOP Instance UID", self.sop_instance_uid)
        if not 0 <= self.instance_number < 2**31:
            raise ModuleError(f"Instance Number: {self.instance_number} out of range")
        if self.content_time.tzinfo is None:
            raise ModuleError("Content Time: needs a time zone")


@dataclass(frozen=True)
class Code:
    """A coded entry (Code Value, Coding Scheme Designator, Code Meaning)."""

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        check_text("Code Value", self.value, 16)
        check_text("Coding Scheme Designator", self.scheme, 16)
        check_text("Code Meaning", self.meaning, 64)

    def as_item(self) -> Dataset:
        """The code as a sequence item: the one place its three attributes
        are written (IODs, MPPS and discontinuation reasons use it)."""
        from pydicom.dataset import Dataset

        item = Dataset()
        item.CodeValue = self.value
        item.CodingSchemeDesignator = self.scheme
        item.CodeMeaning = self.meaning
        return item


@dataclass(frozen=True)
class Order:
    """What a Modality Worklist entry says about the order, to be carried into
    every object of the exam (IHE Scheduled Workflow): the PACS files the
    images under this study and accession, not under a new one."""

    study_instance_uid: str
    accession_number: str = ""
    referring_physician: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    scheduled_procedure_step_id: str = ""
    scheduled_procedure_step_description: str = ""
    scheduled_protocol_codes: tuple[Code, ...] = ()
    # The worklist's own Specific Character Set, carried over to the objects.
    specific_character_set: str = "ISO_IR 192"

    def __post_init__(self) -> None:
        check_uid("Study Instance UID", self.study_instance_uid)
        check_text("Accession Number", self.accession_number, 16)
        check_person_name("Referring Physician's Name", self.referring_physician)
        check_text("Requested Procedure ID", self.requested_procedure_id, 16)
        check_text("Requested Procedure Description", self.requested_procedure_description, 64)
        check_text("Scheduled Procedure Step ID", self.scheduled_procedure_step_id, 16)
        check_text(
            "Scheduled Procedure Step Description", self.scheduled_procedure_step_description, 64
        )
        check_character_set(self.specific_character_set)


@dataclass(frozen=True)
class Cine:
    """How a multi-frame object plays back (Cine module, PS3.3 C.7.6.5): the
    PACS viewer shows the clip at the speed it was recorded."""

    frame_time_ms: float

    def __post_init__(self) -> None:
        if not 0 < self.frame_time_ms < 1e6:
            raise ModuleError(f"Frame Time: {self.frame_time_ms} ms is not a usable frame time")

    @classmethod
    def from_fps(cls, fps: float) -> Cine:
        if not 0 < fps <= 1000:
            raise ModuleError(f"Cine Rate: {fps} frames per second is not a usable rate")
        return cls(1000.0 / fps)

    @classmethod
    def from_timestamps(cls, timestamps: list[float], fallback_fps: float = 30.0) -> Cine:
        """The mean interval of the captured frames (device clocks jitter;
        a mean keeps the clip's total duration right)."""
        if len(timestamps) >= 2 and timestamps[-1] > timestamps[0]:
            return cls((timestamps[-1] - timestamps[0]) * 1000.0 / (len(timestamps) - 1))
        return cls.from_fps(fallback_fps)

    @property
    def rate(self) -> int:
        return max(1, round(1000.0 / self.frame_time_ms))


CHARACTER_SETS = (
    "ISO_IR 192",
    "ISO_IR 100",
    "ISO_IR 101",
    "ISO_IR 109",
    "ISO_IR 110",
    "ISO_IR 144",
    "ISO_IR 127",
    "ISO_IR 126",
    "ISO_IR 138",
    "ISO_IR 148",
    "ISO_IR 203",
    "ISO_IR 166",
    "ISO_IR 13",
    "GB18030",
    "GBK",
)


def check_character_set(value: str) -> str:
    """The Specific Character Sets the gateway writes: the single-byte and
    UTF-8 ones, plus the ISO 2022 code extensions a worklist may use (values
    separated by backslashes, as they arrive from the RIS)."""
    terms = [t.strip() for t in value.split("\\")] if value else ["ISO_IR 6"]
    for term in terms:
        if term in ("", "ISO_IR 6") or term in CHARACTER_SETS or term.startswith("ISO 2022 IR "):
            continue
        raise ModuleError(f"Specific Character Set: {term!r} is not supported")
    return value
