"""Start-up recovery: make disk and database agree after a crash.

It never guesses. A `.dcm` without a row is removed only while recovery
holds the add lock exclusively: every `add` holds it (shared) from writing
its file to committing its row, so with the exclusive lock in hand nobody
is between the two, and a row-less file was never acknowledged. When
another process is adding (a long cine on a slow SD card), recovery waits a
little for the lock and otherwise leaves every file alone until the next
start; no file age can tell a dead writer's leftovers from a live one's
work in progress.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time

from gateway.queue.base import OutboxBase
from gateway.queue.files import TMP_SUFFIX, fsync_dir
from gateway.queue.model import LOCK_NAME, OBJECTS_DIR, RecoveryReport

log = logging.getLogger(__name__)

# How long recovery waits for the exclusive add lock before it skips the
# file clean-up (nothing is lost by skipping: it runs at the next start).
LOCK_WAIT_S = 5.0


class RecoveryMixin(OutboxBase):
    def recover(self, lock_wait: float = LOCK_WAIT_S) -> RecoveryReport:
        """Make disk and database agree after a crash: drop temp files and
        unacknowledged files (only under the exclusive add lock), reset
        claims not held by a live instance of their holder, and isolate rows
        whose file vanished (reported as failed, never sent as garbage)."""
        temp_removed = orphan_removed = missing = 0
        skipped = False
        lock = os.open(
            self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o660
        )  # both service users lock it
        try:
            if _lock_exclusive(lock, lock_wait):
                known = {r[0] for r in self._db.execute("SELECT path FROM objects")}
                for entry in os.scandir(self.objects_dir):
                    rel = f"{OBJECTS_DIR}/{entry.name}"
                    if entry.name.endswith(TMP_SUFFIX):
                        os.unlink(entry.path)
                        temp_removed += 1
                    elif rel not in known and entry.name.endswith(".dcm"):
                        # A file whose row never committed was never acknowledged.
                        os.unlink(entry.path)
                        orphan_removed += 1
                if temp_removed or orphan_removed:
                    fsync_dir(self.objects_dir)
            else:
                skipped = True
                log.info(
                    "queue recovery: another process is adding objects; "
                    "unreferenced files are left for the next start"
                )
        finally:
            os.close(lock)
        claims = self.reset_stale_claims()
        with self._tx() as db:
            for row in db.execute("SELECT id, path FROM objects").fetchall():
                if not (self.root / row["path"]).is_file():
                    cur = db.execute(
                        "UPDATE deliveries SET state = 'failed', last_error = ?"
                        " WHERE object_id = ? AND state IN ('pending', 'in_flight', 'held')",
                        (f"queue file {row['path']} is missing", row["id"]),
                    )
                    missing += cur.rowcount > 0
        return RecoveryReport(temp_removed, orphan_removed, missing, claims, skipped)


def _lock_exclusive(fd: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
