"""The socket an accepted association reads through: every PDU length and
every DIMSE data set checked as the bytes arrive, an idle time-out on each
read and one absolute deadline for the whole association.

pynetdicom reads whatever length a PDU header announces (up to 4 GiB) into
memory, and blocks on a socket with no time-out, so a peer dripping one byte
at a time holds a thread forever. Wrapping the socket it reads from fixes
both without patching pynetdicom: a breach sends an A-ABORT and fails the
read, which pynetdicom takes as the transport closing (its Evt17)."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

P_DATA_TF = 0x04
KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))


# Set on the thread that reads an association's socket once it breaches.
_breached = threading.local()


class QuietBreaches(logging.Filter):
    """pynetdicom logs ERROR lines for the read a breach fails ("Connection
    closed before the entire PDU was received", then the reason); the
    listener says it once, as a warning naming the peer. Without this a
    hostile peer on the LAN writes ERRORs to the journal at will."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(_breached, "reason", None) is None


def quiet_breaches() -> None:
    """Install `QuietBreaches` on pynetdicom's DUL logger (once)."""
    logger = logging.getLogger("pynetdicom.dul")
    if not any(isinstance(f, QuietBreaches) for f in logger.filters):
        logger.addFilter(QuietBreaches())


def abort_pdu(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT (PS3.8 9.3.8): source 2 = service provider."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, source, reason)


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 permanent, 2 transient."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


class Breach(OSError):
    """The peer broke a limit; the association is aborted."""


@dataclass(frozen=True)
class StreamLimits:
    max_pdu: int  # bytes after the 6-byte header
    max_dataset: int  # one DIMSE data set, summed over its fragments


class PDUWatch:
    """Follows the PDU framing of a byte stream, chunk by chunk, without
    keeping the bytes: PDU headers, and inside P-DATA-TF the PDV item
    headers, whose data-set fragments are summed per message."""

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits
        self._head = bytearray()  # a PDU header being collected
        self._left = 0  # body bytes of the current PDU still to come
        self._pdata = False
        self._item_head = bytearray()
        self._item_left = 0
        self._item_is_dataset = False
        self._item_last = False
        self.dataset_bytes = 0

    def feed(self, data: bytes) -> None:
        """Raises Breach when a limit is broken."""
        view = memoryview(data)
        while view:
            if self._left == 0:
                take = 6 - len(self._head)
                self._head += view[:take]
                view = view[take:]
                if len(self._head) == 6:
                    self._start_pdu()
                continue
            n = min(self._left, len(view))
            if self._pdata:
                self._items(view[:n])
            self._left -= n
            view = view[n:]

    def _start_pdu(self) -> None:
        pdu_type, _, length = struct.unpack(">BBL", self._head)
        self._head.clear()
        if pdu_type not in KNOWN_PDU_TYPES:
            raise Breach(f"unknown PDU type 0x{pdu_type:02X}")
        if length > self.limits.max_pdu:
            raise Breach(
                f"PDU of {length} bytes announced (at most {self.limits.max_pdu} accepted)"
            )
        self._left = length
        self._pdata = pdu_type == P_DATA_TF
        self._item_head.clear()
        self._item_left = 0

    def _items(self, view: memoryview) -> None:
        while view:
            if self._item_left == 0:
                take = 6 - len(self._item_head)
                self._item_head += view[:take]
                view = view[take:]
                if len(self._item_head) == 6:
                    length, _ctx, flags = struct.unpack(">LBB", self._item_head)
                    self._item_head.clear()
                    if length < 2:
                        raise Breach("P-DATA item shorter than its header")
                    self._item_left = length - 2
                    self._item_is_dataset = not flags & 0x01
                    self._item_last = bool(flags & 0x02)
                    if self._item_left == 0:
                        self._end_item()
                continue
            n = min(self._item_left, len(view))
            if self._item_is_dataset:
                self.dataset_bytes += n
                if self.dataset_bytes > self.limits.max_dataset:
                    raise Breach(f"data set larger than {self.limits.max_dataset} bytes refused")
            self._item_left -= n
            view = view[n:]
            if self._item_left == 0:
                self._end_item()

    def _end_item(self) -> None:
        if self._item_is_dataset and self._item_last:
            self.dataset_bytes = 0


class GuardedSocket:
    """What pynetdicom's AssociationSocket wraps for an accepted association.

    `prefix` holds the bytes the gate already read (the A-ASSOCIATE-RQ),
    served first. Each read waits at most `idle_s` and never past the
    association's `deadline` (monotonic); writes are bounded the same way."""

    def __init__(
        self,
        sock: socket.socket,
        prefix: bytes,
        limits: StreamLimits,
        idle_s: float,
        deadline: float,
    ) -> None:
        self.sock = sock
        self._prefix = bytearray(prefix)
        self.watch = PDUWatch(limits)
        self.watch.feed(prefix)
        self.idle_s = idle_s
        self.deadline = deadline
        self.breach: str | None = None

    def ready(self) -> bool:
        """For AssociationSocket.ready: the prefix and TLS's own buffer count."""
        if self._prefix:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True  # let the read find out and report it
        return bool(readable)

    def _timeout(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self._fail("the association's time is up")
        return min(self.idle_s, left)

    def recv(self, size: int) -> bytes:
        if self._prefix:
            data = bytes(self._prefix[:size])
            del self._prefix[:size]
            return data
        self.sock.settimeout(self._timeout())
        data = self.sock.recv(size)
        try:
            self.watch.feed(data)
        except Breach as exc:
            self._fail(str(exc))
        return data

    def send(self, data: bytes) -> int:
        self.sock.settimeout(self._timeout())
        return self.sock.send(data)

    def _fail(self, reason: str) -> None:
        _breached.reason = reason  # this thread's association: pynetdicom's errors are ours
        if self.breach is None:
            self.breach = reason
            with contextlib.suppress(OSError, ValueError):
                self.sock.settimeout(1.0)
                self.sock.sendall(abort_pdu())
        raise Breach(reason)

    def fileno(self) -> int:
        return self.sock.fileno()

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)
