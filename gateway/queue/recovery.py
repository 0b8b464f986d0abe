"""Start-up recovery: make disk and database agree after a crash."""

from __future__ import annotations

import fcntl
import os
import time

from gateway.queue.base import OutboxBase
from gateway.queue.db import claimer_alive
from gateway.queue.files import TMP_SUFFIX, fsync_dir
from gateway.queue.model import LOCK_NAME, OBJECTS_DIR, RecoveryReport


class RecoveryMixin(OutboxBase):
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
