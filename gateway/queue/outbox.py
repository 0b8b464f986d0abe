"""The outbox: one SQLite database (WAL, synchronous=FULL) whose rows point at
`.dcm` files written with `write_atomic`.

Order of a capture: the file is made durable first, then its row is committed;
only then is the capture acknowledged. A crash in between leaves a file with no
row, which `recover` removes (it was never acknowledged). A delivery is a row
per (object, destination), so each destination has its own state.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.queue.db import QueueError as QueueError  # re-exported: the queue's error
from gateway.queue.db import SQLiteStore, claimer_alive, open_durable, this_process
from gateway.queue.files import TMP_SUFFIX, fsync_dir, remove_durably, write_atomic

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

SCHEMA_VERSION = 2
OBJECTS_DIR = "objects"
DB_NAME = "outbox.sqlite"
LOCK_NAME = "add.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    exam_id TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    object_id INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
    destination TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('held', 'pending', 'in_flight', 'sent', 'committed', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    claimed_by TEXT,
    updated_at REAL NOT NULL,
    sent_at REAL,
    PRIMARY KEY (object_id, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (destination, state, next_attempt_at);
"""

# Version 2 (Storage Commitment): added to version-1 databases in place.
_V2_COLUMNS = {"commit_tx": "TEXT", "commit_requested_at": "REAL"}


class AlreadyQueued(QueueError):
    """This SOP Instance UID is in the queue already (durably)."""


class QueueFull(QueueError):
    """Below `queue.min_free_mb`: new captures are refused, nothing old is evicted."""


class DeliveryState(StrEnum):
    HELD = "held"  # captured during an exam that is not finished yet
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SENT = "sent"
    COMMITTED = "committed"
    FAILED = "failed"


@dataclass(frozen=True)
class QueuedObject:
    id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    path: Path
    size: int
    created_at: float
    exam_id: str | None = None


@dataclass(frozen=True)
class NewObject:
    """A complete Part 10 file about to be queued (in pieces, written in turn)."""

    data: bytes | Sequence[bytes]
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    exam_id: str | None = None
    hold: bool = False

    @property
    def size(self) -> int:
        if isinstance(self.data, bytes):
            return len(self.data)
        return sum(len(part) for part in self.data)


@dataclass(frozen=True)
class Delivery:
    object: QueuedObject
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    sent_at: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.object.id,
            "sop_instance_uid": self.object.sop_instance_uid,
            "sop_class_uid": self.object.sop_class_uid,
            "transfer_syntax_uid": self.object.transfer_syntax_uid,
            "study_instance_uid": self.object.study_instance_uid,
            "path": str(self.object.path),
            "size": self.object.size,
            "created_at": self.object.created_at,
            "exam_id": self.object.exam_id,
            "destination": self.destination,
            "state": self.state.value,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "sent_at": self.sent_at,
        }


@dataclass(frozen=True)
class RecoveryReport:
    temp_files_removed: int
    orphan_files_removed: int
    missing_files: int
    claims_reset: int


def backoff_delay(attempts: int, base: float = 5.0, cap: float = 300.0) -> float:
    """Exponential back-off with full jitter (so a fleet does not retry in step)."""
    ceiling = min(cap, base * 2 ** max(0, attempts - 1))
    return random.uniform(ceiling / 2, ceiling)


class Outbox(SQLiteStore):
    """The queue's one interface: add, claim, mark, list, recover."""

    def __init__(
        self,
        root: Path,
        destinations: Sequence[str],
        min_free_mb: int = 0,
        *,
        retention_days: float = 7.0,
        commitment_destinations: Sequence[str] = (),
    ) -> None:
        self.root = Path(root)
        self.objects_dir = self.root / OBJECTS_DIR
        self.destinations = list(destinations)
        self.min_free_mb = min_free_mb
        self.retention_s = retention_days * 86400.0
        self.commitment_destinations = set(commitment_destinations)
        try:
            self.objects_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise QueueError(f"cannot create queue directory {self.root}: {exc.strerror}") from None
        self._db = open_durable(self.root / DB_NAME)
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            have = {r[1] for r in db.execute("PRAGMA table_info(deliveries)")}
            for column, kind in _V2_COLUMNS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE deliveries ADD COLUMN {column} {kind}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- adding ---------------------------------------------------------------

    def free_mb(self) -> int:
        return shutil.disk_usage(self.root).free // (1024 * 1024)

    def check_space(self, needed_bytes: int = 0) -> None:
        free = self.free_mb()
        if free - needed_bytes // (1024 * 1024) < self.min_free_mb:
            self.purge(needed_bytes)
            free = self.free_mb()
        if free - needed_bytes // (1024 * 1024) < self.min_free_mb:
            raise QueueFull(
                f"disk nearly full: {free} MB free in {self.root}, queue.min_free_mb is "
                f"{self.min_free_mb}; capture refused, nothing queued was removed"
            )

    def add(
        self,
        data: bytes,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        study_instance_uid: str,
        exam_id: str | None = None,
        hold: bool = False,
    ) -> QueuedObject:
        """Store one Part 10 file durably and queue it for every destination.
        When this returns, the object survives a power cut. With `hold`, it
        waits (state `held`) until `release_exam` — the technician may still
        delete it before finishing the exam."""
        item = NewObject(
            data,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            study_instance_uid=study_instance_uid,
            exam_id=exam_id,
            hold=hold,
        )
        return self.add_many([item])[0]

    def add_many(self, items: Sequence[NewObject]) -> list[QueuedObject]:
        """Several objects, all or none: each file written and fsynced, the
        directory fsynced once for every rename, the rows committed in one
        transaction. When this returns they all survive a power cut; when it
        raises, none is queued (files already written are removed)."""
        if not items:
            return []
        self.check_space(sum(i.size for i in items))
        with self._adding():
            return self._add(items)

    @contextlib.contextmanager
    def _adding(self) -> Iterator[None]:
        """Shared lock held from file write to row commit: while anyone holds
        it, `recover` must not take a row-less file for an orphan."""
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _add(self, items: Sequence[NewObject]) -> list[QueuedObject]:
        uids = [i.sop_instance_uid for i in items]
        if len(set(uids)) != len(uids):
            raise AlreadyQueued("the same SOP Instance UID twice in one batch")
        for uid in uids:
            if (self.objects_dir / f"{uid}.dcm").exists() and self._has_row(uid):
                raise AlreadyQueued(f"SOP Instance UID {uid} is already queued")
        written: list[Path] = []
        try:
            for item in items:
                path = self.objects_dir / f"{item.sop_instance_uid}.dcm"
                write_atomic(path, item.data, sync_dir=False)
                written.append(path)
            fsync_dir(self.objects_dir)
        except OSError as exc:
            self._discard(written)
            raise QueueError(f"cannot write to {self.objects_dir}: {exc.strerror}") from None
        now = time.time()
        queued: list[QueuedObject] = []
        try:
            with self._tx() as db:
                for item in items:
                    name = f"{item.sop_instance_uid}.dcm"
                    cur = db.execute(
                        "INSERT INTO objects (sop_instance_uid, sop_class_uid,"
                        " transfer_syntax_uid, study_instance_uid, path, size, created_at,"
                        " exam_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            item.sop_instance_uid,
                            item.sop_class_uid,
                            item.transfer_syntax_uid,
                            item.study_instance_uid,
                            f"{OBJECTS_DIR}/{name}",
                            item.size,
                            now,
                            item.exam_id,
                        ),
                    )
                    object_id = cur.lastrowid
                    assert object_id is not None
                    db.executemany(
                        "INSERT INTO deliveries (object_id, destination, state, updated_at)"
                        " VALUES (?, ?, ?, ?)",
                        [
                            (object_id, dest, "held" if item.hold else "pending", now)
                            for dest in self.destinations
                        ],
                    )
                    queued.append(
                        QueuedObject(
                            object_id,
                            item.sop_instance_uid,
                            item.sop_class_uid,
                            item.transfer_syntax_uid,
                            item.study_instance_uid,
                            self.objects_dir / name,
                            item.size,
                            now,
                            item.exam_id,
                        )
                    )
        except sqlite3.IntegrityError:
            # Another process queued one of these meanwhile: its file (same
            # name) belongs to that row now and stays; the others go.
            self._discard([p for p in written if not self._has_row(p.stem)])
            raise AlreadyQueued("a SOP Instance UID of this batch is already queued") from None
        except sqlite3.Error as exc:
            self._discard(written)
            raise QueueError(f"cannot record objects in the queue: {exc}") from None
        return queued

    def _has_row(self, sop_instance_uid: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM objects WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return row is not None

    def _discard(self, paths: Sequence[Path]) -> None:
        """Files of a batch that will not be queued (best effort; start-up
        removes any row-less file that survives)."""
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            fsync_dir(self.objects_dir)

    def release_exam(self, exam_id: str) -> int:
        """The exam is finished: its held objects become due for sending."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = 0, updated_at = ?"
                " WHERE state = 'held'"
                " AND object_id IN (SELECT id FROM objects WHERE exam_id = ?)",
                (time.time(), exam_id),
            )
        return cur.rowcount

    def discard_held(self, object_id: int) -> None:
        """Delete an object the technician rejected before finishing; refused
        once any destination may have it."""
        obj = self.get(object_id)
        if obj is None:
            raise QueueError(f"no queued object with ID {object_id}")
        with self._tx() as db:
            states = {
                r[0]
                for r in db.execute(
                    "SELECT state FROM deliveries WHERE object_id = ?", (object_id,)
                )
            }
            if states - {"held"}:
                raise QueueError(f"object {object_id} is already released for sending")
            db.execute("DELETE FROM deliveries WHERE object_id = ?", (object_id,))
            db.execute("DELETE FROM objects WHERE id = ?", (object_id,))
        remove_durably(obj.path)

    def purgeable(self, now: float | None = None) -> list[QueuedObject]:
        """Objects every destination has taken responsibility for, oldest
        first: committed, or (where commitment is off) sent longer ago than
        the retention period. Nothing pending, in flight or failed qualifies."""
        now = time.time() if now is None else now
        out: list[QueuedObject] = []
        for row in self._db.execute("SELECT * FROM objects ORDER BY created_at, id").fetchall():
            deliveries = self._db.execute(
                "SELECT destination, state, sent_at FROM deliveries WHERE object_id = ?",
                (row["id"],),
            ).fetchall()
            if deliveries and all(self._released(d, now) for d in deliveries):
                out.append(self._object(row))
        return out

    def _released(self, d: sqlite3.Row, now: float) -> bool:
        if d["state"] == "committed":
            return True
        if d["state"] != "sent" or d["destination"] in self.commitment_destinations:
            return False
        return d["sent_at"] is not None and now - d["sent_at"] >= self.retention_s

    def purge(self, needed_bytes: int = 0) -> int:
        """Free space, oldest first, only as much as needed to get back above
        `min_free_mb` (plus `needed_bytes`); unsent objects are never touched."""
        purged = 0
        for obj in self.purgeable():
            if self.free_mb() - needed_bytes // (1024 * 1024) >= self.min_free_mb:
                break
            with self._tx() as db:
                db.execute("DELETE FROM deliveries WHERE object_id = ?", (obj.id,))
                db.execute("DELETE FROM objects WHERE id = ?", (obj.id,))
            remove_durably(obj.path)
            purged += 1
        return purged

    # -- Storage Commitment -----------------------------------------------------

    def commitment_due(
        self, destination: str, ask_again_after: float, now: float | None = None
    ) -> dict[str, list[tuple[int, str, str]]]:
        """Per finished study (nothing of it held, pending or in flight for
        `destination`): the sent objects not yet asked for, or asked for so
        long ago that the answer is presumed lost. Values: (id, class, instance)."""
        now = time.time() if now is None else now
        rows = self._db.execute(
            "SELECT o.id, o.sop_class_uid, o.sop_instance_uid, o.study_instance_uid"
            " FROM objects o JOIN deliveries d ON d.object_id = o.id"
            " WHERE d.destination = ?1 AND d.state = 'sent'"
            " AND (d.commit_tx IS NULL OR d.commit_requested_at < ?2)"
            " AND o.study_instance_uid NOT IN ("
            "   SELECT o2.study_instance_uid FROM objects o2 JOIN deliveries d2"
            "   ON d2.object_id = o2.id WHERE d2.destination = ?1"
            "   AND d2.state IN ('held', 'pending', 'in_flight'))"
            " ORDER BY o.id",
            (destination, now - ask_again_after),
        ).fetchall()
        out: dict[str, list[tuple[int, str, str]]] = {}
        for r in rows:
            out.setdefault(r[3], []).append((r[0], r[1], r[2]))
        return out

    def mark_commit_requested(
        self, destination: str, transaction_uid: str, object_ids: Sequence[int]
    ) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "UPDATE deliveries SET commit_tx = ?, commit_requested_at = ?, updated_at = ?"
                " WHERE object_id = ? AND destination = ? AND state = 'sent'",
                [(transaction_uid, now, now, i, destination) for i in object_ids],
            )

    def forget_commit_request(self, transaction_uid: str) -> None:
        """The request never reached the PACS: ask again at the next round."""
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET commit_tx = NULL, commit_requested_at = NULL"
                " WHERE commit_tx = ? AND state = 'sent'",
                (transaction_uid,),
            )

    def apply_commitment(
        self, transaction_uid: str, committed: Sequence[str], failed: Sequence[tuple[str, str]]
    ) -> tuple[int, int]:
        """The PACS's answer: committed objects may be purged later; failed
        ones go back to pending to be sent again. Returns (committed, requeued)."""
        now = time.time()
        with self._tx() as db:
            ok = db.executemany(
                "UPDATE deliveries SET state = 'committed', updated_at = ?"
                " WHERE commit_tx = ? AND state = 'sent' AND object_id ="
                " (SELECT id FROM objects WHERE sop_instance_uid = ?)",
                [(now, transaction_uid, uid) for uid in committed],
            ).rowcount
            bad = db.executemany(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = 0, commit_tx = NULL,"
                " commit_requested_at = NULL, last_error = ?, updated_at = ?"
                " WHERE commit_tx = ? AND state = 'sent' AND object_id ="
                " (SELECT id FROM objects WHERE sop_instance_uid = ?)",
                [
                    (f"Storage Commitment failed: {reason}", now, transaction_uid, uid)
                    for uid, reason in failed
                ],
            ).rowcount
        return ok, bad

    # -- forwarding -----------------------------------------------------------

    def claim(self, destination: str, limit: int = 100, now: float | None = None) -> list[Delivery]:
        """Take due pending deliveries for one destination, oldest first; one
        that just failed goes behind the rest, so it cannot block the line."""
        now = time.time() if now is None else now
        with self._tx() as db:
            rows = db.execute(
                "SELECT object_id FROM deliveries WHERE destination = ? AND state = 'pending'"
                " AND next_attempt_at <= ? ORDER BY next_attempt_at, object_id LIMIT ?",
                (destination, now, limit),
            ).fetchall()
            ids = [r[0] for r in rows]
            db.executemany(
                "UPDATE deliveries SET state = 'in_flight', claimed_by = ?, updated_at = ?"
                " WHERE object_id = ? AND destination = ?",
                [(this_process(), now, i, destination) for i in ids],
            )
        return [d for i in ids if (d := self.delivery(i, destination)) is not None]

    def mark_sent(self, object_id: int, destination: str) -> None:
        self.mark_sent_many([object_id], destination)

    def mark_sent_many(self, object_ids: Sequence[int], destination: str) -> None:
        """One durable commit for many successes: an fsync per object would
        cost more than sending a 1 MB object. Delaying the mark is safe: after
        a crash the object is sent again, and a resend is harmless."""
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "UPDATE deliveries SET state = 'sent', sent_at = ?, updated_at = ?,"
                " attempts = attempts + 1, last_error = NULL, claimed_by = NULL"
                " WHERE object_id = ? AND destination = ? AND state = 'in_flight'",
                [(now, now, i, destination) for i in object_ids],
            )

    def mark_retry(
        self,
        object_id: int,
        destination: str,
        error: str,
        delay: float | None = None,
        *,
        base: float = 5.0,
        cap: float = 300.0,
    ) -> float:
        """Back to pending with a back-off; returns when it is due again."""
        with self._tx() as db:
            row = db.execute(
                "SELECT attempts FROM deliveries WHERE object_id = ? AND destination = ?",
                (object_id, destination),
            ).fetchone()
            attempts = (row[0] if row else 0) + 1
            due = time.time() + (backoff_delay(attempts, base, cap) if delay is None else delay)
            db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = ?, next_attempt_at = ?,"
                " last_error = ?, claimed_by = NULL, updated_at = ?"
                " WHERE object_id = ? AND destination = ?",
                (attempts, due, error, time.time(), object_id, destination),
            )
        return due

    def release(self, object_id: int, destination: str) -> None:
        """Return an unattempted claim (the forwarder stopped before sending it)."""
        self.release_many([object_id], destination)

    def release_many(self, object_ids: Sequence[int], destination: str) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE deliveries SET state = 'pending', claimed_by = NULL"
                " WHERE object_id = ? AND destination = ? AND state = 'in_flight'",
                [(i, destination) for i in object_ids],
            )

    def mark_failed(self, object_id: int, destination: str, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = 'failed', attempts = attempts + 1,"
                " last_error = ?, claimed_by = NULL, updated_at = ?"
                " WHERE object_id = ? AND destination = ?",
                (error, time.time(), object_id, destination),
            )

    def retry(self, object_id: int | None = None) -> int:
        """Operator's retry: failed (or waiting) deliveries become due now."""
        where = "state IN ('failed', 'pending')"
        args: tuple[Any, ...] = ()
        if object_id is not None:
            where += " AND object_id = ?"
            args = (object_id,)
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE deliveries SET state = 'pending', next_attempt_at = 0,"
                f" updated_at = ? WHERE {where}",
                (time.time(), *args),
            )
        return cur.rowcount

    def next_due(self, destination: str) -> float | None:
        row = self._db.execute(
            "SELECT MIN(next_attempt_at) FROM deliveries"
            " WHERE destination = ? AND state = 'pending'",
            (destination,),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    # -- reading --------------------------------------------------------------

    def _object(self, row: sqlite3.Row) -> QueuedObject:
        return QueuedObject(
            id=row["id"],
            sop_instance_uid=row["sop_instance_uid"],
            sop_class_uid=row["sop_class_uid"],
            transfer_syntax_uid=row["transfer_syntax_uid"],
            study_instance_uid=row["study_instance_uid"],
            path=self.root / row["path"],
            size=row["size"],
            created_at=row["created_at"],
            exam_id=row["exam_id"],
        )

    def _delivery(self, row: sqlite3.Row) -> Delivery:
        return Delivery(
            object=self._object(row),
            destination=row["destination"],
            state=DeliveryState(row["state"]),
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            last_error=row["last_error"],
            sent_at=row["sent_at"],
        )

    _JOIN = "SELECT o.*, d.* FROM objects o JOIN deliveries d ON d.object_id = o.id"

    def delivery(self, object_id: int, destination: str) -> Delivery | None:
        row = self._db.execute(
            f"{self._JOIN} WHERE o.id = ? AND d.destination = ?", (object_id, destination)
        ).fetchone()
        return self._delivery(row) if row else None

    def deliveries(
        self, object_id: int | None = None, state: DeliveryState | None = None
    ) -> list[Delivery]:
        clauses: list[str] = []
        args: list[Any] = []
        if object_id is not None:
            clauses.append("o.id = ?")
            args.append(object_id)
        if state is not None:
            clauses.append("d.state = ?")
            args.append(state.value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(f"{self._JOIN}{where} ORDER BY o.id, d.destination", args)
        return [self._delivery(r) for r in rows]

    def objects(self) -> list[QueuedObject]:
        return [self._object(r) for r in self._db.execute("SELECT * FROM objects ORDER BY id")]

    def get(self, object_id: int) -> QueuedObject | None:
        row = self._db.execute("SELECT * FROM objects WHERE id = ?", (object_id,)).fetchone()
        return self._object(row) if row else None

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per destination: counts by state, oldest pending age, last success."""
        now = time.time()
        out: dict[str, dict[str, Any]] = {}
        for dest in sorted({*self.destinations, *self._known_destinations()}):
            counts = {s.value: 0 for s in DeliveryState}
            for state, count in self._db.execute(
                "SELECT state, COUNT(*) FROM deliveries WHERE destination = ? GROUP BY state",
                (dest,),
            ):
                counts[state] = count
            oldest, last = self._db.execute(
                "SELECT (SELECT MIN(o.created_at) FROM deliveries d JOIN objects o"
                " ON o.id = d.object_id WHERE d.destination = ?1"
                " AND d.state IN ('pending', 'in_flight')),"
                " (SELECT MAX(sent_at) FROM deliveries WHERE destination = ?1)",
                (dest,),
            ).fetchone()
            out[dest] = {
                **counts,
                "oldest_pending_age_s": None if oldest is None else round(now - oldest, 3),
                "last_success": last,
            }
        return out

    def _known_destinations(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT destination FROM deliveries")]

    # -- start-up -------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Make disk and database agree after a crash: drop temp files and
        unacknowledged files, reset claims of dead processes, and isolate rows
        whose file vanished (reported as failed, never sent as garbage)."""
        temp_removed = orphan_removed = missing = 0
        lock = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                grace = 0.0  # nobody is between file and row right now
            except BlockingIOError:
                grace = 60.0  # an `add` is running: spare recent files
            known = {r[0] for r in self._db.execute("SELECT path FROM objects")}
            for entry in os.scandir(self.objects_dir):
                rel = f"{OBJECTS_DIR}/{entry.name}"
                try:
                    age = time.time() - entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                if entry.name.endswith(TMP_SUFFIX) and age >= grace:
                    os.unlink(entry.path)
                    temp_removed += 1
                elif rel not in known and entry.name.endswith(".dcm") and age >= grace:
                    # A file whose row never committed was never acknowledged.
                    os.unlink(entry.path)
                    orphan_removed += 1
            if temp_removed or orphan_removed:
                fsync_dir(self.objects_dir)
        finally:
            os.close(lock)
        with self._tx() as db:
            stale = [
                (r["object_id"], r["destination"])
                for r in db.execute(
                    "SELECT object_id, destination, claimed_by FROM deliveries"
                    " WHERE state = 'in_flight'"
                )
                if not claimer_alive(r["claimed_by"])
            ]
            db.executemany(
                "UPDATE deliveries SET state = 'pending', claimed_by = NULL"
                " WHERE object_id = ? AND destination = ?",
                stale,
            )
            for row in db.execute("SELECT id, path FROM objects").fetchall():
                if not (self.root / row["path"]).is_file():
                    cur = db.execute(
                        "UPDATE deliveries SET state = 'failed', last_error = ?"
                        " WHERE object_id = ? AND state IN ('pending', 'in_flight')",
                        (f"queue file {row['path']} is missing", row["id"]),
                    )
                    missing += cur.rowcount > 0
        return RecoveryReport(temp_removed, orphan_removed, missing, len(stale))


def outbox_for(config: GatewayConfig) -> Outbox:
    """The outbox with the configuration's purge policy: which destinations
    must commit before anything may be forgotten, and the retention period.
    Every process that adds to the queue must use this one policy."""
    return Outbox(
        config.queue.path,
        [d.name for d in config.destinations],
        config.queue.min_free_mb,
        retention_days=config.queue.retention_days,
        commitment_destinations=[d.name for d in config.destinations if d.storage_commitment],
    )
