"""Receiving side of XMODEM (checksum, CRC-16, 1K blocks) and YMODEM batch,
as Ward Christensen's XMODEM and Chuck Forsberg's "XMODEM/YMODEM Protocol
Reference" (1988) describe them.

Knows serial bytes and files only: no images, no frames. Everything that can
go wrong on a line is answered the way the protocols say: a damaged block is
waited out (the line purged) and NAKed, a repeated block is ACKed and
ignored, two CANs end the transfer, a silent sender is NAKed `retries` times
and then cancelled. Whatever happened, a receive ends with the line purged,
so the next transfer starts clean.
"""

from __future__ import annotations

import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

SOH, STX, EOT, ACK, NAK, CAN = 0x01, 0x02, 0x04, 0x06, 0x15, 0x18
CRC_POKE = ord("C")
# CAN CAN … as lrzsz sends it, then backspaces to erase them from a terminal.
CANCEL_SEQUENCE = bytes([CAN] * 8 + [0x08] * 8)
TICK = 0.1  # serial read granularity: how soon an interrupt is noticed


class SerialLine(Protocol):
    """What the receiver needs of a pyserial port."""

    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...

    def flush(self) -> None: ...

    def reset_input_buffer(self) -> None: ...


class TransferError(Exception):
    """A transfer that failed; the line is already purged and ready again."""


class Interrupted(Exception):
    """The owner asked the receiver to stop waiting."""


class _Timeout(Exception):
    pass


class _NotStarted(Exception):
    """What looked like a first block was not one (line noise, the tail of a
    dead sender's transfer): stay idle."""


@dataclass(frozen=True)
class Timing:
    poke_interval: float = 3.0  # between 'C' (or NAK) pokes while idle
    block: float = 10.0  # for the next block to start, once a transfer runs
    char: float = 1.0  # between bytes within a block; also the purge quiet time
    retries: int = 10  # consecutive errors before the transfer is cancelled
    max_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class ReceivedFile:
    data: bytes
    protocol: str  # "XMODEM", "XMODEM-1K" or "YMODEM"
    name: str | None = None  # YMODEM sends it; XMODEM has none


def checksum8(data: bytes) -> int:
    return sum(data) & 0xFF


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM: polynomial 0x1021, initial value 0."""
    return binascii.crc_hqx(data, 0)


class Receiver:
    def __init__(
        self,
        port: SerialLine,
        timing: Timing | None = None,
        crc: bool = True,
        interrupted: Callable[[], bool] = lambda: False,
        alive: Callable[[], None] = lambda: None,
    ) -> None:
        self.port = port
        self.timing = timing or Timing()
        self.crc = crc
        self.interrupted = interrupted
        self.alive = alive  # called every tick while waiting: idle is not stuck
        self.port.timeout = TICK

    # -- line primitives --------------------------------------------------

    def _read(self, size: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        buf = b""
        while len(buf) < size:
            if self.interrupted():
                raise Interrupted
            self.alive()
            buf += self.port.read(size - len(buf))
            if len(buf) < size and time.monotonic() >= deadline:
                raise _Timeout
        return buf

    def _byte(self, timeout: float) -> int:
        return self._read(1, timeout)[0]

    def _send(self, byte: int) -> None:
        self.port.write(bytes([byte]))
        self.port.flush()

    def purge(self, limit: float = 10.0) -> None:
        """Discard input until the line has been quiet for `char` seconds, so
        the rest of a damaged block is not mistaken for the next one."""
        deadline = time.monotonic() + limit
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self.port.read(1024):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= self.timing.char:
                return
        self.port.reset_input_buffer()

    def cancel(self, reason: str) -> TransferError:
        self.port.write(CANCEL_SEQUENCE)
        self.port.flush()
        self.purge()
        return TransferError(reason)

    # -- protocol ----------------------------------------------------------

    @property
    def _poke(self) -> int:
        return CRC_POKE if self.crc else NAK

    def receive(self) -> list[ReceivedFile]:
        """Wait for a sender, poking it; return the file(s) of one transfer.

        Raises Interrupted when asked to stop while idle, TransferError when a
        transfer started and failed."""
        while True:
            self._send(self._poke)
            try:
                first = self._byte(self.timing.poke_interval)
            except _Timeout:
                continue
            if first in (SOH, STX):
                try:
                    return self._transfer(first)
                except _NotStarted:
                    self.purge()
                    continue
            if first == CAN and self._second_can():
                self.purge()
            # Anything else while idle is noise, or a sender's leftovers.

    def _second_can(self) -> bool:
        try:
            return self._byte(self.timing.char) == CAN
        except _Timeout:
            return False

    def _block(self, start: int) -> tuple[int, bytes] | None:
        """The rest of a block whose start byte was read: (number, data), or
        None if it was damaged (caller purges and NAKs)."""
        size = 1024 if start == STX else 128
        trailer = 2 if self.crc else 1
        try:
            raw = self._read(2 + size + trailer, self.timing.char)
        except _Timeout:
            return None
        number, complement = raw[0], raw[1]
        data = raw[2 : 2 + size]
        if number ^ complement != 0xFF:
            return None
        if self.crc:
            if crc16(data) != int.from_bytes(raw[2 + size :], "big"):
                return None
        elif checksum8(data) != raw[2 + size]:
            return None
        return number, data

    def _transfer(self, start: int) -> list[ReceivedFile]:
        files: list[ReceivedFile] = []
        expected = 1
        data = bytearray()
        header: tuple[str, int | None] | None = None
        ymodem = False
        one_k = False
        errors = 0
        eot_seen = False
        byte: int | None = start
        while True:
            if byte is None:
                try:
                    byte = self._byte(self.timing.block)
                except _Timeout:
                    errors += 1
                    if errors > self.timing.retries:
                        where = f"after {len(data)} bytes" if data else "before any data"
                        raise self.cancel(
                            f"sender stalled {where}: nothing for {self.timing.block:g} s, "
                            f"{self.timing.retries} retries; transfer cancelled"
                        ) from None
                    self._send(NAK if not (ymodem and header is None) else self._poke)
                    continue
            current, byte = byte, None
            if current == CAN:
                if self._second_can():
                    self.purge()
                    raise TransferError(f"sender cancelled the transfer after {len(data)} bytes")
                continue
            if current == EOT:
                if header is None and ymodem:
                    continue  # between files only a header block makes sense
                if not eot_seen:
                    # Per the YMODEM reference: NAK the first EOT, so a noise
                    # byte that looks like EOT cannot end a file early.
                    eot_seen = True
                    self._send(NAK)
                    continue
                self._send(ACK)
                if not ymodem:
                    protocol = "XMODEM-1K" if one_k else "XMODEM"
                    return [ReceivedFile(bytes(data), protocol)]
                assert header is not None
                name, size = header
                content = bytes(data[:size]) if size is not None else bytes(data)
                files.append(ReceivedFile(content, "YMODEM", name))
                header, data, expected, eot_seen = None, bytearray(), 1, False
                self._send(CRC_POKE)  # ask for the next file's header
                continue
            if current not in (SOH, STX):
                continue  # noise between blocks: wait for a block start
            block = self._block(current)
            started = ymodem or bool(data)
            if not started and (block is None or block[0] not in (0, 1)):
                # A damaged or stray first block: a real sender repeats
                # block 1 after our next poke; junk is purged.
                raise _NotStarted
            if block is None:
                errors += 1
                if errors > self.timing.retries:
                    raise self.cancel(
                        f"{self.timing.retries} damaged blocks in a row after {len(data)} "
                        "bytes (line noise?); transfer cancelled"
                    )
                self.purge()
                self._send(NAK)
                continue
            number, payload = block
            errors, eot_seen = 0, False
            if number == 0 and not data and (header is None or expected == 1):
                if not self.crc:
                    raise self.cancel("YMODEM needs CRC mode; transfer cancelled")
                ymodem = True
                duplicate = header is not None
                parsed = _parse_header(payload)
                self._send(ACK)
                if parsed is None:  # the empty header: end of batch
                    if not files:
                        raise TransferError("YMODEM batch ended without any file")
                    return files
                if duplicate and parsed != header:
                    raise self.cancel("YMODEM header changed mid-file; transfer cancelled")
                header = parsed
                self._send(CRC_POKE)
                continue
            if ymodem and header is None:
                raise self.cancel(f"YMODEM block {number} before a file header; cancelled")
            if number == expected & 0xFF:
                data += payload
                one_k = one_k or current == STX
                expected += 1
                if len(data) > self.timing.max_bytes:
                    raise self.cancel(
                        f"file larger than {self.timing.max_bytes} bytes; transfer cancelled"
                    )
                self._send(ACK)
            elif number == (expected - 1) & 0xFF:
                self._send(ACK)  # our ACK was lost; the sender repeated itself
            else:
                raise self.cancel(
                    f"block {number} arrived where block {expected & 0xFF} was due; "
                    "transfer cancelled"
                )


def _parse_header(payload: bytes) -> tuple[str, int | None] | None:
    """YMODEM block 0: name NUL "size mtime mode ..." NUL; an empty name ends
    the batch (None)."""
    name_raw, _, rest = payload.partition(b"\0")
    if not name_raw:
        return None
    name = name_raw.decode("latin-1").rsplit("/", 1)[-1]
    fields = rest.split(b"\0", 1)[0].split()
    size: int | None = None
    if fields:
        try:
            size = int(fields[0])
        except ValueError:
            size = None
    return name, size
