"""The worklist as the rest of the gateway sees it, whatever answered the
query (the RIS over C-FIND, or the offline cache)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from gateway.dicom.modules import Order, Patient


@dataclass(frozen=True)
class WorklistQuery:
    """Filters; None means "any". Dates are inclusive."""

    date_from: date | None = None
    date_to: date | None = None
    modality: str | None = None
    station_ae_title: str | None = None
    patient_name: str | None = None  # DICOM wildcards * and ? allowed
    patient_id: str | None = None
    accession_number: str | None = None


@dataclass(frozen=True)
class WorklistEntry:
    """One scheduled procedure step: who, what, when, where."""

    patient: Patient
    order: Order
    scheduled_start: datetime | None = None
    modality: str = ""
    station_ae_title: str = ""
    performing_physician: str = ""
    location: str = ""
    performed: bool = False  # an exam for this step was already done here
    warnings: tuple[str, ...] = ()  # what was wrong with this entry, said plainly

    @property
    def key(self) -> str:
        """Stable identity of the step, for URLs and caches (no patient data)."""
        return f"{self.order.study_instance_uid}/{self.order.scheduled_procedure_step_id}"


@dataclass(frozen=True)
class WorklistResult:
    entries: list[WorklistEntry] = field(default_factory=list)
    # Set when served from the cache: when that cache was filled.
    cached_at: datetime | None = None
    # Why the live query failed, when it did (the cache may still answer).
    error: str | None = None
    warnings: tuple[str, ...] = ()


def list_order(entry: WorklistEntry) -> tuple[str, str]:
    """How a list is shown, live or cached: by scheduled start (none last),
    then patient name."""
    start = entry.scheduled_start.isoformat() if entry.scheduled_start else "9999"
    return (start, entry.patient.name)
