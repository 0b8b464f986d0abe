"""The retention policy: when the queue may forget an object, and the disk
reserve below which captures are refused.

A required value, never constructor defaults: an outbox built without the
configuration's list of committing destinations once purged an object its
PACS had not committed. Every process gets it from `outbox_for(config)`.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.queue.base import OutboxBase
from gateway.queue.files import remove_durably
from gateway.queue.model import QueuedObject, QueueFull

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


@dataclass(frozen=True)
class RetentionPolicy:
    """`min_free_mb`: below this, captures are refused (nothing queued is
    evicted for them). Objects may be forgotten once every destination has
    taken responsibility: committed where Storage Commitment is on
    (`commitment_destinations`), else sent at least `retention_days` ago."""

    min_free_mb: int
    retention_days: float
    commitment_destinations: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_config(cls, config: GatewayConfig) -> RetentionPolicy:
        return cls(
            min_free_mb=config.queue.min_free_mb,
            retention_days=config.queue.retention_days,
            commitment_destinations=frozenset(
                d.name for d in config.destinations if d.storage_commitment
            ),
        )

    @property
    def retention_s(self) -> float:
        return self.retention_days * 86400.0


class RetentionMixin(OutboxBase):
    policy: RetentionPolicy

    @property
    def min_free_mb(self) -> int:
        return self.policy.min_free_mb

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
        if d["state"] != "sent" or d["destination"] in self.policy.commitment_destinations:
            return False
        return d["sent_at"] is not None and now - d["sent_at"] >= self.policy.retention_s

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
