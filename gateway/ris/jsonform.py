"""Worklist entries as plain JSON: the cache's row format and `--json` output
share it, so what is cached is exactly what was shown."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from gateway.dicom.modules import Code, Order, Patient
from gateway.ris.model import WorklistEntry, WorklistResult


def patient_to_dict(p: Patient) -> dict[str, Any]:
    return {
        "name": p.name,
        "id": p.id,
        "birth_date": p.birth_date.isoformat() if p.birth_date else None,
        "sex": p.sex,
        "issuer_of_id": p.issuer_of_id,
    }


def patient_from_dict(p: dict[str, Any]) -> Patient:
    return Patient(
        name=p["name"],
        id=p["id"],
        birth_date=date.fromisoformat(p["birth_date"]) if p["birth_date"] else None,
        sex=p["sex"],
        issuer_of_id=p["issuer_of_id"],
    )


def order_to_dict(o: Order) -> dict[str, Any]:
    return {
        "study_instance_uid": o.study_instance_uid,
        "accession_number": o.accession_number,
        "referring_physician": o.referring_physician,
        "requested_procedure_id": o.requested_procedure_id,
        "requested_procedure_description": o.requested_procedure_description,
        "scheduled_procedure_step_id": o.scheduled_procedure_step_id,
        "scheduled_procedure_step_description": o.scheduled_procedure_step_description,
        "scheduled_protocol_codes": [
            {"value": c.value, "scheme": c.scheme, "meaning": c.meaning}
            for c in o.scheduled_protocol_codes
        ],
        "specific_character_set": o.specific_character_set,
    }


def order_from_dict(o: dict[str, Any]) -> Order:
    return Order(
        study_instance_uid=o["study_instance_uid"],
        accession_number=o["accession_number"],
        referring_physician=o["referring_physician"],
        requested_procedure_id=o["requested_procedure_id"],
        requested_procedure_description=o["requested_procedure_description"],
        scheduled_procedure_step_id=o["scheduled_procedure_step_id"],
        scheduled_procedure_step_description=o["scheduled_procedure_step_description"],
        scheduled_protocol_codes=tuple(
            Code(c["value"], c["scheme"], c["meaning"]) for c in o["scheduled_protocol_codes"]
        ),
        specific_character_set=o["specific_character_set"],
    )


def entry_to_dict(entry: WorklistEntry) -> dict[str, Any]:
    return {
        "key": entry.key,
        "patient": patient_to_dict(entry.patient),
        "order": order_to_dict(entry.order),
        "scheduled_start": entry.scheduled_start.isoformat() if entry.scheduled_start else None,
        "modality": entry.modality,
        "station_ae_title": entry.station_ae_title,
        "performing_physician": entry.performing_physician,
        "location": entry.location,
        "performed": entry.performed,
        "warnings": list(entry.warnings),
    }


def entry_from_dict(data: dict[str, Any]) -> WorklistEntry:
    return WorklistEntry(
        patient=patient_from_dict(data["patient"]),
        order=order_from_dict(data["order"]),
        scheduled_start=(
            datetime.fromisoformat(data["scheduled_start"]) if data["scheduled_start"] else None
        ),
        modality=data["modality"],
        station_ae_title=data["station_ae_title"],
        performing_physician=data["performing_physician"],
        location=data["location"],
        performed=bool(data.get("performed", False)),
        warnings=tuple(data.get("warnings", ())),
    )


def result_to_dict(result: WorklistResult) -> dict[str, Any]:
    return {
        "entries": [entry_to_dict(e) for e in result.entries],
        "cached_at": result.cached_at.isoformat() if result.cached_at else None,
        "error": result.error,
        "warnings": list(result.warnings),
    }
