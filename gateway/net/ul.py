"""A lean DICOM upper layer (PS3.8): every association the box initiates
(C-STORE, C-FIND, C-ECHO, MPPS N-CREATE/N-SET, Storage Commitment N-ACTION
and the N-EVENT-REPORT answered on the same association), as an SCU over one
connection, in one thread, with no reactor.

Why not pynetdicom: its reactor thread, per-PDU queues and per-fragment
Python objects cost ~10× DCMTK's time and CPU for bulk C-STORE (BENCHMARKS.md).
Here the connection is owned by the caller's thread, PDUs are written straight
from the file into one reused buffer, and inbound PDUs are cut out of one
buffered stream (one `recv` often holds dozens of worklist answers). One stack
for every job also means "Test connection" (C-ECHO) tests the stack that
forwards. pynetdicom serves only our listening ports.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway import __version__
from gateway.dicom.rawdata import RawDataError, read_dataset

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# The gateway's implementation class UID (2.25 form, fixed once).
IMPLEMENTATION_CLASS_UID = "2.25.160834920376124318069447036711238790409"
IMPLEMENTATION_VERSION = f"EDGEGW_{__version__}"[:16]

# What we tell the peer we accept: responses are small, but a peer may send
# large PDUs anyway; anything above this is treated as garbage.
OUR_MAX_PDU = 1 << 20
LARGEST_PDU_ACCEPTED = 4 << 20
# What we send in one PDU at most, whatever the peer advertises: a peer that
# says 4 GB (or 0, "unlimited") must not make us build a 4 GB PDU.
LARGEST_PDU_SENT = 4 << 20

P_DATA_TF = 0x04


class ULError(Exception):
    """The peer refused, aborted, sent nonsense or went silent; the message
    says which, worded for an operator."""


class PeerClosed(ULError):
    """The peer closed the connection (orderly EOF) where we expected a PDU."""


class AssociationRejected(ULError):
    """A-ASSOCIATE-RJ: permanent (1) or transient (2) as the peer said."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Proposed:
    """One presentation context we propose: odd ID, SOP class, syntaxes."""

    id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class Accepted:
    id: int
    abstract_syntax: str
    transfer_syntax: str


def _uid_bytes(uid: str) -> bytes:
    return uid.encode("ascii")


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16, b" ")[:16]


@dataclass(frozen=True)
class Role:
    """SCP/SCU Role Selection (PS3.7 D.3.3.4) for one SOP class: Storage
    Commitment's N-EVENT-REPORT comes back from the PACS acting as SCU."""

    sop_class: str
    scu: bool = True
    scp: bool = True


def encode_associate_rq(
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[Proposed],
    max_pdu: int = OUR_MAX_PDU,
    roles: Sequence[Role] = (),
) -> bytes:
    body = bytearray(struct.pack(">HH", 1, 0) + _ae(called_ae) + _ae(calling_ae) + bytes(32))
    body += _item(0x10, _uid_bytes(APPLICATION_CONTEXT))
    for ctx in contexts:
        sub = _item(0x30, _uid_bytes(ctx.abstract_syntax))
        for ts in ctx.transfer_syntaxes:
            sub += _item(0x40, _uid_bytes(ts))
        body += _item(0x20, struct.pack(">BBBB", ctx.id, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu))
    user += _item(0x52, _uid_bytes(IMPLEMENTATION_CLASS_UID))
    for role in roles:
        uid = _uid_bytes(role.sop_class)
        user += _item(0x54, struct.pack(">H", len(uid)) + uid + bytes([role.scu, role.scp]))
    user += _item(0x55, IMPLEMENTATION_VERSION.encode("ascii"))
    body += _item(0x50, user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + bytes(body)


def _iter_items(data: bytes | memoryview, offset: int) -> Iterable[tuple[int, memoryview]]:
    view = memoryview(data)
    while offset + 4 <= len(view):
        item_type, _, length = struct.unpack_from(">BBH", view, offset)
        yield item_type, view[offset + 4 : offset + 4 + length]
        offset += 4 + length


def decode_associate_ac(
    body: bytes, proposed: Sequence[Proposed]
) -> tuple[dict[int, Accepted], int]:
    """Accepted contexts by ID and the peer's maximum PDU length (0 = no limit)."""
    by_id = {p.id: p for p in proposed}
    accepted: dict[int, Accepted] = {}
    peer_max = 0
    for item_type, item in _iter_items(body, 68):
        if item_type == 0x21 and len(item) >= 4:
            ctx_id, result = item[0], item[2]
            ts = ""
            for sub_type, sub in _iter_items(item, 4):
                if sub_type == 0x40:
                    ts = bytes(sub).decode("ascii", "replace").rstrip("\0 ")
            if result == 0 and ctx_id in by_id and ts in by_id[ctx_id].transfer_syntaxes:
                accepted[ctx_id] = Accepted(ctx_id, by_id[ctx_id].abstract_syntax, ts)
        elif item_type == 0x50:
            for sub_type, sub in _iter_items(item, 0):
                if sub_type == 0x51 and len(sub) == 4:
                    peer_max = struct.unpack(">I", sub)[0]
    return accepted, peer_max


_RJ_SOURCES = {1: "the peer's DICOM service", 2: "the peer's ACSE", 3: "the peer's presentation"}
_RJ_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context not supported",
    (1, 3): "our calling AE title is not recognised",
    (1, 7): "the called AE title is not recognised",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


def describe_reject(result: int, source: int, reason: int) -> str:
    why = _RJ_REASONS.get((source, reason), f"reason {reason}")
    kind = "permanently" if result == 1 else "for now"
    return f"association rejected {kind} by {_RJ_SOURCES.get(source, 'the peer')}: {why}"


_ABORT_REASONS = {
    0: "no reason given",
    1: "unrecognised PDU",
    2: "unexpected PDU",
    4: "unrecognised PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


def describe_abort(body: bytes) -> str:
    source = body[2] if len(body) > 2 else 0
    reason = body[3] if len(body) > 3 else 0
    if source == 2:
        return f"peer aborted the association ({_ABORT_REASONS.get(reason, f'reason {reason}')})"
    return "peer aborted the association"


# -- command sets (PS3.7, Implicit VR Little Endian) -----------------------------


def _element(group: int, elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", group, elem, len(value)) + value


def encode_command(elements: Sequence[tuple[int, bytes]]) -> bytes:
    """(0000,eeee) elements in ascending order, with the group length first."""
    body = b"".join(_element(0, elem, value) for elem, value in elements)
    return _element(0, 0, struct.pack("<I", len(body))) + body


NO_DATA_SET = 0x0101  # CommandDataSetType: no data set follows
HAS_DATA_SET = 0x0000


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def c_echo_rq(message_id: int, sop_class: str = "1.2.840.10008.1.1") -> bytes:
    return encode_command(
        [
            (0x0002, _uid_bytes(sop_class)),
            (0x0100, _us(0x0030)),
            (0x0110, _us(message_id)),
            (0x0800, _us(NO_DATA_SET)),
        ]
    )


def n_create_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    return encode_command(
        [
            (0x0002, _uid_bytes(sop_class)),
            (0x0100, _us(0x0140)),
            (0x0110, _us(message_id)),
            (0x0800, _us(HAS_DATA_SET)),
            (0x1000, _uid_bytes(sop_instance)),
        ]
    )


def n_set_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    return encode_command(
        [
            (0x0003, _uid_bytes(sop_class)),
            (0x0100, _us(0x0120)),
            (0x0110, _us(message_id)),
            (0x0800, _us(HAS_DATA_SET)),
            (0x1001, _uid_bytes(sop_instance)),
        ]
    )


def n_action_rq(message_id: int, sop_class: str, sop_instance: str, action_type: int) -> bytes:
    return encode_command(
        [
            (0x0003, _uid_bytes(sop_class)),
            (0x0100, _us(0x0130)),
            (0x0110, _us(message_id)),
            (0x0800, _us(HAS_DATA_SET)),
            (0x1001, _uid_bytes(sop_instance)),
            (0x1008, _us(action_type)),
        ]
    )


def n_event_report_rsp(request: dict[int, bytes], status: int) -> bytes:
    """The answer to a peer's N-EVENT-REPORT-RQ, echoing its class, instance
    and event type."""
    elements = [
        (0x0002, request.get(0x0002, b"")),
        (0x0100, _us(0x8100)),
        (0x0120, request.get(0x0110, _us(0))),
        (0x0800, _us(NO_DATA_SET)),
        (0x0900, _us(status)),
    ]
    if 0x1000 in request:
        elements.append((0x1000, request[0x1000]))
    if 0x1002 in request:
        elements.append((0x1002, request[0x1002]))
    return encode_command(elements)


def c_store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    return encode_command(
        [
            (0x0002, _uid_bytes(sop_class)),
            (0x0100, struct.pack("<H", 0x0001)),
            (0x0110, struct.pack("<H", message_id)),
            (0x0700, struct.pack("<H", 0)),  # medium priority
            (0x0800, struct.pack("<H", 0x0000)),  # a data set follows
            (0x1000, _uid_bytes(sop_instance)),
        ]
    )


def c_find_rq(message_id: int, sop_class: str) -> bytes:
    return encode_command(
        [
            (0x0002, _uid_bytes(sop_class)),
            (0x0100, struct.pack("<H", 0x0020)),
            (0x0110, struct.pack("<H", message_id)),
            (0x0700, struct.pack("<H", 0)),  # medium priority
            (0x0800, struct.pack("<H", 0x0000)),  # the identifier follows
        ]
    )


def c_cancel_rq(message_id: int) -> bytes:
    return encode_command(
        [
            (0x0100, struct.pack("<H", 0x0FFF)),
            (0x0120, struct.pack("<H", message_id)),
            (0x0800, struct.pack("<H", NO_DATA_SET)),
        ]
    )


def decode_command(data: bytes) -> dict[int, bytes]:
    """Elements of group 0000 by element number (read by the one element
    walker, gateway.dicom.rawdata); raises ULError on nonsense."""
    try:
        elements = read_dataset(data, explicit_vr=False)
    except RawDataError:
        raise ULError("peer sent a malformed DIMSE command") from None
    out: dict[int, bytes] = {}
    for tag, value in elements.items():
        if tag >> 16 != 0 or not isinstance(value, bytes):
            raise ULError("peer sent a malformed DIMSE command")
        out[tag & 0xFFFF] = value
    return out


def command_text(command: dict[int, bytes], elem: int) -> str:
    return command.get(elem, b"").decode("ascii", "replace").rstrip("\0 ")


def command_us(command: dict[int, bytes], elem: int) -> int | None:
    value = command.get(elem)
    return struct.unpack("<H", value[:2])[0] if value and len(value) >= 2 else None


# -- the connection ----------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One DIMSE message from the peer: its command set and data set (if any)."""

    context_id: int
    command: dict[int, bytes]
    dataset: bytes | None


@dataclass(frozen=True)
class Timeouts:
    """Seconds. Every wait has a bound, so a dead host never hangs a loop."""

    connect: float = 10.0
    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0


class ULConnection:
    """One established association, driven synchronously by one thread."""

    def __init__(
        self,
        sock: socket.socket,
        accepted: dict[int, Accepted],
        peer_max_pdu: int,
        timeouts: Timeouts,
        inbound: Inbound | None = None,
    ) -> None:
        self.sock = sock
        self.inbound = inbound or Inbound(sock)
        # PDVs of a PDU already read but not yet consumed: (context, control, value).
        self._pdvs: deque[tuple[int, int, bytes]] = deque()
        self.accepted = accepted
        self.peer_max_pdu = peer_max_pdu
        self.timeouts = timeouts
        self.open = True
        self._message_id = 0
        self.buffer = bytearray()  # reused for every data set sent

    # -- set-up and tear-down --

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        calling_ae: str,
        called_ae: str,
        contexts: Sequence[Proposed],
        timeouts: Timeouts,
        ssl_context: ssl.SSLContext | None,
        roles: Sequence[Role] = (),
    ) -> ULConnection:
        """Connect, handshake, associate. Raises OSError/ssl.SSLError for the
        transport and ULError for the DICOM layer."""
        raw = socket.create_connection((host, port), timeout=timeouts.connect)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock: socket.socket = raw
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(raw, server_hostname=host)
            sock.settimeout(timeouts.acse)
            inbound = Inbound(sock)
            try:
                sock.sendall(encode_associate_rq(calling_ae, called_ae, contexts, roles=roles))
                pdu_type, body = read_pdu(inbound)
            except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError, PeerClosed):
                if ssl_context is None:
                    raise ULError("peer closed the connection instead of answering") from None
                # TLS 1.3: a server checks our certificate after the handshake
                # and just hangs up when it does not like it.
                raise ULError(
                    "peer closed the TLS connection before answering the association "
                    "(does it trust our client certificate?)"
                ) from None
        except BaseException:
            raw.close()
            raise
        if pdu_type == 0x02:
            accepted, peer_max = decode_associate_ac(body, contexts)
            sock.settimeout(timeouts.network)
            return cls(sock, accepted, peer_max, timeouts, inbound)
        sock.close()
        if pdu_type == 0x03 and len(body) >= 4:
            raise AssociationRejected(describe_reject(body[1], body[2], body[3]), body[1] == 1)
        if pdu_type == 0x07:
            raise ULError(describe_abort(body))
        raise ULError(f"peer answered the association request with PDU type 0x{pdu_type:02X}")

    @property
    def transport(self) -> str:
        """ "TLSv1.3 TLS_AES_256_GCM_SHA384" over TLS, else "plain TCP"."""
        if isinstance(self.sock, ssl.SSLSocket):
            cipher = self.sock.cipher()
            return f"{self.sock.version()} {cipher[0] if cipher else '?'}"
        return "plain TCP"

    def next_message_id(self) -> int:
        self._message_id = (self._message_id % 0xFFFF) + 1
        return self._message_id

    def abort(self) -> None:
        if self.open:
            self.open = False
            try:
                self.sock.settimeout(2.0)
                self.sock.sendall(struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0, 0))
            except OSError:
                pass
            self._close()

    def release(self) -> None:
        """A-RELEASE-RQ and wait (bounded) for the RP; abort if the peer balks."""
        if not self.open:
            return
        try:
            self.sock.settimeout(self.timeouts.acse)
            self.sock.sendall(struct.pack(">BBII", 0x05, 0, 4, 0))
            for _ in range(16):  # a stray late PDU or two, never forever
                pdu_type, _body = read_pdu(self.inbound)
                if pdu_type in (0x06, 0x07):
                    break
        except (OSError, ULError):
            pass
        self.open = False
        self._close()

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- DIMSE --

    @property
    def max_fragment(self) -> int:
        """The largest PDV value the peer accepts in one PDU."""
        max_pdu = min(self.peer_max_pdu or OUR_MAX_PDU, LARGEST_PDU_SENT)
        if max_pdu < 70:
            raise ULError(f"peer's maximum PDU length ({max_pdu}) is too small to be real")
        return max_pdu - 6

    def send_message(self, context_id: int, command: bytes, dataset: bytes | None = None) -> None:
        """A command set and (small, in memory) data set, fragmented to the
        peer's maximum PDU, in one write."""
        fragment = self.max_fragment
        out = bytearray()
        for kind, payload in ((1, command), (0, dataset)):
            if payload is None:
                continue
            for start in range(0, max(len(payload), 1), fragment):
                chunk = payload[start : start + fragment]
                last = 2 if start + fragment >= len(payload) else 0
                out += struct.pack(
                    ">BBIIBB", P_DATA_TF, 0, 6 + len(chunk), 2 + len(chunk), context_id, kind | last
                )
                out += chunk
        self.sock.sendall(out)

    def request(
        self,
        context_id: int,
        command: bytes,
        dataset: bytes | None,
        response_field: int,
        message_id: int,
    ) -> Message:
        """Send one request and return its response (the command field and
        Message ID Being Responded To checked); ULError on anything else."""
        self.send_message(context_id, command, dataset)
        response = self.read_message(self.timeouts.dimse)
        if (
            command_us(response.command, 0x0100) != response_field
            or command_us(response.command, 0x0120) != message_id
        ):
            self.abort()
            raise ULError("peer answered with a response that does not match our request")
        return response

    def _wait_at_most(self, timeout: float) -> None:
        """The socket's time-out, set only when it changes: each setting is a
        system call, twice per object otherwise (the DIMSE and network
        time-outs are often the same)."""
        if self.sock.gettimeout() != timeout:
            self.sock.settimeout(timeout)

    def read_command(self, timeout: float) -> dict[int, bytes]:
        """The next command set from the peer (a data set after it is dropped)."""
        return self.read_message(timeout).command

    def read_message(self, timeout: float) -> Message:
        """The next complete DIMSE message; every socket wait bounded by `timeout`
        (a time-out surfaces as TimeoutError)."""
        self._wait_at_most(timeout)
        parts: list[bytes] = []
        command: dict[int, bytes] | None = None
        size = 0
        while True:
            context_id, control, value = self._next_pdv()
            size += len(value)
            if size > LARGEST_PDU_ACCEPTED:
                self.abort()
                raise ULError("peer sent an endless DIMSE message")
            if control & 0x01:
                if command is not None:
                    self.abort()
                    raise ULError("peer sent a second command set before the data set")
                parts.append(value)
                if control & 0x02:
                    command = decode_command(b"".join(parts))
                    parts = []
                    if command_us(command, 0x0800) == NO_DATA_SET:
                        break
            else:
                if command is None:
                    self.abort()
                    raise ULError("peer sent a data set before its command set")
                parts.append(value)
                if control & 0x02:
                    break
        self._wait_at_most(self.timeouts.network)
        if command_us(command, 0x0800) == NO_DATA_SET:
            return Message(context_id, command, None)
        return Message(context_id, command, b"".join(parts))

    def _next_pdv(self) -> tuple[int, int, bytes]:
        while not self._pdvs:
            pdu_type, body = read_pdu(self.inbound)
            if pdu_type == 0x07:
                self.open = False
                self._close()
                raise ULError(describe_abort(body))
            if pdu_type != P_DATA_TF:
                self.abort()
                raise ULError(f"peer sent an unexpected PDU (type 0x{pdu_type:02X})")
            offset = 0
            while offset < len(body):
                if offset + 6 > len(body):
                    self.abort()
                    raise ULError("peer sent a malformed P-DATA PDU")
                length = struct.unpack_from(">I", body, offset)[0]
                if length < 2 or offset + 4 + length > len(body):
                    self.abort()
                    raise ULError("peer sent a malformed P-DATA PDU")
                self._pdvs.append(
                    (body[offset + 4], body[offset + 5], body[offset + 6 : offset + 4 + length])
                )
                offset += 4 + length
        return self._pdvs.popleft()


class Inbound:
    """Buffered reads from the peer: one `recv` takes whatever has arrived,
    so a burst of small PDUs costs one system call, not two per PDU."""

    CHUNK = 1 << 16

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0

    def read_exact(self, size: int) -> bytes:
        while len(self.buf) - self.pos < size:
            if self.pos:
                del self.buf[: self.pos]
                self.pos = 0
            chunk = self.sock.recv(max(self.CHUNK, size - len(self.buf)))
            if not chunk:
                raise PeerClosed("peer closed the connection")
            self.buf += chunk
        out = bytes(self.buf[self.pos : self.pos + size])
        self.pos += size
        return out


def read_pdu(inbound: Inbound) -> tuple[int, bytes]:
    """One PDU: (type, body). A time-out surfaces as TimeoutError."""
    header = inbound.read_exact(6)
    pdu_type, _, length = struct.unpack(">BBI", header)
    if pdu_type not in range(1, 8):
        raise ULError(f"peer sent garbage (PDU type 0x{pdu_type:02X}); not a DICOM peer?")
    if length > LARGEST_PDU_ACCEPTED:
        raise ULError(f"peer sent an implausible PDU length ({length} bytes)")
    return pdu_type, inbound.read_exact(length)
