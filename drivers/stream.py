"""A driver running on its own thread: the device is read as fast as it
delivers, and nobody downstream can block it. Consumers get the latest frame
(live preview, a still capture), a ring buffer of the last seconds ("save the
last 10 s", as on an ultrasound machine), and counters; a lost device is
reopened with back-off and the stream resumes by itself.

The reader holds the lock only to swap a reference and append to a deque, so a
slow consumer (a JPEG encode, a full disk) never delays the next device read;
frames the device had to drop show up as gaps in its own frame counter and are
counted, never hidden.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from drivers.base import Driver, DriverError, EndOfStream, Frame, FrameRejected

log = logging.getLogger(__name__)

# 10 s of 1080p RGB is 1.8 GB: more than a Raspberry Pi has to spare, so the
# ring is bounded by bytes as well as by time, and frames that came with their
# own JPEG (MJPEG grabbers, ~0.3 MB at 1080p) are kept as JPEG only.
DEFAULT_BUFFER_BYTES = 768 * 1024 * 1024
SMALL_BOX_BYTES = 2 * 1024 * 1024 * 1024


def default_buffer_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """An eighth of the machine's memory on a box of 2 GiB or less, a quarter
    above, at most 768 MiB. A 1 GB Pi 4 keeps 128 MiB of recent frames: 10 s
    of 1080p MJPEG (kept as JPEG, ~0.3 MB a frame) or ~4.5 s of raw 640x480,
    and capture + UI (160 MiB + the ring), the forwarder (64 MiB) and
    Chromium still fit beside the system (docs/benchmarks.md, memory)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                share = total // 8 if total <= SMALL_BOX_BYTES else total // 4
                return min(DEFAULT_BUFFER_BYTES, share)
    except (OSError, ValueError, IndexError):
        pass
    return 128 * 1024 * 1024  # unknown machine: assume a small one


_NO_PIXELS: npt.NDArray[np.uint8] = np.zeros((0, 0, 3), np.uint8)


@dataclass(frozen=True)
class StreamStats:
    frames: int  # delivered by the device
    dropped: int  # gaps in the device's own frame counter
    reconnects: int
    connected: bool
    error: str | None  # why the device is not delivering, while it is not
    rejected: int = 0  # inputs the device sent that could not be used
    last_rejection: str | None = None
    ended: bool = False  # a finite source has nothing more
    buffered: int = 0  # frames in the ring buffer now
    buffered_seconds: float = 0.0


def _frame_bytes(frame: Frame) -> int:
    """What a frame costs the ring: its pixels and the device's own encoded
    bytes (JPEG, or an H.264 access unit kept beside its decoded view)."""
    return int(frame.pixels.nbytes) + len(frame.jpeg or b"") + len(frame.h264 or b"")


def _compact(frame: Frame) -> Frame:
    """The ring's copy: JPEG bytes alone when the frame has them."""
    if frame.jpeg is None:
        return frame
    return dataclasses.replace(frame, pixels=_NO_PIXELS)


def _restore(frame: Frame) -> Frame:
    if frame.pixels.size or frame.jpeg is None:
        return frame
    bgr = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:  # pragma: no cover - the same bytes decoded on arrival
        raise DriverError(f"buffered frame {frame.index} no longer decodes")
    pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.uint8, copy=False)
    return dataclasses.replace(frame, pixels=pixels)


class FrameStream:
    def __init__(
        self,
        driver: Driver,
        buffer_seconds: float = 10.0,
        max_backoff: float = 30.0,
        min_backoff: float = 1.0,
        buffer_bytes: int | None = None,
    ) -> None:
        self.driver = driver
        self.buffer_seconds = buffer_seconds
        self.buffer_bytes = default_buffer_bytes() if buffer_bytes is None else buffer_bytes
        self.max_backoff = max_backoff
        self.min_backoff = min_backoff
        self._ring: collections.deque[Frame] = collections.deque()
        self._ring_bytes = 0
        self._latest: Frame | None = None
        self._cond = threading.Condition()
        self._frames = 0
        self._dropped = 0
        self._reconnects = 0
        self._rejected = 0
        self._last_rejection: str | None = None
        self._error: str | None = None
        self._ended = False
        # Device counters restart when a device is reopened; consumers get
        # indices that only grow, so `wait_frame(after_index=...)` stays valid.
        self._offset = 0
        self._last_device_index: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_beat = time.monotonic()
        # A driver blocked on an idle device (XMODEM waiting for a transfer)
        # reports that it waits; the reader's heartbeat is that, or a frame.
        driver.on_alive = self._beat

    def _beat(self) -> None:
        self.last_beat = time.monotonic()

    # -- consumer side ------------------------------------------------------

    def latest(self) -> Frame | None:
        with self._cond:
            return self._latest

    def wait_frame(self, after_index: int | None = None, timeout: float = 5.0) -> Frame | None:
        """The next frame newer than `after_index` (or any), or None on time-out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                frame = self._latest
                if frame is not None and (after_index is None or frame.index > after_index):
                    return frame
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._ended:
                    return None
                self._cond.wait(remaining)

    def clip(
        self, seconds: float | None = None, decode: bool = True, since: float | None = None
    ) -> list[Frame]:
        """The buffered frames of the last `seconds` (all buffered if None),
        and only those that arrived after `since` (a `time.time()` value: an
        exam's start, so a clip never holds the previous patient's frames).

        Frames kept as JPEG are decoded here, on the caller's thread, unless
        `decode` is false (then their `pixels` are empty and `jpeg` holds
        the picture, which is all a passthrough encoder needs)."""
        with self._cond:
            frames = list(self._ring)
        if seconds is not None and frames:
            cutoff = frames[-1].timestamp - seconds
            frames = [f for f in frames if f.timestamp >= cutoff]
        if since is not None:
            frames = [f for f in frames if f.timestamp > since]
        return [_restore(f) for f in frames] if decode else frames

    def stats(self) -> StreamStats:
        with self._cond:
            span = self._ring[-1].timestamp - self._ring[0].timestamp if self._ring else 0.0
            return StreamStats(
                frames=self._frames,
                dropped=self._dropped,
                reconnects=self._reconnects,
                connected=self.driver.is_open and self._error is None and not self._ended,
                error=self._error,
                rejected=self._rejected,
                last_rejection=self._last_rejection,
                ended=self._ended,
                buffered=len(self._ring),
                buffered_seconds=span,
            )

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> FrameStream:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"capture-{self.driver.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.driver.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
        self.driver.close()

    @property
    def alive(self) -> bool:
        """The reader thread runs (a finished finite source counts as alive:
        nothing is wrong with the service)."""
        return self._ended or (self._thread is not None and self._thread.is_alive())

    # -- reader side ----------------------------------------------------------

    def _push(self, frame: Frame) -> None:
        last = self._last_device_index
        if last is not None and frame.index > last + 1:
            gap = frame.index - last - 1
        else:
            gap = 0
            if last is not None and frame.index <= last:
                # The device counter went backwards (a looping file, a device
                # that restarted without us noticing): continue after the last.
                self._offset += last + 1 - frame.index
        self._last_device_index = frame.index
        index = frame.index + self._offset
        if index != frame.index:
            frame = dataclasses.replace(frame, index=index)
        kept = _compact(frame)
        size = _frame_bytes(kept)
        with self._cond:
            self._dropped += gap
            self._latest = frame
            self._frames += 1
            self._ring.append(kept)
            self._ring_bytes += size
            cutoff = frame.timestamp - self.buffer_seconds
            while self._ring and (
                self._ring[0].timestamp < cutoff or self._ring_bytes > self.buffer_bytes
            ):
                self._ring_bytes -= _frame_bytes(self._ring.popleft())
            self._cond.notify_all()

    def _opened(self) -> None:
        """A (re)opened device starts its own counter afresh."""
        if self._last_device_index is not None:
            self._offset += self._last_device_index + 1
        self._last_device_index = None

    def _failed(self, message: str, delay: float) -> float:
        with self._cond:
            if self._error != message:
                log.warning(
                    "capture device %s: %s; retrying in %.1f s", self.driver.name, message, delay
                )
            self._error = message
        self.driver.close()
        # Waiting to retry a lost device is the loop working, not stuck.
        end = time.monotonic() + delay
        while not self._stop.wait(max(0.0, min(0.5, end - time.monotonic()))):
            self._beat()
            if time.monotonic() >= end:
                break
        return min(delay * 2, self.max_backoff)

    def _run(self) -> None:
        delay = self.min_backoff
        while not self._stop.is_set():
            self._beat()
            try:
                if not self.driver.is_open:
                    self.driver.open()
                    self._opened()
                    with self._cond:
                        if self._error is not None:
                            self._reconnects += 1
                            log.info("capture device %s is back", self.driver.name)
                        self._error = None
                    delay = self.min_backoff
                self._push(self.driver.read())
            except EndOfStream as exc:
                log.info("capture source %s ended: %s", self.driver.name, exc)
                with self._cond:
                    self._ended = True
                    self._cond.notify_all()
                self.driver.close()
                return
            except FrameRejected as exc:
                log.warning("capture device %s: %s", self.driver.name, exc)
                with self._cond:
                    self._rejected += 1
                    self._last_rejection = str(exc)
            except DriverError as exc:
                if self._stop.is_set():
                    break
                delay = self._failed(str(exc), delay)
            except Exception as exc:  # a driver bug must not kill capture for good
                log.exception("capture device %s failed unexpectedly", self.driver.name)
                delay = self._failed(f"driver failure: {exc}", delay)
