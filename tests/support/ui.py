"""What the UI tests share: a worklist backend with fixed entries, and
checks on a page (targets too small for a gloved finger, waiting for a state)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from gateway.dicom.modules import Order, Patient
from gateway.ris.model import WorklistEntry, WorklistQuery, WorklistResult


@dataclass
class ListWorklist:
    """A worklist backend holding fixed entries (the real one lands at merge);
    `offline` answers like a cache would."""

    entries: list[WorklistEntry]
    offline: bool = False
    queries: list[WorklistQuery] = field(default_factory=list)

    def query(self, query: WorklistQuery, offline: bool = False) -> WorklistResult:
        self.queries.append(query)
        if self.offline:
            return WorklistResult(
                self.entries, cached_at=datetime(2026, 1, 2, 7, 30), error="RIS unreachable"
            )
        return WorklistResult(self.entries)


def entry(name: str, pid: str, acc: str) -> WorklistEntry:
    return WorklistEntry(
        patient=Patient(name=name, id=pid, birth_date=date(1970, 5, 6), sex="F"),
        order=Order(
            study_instance_uid=f"1.2.826.0.1.3680043.10.1.{pid}",
            accession_number=acc,
            requested_procedure_description="Abdomen",
            scheduled_procedure_step_id="SPS" + pid,
        ),
        scheduled_start=datetime(2026, 1, 2, 9, 15),
        modality="US",
    )


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout} s")


def small_targets(page: Any) -> list[str]:
    """Visible buttons, links and fields under 48 px high, by accessible name."""
    found: list[str] = page.evaluate(
        """() => Array.from(document.querySelectorAll('button, a.btn, input, select'))
            .filter(e => e.offsetParent !== null && e.type !== 'checkbox')
            .filter(e => { const r = e.getBoundingClientRect();
                           return r.width > 0 && r.height < 48; })
            .map(e => e.getAttribute('aria-label') || e.textContent.trim())"""
    )
    return found
