"""The offline worklist: every successful query's entries, kept durably with
the time they were fetched, so a field unit that loses its link still picks
patients from the last list it saw (marked "cached at …").

Its own SQLite file next to the queue (`worklist.sqlite`): the cache may be
dropped or rebuilt at any time without touching anything queued.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from gateway.queue.db import SQLiteStore, open_store, transaction
from gateway.ris.jsonform import entry_from_dict, entry_to_dict
from gateway.ris.model import WorklistEntry, WorklistQuery, list_order

log = logging.getLogger(__name__)

DB_NAME = "worklist.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS worklist_entries (
    key TEXT PRIMARY KEY,
    scheduled_date TEXT,
    modality TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    accession_number TEXT NOT NULL,
    data TEXT NOT NULL,
    fetched_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS worklist_by_date ON worklist_entries (scheduled_date);
CREATE INDEX IF NOT EXISTS worklist_by_accession ON worklist_entries (accession_number);
CREATE TABLE IF NOT EXISTS worklist_fetches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fetched_at REAL NOT NULL,
    entries INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS worklist_performed (
    key TEXT PRIMARY KEY,
    accession_number TEXT NOT NULL,
    exam_id TEXT NOT NULL,
    performed_at REAL NOT NULL
);
"""


def _wildcard(pattern: str, value: str) -> bool:
    """DICOM wildcard matching (* and ?), case-insensitive as RIS users expect."""
    return fnmatch.fnmatchcase(value.upper(), pattern.upper().replace("[", "[[]"))


def matches(entry: WorklistEntry, query: WorklistQuery) -> bool:
    """The same filter the server applies, for answering from the cache."""
    if query.date_from or query.date_to:
        if entry.scheduled_start is None:
            return False
        day = entry.scheduled_start.date()
        if query.date_from and day < query.date_from:
            return False
        if query.date_to and day > query.date_to:
            return False
    if query.modality and entry.modality != query.modality:
        return False
    if query.station_ae_title and query.station_ae_title not in entry.station_ae_title.split("\\"):
        return False
    if query.patient_id and not _wildcard(query.patient_id, entry.patient.id):
        return False
    if query.accession_number and not _wildcard(
        query.accession_number, entry.order.accession_number
    ):
        return False
    if query.patient_name:
        names = [entry.patient.name, *entry.patient.name.split("=")]
        if not any(_wildcard(query.patient_name, n) for n in names):
            return False
    return True


class WorklistCache(SQLiteStore):
    def __init__(self, root: Path, keep_days: int = 14) -> None:
        self.path = root / DB_NAME
        self.keep_seconds = keep_days * 86400
        self._decoded: dict[str, tuple[float, WorklistEntry]] = {}
        self._db = open_store(root, DB_NAME, _SCHEMA)
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[float] | None = None

    def store_soon(self, query: WorklistQuery, entries: Iterable[WorklistEntry]) -> None:
        """`store` on a writer thread: the technician's list is not held up
        by its cache write (5-25 ms for 1,000 entries). Every other use of the
        cache waits for it first, so nobody ever reads around it."""
        self.settle()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="worklist-cache")
        self._pending = self._writer.submit(self._store, query, list(entries), time.time())

    def settle(self) -> None:
        """Wait for the write `store_soon` started (its failure is logged)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except Exception:  # the list was shown; the cache keeps the one before
                log.exception("worklist cache not updated")

    def close(self) -> None:
        self.settle()
        if self._writer is not None:
            self._writer.shutdown()
        super().close()

    def store(
        self, query: WorklistQuery, entries: Iterable[WorklistEntry], now: float | None = None
    ) -> float:
        """Record a complete answer to `query`: its entries are upserted, and
        cached entries the same query no longer returns (cancelled orders)
        are dropped. Returns the fetch time."""
        self.settle()
        return self._store(query, entries, now)

    def _store(
        self, query: WorklistQuery, entries: Iterable[WorklistEntry], now: float | None = None
    ) -> float:
        now = time.time() if now is None else now
        fresh = {e.key: e for e in entries}
        with transaction(self._db) as db:
            known = dict(db.execute("SELECT key, fetched_at FROM worklist_entries").fetchall())
            stale = [
                key
                for key, fetched_at in known.items()
                if key not in fresh and matches(self._load(key, fetched_at), query)
            ]
            db.executemany("DELETE FROM worklist_entries WHERE key = ?", [(k,) for k in stale])
            for key in stale:
                self._decoded.pop(key, None)
            # A refreshed list is mostly what was cached: an entry equal to
            # its row only has its fetch time moved on (no re-encoding).
            same = [
                key
                for key, entry in fresh.items()
                if key in known and self._decoded.get(key) == (known[key], entry)
            ]
            db.executemany(
                "UPDATE worklist_entries SET fetched_at = ? WHERE key = ?", [(now, k) for k in same]
            )
            unchanged = set(same)
            db.executemany(
                "INSERT INTO worklist_entries (key, scheduled_date, modality, patient_id,"
                " accession_number, data, fetched_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET scheduled_date = excluded.scheduled_date,"
                " modality = excluded.modality, patient_id = excluded.patient_id,"
                " accession_number = excluded.accession_number, data = excluded.data,"
                " fetched_at = excluded.fetched_at",
                [
                    (
                        key,
                        e.scheduled_start.date().isoformat() if e.scheduled_start else None,
                        e.modality,
                        e.patient.id,
                        e.order.accession_number,
                        json.dumps(entry_to_dict(e), ensure_ascii=False),
                        now,
                    )
                    for key, e in fresh.items()
                    if key not in unchanged
                ],
            )
            db.execute(
                "INSERT INTO worklist_fetches (fetched_at, entries) VALUES (?, ?)",
                (now, len(fresh)),
            )
            db.execute(
                "DELETE FROM worklist_entries WHERE fetched_at < ?", (now - self.keep_seconds,)
            )
            db.execute(
                "DELETE FROM worklist_fetches WHERE fetched_at < ?", (now - self.keep_seconds,)
            )
        for key, entry in fresh.items():  # what the rows now hold, decoded
            self._decoded[key] = (now, entry)
        return now

    def lookup(self, query: WorklistQuery) -> tuple[list[WorklistEntry], datetime | None]:
        """Cached entries matching `query` (performed ones marked) and when
        the oldest of them was fetched; None when nothing was ever cached."""
        self.settle()
        sql = "SELECT key, data, fetched_at FROM worklist_entries WHERE fetched_at >= ?"
        args: list[object] = [time.time() - self.keep_seconds]
        # Narrow in SQL where it is exact; the wildcard rest is done in Python.
        if query.date_from:
            sql += " AND scheduled_date >= ?"
            args.append(query.date_from.isoformat())
        if query.date_to:
            sql += " AND scheduled_date <= ?"
            args.append(query.date_to.isoformat())
        if query.modality:
            sql += " AND modality = ?"
            args.append(query.modality)
        if query.accession_number and not any(c in query.accession_number for c in "*?"):
            sql += " AND accession_number = ?"
            args.append(query.accession_number)
        rows = self._db.execute(sql, args).fetchall()
        performed = self.performed_keys()
        found: list[tuple[WorklistEntry, float]] = []
        for row in rows:
            entry = self._entry(row["key"], row["fetched_at"], row["data"])
            if matches(entry, query):
                if entry.key in performed:
                    entry = _mark_performed(entry)
                found.append((entry, row["fetched_at"]))
        found.sort(key=lambda pair: list_order(pair[0]))
        if found:
            oldest = min(f for _, f in found)
        else:
            last = self._db.execute("SELECT MAX(fetched_at) FROM worklist_fetches").fetchone()[0]
            if last is None:
                return [], None
            oldest = last
        return [e for e, _ in found], datetime.fromtimestamp(oldest).astimezone()

    def _load(self, key: str, fetched_at: float) -> WorklistEntry:
        known = self._decoded.get(key)
        if known is not None and known[0] == fetched_at:
            return known[1]
        row = self._db.execute("SELECT data FROM worklist_entries WHERE key = ?", (key,)).fetchone()
        return self._entry(key, fetched_at, row["data"])

    def _entry(self, key: str, fetched_at: float, data: str) -> WorklistEntry:
        """Rows are immutable per (key, fetch time): a long-lived service (the
        touchscreen) decodes each once, so searching the offline list stays fast."""
        known = self._decoded.get(key)
        if known is not None and known[0] == fetched_at:
            return known[1]
        entry = entry_from_dict(json.loads(data))
        self._decoded[key] = (fetched_at, entry)
        return entry

    def mark_performed(self, entry_key: str, accession_number: str, exam_id: str) -> None:
        self.settle()
        with transaction(self._db) as db:
            db.execute(
                "INSERT OR REPLACE INTO worklist_performed"
                " (key, accession_number, exam_id, performed_at) VALUES (?, ?, ?, ?)",
                (entry_key, accession_number, exam_id, time.time()),
            )

    def performed_keys(self) -> set[str]:
        self.settle()
        return {r[0] for r in self._db.execute("SELECT key FROM worklist_performed")}


def _mark_performed(entry: WorklistEntry) -> WorklistEntry:
    return replace(entry, performed=True)


def mark_performed_entries(
    entries: Iterable[WorklistEntry], performed: set[str]
) -> Iterator[WorklistEntry]:
    return (_mark_performed(e) if e.key in performed else e for e in entries)
