"""The XMODEM/YMODEM receiver (drivers/xmodem_protocol.py) on a line that
carries anything: well-formed transfers, damaged and cut ones, noise. The
line is a byte string read at once (a time-out is an empty read), so each
input runs in microseconds. Properties: a receive returns files or raises
TransferError / Interrupted, nothing else, and never loops for ever; a
well-formed XMODEM-CRC transfer arrives intact."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from drivers.xmodem_protocol import (
    CAN,
    EOT,
    SOH,
    STX,
    Interrupted,
    Receiver,
    Timing,
    TransferError,
    crc16,
)
from tests.fuzz.conftest import executed

FAST = Timing(poke_interval=0, block=0, char=0, retries=3, max_bytes=64 * 1024)


class Line:
    """A serial line that has `data` to give, then silence."""

    timeout: float | None = None

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.silent_reads = 0
        self.written = bytearray()

    def read(self, size: int = 1) -> bytes:
        chunk = self.data[self.pos : self.pos + size]
        self.pos += len(chunk)
        if not chunk:
            self.silent_reads += 1
        return chunk

    def write(self, data: bytes, /) -> int:
        self.written += data
        return len(data)

    def flush(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        pass

    def exhausted(self) -> bool:
        return self.pos >= len(self.data) and self.silent_reads > 50


def block(number: int, payload: bytes, *, one_k: bool = False, crc: bool = True) -> bytes:
    size = 1024 if one_k else 128
    payload = payload[:size].ljust(size, b"\x1a")
    trailer = struct.pack(">H", crc16(payload)) if crc else bytes([sum(payload) & 0xFF])
    return bytes([STX if one_k else SOH, number & 0xFF, 0xFF - (number & 0xFF)]) + payload + trailer


def ymodem_header(name: bytes, size: int) -> bytes:
    return block(0, name + b"\0" + str(size).encode() + b" 0 0\0")


frames = st.one_of(
    st.builds(block, st.integers(0, 300), st.binary(max_size=140), one_k=st.booleans()),
    st.builds(ymodem_header, st.binary(max_size=40), st.integers(-5, 10**12)),
    st.just(bytes([EOT])),
    st.just(bytes([CAN, CAN])),
    st.binary(max_size=40),
)


def _run(data: bytes, crc: bool = True) -> list[bytes] | str:
    line = Line(data)
    receiver = Receiver(line, FAST, crc=crc, interrupted=line.exhausted)
    try:
        return [f.data for f in receiver.receive()]
    except TransferError as exc:
        return f"error: {exc}"
    except Interrupted:
        return "idle"


@given(st.lists(frames, max_size=12).map(b"".join), st.booleans())
def test_receiver_takes_any_line(data: bytes, crc: bool) -> None:
    executed("xmodem.Receiver")
    outcome = _run(data, crc)
    if isinstance(outcome, list):
        assert all(len(f) <= FAST.max_bytes + 1024 for f in outcome)


@given(st.binary(min_size=1, max_size=3000), st.booleans())
def test_well_formed_xmodem_arrives_intact(content: bytes, one_k: bool) -> None:
    executed("xmodem.Receiver (well-formed)")
    size = 1024 if one_k else 128
    blocks = [content[i : i + size] for i in range(0, len(content), size)]
    data = b"".join(block(n + 1, b, one_k=one_k) for n, b in enumerate(blocks)) + bytes([EOT, EOT])
    outcome = _run(data)
    assert isinstance(outcome, list) and len(outcome) == 1
    assert outcome[0].rstrip(b"\x1a") == content.rstrip(b"\x1a")
