"""The durable SQLite connection every queue table shares: WAL,
synchronous=FULL, asserted; the one schema of `outbox.sqlite` applied when it
opens (gateway.queue.schema)."""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from gateway.queue.files import fsync_dir, make_dirs
from gateway.queue.schema import DB_NAME, SchemaError, migrate


class QueueError(Exception):
    """The queue (or a store beside it) cannot do what was asked; the message
    says why, in words for the operator."""


class DurabilityError(QueueError):
    """SQLite would not run in the durable mode the queue's promise needs."""


class DamagedDatabase(QueueError):
    """The database file is corrupt (SQLITE_CORRUPT, SQLITE_NOTADB, or
    `PRAGMA quick_check` found damage)."""


_DAMAGE_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def is_damage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _DAMAGE_CODES


BUSY_TIMEOUT = 30.0
_SQLITE_BUSY = 5


def _into_wal(db: sqlite3.Connection) -> str:
    """`PRAGMA journal_mode=WAL`, waiting for the lock as every other
    statement does.

    Switching a new file into WAL needs its exclusive lock, and SQLite
    answers SQLITE_BUSY at once, without the busy handler, when another
    process opens the same new file at that moment (the capture and forwarder
    services at the first boot: one of them failed its start). So the switch
    is retried here until the connection's own busy time-out."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            return str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is None or code & 0xFF != _SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def open_durable(path: Path) -> sqlite3.Connection:
    """Open `path` in WAL mode with synchronous=FULL, or raise.

    A queue that silently ran without durability would break the promise made
    to the technician ("captured" means it survives a power cut), so a file
    system that refuses WAL (read-only, some network mounts) stops the start.
    """
    new = not path.exists()
    if new:
        # Group-writable (less the umask): on the appliance the capture and
        # forwarder users share the queue through their group alone, and
        # SQLite gives its -wal/-shm files the database file's mode.
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o660))
    try:
        db = sqlite3.connect(
            path, isolation_level=None, timeout=BUSY_TIMEOUT, check_same_thread=False
        )
        db.row_factory = sqlite3.Row
        mode = _into_wal(db)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        sync = db.execute("PRAGMA synchronous").fetchone()[0]
        if new:
            # SQLite syncs the directory for its journals, never for the
            # database file itself: without this, a power cut soon after the
            # first start could lose the whole (new) database's name.
            fsync_dir(path.parent)
    except sqlite3.Error as exc:
        if is_damage(exc):
            raise DamagedDatabase(f"queue database {path} is damaged: {exc}") from None
        raise DurabilityError(f"cannot open queue database {path}: {exc}") from None
    except OSError as exc:
        raise DurabilityError(f"cannot open queue database {path}: {exc.strerror}") from None
    if str(mode).lower() != "wal" or sync != 2:
        db.close()
        raise DurabilityError(
            f"queue database {path} refuses durable mode "
            f"(journal_mode={mode}, synchronous={sync}); is the file system read-only?"
        )
    return db


def _make_root(root: Path) -> None:
    try:
        make_dirs(root)
    except OSError as exc:
        raise QueueError(f"cannot create {root}: {exc.strerror}") from None


def open_store(root: Path, name: str, schema: str) -> sqlite3.Connection:
    """A SQLite file of its own in the state directory (the worklist cache):
    directory created, durable mode asserted, its tables created (statements
    separated by ';')."""
    _make_root(root)
    db = open_durable(root / name)
    with transaction(db):
        for statement in schema.split(";"):
            if statement.strip():
                db.execute(statement)
    return db


def open_queue_db(root: Path, *, check: bool = False) -> sqlite3.Connection:
    """`outbox.sqlite`, durable, at the current schema: the one way every
    owner of a table in it (objects, deliveries, ledger, MPPS messages,
    exams) opens it. With `check`, `PRAGMA quick_check` must say "ok" (the
    service's start: a damaged file found then is rebuilt, see
    gateway.queue.repair). Raises DamagedDatabase for a corrupt file."""
    _make_root(root)
    db = open_durable(root / DB_NAME)
    try:
        with transaction(db):
            migrate(db)
        if check:
            found = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
            if found != ["ok"]:
                raise DamagedDatabase(
                    f"queue database {root / DB_NAME} is damaged: {'; '.join(found)}"
                )
    except SchemaError as exc:
        db.close()
        raise QueueError(str(exc)) from None
    except sqlite3.Error as exc:
        db.close()
        if is_damage(exc):
            raise DamagedDatabase(f"queue database {root / DB_NAME} is damaged: {exc}") from None
        raise QueueError(f"cannot open queue database {root / DB_NAME}: {exc}") from None
    except DamagedDatabase:
        db.close()
        raise
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT: writers queue up on the lock instead of
    failing half-way with SQLITE_BUSY.

    A COMMIT that fails (ENOSPC, EIO: SQLITE_FULL, SQLITE_IOERR) may leave
    the transaction open and the WAL write lock held, and every later BEGIN
    of every process would wait on it: it is rolled back here, so the
    connection is usable again once the disk is, and the error still reaches
    the caller (nothing was acknowledged)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


class SQLiteStore:
    """What every store on a durable connection shares: transactions, and
    closing (also as a context manager). Subclasses set `_db` in __init__."""

    _db: sqlite3.Connection

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- claims -------------------------------------------------------------------
#
# A claim (a row in flight) names its holder by boot, PID and the process's
# start time, and carries a lease. After a power cut an embedded box boots
# the same way every time and PIDs repeat: "host:pid" then named a live,
# unrelated process (often the new forwarder itself), and its batch stayed
# in flight forever. A claim is alive only while all of these hold: the same
# boot (/proc/sys/kernel/random/boot_id), a process with that PID started at
# that time (/proc/PID/stat), and its lease not run out (a holder that cannot
# be checked, or a stuck one, lets go after the lease; a resend is harmless).

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
CLAIM_LEASE_S = 900.0


@functools.cache
def _boot_id(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown-boot"
    except OSError:
        return "unknown-boot"


def boot_id() -> str:
    return _boot_id(BOOT_ID)


def process_start(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (field 22 of
    /proc/PID/stat), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def this_process() -> str:
    """Who claims a row: boot, PID and start time (see above). Worked out
    once per process (a claim of 200 rows read /proc 200 times), again in a
    forked child, whose PID differs."""
    pid = os.getpid()
    if _THIS[0] != pid:
        _THIS[:] = [pid, f"{boot_id()}:{pid}:{process_start(pid) or '?'}"]
    return str(_THIS[1])


_THIS: list[int | str] = [-1, ""]


def claim_lease(now: float | None = None) -> float:
    return (time.time() if now is None else now) + CLAIM_LEASE_S


def claimer_alive(
    claimed_by: str | None, claim_until: float | None = None, now: float | None = None
) -> bool:
    """Is the claim held by a live instance of its holder? Anything else
    (another boot, a dead or recycled PID, an expired or missing lease, a
    claim in an older format) is not, and is reset."""
    parts = (claimed_by or "").split(":")
    if len(parts) != 3 or parts[0] != boot_id() or not parts[1].isdigit():
        return False
    if claim_until is None or claim_until < (time.time() if now is None else now):
        return False
    start = process_start(int(parts[1]))
    return start is not None and start == parts[2]
