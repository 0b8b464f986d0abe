"""The interface every capture driver shares.

A driver turns one device into a sequence of `Frame`s. It says what kind of
source it is (the DICOM layer maps that to Conversion Type) but never builds
DICOM itself, so a third-party driver needs nothing from `gateway`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

# video: a grabber digitising an analogue or HDMI signal; digital: the device
# sent the image as data (serial, network); file: replayed from disk;
# synthetic: generated (test pattern).
SourceKind = Literal["video", "digital", "file", "synthetic"]


class DriverError(Exception):
    """A device or option problem, worded for the technician or installer."""


class FrameRejected(DriverError):
    """One input was unusable (a failed serial transfer, an undecodable file)
    but the device itself is fine and already ready for the next one, so a
    stream reports it and reads on instead of reopening the device."""


class EndOfStream(DriverError):
    """A finite source (a file replayed without looping) has nothing more;
    retrying would only replay it, so a stream stops instead of reconnecting."""


class DriverOptions(BaseModel):
    """Base for each driver's `[capture.options]` model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Frame:
    """One captured image.

    `pixels` is H×W×3 RGB or H×W monochrome, 8 bits. `jpeg` carries the
    device's own JPEG bytes when it delivered them (MJPEG grabbers), so the
    DICOM layer can wrap them without a second lossy encode; `pixels` is then
    the decoded view for preview.
    """

    pixels: npt.NDArray[np.uint8]
    index: int
    timestamp: float = field(default_factory=time.time)
    jpeg: bytes | None = None
    # A device that encodes H.264 itself (UVC cameras): its access unit as it
    # sent it, Annex B, and whether it is a key frame (IDR, parameter sets in
    # front); `pixels` is the decoded view. Recorded without re-encoding.
    h264: bytes | None = None
    keyframe: bool = False

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3


class Driver(abc.ABC):
    """A capture device. `open` → `read`… → `close`; reopening is allowed."""

    name: ClassVar[str]
    source: ClassVar[SourceKind]
    Options: ClassVar[type[DriverOptions]] = DriverOptions

    def __init__(self, options: DriverOptions) -> None:
        self.options = options

    @classmethod
    def from_options(cls, raw: dict[str, Any]) -> Driver:
        from drivers.registry import parse_options

        return cls(parse_options(cls, raw))

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the device; raise DriverError naming it if that fails."""

    @abc.abstractmethod
    def read(self) -> Frame:
        """Block until the next frame; raise DriverError if the device is lost."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device; safe to call twice."""

    @property
    @abc.abstractmethod
    def is_open(self) -> bool: ...

    # Set by whoever runs the driver (drivers.stream) to learn that a read
    # blocked on an idle device is waiting, not wedged.
    on_alive: Callable[[], None] | None = None

    def alive(self) -> None:
        """Drivers whose `read` waits on a person or a peer (a serial transfer
        that may not come for hours) call this while they wait, so the
        service sees a healthy idle loop rather than a stuck one."""
        if self.on_alive is not None:
            self.on_alive()

    def interrupt(self) -> None:
        """Ask a `read` blocked on another thread to give up soon (raising
        DriverError). Drivers whose reads always end quickly need not bother;
        those that wait on a person or a peer (serial transfers) must."""
        return None

    def frames(
        self,
        count: int | None = None,
        on_rejected: Callable[[FrameRejected], None] | None = None,
    ) -> Iterator[Frame]:
        """Up to `count` frames; a finite source simply ends the iteration.
        With `on_rejected`, an unusable input (a failed serial transfer) is
        handed to it and reading goes on (it may raise to stop); without,
        it ends the iteration with the FrameRejected."""
        taken = 0
        while count is None or taken < count:
            try:
                frame = self.read()
            except EndOfStream:
                return
            except FrameRejected as exc:
                if on_rejected is None:
                    raise
                on_rejected(exc)
                continue
            yield frame
            taken += 1

    def __enter__(self) -> Driver:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
