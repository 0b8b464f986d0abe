"""The one worklist facade the touchscreen and the command line call.

`query` asks the RIS and caches the answer; when the RIS cannot be reached
(or `offline` is asked for) it answers from the cache, with `cached_at` set
and the reason in `error`, so the technician always sees a list and knows
how old it is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta

from gateway.config import DestinationConfig, GatewayConfig
from gateway.dicom.modules import Order
from gateway.net.association import PeerError
from gateway.net.tls import TLSSetupError
from gateway.net.ul import Timeouts
from gateway.ris.find import FindLimits, WorklistFind
from gateway.ris.model import WorklistEntry, WorklistQuery, WorklistResult, list_order
from gateway.ris.mwl import build_identifier, parse_entry
from gateway.ris.worklist_cache import WorklistCache, mark_performed_entries

log = logging.getLogger(__name__)

_DATE_RE = re.compile(r"^\d{8}$")


class WorklistError(Exception):
    """A worklist request the user can fix (bad date, unknown accession)."""


def parse_date_option(text: str, today: date | None = None) -> tuple[date | None, date | None]:
    """`today`, `YYYYMMDD`, `YYYYMMDD-YYYYMMDD` (either side may be open) or `any`."""
    today = today or date.today()
    value = text.strip().lower()
    if value == "any":
        return None, None
    if value == "today":
        return today, today
    if value == "tomorrow":
        return today + timedelta(days=1), today + timedelta(days=1)

    def one(part: str) -> date | None:
        if not part:
            return None
        if not _DATE_RE.match(part):
            raise WorklistError(f"--date: {part!r} is not YYYYMMDD")
        try:
            return datetime.strptime(part, "%Y%m%d").date()
        except ValueError:
            raise WorklistError(f"--date: {part!r} is not a real date") from None

    if "-" in value:
        start_text, _, end_text = value.partition("-")
        start, end = one(start_text), one(end_text)
        if start is None and end is None:
            raise WorklistError("--date: a range needs at least one end")
        if start and end and end < start:
            raise WorklistError(f"--date: {text!r} ends before it starts")
        return start, end
    day = one(value)
    return day, day


def worklist_peer(config: GatewayConfig) -> DestinationConfig | None:
    wl = config.worklist
    if wl is None:
        return None
    return DestinationConfig(
        name="worklist", ae_title=wl.ae_title, host=wl.host, port=wl.port, tls=wl.tls
    )


class WorklistService:
    def __init__(self, config: GatewayConfig, timeouts: Timeouts | None = None) -> None:
        self.config = config
        wl = config.worklist
        self.cache = WorklistCache(config.queue.path, wl.cache_days if wl else 14)
        self.limits = FindLimits(
            max_matches=wl.max_entries if wl else 5000, seconds=wl.timeout if wl else 30.0
        )
        self.timeouts = timeouts or Timeouts(connect=5.0, acse=15.0, dimse=30.0, network=30.0)

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> WorklistService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, query: WorklistQuery, offline: bool = False) -> WorklistResult:
        peer = worklist_peer(self.config)
        if offline or peer is None:
            reason = None if offline else "no worklist server configured ([worklist])"
            return self._cached(query, reason)
        try:
            entries, warnings, complete = self._live(peer, query)
        except (PeerError, TLSSetupError, OSError) as exc:
            log.warning("worklist query failed, answering from the cache: %s", exc)
            return self._cached(query, f"worklist server unreachable: {exc}")
        except Exception as exc:  # a peer we do not control must not crash the UI
            log.exception("worklist query failed unexpectedly; answering from the cache")
            return self._cached(query, f"worklist query failed ({type(exc).__name__})")
        performed = self.cache.performed_keys()
        if complete:  # only a complete answer may replace what the cache holds
            self.cache.store_soon(query, entries)
        return WorklistResult(
            entries=list(mark_performed_entries(entries, performed)), warnings=tuple(warnings)
        )

    def stream(self, query: WorklistQuery) -> Iterator[WorklistEntry]:
        """Live entries one by one as the server sends them, for a list that
        fills while the technician watches. Closing the generator early (the
        Stop button) sends C-CANCEL. Not cached: an abandoned list is partial.
        Raises PeerError / TLSSetupError when the server cannot be reached."""
        peer = worklist_peer(self.config)
        if peer is None:
            raise WorklistError("no worklist server configured ([worklist])")
        performed = self.cache.performed_keys()
        matches = self._find(peer, query).matches_generator()
        try:
            yield from mark_performed_entries((parse_entry(m) for m in matches), performed)
        finally:
            matches.close()  # explicit: C-CANCEL now, not whenever it is collected

    def _find(self, peer: DestinationConfig, query: WorklistQuery) -> WorklistFind:
        return WorklistFind(
            self.config.station.ae_title,
            peer,
            build_identifier(query),
            timeouts=self.timeouts,
            limits=self.limits,
        )

    def _live(
        self, peer: DestinationConfig, query: WorklistQuery
    ) -> tuple[list[WorklistEntry], list[str], bool]:
        find = self._find(peer, query)
        entries = [parse_entry(ds) for ds in find]
        warnings: list[str] = []
        if find.stopped:
            warnings.append(f"list incomplete: {find.stopped}")
        if find.undecodable:
            warnings.append(f"{find.undecodable} response(s) could not be decoded and were skipped")
        flawed = sum(1 for e in entries if e.warnings)
        if flawed:
            warnings.append(f"{flawed} entr{'y has' if flawed == 1 else 'ies have'} problems")
        entries.sort(key=list_order)
        return entries, warnings, find.stopped is None

    def _cached(self, query: WorklistQuery, error: str | None) -> WorklistResult:
        entries, cached_at = self.cache.lookup(query)
        warnings: tuple[str, ...] = ()
        if cached_at is None:
            warnings = ("no cached worklist yet",)
        return WorklistResult(entries=entries, cached_at=cached_at, error=error, warnings=warnings)

    def lookup_accession(
        self, accession_number: str, offline: bool = False
    ) -> tuple[WorklistEntry, WorklistResult]:
        """The one step with this Accession Number (any date), for
        `capture --accession`. Raises WorklistError when none or several match."""
        result = self.query(WorklistQuery(accession_number=accession_number), offline=offline)
        return self._one(result, f"accession number {accession_number!r}"), result

    def lookup_step(
        self, study_instance_uid: str, step_id: str, offline: bool = False
    ) -> WorklistEntry:
        """By the entry's `key` parts, for the touchscreen's "start this entry"."""
        result = self.query(WorklistQuery(), offline=offline)
        found = [
            e
            for e in result.entries
            if e.order.study_instance_uid == study_instance_uid
            and e.order.scheduled_procedure_step_id == step_id
        ]
        return self._one(replace(result, entries=found), f"step {step_id!r}")

    @staticmethod
    def _one(result: WorklistResult, what: str) -> WorklistEntry:
        if not result.entries:
            where = " (in the cache)" if result.cached_at else ""
            reason = f"; {result.error}" if result.error else ""
            raise WorklistError(f"no worklist entry with {what}{where}{reason}")
        if len(result.entries) > 1:
            steps = {e.key for e in result.entries}
            if len(steps) > 1:
                raise WorklistError(
                    f"{len(result.entries)} worklist entries with {what}; pick one in the UI"
                )
        return result.entries[0]

    def performed(self, order: Order, exam_id: str) -> None:
        """A completed exam marks its worklist step performed."""
        key = f"{order.study_instance_uid}/{order.scheduled_procedure_step_id}"
        self.cache.mark_performed(key, order.accession_number, exam_id)
