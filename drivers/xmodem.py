"""Instruments that send image files over RS-232 with XMODEM or YMODEM.

`read` blocks until a transfer completes and returns the image as a frame
(the JPEG's own bytes kept in `Frame.jpeg`). A failed transfer or a file that
is not an image raises FrameRejected: nothing is captured, and the port is
already purged and waiting for the next transfer. XMODEM or YMODEM is told
apart by the sender's first block (YMODEM starts with block 0).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from typing import Literal

import serial
from pydantic import Field

from drivers.base import Driver, DriverError, DriverOptions, Frame, FrameRejected
from drivers.imagecodec import DEFAULT_MAX_MEGAPIXELS, ImageError, decode_image
from drivers.xmodem_protocol import Interrupted, ReceivedFile, Receiver, Timing, TransferError

log = logging.getLogger(__name__)


class XmodemOptions(DriverOptions):
    device: str = Field(default="/dev/ttyUSB0", min_length=1)  # a path or pyserial URL
    baudrate: int = Field(default=115200, ge=50, le=4_000_000)
    bytesize: Literal[7, 8] = 8
    parity: Literal["none", "even", "odd"] = "none"
    stopbits: Literal[1, 2] = 1
    flow_control: Literal["none", "rtscts", "xonxoff"] = "none"
    # CRC-16 (every YMODEM and nearly every XMODEM sender) or the 1977
    # arithmetic checksum for the oldest instruments (XMODEM only).
    crc: bool = True
    poke_interval: float = Field(default=3.0, gt=0, le=60)
    block_timeout: float = Field(default=10.0, gt=0, le=120)
    char_timeout: float = Field(default=1.0, gt=0, le=30)
    retries: int = Field(default=10, ge=1, le=100)
    max_file_mb: int = Field(default=256, ge=1, le=4096)
    # An image larger than this (from its header) is refused undecoded.
    max_megapixels: float = Field(default=DEFAULT_MAX_MEGAPIXELS, gt=0, le=1000)


_PARITY = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD}


class XmodemDriver(Driver):
    name = "xmodem"
    source = "digital"
    Options = XmodemOptions

    def __init__(self, options: DriverOptions) -> None:
        super().__init__(options)
        assert isinstance(options, XmodemOptions)
        self._opts = options
        self._port: serial.SerialBase | None = None
        self._receiver: Receiver | None = None
        self._pending: collections.deque[ReceivedFile] = collections.deque()
        self._index = 0
        self._interrupt = threading.Event()
        self.last_file: ReceivedFile | None = None

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        if self._port is not None:
            return
        o = self._opts
        try:
            port = serial.serial_for_url(
                o.device,
                baudrate=o.baudrate,
                bytesize=o.bytesize,
                parity=_PARITY[o.parity],
                stopbits=o.stopbits,
                rtscts=o.flow_control == "rtscts",
                xonxoff=o.flow_control == "xonxoff",
                timeout=0.1,
            )
        except (serial.SerialException, ValueError, OSError) as exc:
            raise DriverError(f"serial port {o.device} cannot be opened: {_reason(exc)}") from None
        port.reset_input_buffer()
        timing = Timing(
            poke_interval=o.poke_interval,
            block=o.block_timeout,
            char=o.char_timeout,
            retries=o.retries,
            max_bytes=o.max_file_mb * 1024 * 1024,
        )
        self._interrupt.clear()
        self._port = port
        self._receiver = Receiver(
            port, timing, crc=o.crc, interrupted=self._interrupt.is_set, alive=self.alive
        )

    def close(self) -> None:
        port, self._port, self._receiver = self._port, None, None
        self._pending.clear()
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def interrupt(self) -> None:
        self._interrupt.set()

    def _next_file(self) -> ReceivedFile:
        if self._pending:
            return self._pending.popleft()
        if self._receiver is None:
            raise DriverError(f"serial port {self._opts.device} is not open")
        try:
            files = self._receiver.receive()
        except Interrupted:
            raise DriverError(f"serial port {self._opts.device}: reading interrupted") from None
        except TransferError as exc:
            raise FrameRejected(f"transfer on {self._opts.device} failed: {exc}") from None
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise DriverError(f"serial port {self._opts.device} lost: {_reason(exc)}") from None
        self._pending.extend(files[1:])
        return files[0]

    def read(self) -> Frame:
        received = self._next_file()
        self.last_file = received
        label = received.name or f"{received.protocol} transfer"
        try:
            decoded = decode_image(
                received.data,
                max_megapixels=self._opts.max_megapixels,
                cap_key="capture.options.max_megapixels",
            )
        except ImageError as exc:
            raise FrameRejected(f"{label} ({len(received.data)} bytes): {exc}") from None
        log.info(
            "received %s image by %s: %d bytes, %d×%d",
            decoded.format,
            received.protocol,
            len(received.data),
            decoded.pixels.shape[1],
            decoded.pixels.shape[0],
        )
        index = self._index
        self._index += 1
        return Frame(pixels=decoded.pixels, index=index, jpeg=decoded.jpeg)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
