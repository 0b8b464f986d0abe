"""Replays a video file or a folder of images at their own rate: demos,
training and tests without hardware.

Pacing behaves like a device: frame i is due at start + i/fps; a device
queues a few frames for a reader that is briefly late, and a reader that falls
further behind finds the frames it missed skipped (and counted as dropped by
the stream), as a grabber overwrites its oldest buffers.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
from pydantic import Field

from drivers.base import Driver, DriverError, DriverOptions, EndOfStream, Frame, FrameRejected
from drivers.cvsource import CvReader
from drivers.imagecodec import (
    DEFAULT_MAX_MEGAPIXELS,
    IMAGE_SUFFIXES,
    ImageError,
    check_pixels,
    decode_image,
)

DEFAULT_VIDEO_FPS = 25.0
_CAP_KEY = "capture.options.max_megapixels"
# Like a V4L2 grabber's queue (OpenCV asks for 4 buffers): a reader up to this
# many frames late still gets every frame; later than that, the oldest go.
DEVICE_BUFFERS = 4


class FileOptions(DriverOptions):
    path: Path
    loop: bool = False
    # Frames per second: a folder of images has no rate of its own (default
    # 1); for a video this overrides the file's rate.
    fps: float | None = Field(default=None, gt=0, le=240)
    # Deliver as fast as the reader takes frames instead of at the rate.
    realtime: bool = True
    # Hand MJPEG packets / JPEG files on undecoded in Frame.jpeg.
    passthrough: bool = True
    # An image or video frame larger than this (from its header) is refused undecoded.
    max_megapixels: float = Field(default=DEFAULT_MAX_MEGAPIXELS, gt=0, le=1000)


class FileDriver(Driver):
    name = "file"
    source = "file"
    Options = FileOptions

    def __init__(self, options: DriverOptions) -> None:
        super().__init__(options)
        assert isinstance(options, FileOptions)
        self._opts = options
        self._open = False
        self._reader: CvReader | None = None
        self._images: list[Path] = []
        self._position = 0  # next frame of the file / folder
        self._index = 0  # frames due since open (the "device counter")
        self._fps = 1.0
        self._start = 0.0

    @property
    def is_open(self) -> bool:
        return self._open

    def _open_video(self) -> CvReader:
        cap = cv2.VideoCapture(str(self._opts.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise DriverError(f"{self._opts.path} is not a video file OpenCV can read")
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        try:
            check_pixels(width, height, self._opts.max_megapixels, "a frame", _CAP_KEY)
        except ImageError as exc:
            cap.release()
            raise DriverError(f"{self._opts.path}: {exc}") from None
        return CvReader(cap, self._opts.passthrough)

    def open(self) -> None:
        if self._open:
            return
        path = self._opts.path
        if not path.exists():
            raise DriverError(f"file source {path} does not exist")
        if path.is_dir():
            self._images = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not self._images:
                raise DriverError(f"folder {path} holds no BMP, PGM/PPM, TIFF, PNG or JPEG images")
            self._fps = self._opts.fps or 1.0
        else:
            self._reader = self._open_video()
            self._fps = self._opts.fps or self._reader.fps or DEFAULT_VIDEO_FPS
        self._position = 0
        self._index = 0
        self._start = time.monotonic()
        self._open = True

    def close(self) -> None:
        if self._reader is not None:
            self._reader.release()
            self._reader = None
        self._images = []
        self._open = False

    def _length(self) -> int | None:
        return len(self._images) if self._images else None

    def _pace(self) -> None:
        """Wait until the next frame is due; skip those whose time has passed."""
        if not self._opts.realtime:
            return
        interval = 1.0 / self._fps
        if self._index == 0:
            # The replay's clock starts with its first frame, not at open():
            # opening a decoder is set-up, not frame time.
            self._start = time.monotonic()
        due = self._start + self._index * interval
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
            return
        behind = int((now - due) / interval) - (DEVICE_BUFFERS - 1)
        for _ in range(max(0, behind)):
            if not self._advance():
                break
            self._index += 1

    def _advance(self) -> bool:
        """Move past one frame without decoding it; False at the end."""
        if self._images:
            if self._position + 1 >= len(self._images) and not self._opts.loop:
                return False
            self._position = (self._position + 1) % len(self._images)
            return True
        assert self._reader is not None
        return self._reader.skip()

    def read(self) -> Frame:
        if not self._open:
            raise DriverError(f"file source {self._opts.path} is not open")
        self._pace()
        frame = self._read_image() if self._images else self._read_video()
        self._index += 1
        return frame

    def _read_image(self) -> Frame:
        if self._position >= len(self._images):
            if not self._opts.loop:
                raise EndOfStream(f"end of the images in {self._opts.path}")
            self._position = 0
        path = self._images[self._position]
        self._position += 1
        index = self._index
        try:
            decoded = decode_image(
                path.read_bytes(),
                keep_jpeg=self._opts.passthrough,
                max_megapixels=self._opts.max_megapixels,
                cap_key=_CAP_KEY,
            )
        except (OSError, ImageError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise FrameRejected(f"{path.name}: {reason}") from None
        return Frame(pixels=decoded.pixels, index=index, jpeg=decoded.jpeg)

    def _read_video(self) -> Frame:
        assert self._reader is not None
        picture = self._reader.read()
        if picture is None:
            if not self._opts.loop:
                raise EndOfStream(f"end of {self._opts.path}")
            self._reader.release()
            self._reader = self._open_video()
            picture = self._reader.read()
            if picture is None:
                raise DriverError(f"{self._opts.path} has no readable frames")
        return Frame(pixels=picture.pixels, index=self._index, jpeg=picture.jpeg)
