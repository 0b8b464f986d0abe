"""The one query behind every queue figure: `queue stats`, the status bar,
the service's sd_notify status and the Prometheus metrics all read this, so
they can never disagree about what is waiting."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.queue.model import DeliveryState
from gateway.queue.schema import DB_NAME

_PENDING = (DeliveryState.PENDING.value, DeliveryState.IN_FLIGHT.value)
_WAITING = (DeliveryState.HELD.value, *_PENDING)


@dataclass
class DestinationStats:
    counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in DeliveryState})
    oldest_pending: float | None = None  # created_at of the oldest pending or in flight
    oldest_waiting: float | None = None  # the same, held objects included
    last_success: float | None = None  # time of the last confirmed send

    @property
    def pending(self) -> int:
        """Waiting to be sent now (pending or in flight)."""
        return sum(self.counts[s] for s in _PENDING)

    def as_json(self, now: float) -> dict[str, Any]:
        age = None if self.oldest_pending is None else round(now - self.oldest_pending, 3)
        return {**self.counts, "oldest_pending_age_s": age, "last_success": self.last_success}


def _older(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def queue_stats(db: sqlite3.Connection, destinations: Iterable[str]) -> dict[str, DestinationStats]:
    """Per destination (the configured ones, and any the rows still name):
    counts by state, the oldest waiting objects, the last success. One pass
    over the deliveries, no write lock."""
    out = {name: DestinationStats() for name in destinations}
    rows = db.execute(
        "SELECT d.destination, d.state, COUNT(*), MIN(o.created_at), MAX(d.sent_at)"
        " FROM deliveries d JOIN objects o ON o.id = d.object_id"
        " GROUP BY d.destination, d.state"
    )
    for dest, state, count, oldest, last in rows:
        stats = out.setdefault(str(dest), DestinationStats())
        stats.counts[str(state)] = int(count)
        if state in _PENDING and oldest is not None:
            stats.oldest_pending = _older(stats.oldest_pending, float(oldest))
        if state in _WAITING and oldest is not None:
            stats.oldest_waiting = _older(stats.oldest_waiting, float(oldest))
        if last is not None and (stats.last_success is None or last > stats.last_success):
            stats.last_success = float(last)
    return dict(sorted(out.items()))


def read_queue_stats(root: Path, destinations: Iterable[str]) -> dict[str, DestinationStats]:
    """The same figures from another process (metrics): a read-only
    connection of its own, never a write lock."""
    path = root / DB_NAME
    if not path.exists():
        return {name: DestinationStats() for name in destinations}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return queue_stats(db, destinations)
    finally:
        db.close()


def stats_json(stats: dict[str, DestinationStats], now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {name: s.as_json(now) for name, s in stats.items()}
