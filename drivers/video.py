"""Video grabbers (HDMI, S-video, composite USB grabbers, UVC) through OpenCV.

The device is named by path or, better, by its stable id under
/dev/v4l/by-id/ (USB re-enumeration renumbers /dev/videoN but not the id).
When the device disappears the driver says so by raising DriverError; the
FrameStream around it backs off and reopens it, and the stream resumes by
itself when the grabber is back. V4L2 specifics sit in `drivers.v4l2`; a
path that is not a character device is opened through FFmpeg instead, which
is how this driver is tested without hardware.
"""

from __future__ import annotations

import os
import time
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from drivers.base import Driver, DriverError, DriverOptions, Frame
from drivers.cvsource import FFMPEG_RAW_MODE, CvReader
from drivers.v4l2 import V4L2_RAW_MODE, is_v4l2_device, open_v4l2


class CropRect(DriverOptions):
    """Cut the device's own on-screen menus and borders away (pixels)."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(ge=16)
    height: int = Field(ge=16)


class VideoOptions(DriverOptions):
    device: str = Field(default="/dev/video0", min_length=1)
    width: int | None = Field(default=None, ge=16, le=7680)
    height: int | None = Field(default=None, ge=16, le=4320)
    fps: float | None = Field(default=None, gt=0, le=240)
    pixel_format: Literal["MJPG", "YUYV"] = "MJPG"
    crop: CropRect | None = None
    # Hand the grabber's JPEG bytes on undecoded (MJPG, no crop).
    passthrough: bool = True
    read_timeout: float = Field(default=5.0, gt=0, le=60)

    @model_validator(mode="after")
    def _size_pairs(self) -> VideoOptions:
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height, or neither")
        return self


class VideoDriver(Driver):
    name = "video"
    source = "video"
    Options = VideoOptions

    def __init__(self, options: DriverOptions) -> None:
        super().__init__(options)
        assert isinstance(options, VideoOptions)
        self._opts = options
        self._reader: CvReader | None = None
        self._count = 0
        self._fps = 0.0
        self._first_ms: float | None = None

    @property
    def is_open(self) -> bool:
        return self._reader is not None

    @property
    def passthrough(self) -> bool:
        """JPEG bytes are handed on only when they are the whole picture."""
        return (
            self._reader is not None
            and self._reader.raw
            and self._opts.crop is None
            and self._opts.pixel_format == "MJPG"
        )

    def open(self) -> None:
        if self._reader is not None:
            return
        device = self._opts.device
        if not os.path.exists(device):
            raise DriverError(f"video device {device} is not there (unplugged?)")
        path = os.path.realpath(device)  # /dev/v4l/by-id/... → /dev/videoN
        want_raw = self._opts.passthrough and self._opts.pixel_format == "MJPG"
        raw_mode = FFMPEG_RAW_MODE
        if is_v4l2_device(path):
            raw_mode = V4L2_RAW_MODE
            cap = open_v4l2(
                path,
                pixel_format=self._opts.pixel_format,
                width=self._opts.width,
                height=self._opts.height,
                fps=self._opts.fps,
                read_timeout=self._opts.read_timeout,
            )
        else:
            cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
            if not cap.isOpened():
                cap.release()
                raise DriverError(f"video source {device} cannot be opened (not a video?)")
        reader = CvReader(cap, want_raw, raw_mode)
        width, height = reader.size
        crop = self._opts.crop
        if crop is not None and (crop.x + crop.width > width or crop.y + crop.height > height):
            reader.release()
            raise DriverError(
                f"capture.options.crop {crop.width}×{crop.height}+{crop.x}+{crop.y} "
                f"lies outside the {width}×{height} picture of {device}"
            )
        self._reader = reader
        self._fps = reader.fps or (self._opts.fps or 0.0)
        self._count = 0
        self._first_ms = None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.release()
            self._reader = None

    def _index(self, position_ms: float) -> int:
        """The device's frame number: from its timestamps when it has them,
        so frames it had to drop appear as gaps, else a plain count."""
        count = self._count
        self._count += 1
        if self._fps <= 0 or position_ms <= 0:
            return count
        if self._first_ms is None:
            self._first_ms = position_ms - count * 1000.0 / self._fps
        return max(count, round((position_ms - self._first_ms) * self._fps / 1000.0))

    def read(self) -> Frame:
        if self._reader is None:
            raise DriverError(f"video device {self._opts.device} is not open")
        picture = self._reader.read()
        if picture is None:
            self.close()
            raise DriverError(
                f"video device {self._opts.device} stopped delivering frames "
                "(unplugged, or no signal)"
            )
        arrived = time.time()
        index = self._index(picture.position_ms)
        crop = self._opts.crop
        if crop is not None:
            pixels = np.ascontiguousarray(
                picture.pixels[crop.y : crop.y + crop.height, crop.x : crop.x + crop.width]
            )
            return Frame(pixels=pixels, index=index, timestamp=arrived)
        jpeg = picture.jpeg if self.passthrough else None
        return Frame(pixels=picture.pixels, index=index, timestamp=arrived, jpeg=jpeg)
