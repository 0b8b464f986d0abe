"""The one worklist facade the touchscreen and the command line call.

`query` asks the RIS and caches the answer; when the RIS cannot be reached
(or `offline` is asked for) it answers from the cache, with `cached_at` set
and the reason in `error`, so the technician always sees a list and knows
how old it is. `search` is the touchscreen's search box: the typed text as
the matching keys (patient name with a wildcard, patient ID, accession), all
asked on one association.

A long-lived service (the touchscreen's, `background=True`) remembers that
the link is down: after a failure it answers from the cache at once, without
waiting out a connect time-out per keystroke or tap, and retries on its own
thread with a short back-off until the RIS answers again.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
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


# Back-off of the link after a failure: 5 s, doubling, at most a minute (a
# RIS restart is noticed within a minute; a dead one costs one try a minute).
RETRY_FIRST, RETRY_CAP = 5.0, 60.0


@dataclass
class LinkState:
    """What the service knows about its RIS link, for the status bar."""

    state: str = "unknown"  # "up", "down" or "unknown" (never asked yet)
    since: float | None = None  # when it went down (or up)
    last_error: str | None = None
    next_try: float | None = None  # while down: the background retry's time
    failures: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "since": self.since,
            "last_error": self.last_error,
            "next_try": self.next_try,
        }


def _name_patterns(words: list[str]) -> list[str]:
    """Family name, then given names, each a prefix: "haydn fr" asks for
    HAYDN*^FR*, which DICOM's wildcard matches against HAYDN^FRANZ^JOSEPH.
    Matching case is the server's choice (DCMTK's is exact), so the name is
    asked as typed, in capitals (as most RIS lists hold names) and with
    capital initials ("Müller")."""
    parts = [w if w.endswith("*") else w + "*" for w in words[:5]]
    typed = "^".join(parts)
    initials = "^".join(p[:1].upper() + p[1:].lower() for p in parts)
    return list(dict.fromkeys((typed, typed.upper(), initials)))


def search_queries(text: str, base: WorklistQuery) -> list[WorklistQuery]:
    """The RIS queries one search box makes, within `base`'s dates and station:
    the text as a patient name (wildcard), as a patient ID and as an accession
    number (both exact, as typed). Keys a value cannot be (an ID with a space,
    an accession over 16 characters) are not asked."""
    text = " ".join(text.replace(",", " ").replace("^", " ").split())
    if not text:
        return [base]
    queries = []
    if any(c.isalpha() for c in text):
        for pattern in _name_patterns(text.split(" ")):
            queries.append(replace(base, patient_name=pattern))
    if " " not in text and len(text) <= 64:
        queries.append(replace(base, patient_id=text))
    if " " not in text and len(text) <= 16:
        queries.append(replace(base, accession_number=text))
    return queries


class WorklistService:
    def __init__(
        self, config: GatewayConfig, timeouts: Timeouts | None = None, *, background: bool = False
    ) -> None:
        self.config = config
        wl = config.worklist
        self.cache = WorklistCache(config.queue.path, wl.cache_days if wl else 14)
        self.limits = FindLimits(
            max_matches=wl.max_entries if wl else 5000, seconds=wl.timeout if wl else 30.0
        )
        self.timeouts = timeouts or Timeouts(connect=5.0, acse=15.0, dimse=30.0, network=30.0)
        self.background = background
        self.link = LinkState()
        self._link_lock = threading.Lock()
        self._retry_queries: list[WorklistQuery] = []
        self._retry_thread: threading.Thread | None = None
        self._closing = threading.Event()
        # The cache is one SQLite connection: the retry thread and callers take turns.
        self._cache_lock = threading.RLock()

    def close(self) -> None:
        self._closing.set()
        thread = self._retry_thread
        if thread is not None:
            thread.join(timeout=10)
        self.cache.close()

    def __enter__(self) -> WorklistService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, query: WorklistQuery, offline: bool = False) -> WorklistResult:
        return self.search_all([query], offline)

    def search(self, text: str, base: WorklistQuery, offline: bool = False) -> WorklistResult:
        """The search box: `text` as name, ID and accession keys within
        `base` (dates, station), one association; the cache when offline."""
        return self.search_all(search_queries(text, base), offline)

    def search_all(self, queries: list[WorklistQuery], offline: bool = False) -> WorklistResult:
        """Entries matching any of `queries` (asked on one association),
        each once, in list order."""
        peer = worklist_peer(self.config)
        if offline or peer is None:
            reason = None if offline else "no worklist server configured ([worklist])"
            return self._cached(queries, reason)
        if self.background:
            with self._link_lock:
                down = self.link.state == "down"
                if down:
                    self._retry_queries = queries
            if down:  # known down: the cache at once; the retry thread asks the RIS
                self._ensure_retry()
                return self._cached(queries, self._down_reason())
        try:
            results = self._live(peer, queries)
        except (PeerError, TLSSetupError, OSError) as exc:
            log.warning("worklist query failed, answering from the cache: %s", exc)
            self._failed(f"worklist server unreachable: {exc}", queries)
            return self._cached(queries, self._down_reason())
        except Exception as exc:  # a peer we do not control must not crash the UI
            log.exception("worklist query failed unexpectedly; answering from the cache")
            self._failed(f"worklist query failed ({type(exc).__name__})", queries)
            return self._cached(queries, self._down_reason())
        self._succeeded()
        return self._store(queries, results)

    def _store(self, queries: list[WorklistQuery], results: _LiveAnswer) -> WorklistResult:
        with self._cache_lock:
            performed = self.cache.performed_keys()
            for query, entries, complete in zip(
                queries, results.per_query, results.complete, strict=True
            ):
                if complete:  # only a complete answer may replace what the cache holds
                    self.cache.store_soon(query, entries)
        if len(results.per_query) == 1:  # the plain list: sorted already
            ordered = results.per_query[0]
        else:
            merged = {e.key: e for entries in results.per_query for e in entries}
            ordered = sorted(merged.values(), key=list_order)
        return WorklistResult(
            entries=list(mark_performed_entries(ordered, performed)),
            warnings=tuple(results.warnings),
        )

    # -- the link ------------------------------------------------------------

    def link_status(self) -> LinkState:
        with self._link_lock:
            return replace(self.link)

    def _down_reason(self) -> str:
        with self._link_lock:
            error = self.link.last_error or "worklist server unreachable"
            since = self.link.since
        if since is None:
            return error
        return f"{error} (since {datetime.fromtimestamp(since):%H:%M})"

    def _failed(self, error: str, queries: list[WorklistQuery]) -> None:
        with self._link_lock:
            link = self.link
            if link.state != "down":
                link.state, link.since, link.failures = "down", time.time(), 0
            link.failures += 1
            link.last_error = error
            delay = min(RETRY_CAP, RETRY_FIRST * 2 ** (link.failures - 1))
            link.next_try = time.time() + delay
            self._retry_queries = queries
        if self.background:
            self._ensure_retry()

    def _succeeded(self) -> None:
        with self._link_lock:
            if self.link.state != "up":
                self.link = LinkState(state="up", since=time.time())

    def retry_now(self) -> None:
        """The technician asked for a fresh list: the retry does not wait out
        its back-off (the answer still comes from the cache at once)."""
        with self._link_lock:
            if self.link.state == "down":
                self.link.next_try = time.time()
        self._ensure_retry()

    def _ensure_retry(self) -> None:
        with self._link_lock:
            if self.link.state != "down" or self._closing.is_set():
                return
            if self._retry_thread is not None and self._retry_thread.is_alive():
                return
            self._retry_thread = threading.Thread(
                target=self._retry_loop, name="worklist-retry", daemon=True
            )
            self._retry_thread.start()

    def _retry_loop(self) -> None:
        """Until the RIS answers: wait for the back-off, ask the last query."""
        while not self._closing.is_set():
            with self._link_lock:
                if self.link.state != "down":
                    return
                wait = (self.link.next_try or 0.0) - time.time()
                queries = list(self._retry_queries)
            if wait > 0:
                self._closing.wait(min(wait, 1.0))  # re-read: retry_now may move it
                continue
            peer = worklist_peer(self.config)
            if peer is None or not queries:
                return
            try:
                results = self._live(peer, queries)
            except Exception as exc:  # anything: still down, try again later
                log.info("worklist server still unreachable: %s", exc)
                self._failed(f"worklist server unreachable: {exc}", queries)
                continue
            log.info("worklist server reachable again")
            self._succeeded()
            try:
                self._store(queries, results)
            except Exception:  # the list is fetched again on the next look
                log.exception("worklist cache not updated after the link came back")
            return

    def stream(self, query: WorklistQuery) -> Iterator[WorklistEntry]:
        """Live entries one by one as the server sends them, for a list that
        fills while the technician watches. Closing the generator early (the
        Stop button) sends C-CANCEL. Not cached: an abandoned list is partial.
        Raises PeerError / TLSSetupError when the server cannot be reached."""
        peer = worklist_peer(self.config)
        if peer is None:
            raise WorklistError("no worklist server configured ([worklist])")
        with self._cache_lock:
            performed = self.cache.performed_keys()
        matches = self._find(peer, [query]).matches_generator()
        try:
            yield from mark_performed_entries((parse_entry(m) for m in matches), performed)
        finally:
            matches.close()  # explicit: C-CANCEL now, not whenever it is collected

    def _find(self, peer: DestinationConfig, queries: list[WorklistQuery]) -> WorklistFind:
        return WorklistFind(
            self.config.station.ae_title,
            peer,
            [build_identifier(q) for q in queries],
            timeouts=self.timeouts,
            limits=self.limits,
        )

    def _live(self, peer: DestinationConfig, queries: list[WorklistQuery]) -> _LiveAnswer:
        find = self._find(peer, queries)
        answer = _LiveAnswer([[] for _ in queries], [True] * len(queries), [])
        for raw in find:
            answer.per_query[find.current].append(parse_entry(raw))
        if find.stopped:
            answer.warnings.append(f"list incomplete: {find.stopped}")
            # The query cut short, and those never asked, are not complete answers.
            for i in range(find.current, len(queries)):
                answer.complete[i] = False
        if find.undecodable:
            answer.warnings.append(
                f"{find.undecodable} response(s) could not be decoded and were skipped"
            )
        keys = {e.key: e for entries in answer.per_query for e in entries}
        flawed = sum(1 for e in keys.values() if e.warnings)
        if flawed:
            answer.warnings.append(
                f"{flawed} entr{'y has' if flawed == 1 else 'ies have'} problems"
            )
        for entries in answer.per_query:
            entries.sort(key=list_order)
        return answer

    def _cached(self, queries: list[WorklistQuery], error: str | None) -> WorklistResult:
        merged: dict[str, WorklistEntry] = {}
        oldest: datetime | None = None
        with self._cache_lock:
            for query in queries:
                entries, cached_at = self.cache.lookup(query)
                merged.update((e.key, e) for e in entries)
                if cached_at is not None and (oldest is None or cached_at < oldest):
                    oldest = cached_at
        warnings: tuple[str, ...] = ()
        if oldest is None:
            warnings = ("no cached worklist yet",)
        found = list(merged.values())  # one query: in list order already
        return WorklistResult(
            entries=found if len(queries) == 1 else sorted(found, key=list_order),
            cached_at=oldest,
            error=error,
            warnings=warnings,
        )

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
        with self._cache_lock:
            self.cache.mark_performed(key, order.accession_number, exam_id)


@dataclass
class _LiveAnswer:
    per_query: list[list[WorklistEntry]]
    complete: list[bool]
    warnings: list[str]
