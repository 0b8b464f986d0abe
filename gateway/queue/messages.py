"""The durable MPPS message queue: rows in the outbox's SQLite file (same
durability promise), one per N-CREATE / N-SET, sent strictly in order per exam
with the images' retry policy. An exam done fully offline reports, in order,
once the link is back.

A message is stored as the DICOM JSON of its attribute list, so the character
set of the moment it was made travels with it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `queue stats` counts messages without loading pydicom
    from pydicom.dataset import Dataset


from gateway.queue.db import (
    SQLiteStore,
    claim_lease,
    claimer_alive,
    open_queue_db,
    this_process,
)
from gateway.queue.deliveries import backoff_delay


class MessageKind(StrEnum):
    CREATE = "create"
    SET = "set"


@dataclass(frozen=True)
class MppsMessage:
    id: int
    exam_id: str
    mpps_uid: str
    kind: MessageKind
    pps_status: str
    dataset_json: str
    state: str
    attempts: int
    last_error: str | None

    def dataset(self) -> Dataset:
        from pydicom.dataset import Dataset

        return Dataset.from_json(self.dataset_json)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "exam_id": self.exam_id,
            "mpps_uid": self.mpps_uid,
            "kind": self.kind.value,
            "status": self.pps_status,
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


class MppsQueue(SQLiteStore):
    def __init__(self, root: Path) -> None:
        self._db = open_queue_db(root)

    def add(
        self, exam_id: str, mpps_uid: str, kind: MessageKind, pps_status: str, ds: Dataset
    ) -> int:
        """Durable when this returns (committed with synchronous=FULL)."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO mpps_messages (exam_id, mpps_uid, kind, pps_status, dataset,"
                " state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                (exam_id, mpps_uid, kind.value, pps_status, ds.to_json(), now, now),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _message(self, row: sqlite3.Row) -> MppsMessage:
        return MppsMessage(
            id=row["id"],
            exam_id=row["exam_id"],
            mpps_uid=row["mpps_uid"],
            kind=MessageKind(row["kind"]),
            pps_status=row["pps_status"],
            dataset_json=row["dataset"],
            state=row["state"],
            attempts=row["attempts"],
            last_error=row["last_error"],
        )

    def claim(self, limit: int = 50, now: float | None = None) -> list[MppsMessage]:
        """Due messages that are first in line for their exam: a later
        message never overtakes an earlier one that is not sent yet (an N-SET
        before its N-CREATE would be refused, and a failed N-CREATE blocks)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM mpps_messages m WHERE m.state = 'pending'"
                " AND m.next_attempt_at <= ? AND NOT EXISTS (SELECT 1 FROM mpps_messages p"
                " WHERE p.exam_id = m.exam_id AND p.id < m.id AND p.state != 'sent')"
                " ORDER BY m.id LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE mpps_messages SET state = 'in_flight', claimed_by = ?, updated_at = ?,"
                " claim_until = ? WHERE id = ?",
                [(this_process(), now, claim_lease(now), r["id"]) for r in rows],
            )
        return [self._message(r) for r in rows]

    def mark_sent(self, message_id: int) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE mpps_messages SET state = 'sent', sent_at = ?, updated_at = ?,"
                " attempts = attempts + 1, last_error = NULL, claimed_by = NULL WHERE id = ?",
                (now, now, message_id),
            )

    def mark_retry(self, message_id: int, error: str, delay: float | None = None) -> float:
        with self._tx() as db:
            row = db.execute(
                "SELECT attempts FROM mpps_messages WHERE id = ?", (message_id,)
            ).fetchone()
            attempts = (row[0] if row else 0) + 1
            due = time.time() + (backoff_delay(attempts) if delay is None else delay)
            db.execute(
                "UPDATE mpps_messages SET state = 'pending', attempts = ?, next_attempt_at = ?,"
                " last_error = ?, claimed_by = NULL, updated_at = ? WHERE id = ?",
                (attempts, due, error, time.time(), message_id),
            )
        return due

    def mark_failed(self, message_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE mpps_messages SET state = 'failed', attempts = attempts + 1,"
                " last_error = ?, claimed_by = NULL, updated_at = ? WHERE id = ?",
                (error, time.time(), message_id),
            )

    def release(self, message_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE mpps_messages SET state = 'pending', claimed_by = NULL"
                " WHERE id = ? AND state = 'in_flight'",
                (message_id,),
            )

    def retry(self) -> int:
        """Operator's retry: failed and waiting messages become due now."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE mpps_messages SET state = 'pending', next_attempt_at = 0, updated_at = ?"
                " WHERE state IN ('failed', 'pending')",
                (time.time(),),
            )
        return cur.rowcount

    def recover(self) -> int:
        """Claims not held by a live instance of their holder (another boot,
        a dead or recycled PID, an expired lease) go back to pending."""
        with self._tx() as db:
            stale = [
                r["id"]
                for r in db.execute(
                    "SELECT id, claimed_by, claim_until FROM mpps_messages"
                    " WHERE state = 'in_flight'"
                )
                if not claimer_alive(r["claimed_by"], r["claim_until"])
            ]
            db.executemany(
                "UPDATE mpps_messages SET state = 'pending', claimed_by = NULL WHERE id = ?",
                [(i,) for i in stale],
            )
        return len(stale)

    def messages(self, exam_id: str | None = None) -> list[MppsMessage]:
        sql, args = "SELECT * FROM mpps_messages", tuple[str, ...]()
        if exam_id is not None:
            sql, args = sql + " WHERE exam_id = ?", (exam_id,)
        return [self._message(r) for r in self._db.execute(sql + " ORDER BY id", args)]

    def iter_unsent(self) -> Iterator[MppsMessage]:
        for r in self._db.execute("SELECT * FROM mpps_messages WHERE state != 'sent' ORDER BY id"):
            yield self._message(r)

    def counts(self) -> dict[str, int]:
        out = {"pending": 0, "in_flight": 0, "sent": 0, "failed": 0}
        for state, n in self._db.execute(
            "SELECT state, COUNT(*) FROM mpps_messages GROUP BY state"
        ):
            out[state] = n
        return out

    def next_due(self) -> float | None:
        row = self._db.execute(
            "SELECT MIN(next_attempt_at) FROM mpps_messages WHERE state = 'pending'"
        ).fetchone()
        return None if row[0] is None else float(row[0])
