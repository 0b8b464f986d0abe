"""The worklist screen's data: the list for a date choice and a station, and
the Search button, which asks the RIS for the typed text as the matching keys
(the screen filters the list it shows by itself while the technician types:
no request per keystroke)."""

from __future__ import annotations

import logging
from datetime import date, timedelta

from fastapi import APIRouter, Request

from gateway.ris.model import WorklistEntry, WorklistQuery
from gateway.ui import models as m
from gateway.ui.deps import GUARDS, UIState, ui_state
from gateway.ui.people import patient_view

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/worklist", tags=["worklist"], dependencies=GUARDS)

# Entries the screens were shown, which Start may name by key (several
# screens, a search and a list: each keeps working), bounded.
KNOWN_ENTRIES = 10_000


def entry_view(entry: WorklistEntry) -> m.WorklistEntryView:
    p, o = entry.patient, entry.order
    return m.WorklistEntryView(
        key=entry.key,
        patient=m.PatientView(**patient_view(p)),
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
        station=entry.station_ae_title.replace("\\", ", "),
        location=entry.location,
        performed=entry.performed,
        warnings=list(entry.warnings),
    )


def _day(d: date) -> str:
    return f"{d:%a} {d.day} {d:%b}"


def date_range(choice: m.DateChoice, today: date) -> tuple[date | None, date | None, str]:
    """The dates a choice means, and how the heading names them."""
    if choice == "today":
        return today, today, _day(today)
    if choice == "around":
        start, end = today - timedelta(days=1), today + timedelta(days=1)
        return start, end, f"{_day(start)} – {_day(end)}"
    if choice == "week":
        start = today - timedelta(days=today.weekday())
        end = start + timedelta(days=6)
        return start, end, f"This week, {_day(start)} – {_day(end)}"
    return None, None, "Any date"


def _remember(state: UIState, entries: list[WorklistEntry]) -> None:
    known = state.worklist_entries
    for e in entries:
        known[e.key] = e
        known.move_to_end(e.key)
    while len(known) > KNOWN_ENTRIES:
        known.popitem(last=False)


def _worklist(state: UIState, body: m.WorklistSearch) -> m.WorklistView:
    start, end, label = date_range(body.dates, date.today())
    ae = state.config.station.ae_title
    station = ae if body.station == "mine" else None

    def view(
        configured: bool,
        entries: list[WorklistEntry],
        cached_at: str | None,
        error: str | None,
        warnings: list[str],
    ) -> m.WorklistView:
        return m.WorklistView(
            configured=configured,
            entries=[entry_view(e) for e in entries],
            cached_at=cached_at,
            error=error,
            warnings=warnings,
            dates=body.dates,
            range_label=label,
            station=body.station,
            station_label=f"this station ({ae})" if station else "all stations",
            text=body.text.strip(),
        )

    source = state.ctx.worklist
    if source is None:
        error = "No worklist server is configured — use “Unscheduled patient”."
        return view(False, [], None, error, [])
    base = WorklistQuery(date_from=start, date_to=end, station_ae_title=station)
    try:
        if body.refresh:
            source.retry_now()
        text = body.text.strip()
        result = source.search(text, base) if text else source.query(base)
    except Exception as exc:  # the worklist backend failing must not break the screen
        log.warning("worklist query failed: %s", type(exc).__name__)
        return view(True, [], None, f"Worklist unavailable ({type(exc).__name__})", [])
    _remember(state, result.entries)
    cached_at = result.cached_at.isoformat(timespec="minutes") if result.cached_at else None
    return view(True, result.entries, cached_at, result.error, list(result.warnings))


@router.get("", response_model=m.WorklistView)
def api_worklist(request: Request) -> m.WorklistView:
    """Today's worklist for this station (live, or the cache with `cached_at`
    when offline)."""
    return _worklist(ui_state(request), m.WorklistSearch())


@router.post("/search", response_model=m.WorklistView)
def api_worklist_search(request: Request, body: m.WorklistSearch) -> m.WorklistView:
    """The list for a date choice and station; with `text`, the RIS is asked
    for it as patient name (wildcard), patient ID and accession number. POST,
    so names typed never end up in a URL or log."""
    return _worklist(ui_state(request), body)
