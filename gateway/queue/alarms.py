"""Alarms: what an operator must look at, kept in the queue database so every
process sees them and they survive a restart (a rebuilt database, a unit that
gave up). Shown by the metrics (`dicom_gateway_alarms`) and `queue stats`."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from gateway.queue.db import open_queue_db, transaction
from gateway.queue.schema import DB_NAME

ALARM_REBUILT = "queue-rebuilt"
ALARM_UNIT_FAILED = "unit-failed"


def alarms(db: sqlite3.Connection) -> list[tuple[str, str, float]]:
    """Alarms not cleared: (kind, message, raised_at), oldest first."""
    return [
        (r[0], r[1], r[2])
        for r in db.execute(
            "SELECT kind, message, raised_at FROM alarms WHERE cleared_at IS NULL ORDER BY id"
        )
    ]


def raise_alarm(root: Path, kind: str, message: str) -> None:
    db = open_queue_db(root)
    try:
        with transaction(db):
            db.execute(
                "INSERT INTO alarms (kind, message, raised_at) VALUES (?, ?, ?)",
                (kind, message, time.time()),
            )
    finally:
        db.close()


def open_alarms(root: Path) -> dict[str, int]:
    """Counts of alarms not cleared, by kind, read only (for the metrics)."""
    path = root / DB_NAME
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = db.execute(
            "SELECT kind, COUNT(*) FROM alarms WHERE cleared_at IS NULL GROUP BY kind"
        ).fetchall()
    except sqlite3.Error:  # an older file without the table: no alarms
        return {}
    finally:
        db.close()
    return {str(k): int(n) for k, n in rows}
