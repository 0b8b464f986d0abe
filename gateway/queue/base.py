"""What every part of the outbox shares: its directory, its destinations,
its connection, and reading rows back as values."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from gateway.queue.db import SQLiteStore
from gateway.queue.model import Delivery, DeliveryState, QueuedObject


class OutboxBase(SQLiteStore):
    """The outbox's parts (objects, deliveries, ledger, retention, recovery)
    are mixins over this; `gateway.queue.outbox.Outbox` puts them together."""

    root: Path
    objects_dir: Path
    destinations: list[str]

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

    def reset_stale_claims(self) -> int:
        """Claims not held by a live holder back to pending (deliveries)."""
        raise NotImplementedError

    def check_space(self, needed_bytes: int = 0) -> None:
        """Raises QueueFull when a capture of `needed_bytes` would go below
        the reserve (gateway.queue.retention)."""
        raise NotImplementedError
