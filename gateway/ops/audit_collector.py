"""The remote audit collector (syslog over TLS, RFC 5425): a durable SQLite
outbox so messages survive the collector being away (and reboots), and one
sender that drains it over a mutually authenticated TLS connection."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from gateway.config import AuditCollectorConfig
from gateway.net.tls import client_context
from gateway.queue.db import open_durable, transaction

log = logging.getLogger(__name__)

AUDIT_DB = "audit.sqlite"


def octet_count(message: bytes) -> bytes:
    """RFC 5425 (RFC 6587 3.4.1) framing: MSG-LEN SP SYSLOG-MSG."""
    return str(len(message)).encode() + b" " + message


class CollectorOutbox:
    """Messages for the remote collector, durable until written to it."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.db = open_durable(root / AUDIT_DB)
        self.lock = threading.Lock()
        with transaction(self.db) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS audit_outbox ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT, message BLOB NOT NULL,"
                " created_at REAL NOT NULL)"
            )

    def add(self, message: bytes) -> None:
        with self.lock, transaction(self.db) as db:
            db.execute(
                "INSERT INTO audit_outbox (message, created_at) VALUES (?, ?)",
                (message, time.time()),
            )

    def oldest(self, limit: int = 100) -> list[tuple[int, bytes]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT id, message FROM audit_outbox ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def remove(self, ids: Iterable[int]) -> None:
        with self.lock, transaction(self.db) as db:
            db.executemany("DELETE FROM audit_outbox WHERE id = ?", [(i,) for i in ids])

    def count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT COUNT(*) FROM audit_outbox").fetchone()[0])

    def close(self) -> None:
        self.db.close()


class CollectorSender:
    """Drains the collector outbox over one TLS connection, reconnecting
    with back-off while the collector is away. The split units share one
    outbox; a lock file makes exactly one of them the sender, so nothing is
    sent twice, and the other takes over if that one stops."""

    POLL = 5.0  # how soon messages queued by the other process go out

    def __init__(
        self, outbox: CollectorOutbox, collector: AuditCollectorConfig, lock_path: Path
    ) -> None:
        self.outbox = outbox
        self.collector = collector
        self.lock_path = lock_path
        self._lock_fd: int | None = None
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="audit-sender", daemon=True)
        self._conn: ssl.SSLSocket | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self.try_lock()  # now, so the first process started is the sender
        self.thread.start()

    def try_lock(self) -> bool:
        if self._lock_fd is None:
            fd = os.open(
                self.lock_path, os.O_RDWR | os.O_CREAT, 0o660
            )  # both service users lock it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._lock_fd = fd
        return True

    @property
    def is_sender(self) -> bool:
        return self._lock_fd is not None

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        self.thread.join(timeout=10)
        self._close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock for the other unit
            self._lock_fd = None

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None

    def _connect(self) -> ssl.SSLSocket:
        if self._conn is None:
            ctx = client_context(self.collector.tls)
            raw = socket.create_connection((self.collector.host, self.collector.port), timeout=10)
            try:
                self._conn = ctx.wrap_socket(raw, server_hostname=self.collector.host)
            except BaseException:
                raw.close()
                raise
        return self._conn

    def drain_once(self) -> int:
        sent = 0
        while True:
            rows = self.outbox.oldest()
            if not rows:
                return sent
            conn = self._connect()
            conn.sendall(b"".join(octet_count(m) for _, m in rows))
            self.outbox.remove(i for i, _ in rows)
            sent += len(rows)

    def _run(self) -> None:
        delay = 1.0
        while not self.stop_event.is_set():
            if not self.try_lock():
                self.wake.wait(self.POLL)
                self.wake.clear()
                continue
            try:
                self.drain_once()
                if self.last_error:
                    log.info("audit collector reachable again")
                self.last_error, delay = None, 1.0
                self.wake.wait(self.POLL)
            except (OSError, ssl.SSLError) as exc:
                self._close()
                reason = f"audit collector {self.collector.host}:{self.collector.port}: {exc}"
                if reason != self.last_error:
                    log.warning("%s; audit messages stay queued", reason)
                self.last_error = reason
                self.wake.wait(delay)
                delay = min(delay * 2, 60.0)
            self.wake.clear()
