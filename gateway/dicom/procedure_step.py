"""Modality Performed Procedure Step data sets (PS3.3 B.17, PS3.4 F.7.2,
IHE RAD-6/RAD-7): what the RIS learns about an exam — that it started, and
then that it was completed with exactly these objects, or discontinued and why.

Plain values in, pydicom data sets out; no queue, exam or network here."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr.codedict import codes

from gateway.dicom.modules import Code, Order, Patient, Study

IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"

UNSPECIFIED_REASON = "110513"  # "Discontinued for unspecified reason"


def _cid_9300() -> dict[str, str]:
    """PS3.16 CID 9300 Procedure Discontinuation Reasons, from pydicom's copy
    of the standard (value → meaning)."""
    out: dict[str, str] = {}
    for keyword in cid_concepts[9300].get("DCM", []):
        code = getattr(codes.DCM, keyword)
        out[str(code.value)] = str(code.meaning)
    return out


DISCONTINUATION_REASONS = _cid_9300()


def discontinuation_reason(reason: str) -> tuple[Code, str]:
    """A CID 9300 code from what the technician chose, and the free text
    left over for the comments: a code value ("110505"), a code meaning
    (any case), or free text (→ "Discontinued for unspecified reason")."""
    text = reason.strip()
    if text in DISCONTINUATION_REASONS:
        return Code(text, "DCM", DISCONTINUATION_REASONS[text]), ""
    for value, meaning in DISCONTINUATION_REASONS.items():
        if meaning.lower() == text.lower():
            return Code(value, "DCM", meaning), ""
    return (
        Code(UNSPECIFIED_REASON, "DCM", DISCONTINUATION_REASONS[UNSPECIFIED_REASON]),
        text,
    )


@dataclass(frozen=True)
class PerformedStep:
    """Who and what, as known when the exam starts."""

    mpps_uid: str
    step_id: str  # Performed Procedure Step ID (SH, ≤ 16)
    patient: Patient
    study: Study
    order: Order | None
    modality: str
    station_ae_title: str
    station_name: str
    started: datetime


@dataclass(frozen=True)
class ReferencedObject:
    sop_class_uid: str
    sop_instance_uid: str


def _charset_value(value: str) -> str | list[str]:
    """ "\\ISO 2022 IR 87" is two values (the first empty), not one string."""
    return value.split("\\") if "\\" in value else value


def _date(value: datetime) -> str:
    return value.strftime("%Y%m%d")


def _time(value: datetime) -> str:
    return value.strftime("%H%M%S")


def n_create(step: PerformedStep) -> Dataset:
    """The N-CREATE attribute list: status IN PROGRESS, with the scheduled
    step it performs (or, unscheduled, the new study alone), and empty type 2
    attributes that the N-SET fills in."""
    ds = Dataset()
    order = step.order
    ds.SpecificCharacterSet = _charset_value(
        order.specific_character_set if order else "ISO_IR 192"
    )
    sched = Dataset()
    sched.StudyInstanceUID = step.study.instance_uid
    sched.ReferencedStudySequence = Sequence()
    sched.AccessionNumber = step.study.accession_number
    sched.RequestedProcedureID = order.requested_procedure_id if order else ""
    sched.RequestedProcedureDescription = order.requested_procedure_description if order else ""
    sched.ScheduledProcedureStepID = order.scheduled_procedure_step_id if order else ""
    sched.ScheduledProcedureStepDescription = (
        order.scheduled_procedure_step_description if order else ""
    )
    sched.ScheduledProtocolCodeSequence = Sequence(
        [c.as_item() for c in order.scheduled_protocol_codes] if order else []
    )
    ds.ScheduledStepAttributesSequence = Sequence([sched])
    ds.PatientName = step.patient.name
    ds.PatientID = step.patient.id
    ds.IssuerOfPatientID = step.patient.issuer_of_id
    ds.PatientBirthDate = (
        step.patient.birth_date.strftime("%Y%m%d") if step.patient.birth_date else ""
    )
    ds.PatientSex = step.patient.sex
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedProcedureStepID = step.step_id
    ds.PerformedStationAETitle = step.station_ae_title
    ds.PerformedStationName = step.station_name
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = _date(step.started)
    ds.PerformedProcedureStepStartTime = _time(step.started)
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.PerformedProcedureStepStatus = IN_PROGRESS
    ds.PerformedProcedureStepDescription = step.study.description
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.Modality = step.modality
    ds.StudyID = step.study.study_id
    ds.PerformedProtocolCodeSequence = Sequence(
        [c.as_item() for c in order.scheduled_protocol_codes] if order else []
    )
    ds.PerformedSeriesSequence = Sequence()
    return ds


def _series(
    series_uid: str, protocol: str, objects: Seq[ReferencedObject], station_ae: str
) -> Dataset:
    item = Dataset()
    item.PerformingPhysicianName = ""
    item.ProtocolName = protocol or "FREE"
    item.OperatorsName = ""
    item.SeriesInstanceUID = series_uid
    item.SeriesDescription = ""
    item.RetrieveAETitle = ""
    refs = []
    for obj in objects:
        ref = Dataset()
        ref.ReferencedSOPClassUID = obj.sop_class_uid
        ref.ReferencedSOPInstanceUID = obj.sop_instance_uid
        refs.append(ref)
    item.ReferencedImageSequence = Sequence(refs)
    item.ReferencedNonImageCompositeSOPInstanceSequence = Sequence()
    return item


def n_set_final(
    status: str,
    ended: datetime,
    series_uid: str,
    objects: Seq[ReferencedObject],
    *,
    protocol: str = "",
    station_ae_title: str = "",
    reason: Code | None = None,
    comments: str = "",
    specific_character_set: str = "ISO_IR 192",
) -> Dataset:
    """The final N-SET: COMPLETED or DISCONTINUED, the end time, and the
    Performed Series Sequence referencing every object of the exam (objects
    taken before a discontinuation are still referenced: they were sent)."""
    if status not in (COMPLETED, DISCONTINUED):
        raise ValueError(f"final MPPS status must be COMPLETED or DISCONTINUED, not {status!r}")
    ds = Dataset()
    # The protocol name and the comments may be in the worklist's language.
    ds.SpecificCharacterSet = _charset_value(specific_character_set)
    ds.PerformedProcedureStepEndDate = _date(ended)
    ds.PerformedProcedureStepEndTime = _time(ended)
    ds.PerformedProcedureStepStatus = status
    series = [_series(series_uid, protocol, objects, station_ae_title)] if objects else []
    ds.PerformedSeriesSequence = Sequence(series)
    if status == DISCONTINUED:
        code = reason or Code(
            UNSPECIFIED_REASON, "DCM", DISCONTINUATION_REASONS[UNSPECIFIED_REASON]
        )
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = Sequence([code.as_item()])
        if comments:
            ds.CommentsOnThePerformedProcedureStep = comments[:10240]
    return ds
