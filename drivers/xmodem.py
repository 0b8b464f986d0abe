"""Instruments that send image files over RS-232 with XMODEM or YMODEM.

`read` blocks until a transfer completes and returns the image as a frame
(the JPEG's own bytes kept in `Frame.jpeg`). A failed transfer or a file that
is not an image raises FrameRejected: nothing is captured, and the port is
already purged and waiting for the next transfer. XMODEM or YMODEM is told
apart by the sender's first block (YMODEM starts with block 0).

Receiving and decoding run on threads of their own, out of the capture
loop's way: the line is listened to again while the last image is decoded
(after its size was checked against `max_megapixels` from the header), and
the capture thread only hands finished frames on. One file waits between the
two at most, so a sender faster than the decoder is held back by the
protocol, not by memory.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Literal, TypeAlias

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
_WAIT = 0.5  # seconds between the capture thread's "still waiting" beats
# What the receiving thread passes on: a file, or why there is none.
_Received: TypeAlias = ReceivedFile | DriverError
# What the decoding thread passes on, in the order the files came.
_Result: TypeAlias = tuple[Frame, ReceivedFile] | DriverError


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
        self._index = 0
        self._interrupt = threading.Event()
        self._closing = threading.Event()
        self._files: queue.Queue[_Received] = queue.Queue(maxsize=1)
        self._results: queue.Queue[_Result] = queue.Queue(maxsize=1)
        self._threads: list[threading.Thread] = []
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
        self._closing.clear()
        self._files = queue.Queue(maxsize=1)
        self._results = queue.Queue(maxsize=1)
        self._port = port
        receiver = Receiver(
            port, timing, crc=o.crc, interrupted=self._interrupt.is_set, alive=self.alive
        )
        self._receiver = receiver
        self._threads = [
            threading.Thread(
                target=self._receive_loop, args=(receiver,), name="xmodem-receive", daemon=True
            ),
            threading.Thread(target=self._decode_loop, name="xmodem-decode", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._closing.set()
        self._interrupt.set()  # a receive in progress gives up within a character timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(10)
        self._threads = []
        port, self._port, self._receiver = self._port, None, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def interrupt(self) -> None:
        self._interrupt.set()

    def _put(self, box: queue.Queue[_Received] | queue.Queue[_Result], item: object) -> bool:
        """Hand `item` on, waiting while the other side is busy; False when closing."""
        while not self._closing.is_set():
            try:
                box.put(item, timeout=_WAIT)  # type: ignore[arg-type]
                return True
            except queue.Full:
                continue
        return False

    def _receive_loop(self, receiver: Receiver) -> None:
        device = self._opts.device
        while not self._closing.is_set():
            try:
                files: list[_Received] = list(receiver.receive())
            except Interrupted:
                self._put(self._files, DriverError(f"serial port {device}: reading interrupted"))
                return
            except TransferError as exc:
                files = [FrameRejected(f"transfer on {device} failed: {exc}")]
            except (serial.SerialException, OSError) as exc:
                self._put(self._files, DriverError(f"serial port {device} lost: {_reason(exc)}"))
                return
            for item in files:
                if not self._put(self._files, item):
                    return

    def _decode_loop(self) -> None:
        while not self._closing.is_set():
            try:
                item = self._files.get(timeout=_WAIT)
            except queue.Empty:
                continue
            result: _Result = item if isinstance(item, DriverError) else self._decode(item)
            if not self._put(self._results, result):
                return

    def _decode(self, received: ReceivedFile) -> _Result:
        label = received.name or f"{received.protocol} transfer"
        try:
            decoded = decode_image(
                received.data,
                max_megapixels=self._opts.max_megapixels,
                cap_key="capture.options.max_megapixels",
            )
        except ImageError as exc:
            return FrameRejected(f"{label} ({len(received.data)} bytes): {exc}")
        log.info(
            "received %s image by %s: %d bytes, %d×%d",
            decoded.format,
            received.protocol,
            len(received.data),
            decoded.pixels.shape[1],
            decoded.pixels.shape[0],
        )
        return Frame(pixels=decoded.pixels, index=-1, jpeg=decoded.jpeg), received

    def read(self) -> Frame:
        if self._port is None:
            raise DriverError(f"serial port {self._opts.device} is not open")
        while True:
            try:
                result = self._results.get(timeout=_WAIT)
                break
            except queue.Empty:
                self.alive()  # waiting for a person at the instrument is healthy
                if not any(t.is_alive() for t in self._threads) and self._results.empty():
                    raise DriverError(f"serial port {self._opts.device}: not receiving") from None
        if isinstance(result, FrameRejected):
            raise result
        if isinstance(result, DriverError):
            if " lost: " in str(result):
                self.close()
            raise result
        frame, received = result
        self.last_file = received
        index = self._index
        self._index += 1
        return Frame(pixels=frame.pixels, index=index, jpeg=frame.jpeg)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
