"""The durable SQLite connection every queue table shares: WAL,
synchronous=FULL, asserted; the one schema of `outbox.sqlite` applied when it
opens (gateway.queue.schema)."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from gateway.queue.schema import DB_NAME, SchemaError, migrate


class QueueError(Exception):
    """The queue (or a store beside it) cannot do what was asked; the message
    says why, in words for the operator."""


class DurabilityError(QueueError):
    """SQLite would not run in the durable mode the queue's promise needs."""


def open_durable(path: Path) -> sqlite3.Connection:
    """Open `path` in WAL mode with synchronous=FULL, or raise.

    A queue that silently ran without durability would break the promise made
    to the technician ("captured" means it survives a power cut), so a file
    system that refuses WAL (read-only, some network mounts) stops the start.
    """
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        db.row_factory = sqlite3.Row
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        sync = db.execute("PRAGMA synchronous").fetchone()[0]
    except sqlite3.Error as exc:
        raise DurabilityError(f"cannot open queue database {path}: {exc}") from None
    if str(mode).lower() != "wal" or sync != 2:
        db.close()
        raise DurabilityError(
            f"queue database {path} refuses durable mode "
            f"(journal_mode={mode}, synchronous={sync}); is the file system read-only?"
        )
    return db


def _make_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o750)
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


def open_queue_db(root: Path) -> sqlite3.Connection:
    """`outbox.sqlite`, durable, at the current schema: the one way every
    owner of a table in it (objects, deliveries, ledger, MPPS messages,
    exams) opens it."""
    _make_root(root)
    db = open_durable(root / DB_NAME)
    try:
        with transaction(db):
            migrate(db)
    except SchemaError as exc:
        db.close()
        raise QueueError(str(exc)) from None
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT: writers queue up on the lock instead of
    failing half-way with SQLITE_BUSY."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


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


def this_process() -> str:
    """Who claims a row: host and PID, so a later start can tell a claim of
    a dead process (reset it) from one of a live neighbour (leave it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claimer_alive(claimed_by: str | None) -> bool:
    host, _, pid = (claimed_by or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
