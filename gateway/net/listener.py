"""Our listening DICOM ports (Storage Commitment answers, inbound C-STORE):
a gate in front of pynetdicom, so that nobody gets a thread, a buffer or an
association slot before we know who they are.

One thread (the gate) accepts, runs every TLS handshake and reads every
A-ASSOCIATE-RQ, non-blocking, for all connections at once: each must deliver
its complete request within `request_timeout_s` of connecting, in a PDU of
at most 64 KiB, or it is closed; at most `max_pending` wait, the oldest
evicted first (a modality's request arrives within milliseconds of its
connect, a flood's never). The request is decoded (pynetdicom's decoder)
and the calling AE title, its address and its certificate checked by
`admit`, before any data is read: refused peers get an A-ASSOCIATE-RJ.
Admitted ones take one of `max_associations` slots (none free: a transient
A-ASSOCIATE-RJ) and are handed to pynetdicom on a `GuardedSocket` (PDU and
data-set caps, idle time-out, absolute deadline). Threads: the gate, plus
three per admitted association; descriptors: the pending ones plus the
admitted ones.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import re
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import ListenerLimitsConfig, PeerAllowed
from gateway.net.guarded import (
    Breach,
    GuardedSocket,
    StreamLimits,
    abort_pdu,
    quiet_breaches,
    reject_pdu,
)
from gateway.net.tls import describe_tls_failure

log = logging.getLogger(__name__)

MAX_REQUEST_PDU = 64 * 1024  # an A-ASSOCIATE-RQ with 128 contexts is ~10 KiB
# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason
REJECT_CALLING_AE = (1, 1, 3)  # permanent, service user, calling AE not recognised
REJECT_CALLED_AE = (1, 1, 7)  # permanent, service user, called AE not recognised
REJECT_BUSY = (2, 3, 2)  # transient, presentation provider, local limit exceeded


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Limits:
    max_associations: int = 8
    max_pending: int = 64
    request_timeout_s: float = 10.0  # TLS handshake and A-ASSOCIATE-RQ, in all
    idle_timeout_s: float = 30.0  # any one read or write
    deadline_s: float = 3600.0  # one association, in all
    max_pdu: int = 4 << 20
    max_dataset: int = 1 << 30


def limits_from(config: ListenerLimitsConfig, request_timeout_s: float) -> Limits:
    return Limits(
        max_associations=config.max_associations,
        max_pending=config.max_pending,
        request_timeout_s=request_timeout_s,
        idle_timeout_s=config.idle_timeout_s,
        deadline_s=config.association_deadline_s,
        max_pdu=int(config.max_pdu_mb * (1 << 20)),
        max_dataset=int(config.max_object_mb * (1 << 20)),
    )


@dataclass(frozen=True)
class Request:
    """Who asks, as known when the A-ASSOCIATE-RQ has arrived."""

    address: str
    port: int
    calling_ae: str
    called_ae: str
    certificate_cn: str | None  # the TLS client certificate's subject CN


def address_matches(pattern: str, address: str) -> bool:
    """An entry's address is an IP address or a network (CIDR)."""
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        return pattern == address


def check_peer(peers: Sequence[PeerAllowed], request: Request) -> str | None:
    """The allow-list: AE title, address and (when bound) certificate CN
    together; returns why the request is refused, or None."""
    titled = [p for p in peers if p.ae_title == request.calling_ae]
    if not titled:
        return f"calling AE title {request.calling_ae!r} is not on the allow-list"
    placed = [p for p in titled if address_matches(p.address, request.address)]
    if not placed:
        return f"{request.calling_ae} is not allowed from {request.address}"
    for peer in placed:
        if peer.certificate_cn is None or peer.certificate_cn == request.certificate_cn:
            return None
    return (
        f"{request.calling_ae} presented certificate CN {request.certificate_cn!r},"
        " not the one bound to it"
    )


Admit = Callable[[Request], str | None]  # a reason to refuse, or None
Refused = Callable[[str, str, str], None]  # (AE title or "", address, reason)


@dataclass
class _Pending:
    sock: socket.socket
    address: tuple[str, int]
    since: float
    tls: bool
    handshaken: bool
    data: bytearray


def certificate_cn(sock: socket.socket) -> str | None:
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert: Any = sock.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def throttle_key(address: str, reason: str) -> str:
    """Refusals counted together: one address, one kind of reason (its
    words, without the numbers and names that vary), so a port probe
    cannot hide the forged report that follows it."""
    kind = re.sub(r"'[^']*'|\S*\d\S*", "", reason)[:40]
    return f"{address} {kind}"


class Throttle:
    """One line per key and `every` seconds (a flood of refused connections
    must not flood the journal or the audit trail); the rest are counted."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self.last: dict[str, float] = {}
        self.skipped: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: stay quiet; else how many were skipped since the last line."""
        now = time.monotonic()
        if now - self.last.get(key, -1e18) < self.every:
            self.skipped[key] = self.skipped.get(key, 0) + 1
            return None
        if len(self.last) > 4096:
            self.last.clear()
        self.last[key] = now
        return self.skipped.pop(key, 0)


class RequestNotUnderstood(ValueError):
    """Bytes that are no A-ASSOCIATE-RQ we can read."""


def decode_request(pdu: bytes) -> tuple[str, str]:
    """(calling, called) AE titles of a whole A-ASSOCIATE-RQ PDU, decoded by
    pynetdicom (what its acceptor will decode again); anything it raises on
    the peer's bytes becomes RequestNotUnderstood (tests/fuzz)."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    if len(pdu) < 74 or pdu[0] != 0x01:
        raise RequestNotUnderstood("A-ASSOCIATE-RQ not understood (too short)")
    rq = A_ASSOCIATE_RQ()
    try:
        rq.decode(pdu)
        calling, called = str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip()
    except Exception as exc:  # whatever the peer sent, the gate lives on
        raise RequestNotUnderstood(
            f"A-ASSOCIATE-RQ not understood ({type(exc).__name__})"
        ) from None
    return calling, called


class Gate:
    """The accept loop and every pending connection, on one thread."""

    def __init__(
        self,
        server: Any,
        ssl_context: ssl.SSLContext | None,
        limits: Limits,
        admit: Admit,
        refused: Refused | None,
        heartbeat: Callable[[], None] | None,
    ) -> None:
        self.server = server  # pynetdicom's AssociationServer: AE, contexts, handlers
        self.ssl_context = ssl_context
        self.limits = limits
        self.admit = admit
        self.refused = refused
        self.heartbeat = heartbeat
        self.selector = selectors.DefaultSelector()
        self.pending: dict[int, _Pending] = {}
        self.slots = threading.BoundedSemaphore(limits.max_associations)
        self.active: set[threading.Thread] = set()
        self.active_lock = threading.Lock()
        self.stopping = threading.Event()
        self.counter = itertools.count(1)
        self.quiet = Throttle()
        self.thread = threading.Thread(target=self._run, name="listener-gate", daemon=True)
        self.listen_sock: socket.socket = server.socket
        self.listen_sock.setblocking(False)

    # -- the loop --

    def start(self) -> None:
        self.selector.register(self.listen_sock, selectors.EVENT_READ, None)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                if self.heartbeat is not None:
                    self.heartbeat()
                try:
                    self._round()
                except Exception:  # the port must outlive any one connection
                    log.exception("listener gate: unexpected error; serving on")
                    time.sleep(0.1)
        finally:
            for p in list(self.pending.values()):
                self._drop(p)
            self.selector.close()

    def _round(self) -> None:
        events = self.selector.select(timeout=0.5)
        # Those already waiting first: a flood of new connections must not
        # starve a request that has arrived.
        for key, _ in events:
            if key.data is not None and key.fd in self.pending:
                self._step(key.data)
        if any(key.data is None for key, _ in events):
            self._accept()
        self._expire()

    def _accept(self) -> None:
        for _ in range(64):  # a burst, without starving the pending ones
            try:
                sock, address = self.listen_sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: keep serving the others
                log.warning("listener could not accept a connection: %s", exc.strerror)
                return
            if len(self.pending) >= self.limits.max_pending:
                # Full: first hear those whose bytes have arrived (a modality's
                # request is in the kernel's buffer, not yet read by us)...
                for key, _ in self.selector.select(timeout=0):
                    if key.data is not None and key.fd in self.pending:
                        self._step(key.data)
            if len(self.pending) >= self.limits.max_pending:
                # ...then the oldest that has sent nothing goes first: a peer
                # that is sending its request is the one we want to hear.
                oldest = min(self.pending.values(), key=lambda p: (bool(p.data), p.since))
                self._refuse(
                    oldest,
                    "",
                    f"closed: {self.limits.max_pending} connections waiting to ask already",
                )
            sock.setblocking(False)
            tls = self.ssl_context is not None
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                except (OSError, ssl.SSLError):
                    sock.close()
                    continue
            p = _Pending(sock, address, time.monotonic(), tls, not tls, bytearray())
            self.pending[sock.fileno()] = p
            self.selector.register(sock, selectors.EVENT_READ, p)

    def _expire(self) -> None:
        now = time.monotonic()
        for p in list(self.pending.values()):
            if now - p.since > self.limits.request_timeout_s:
                what = "TLS handshake" if not p.handshaken else "A-ASSOCIATE-RQ"
                self._refuse(
                    p, "", f"no complete {what} within {self.limits.request_timeout_s:g} s"
                )

    def _step(self, p: _Pending) -> None:
        try:
            if not p.handshaken:
                assert isinstance(p.sock, ssl.SSLSocket)
                try:
                    p.sock.do_handshake()
                except ssl.SSLWantReadError:
                    return
                except ssl.SSLWantWriteError:  # our send buffer is full: wait to write
                    self.selector.modify(p.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, p)
                    return
                p.handshaken = True
                self.selector.modify(p.sock, selectors.EVENT_READ, p)
            while True:
                try:
                    chunk = p.sock.recv(MAX_REQUEST_PDU + 6 - len(p.data))
                except (ssl.SSLWantReadError, BlockingIOError):
                    break
                if not chunk:
                    self._drop(p)  # closed before asking: nothing to answer
                    return
                p.data += chunk
                if len(p.data) >= MAX_REQUEST_PDU + 6 or not (
                    isinstance(p.sock, ssl.SSLSocket) and p.sock.pending()
                ):
                    break
        except (ssl.SSLError, OSError) as exc:
            if not p.handshaken:
                why = describe_tls_failure(exc)
                self._refuse(
                    p, "", why if why.startswith("TLS") else f"TLS handshake failed: {why}"
                )
            else:
                self._drop(p)
            return
        self._examine(p)

    def _examine(self, p: _Pending) -> None:
        if len(p.data) < 6:
            return
        if p.data[0] != 0x01:
            self._refuse(p, "", f"sent PDU type 0x{p.data[0]:02X} before an A-ASSOCIATE-RQ")
            return
        length = int.from_bytes(p.data[2:6], "big")
        if length > MAX_REQUEST_PDU:
            self._refuse(p, "", f"A-ASSOCIATE-RQ of {length} bytes announced")
            return
        if len(p.data) < 6 + length:
            return
        try:
            calling, called = decode_request(bytes(p.data[: 6 + length]))
        except RequestNotUnderstood as exc:
            self._refuse(p, "", str(exc))
            return
        request = Request(
            p.address[0], p.address[1], calling, called, certificate_cn(p.sock) if p.tls else None
        )
        try:
            reason = self.admit(request)
        except Exception:
            log.exception("association admission check failed")
            reason = "admission check failed"
        if reason is not None:
            self._refuse(p, calling, reason, REJECT_CALLING_AE)
            return
        if not self.slots.acquire(blocking=False):
            self._refuse(
                p,
                calling,
                f"all {self.limits.max_associations} association slots are busy",
                REJECT_BUSY,
            )
            return
        self._forget(p)
        self._hand_over(p, bytes(p.data))

    # -- outcomes --

    def _forget(self, p: _Pending) -> None:
        self.pending.pop(p.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(p.sock)

    def _drop(self, p: _Pending) -> None:
        self._forget(p)
        with contextlib.suppress(OSError):
            p.sock.close()

    def _refuse(
        self,
        p: _Pending,
        ae_title: str,
        reason: str,
        reject: tuple[int, int, int] | None = None,
        *,
        abort: bool = False,
    ) -> None:
        host, port = p.address[:2]
        more = self.quiet.allow(throttle_key(host, reason))
        if more is not None:
            log.warning(
                "association from %s at %s:%d refused: %s%s",
                ae_title or "(no AE title)",
                host,
                port,
                reason,
                f" (and {more} more from {host} since the last line)" if more else "",
            )
        if reject is not None or abort:
            with contextlib.suppress(OSError, ValueError):
                p.sock.setblocking(True)
                p.sock.settimeout(1.0)
                p.sock.sendall(abort_pdu() if reject is None else reject_pdu(*reject))
        self._drop(p)
        if self.refused is not None:
            try:
                self.refused(ae_title, host, reason)
            except Exception:
                log.exception("refused association could not be reported")

    def _hand_over(self, p: _Pending, prefix: bytes) -> None:
        p.sock.setblocking(True)
        lim = self.limits
        try:
            guarded = GuardedSocket(
                p.sock,
                prefix,
                StreamLimits(lim.max_pdu, lim.max_dataset),
                lim.idle_timeout_s,
                time.monotonic() + lim.deadline_s,
            )
        except Breach as exc:  # what came right behind the request breaks a limit
            self.slots.release()
            self._refuse(p, "", f"association aborted: {exc}", abort=True)
            return
        thread = threading.Thread(
            target=self._serve,
            args=(guarded, p.address),
            name=f"association-{next(self.counter)}",
            daemon=True,
        )
        with self.active_lock:
            self.active.add(thread)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: refuse, keep the slot count right
            with self.active_lock:
                self.active.discard(thread)
            self.slots.release()
            with contextlib.suppress(OSError):
                p.sock.close()
            log.error("association from %s:%d dropped: no thread could be started", *p.address[:2])

    def _serve(self, sock: GuardedSocket, address: tuple[str, int]) -> None:
        try:
            _handler_class()(sock, address, self.server)
        except Exception:
            log.exception("association from %s:%d failed", *address[:2])
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            if sock.breach is not None:
                log.warning("association from %s:%d aborted: %s", *address[:2], sock.breach)
                if self.refused is not None:
                    with contextlib.suppress(Exception):
                        self.refused("", address[0], f"association aborted: {sock.breach}")
            self.slots.release()
            with self.active_lock:
                self.active.discard(threading.current_thread())

    def shutdown(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.server.server_close()
        with self.active_lock:
            active = list(self.active)
        for thread in active:
            thread.join(timeout=5)


_HANDLER: Any = None


def _handler_class() -> Any:
    """pynetdicom's request handler, with the association's socket ready()
    aware of the bytes the gate read, and held until the association ends
    (so its slot is held that long)."""
    global _HANDLER
    if _HANDLER is not None:
        return _HANDLER
    from pynetdicom import evt
    from pynetdicom.transport import AssociationSocket, RequestHandler

    class GuardedAssociationSocket(AssociationSocket):
        @property
        def ready(self) -> bool:
            sock = self.socket
            return isinstance(sock, GuardedSocket) and self._is_connected and sock.ready()

    class GuardedHandler(RequestHandler):
        def handle(self) -> None:
            guarded: GuardedSocket = self.request
            assoc = self._create_association()
            # The same object, reading through the gate's bytes first.
            assoc.dul.socket.__class__ = GuardedAssociationSocket
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join(timeout=max(0.0, guarded.deadline - time.monotonic()) + 10)
            if assoc.is_alive():
                assoc.abort()
                assoc.join(timeout=5)

    _HANDLER = GuardedHandler
    return _HANDLER


def start_server(
    ae: Any,
    address: tuple[str, int],
    evt_handlers: Sequence[tuple[Any, Any]],
    *,
    admit: Admit,
    limits: Limits,
    ssl_context: ssl.SSLContext | None = None,
    refused: Refused | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> Gate:
    """Serve `ae` on `address` in the background behind the gate; returns it
    (call `.shutdown()` to stop). `heartbeat` is called from the gate's loop
    at least every half second while it runs, so a wedged loop shows as a
    stale one. `refused(ae_title, address, reason)` hears of every refused
    or aborted association (the audit trail)."""
    # pynetdicom's own count of associations includes the thread it is
    # asked from: ours bounds them, its own must not refuse one of ours.
    ae.maximum_associations = limits.max_associations + 1
    quiet_breaches()
    server = ae.make_server(address, evt_handlers=list(evt_handlers))
    server.socket.listen(256)  # socketserver's 5 overflows under a flood
    gate = Gate(server, ssl_context, limits, admit, refused, heartbeat)
    gate.start()
    return gate
