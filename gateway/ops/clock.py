"""Clock guard. A Raspberry Pi has no real-time clock: after a power cut in a
field unit with no network it boots with whatever time the last shutdown
saved (or 1970), and every Study Date and audit record made then is wrong.

Captures must still work (the patient is on the table), so nothing is
refused; instead `clock_status()` tells the UI to warn, the queue to flag the
objects and the logs to say so.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# systemd-timesyncd touches this file once it has synchronised the clock.
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
# The software cannot have been started before it was built; builds stamp
# this in gateway/_build.py (image recipe) and the release date is the floor.
RELEASE_FLOOR = datetime(2026, 1, 1, tzinfo=UTC)
FLAG_ENV = "DICOM_GATEWAY_TIMESYNC_FLAG"


@dataclass(frozen=True)
class ClockStatus:
    synchronized: bool
    source: str  # timedatectl | timesync-flag | none
    before_build: bool
    now: float
    build_floor: float
    reason: str | None  # None when the clock can be trusted

    @property
    def trusted(self) -> bool:
        return self.reason is None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "trusted": self.trusted}


def build_floor() -> datetime:
    """The earliest time this software can be running: its build time if the
    image recipe stamped one, else the release floor."""
    try:
        from gateway import _build  # type: ignore[attr-defined]

        stamp = datetime.fromtimestamp(float(_build.BUILD_EPOCH), tz=UTC)
        return max(stamp, RELEASE_FLOOR)
    except (ImportError, AttributeError, ValueError):
        return RELEASE_FLOOR


def _timedatectl() -> bool | None:
    exe = shutil.which("timedatectl")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "show", "--property=NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    if out.returncode != 0 or value not in ("yes", "no"):
        return None  # no systemd bus here (a container, a chroot)
    return value == "yes"


def clock_status(now: float | None = None, use_timedatectl: bool = True) -> ClockStatus:
    """Is the wall clock trustworthy? Asks timedatectl (timesyncd/chrony via
    timedated), else the timesyncd flag file; a clock before the build is
    wrong whatever the daemons say."""
    now = time.time() if now is None else now
    flag = Path(os.environ.get(FLAG_ENV, str(TIMESYNC_FLAG)))
    synced = _timedatectl() if use_timedatectl and FLAG_ENV not in os.environ else None
    source = "timedatectl"
    if synced is None:
        synced, source = (True, "timesync-flag") if flag.exists() else (False, "none")
    floor = build_floor().timestamp()
    before = now < floor
    reason = None
    if before:
        when = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
        reason = f"clock reads {when}, earlier than this software's build"
    elif not synced:
        reason = "clock not synchronised (no time server reached since boot)"
    return ClockStatus(synced, source, before, now, floor, reason)


class ClockGuard:
    """Remembers the last verdict so a change is logged once, not every tick."""

    def __init__(self) -> None:
        self.last: ClockStatus | None = None

    def check(self) -> ClockStatus:
        status = clock_status()
        previous = self.last
        if previous is None or previous.trusted != status.trusted:
            if status.trusted:
                log.info("clock synchronised (%s)", status.source)
            else:
                log.warning("%s: captures continue, flagged as unverified time", status.reason)
        self.last = status
        return status


# -- flagging captures made while the clock was not trusted ------------------

RECHECK_SECONDS = 60.0
_cache: tuple[float, ClockStatus] | None = None
_cache_lock = threading.Lock()


def current_status() -> ClockStatus:
    """`clock_status()` at most once a minute: cheap enough for every capture
    and for the UI's status bar to call freely."""
    global _cache
    with _cache_lock:
        now = time.monotonic()
        if _cache is None or now - _cache[0] > RECHECK_SECONDS:
            _cache = (now, clock_status())
        return _cache[1]


_flag_dbs: dict[Path, sqlite3.Connection] = {}


def _flag_db(queue_root: Path) -> sqlite3.Connection:
    """One connection per queue, kept open: flagging runs on every capture
    while the clock is untrusted. synchronous=NORMAL (no fsync per flag):
    a power cut may lose a flag, never an object, and keeps capture fast."""
    from gateway.queue.db import open_queue_db

    db = _flag_dbs.get(queue_root)
    if db is None:
        db = open_queue_db(queue_root)  # the schema applied, as by every owner
        db.execute("PRAGMA synchronous=NORMAL")
        _flag_dbs[queue_root] = db
    return db


_warned_reason: str | None = None


def flag_captures(queue_root: Path, object_ids: Sequence[int]) -> ClockStatus:
    """Record in the queue database that these objects were captured while
    the clock could not be trusted (their dates may be wrong), and log it."""
    status = current_status()
    if status.trusted or not object_ids:
        return status
    now = time.time()
    with _cache_lock:
        from gateway.queue.db import transaction

        db = _flag_db(queue_root)
        with transaction(db):
            db.executemany(
                "INSERT OR REPLACE INTO clock_unverified (object_id, reason, flagged_at) "
                "VALUES (?, ?, ?)",
                [(object_id, status.reason, now) for object_id in object_ids],
            )
    global _warned_reason
    if status.reason != _warned_reason:  # once per reason, not once per image
        _warned_reason = status.reason
        log.warning(
            "queue object %d captured with an unverified clock: %s "
            "(every object captured so is flagged; said again only if the reason changes)",
            object_ids[0],
            status.reason,
        )
    else:
        log.debug("queue object(s) %s flagged: unverified clock", object_ids)
    return status


def flagged_objects(queue_root: Path) -> dict[int, str]:
    """Object id → why its time is unverified (for the UI, `queue`, metrics)."""
    from gateway.queue.schema import DB_NAME

    path = queue_root / DB_NAME
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = db.execute(
            "SELECT object_id, reason FROM clock_unverified "
            "WHERE object_id IN (SELECT id FROM objects)"
        ).fetchall()
    except sqlite3.OperationalError:  # no table: nothing was ever flagged
        return {}
    finally:
        db.close()
    return {int(r[0]): str(r[1]) for r in rows}
