"""Hostile and broken peers written by hand at the PDU level (PS3.8 9.3):
they send what no toolkit would — PDUs announcing gigabytes, requests one
byte at a time, connections that say nothing — so the listeners can be
shown to hold."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, parse_config

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


ALLOWED = [{"ae_title": "MODALITY", "address": "127.0.0.1"}]


def inbound_config(tmp_path: Path, port: int, **limits: Any) -> GatewayConfig:
    """The inbound port on loopback for MODALITY at 127.0.0.1, with `limits`."""
    return parse_config(
        {
            "station": {"ae_title": "EDGE1"},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}],
            "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0},
            "inbound": {
                "enabled": True,
                "listen": f"127.0.0.1:{port}",
                "allowed": ALLOWED,
                "handshake_timeout_s": 2,
                "limits": limits,
            },
        }
    )


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def associate_rq(
    calling: str,
    called: str,
    contexts: list[tuple[str, list[str]]] | None = None,
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU; `contexts` are (abstract syntax, transfer syntaxes)."""
    body = struct.pack(">HH", 1, 0)
    body += called.ljust(16).encode("ascii") + calling.ljust(16).encode("ascii") + bytes(32)
    body += _item(0x10, _uid(APPLICATION_CONTEXT))
    for index, (abstract, syntaxes) in enumerate(contexts or [(VERIFICATION, [IMPLICIT_LE])]):
        sub = _item(0x30, _uid(abstract)) + b"".join(_item(0x40, _uid(t)) for t in syntaxes)
        body += _item(0x20, struct.pack(">BBBB", 2 * index + 1, 0, 0, 0) + sub)
    body += _item(0x50, _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.3.4"))
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def pdu_header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def read_pdu(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes] | None:
    """(type, body) of the next PDU, or None when the peer closed."""
    sock.settimeout(timeout)
    head = _read(sock, 6)
    if head is None:
        return None
    pdu_type, _, length = struct.unpack(">BBL", head)
    body = _read(sock, length)
    return None if body is None else (pdu_type, body)


def _read(sock: socket.socket, n: int) -> bytes | None:
    out = bytearray()
    while len(out) < n:
        try:
            chunk = sock.recv(n - len(out))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        out += chunk
    return bytes(out)


@dataclass
class Crowd:
    """`drippers` connections sending an A-ASSOCIATE-RQ one byte every
    `every` seconds, and `idle` connections that say nothing, each opened
    again whenever the listener closes it, until `stop`. Counts what the
    listener did to them."""

    port: int
    drippers: int = 30
    idle: int = 300
    every: float = 1.5
    calling: str = "INTRUDER"
    called: str = "EDGE1"
    closed_by_listener: int = 0
    connects: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Crowd:
        for _ in range(self.drippers):
            self._spawn(self._drip)
        self._spawn(self._hold)
        return self

    def _spawn(self, target: object) -> None:
        thread = threading.Thread(target=target, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            return None
        with self._lock:
            self.connects += 1
        return sock

    def _closed(self) -> None:
        with self._lock:
            self.closed_by_listener += 1

    def _drip(self) -> None:
        rq = associate_rq(self.calling, self.called)
        while not self._stop.is_set():
            sock = self._connect()
            if sock is None:
                self._stop.wait(0.5)
                continue
            with sock:
                for byte in rq:
                    try:
                        sock.sendall(bytes([byte]))
                    except OSError:
                        self._closed()
                        break
                    if self._stop.wait(self.every):
                        return

    def _hold(self) -> None:
        held: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                alive = []
                for sock in held:
                    try:
                        sock.setblocking(False)
                        if sock.recv(1) == b"":
                            self._closed()
                            sock.close()
                            continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        self._closed()
                        sock.close()
                        continue
                    alive.append(sock)
                held = alive
                while len(held) < self.idle and not self._stop.is_set():
                    sock = self._connect()
                    if sock is None:
                        break
                    held.append(sock)
                self._stop.wait(0.2)
        finally:
            for sock in held:
                with contextlib.suppress(OSError):
                    sock.close()

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + 10
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))


def refused_with(refusals: list[tuple[str, str, str]], words: str, timeout: float = 10.0) -> bool:
    """A refusal `(AE title, address, reason)` naming `words` was reported
    within `timeout` (they come from the listener's threads as they end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(words in r[2] for r in refusals):
            return True
        time.sleep(0.05)
    return False
