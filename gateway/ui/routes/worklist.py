"""The worklist screen's data: today's list, and a search in it."""

from __future__ import annotations

import logging
from datetime import date

from fastapi import APIRouter, Request

from gateway.ris.model import WorklistEntry, WorklistQuery
from gateway.ui import models as m
from gateway.ui.deps import GUARDS, UIState, ui_state

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/worklist", tags=["worklist"], dependencies=GUARDS)


def entry_view(entry: WorklistEntry) -> m.WorklistEntryView:
    p, o = entry.patient, entry.order
    return m.WorklistEntryView(
        key=entry.key,
        patient_name=p.name,
        patient_id=p.id,
        birth_date=p.birth_date.isoformat() if p.birth_date else None,
        sex=p.sex,
        accession_number=o.accession_number,
        procedure=o.requested_procedure_description or o.scheduled_procedure_step_description,
        scheduled=entry.scheduled_start.isoformat(timespec="minutes")
        if entry.scheduled_start
        else None,
        modality=entry.modality,
        location=entry.location,
        performed=entry.performed,
        warnings=list(entry.warnings),
    )


def _matches(entry: WorklistEntry, text: str) -> bool:
    if not text:
        return True
    hay = " ".join(
        (
            entry.patient.name.replace("^", " "),
            entry.patient.id,
            entry.order.accession_number,
            entry.order.requested_procedure_description,
        )
    ).lower()
    return all(word in hay for word in text.lower().split())


def _worklist(state: UIState, text: str) -> m.WorklistView:
    source = state.ctx.worklist
    if source is None:
        return m.WorklistView(
            configured=False,
            entries=[],
            cached_at=None,
            error="No worklist server is configured — use “Unscheduled patient”.",
            warnings=[],
        )
    today = date.today()
    try:
        result = source.query(WorklistQuery(date_from=today, date_to=today), False)
    except Exception as exc:  # the worklist backend failing must not break the screen
        log.warning("worklist query failed: %s", type(exc).__name__)
        return m.WorklistView(
            configured=True,
            entries=[],
            cached_at=None,
            error=f"Worklist unavailable ({type(exc).__name__})",
            warnings=[],
        )
    state.worklist_entries = {e.key: e for e in result.entries}
    return m.WorklistView(
        configured=True,
        entries=[entry_view(e) for e in result.entries if _matches(e, text)],
        cached_at=result.cached_at.isoformat(timespec="minutes") if result.cached_at else None,
        error=result.error,
        warnings=list(result.warnings),
    )


@router.get("", response_model=m.WorklistView)
def api_worklist(request: Request) -> m.WorklistView:
    """Today's worklist (live, or the cache with `cached_at` when offline)."""
    return _worklist(ui_state(request), "")


@router.post("/search", response_model=m.WorklistView)
def api_worklist_search(request: Request, body: m.WorklistSearch) -> m.WorklistView:
    """Search today's worklist. POST, so names typed never end up in a URL or log."""
    return _worklist(ui_state(request), body.text.strip())
