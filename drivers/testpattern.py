"""A moving test pattern with the frame counter and time burnt in.

The counter makes every frame distinct (so tests can tell frames apart and
spot reordering), and the motion makes a frozen preview obvious on screen.
"""

from __future__ import annotations

import time
from datetime import datetime

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import Field

from drivers.base import Driver, DriverError, DriverOptions, Frame

_BARS = np.array(
    [
        [235, 235, 235],
        [235, 235, 16],
        [16, 235, 235],
        [16, 235, 16],
        [235, 16, 235],
        [235, 16, 16],
        [16, 16, 235],
        [16, 16, 16],
    ],
    dtype=np.uint8,
)


class TestPatternOptions(DriverOptions):
    width: int = Field(default=640, ge=16, le=7680)
    height: int = Field(default=480, ge=16, le=4320)
    fps: float = Field(default=30.0, gt=0, le=240)
    # Run as fast as the caller reads instead of pacing to `fps` (benchmarks).
    realtime: bool = True


class TestPatternDriver(Driver):
    name = "testpattern"
    source = "synthetic"
    Options = TestPatternOptions

    def __init__(self, options: DriverOptions) -> None:
        super().__init__(options)
        assert isinstance(options, TestPatternOptions)
        self._opts = options
        self._open = False
        self._index = 0
        self._next_due = 0.0
        self._background = self._make_background(options.width, options.height)

    @staticmethod
    def _make_background(width: int, height: int) -> npt.NDArray[np.uint8]:
        columns = (np.arange(width) * len(_BARS) // width).astype(np.intp)
        bars = _BARS[columns]
        image = np.broadcast_to(bars, (height, width, 3)).copy()
        ramp = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
        image[height * 3 // 4 :, :, :] = ramp[None, :, None]
        return image

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        self._open = True
        self._next_due = time.monotonic()

    def close(self) -> None:
        self._open = False

    def read(self) -> Frame:
        if not self._open:
            raise DriverError("test pattern is not open")
        if self._opts.realtime:
            delay = self._next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next_due = max(self._next_due + 1.0 / self._opts.fps, time.monotonic() - 1.0)
        index = self._index
        self._index += 1
        return Frame(pixels=self.render(index), index=index)

    def render(self, index: int) -> npt.NDArray[np.uint8]:
        w, h = self._opts.width, self._opts.height
        image = self._background.copy()
        box = max(8, min(w, h) // 6)
        span_x, span_y = max(1, w - box), max(1, h // 2 - box)
        x = (index * 7) % (2 * span_x)
        x = x if x < span_x else 2 * span_x - x
        y = (index * 3) % (2 * span_y)
        y = y if y < span_y else 2 * span_y - y
        image[y : y + box, x : x + box] = (255, 128, 0)
        scale = max(0.4, h / 480)
        stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        for text, row in ((f"#{index:06d}", 0.62), (stamp, 0.72)):
            origin = (max(4, w // 40), int(h * row))
            # A black outline, then the white text: readable on every bar.
            for colour, weight in (((0, 0, 0), 4), ((255, 255, 255), 2)):
                thickness = max(1, int(weight * scale))
                font = cv2.FONT_HERSHEY_SIMPLEX
                cv2.putText(image, text, origin, font, scale, colour, thickness, cv2.LINE_AA)
        return image
