"""Whose images these are: the worklist entry for an accession number (IHE
Scheduled Workflow), else an unscheduled patient. One rule for `capture`,
`import` and an import handed to the running service."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.dicom.modules import Order, Patient


class SubjectError(Exception):
    """The options do not name a patient; `usage` when they are malformed
    rather than not found."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Subject:
    patient: Patient
    order: Order | None = None
    # Said to the user when the worklist entry came from the offline cache.
    note: str | None = None


def exam_subject(
    config: GatewayConfig,
    verb: str,
    *,
    accession: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    birth_date: str | None = None,
    sex: str | None = None,
) -> Subject:
    if accession:
        if patient_id or patient_name:
            raise SubjectError(
                f"{verb} takes --accession or --patient-id/--patient-name, not both", usage=True
            )
        from gateway.worklist.service import WorklistError, WorklistService

        with WorklistService(config) as worklist:
            try:
                entry, looked_up = worklist.lookup_accession(accession)
            except WorklistError as exc:
                raise SubjectError(str(exc)) from None
        note = None
        if looked_up.cached_at is not None:
            note = f"worklist entry from the cache (cached at {looked_up.cached_at:%Y-%m-%d %H:%M})"
        return Subject(entry.patient, entry.order, note)
    if not (patient_id and patient_name):
        raise SubjectError(f"{verb} needs --accession, or --patient-id and --patient-name", True)
    from gateway.worklist.unscheduled import UnscheduledPatientError, unscheduled_patient

    try:
        patient = unscheduled_patient(patient_name, patient_id, birth_date or "", sex or "")
    except UnscheduledPatientError as exc:
        raise SubjectError(str(exc), usage=True) from None
    return Subject(patient)
