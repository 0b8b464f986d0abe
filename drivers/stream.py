"""A driver running on its own thread: the device is read as fast as it
delivers, and nobody downstream can block it. Consumers get the latest frame
(live preview, a still capture), a ring buffer of the last seconds ("save the
last 10 s"), and counters; a lost device is reopened with back-off.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

from drivers.base import Driver, DriverError, Frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamStats:
    frames: int  # delivered by the device
    dropped: int  # gaps in the device's own frame counter, plus frames nobody took in time
    reconnects: int
    connected: bool
    error: str | None


class FrameStream:
    def __init__(
        self, driver: Driver, buffer_seconds: float = 10.0, max_backoff: float = 30.0
    ) -> None:
        self.driver = driver
        self.buffer_seconds = buffer_seconds
        self.max_backoff = max_backoff
        self._ring: collections.deque[Frame] = collections.deque()
        self._latest: Frame | None = None
        self._cond = threading.Condition()
        self._frames = 0
        self._dropped = 0
        self._reconnects = 0
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def clip(self, seconds: float | None = None) -> list[Frame]:
        """The buffered frames of the last `seconds` (all buffered if None)."""
        with self._cond:
            frames = list(self._ring)
        if seconds is None or not frames:
            return frames
        cutoff = frames[-1].timestamp - seconds
        return [f for f in frames if f.timestamp >= cutoff]

    def stats(self) -> StreamStats:
        with self._cond:
            return StreamStats(
                self._frames,
                self._dropped,
                self._reconnects,
                self.driver.is_open and self._error is None,
                self._error,
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
        if self._thread is not None:
            self._thread.join(timeout)
        self.driver.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _push(self, frame: Frame) -> None:
        with self._cond:
            previous = self._latest
            if previous is not None and frame.index > previous.index + 1:
                self._dropped += frame.index - previous.index - 1
            self._latest = frame
            self._frames += 1
            self._ring.append(frame)
            cutoff = frame.timestamp - self.buffer_seconds
            while self._ring and self._ring[0].timestamp < cutoff:
                self._ring.popleft()
            self._cond.notify_all()

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            try:
                if not self.driver.is_open:
                    self.driver.open()
                    if self._error is not None:
                        self._reconnects += 1
                        log.info("capture device %s is back", self.driver.name)
                    self._error, delay = None, 1.0
                self._push(self.driver.read())
            except DriverError as exc:
                if self._error != str(exc):
                    log.warning(
                        "capture device %s: %s; retrying with back-off", self.driver.name, exc
                    )
                with self._cond:
                    self._error = str(exc)
                self.driver.close()
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff)
            except Exception as exc:  # a driver bug must not kill capture for good
                log.exception("capture device %s failed unexpectedly", self.driver.name)
                with self._cond:
                    self._error = f"driver failure: {exc}"
                self.driver.close()
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff)
