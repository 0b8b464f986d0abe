"""The live channels: events fanned out from worker threads to every open
screen (Server-Sent Events), and preview JPEGs encoded once per frame however
many screens watch.

Capture, the exam service and the pedal run on plain threads; the screens are
asyncio coroutines in the web server's loop. `Broadcaster` is the one bridge:
a thread publishes, each subscriber's queue receives it in its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from drivers.base import Frame

PREVIEW_MAX = (1280, 800)
PREVIEW_QUALITY = 70
THUMB_WIDTH = 160


Subscriber = tuple[asyncio.AbstractEventLoop, "asyncio.Queue[dict[str, Any]]"]


class Broadcaster:
    def __init__(self, backlog: int = 100) -> None:
        self.backlog = backlog
        self._subscribers: list[
            tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]
        ] = []
        self._lock = threading.Lock()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.backlog)
        with self._lock:
            self._subscribers.append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._subscribers = [(lp, q) for lp, q in self._subscribers if q is not queue]

    def publish(self, event: dict[str, Any]) -> None:
        """From any thread. A screen that stopped reading loses events, not the box."""
        with self._lock:
            targets = list(self._subscribers)
        for loop, queue in targets:

            def put(q: asyncio.Queue[dict[str, Any]] = queue) -> None:
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait(event)

            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(put)


def _bgr(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
    if pixels.ndim == 2:
        return pixels
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)


def encode_jpeg(
    pixels: npt.NDArray[np.uint8], max_size: tuple[int, int], quality: int = PREVIEW_QUALITY
) -> bytes:
    """Scaled down to fit `max_size` (never up), as JPEG."""
    height, width = pixels.shape[:2]
    scale = min(max_size[0] / width, max_size[1] / height, 1.0)
    image: npt.NDArray[Any] = _bgr(pixels)
    if scale < 1.0:
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf)


class PreviewEncoder:
    """Keeps the JPEG of the newest frame, so N viewers cost one encode."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index = -1
        self._jpeg = b""

    def jpeg_for(self, frame: Frame) -> bytes:
        with self._lock:
            if frame.index == self._index:
                return self._jpeg
        jpeg = frame.jpeg if frame.jpeg and frame.width <= PREVIEW_MAX[0] else None
        if jpeg is None:
            jpeg = encode_jpeg(frame.pixels, PREVIEW_MAX)
        with self._lock:
            if frame.index > self._index:
                self._index, self._jpeg = frame.index, jpeg
        return jpeg
