"""The V4L2-only part of the video driver, kept to this one seam.

Everything else in `drivers.video` (crop, passthrough, frame counting,
hot-plug) runs the same whether OpenCV reads a V4L2 device or, in the tests,
a video file through FFmpeg. What only a real grabber exercises, and what
therefore cannot run on a machine without /dev/video*, is here:

- opening with the V4L2 back-end rather than letting OpenCV guess;
- negotiating the pixel format (FOURCC MJPG or YUYV), size and rate, and
  refusing to run when the device silently picked something else;
- undecoded MJPEG: OpenCV's V4L2 back-end hands out the raw buffer when
  `CAP_PROP_CONVERT_RGB` is 0 (it ignores `CAP_PROP_FORMAT = -1`, FFmpeg's
  switch), so passthrough needs `V4L2_RAW_MODE`;
- a read time-out, so a grabber that hangs (USB reset) fails a read instead
  of blocking it for ever (OpenCV's V4L2 back-end waits in select(); older
  OpenCV builds ignore `CAP_PROP_READ_TIMEOUT_MSEC` and use their own 10 s).
"""

from __future__ import annotations

import os
import stat

import cv2

from drivers.base import DriverError
from drivers.cvsource import fourcc_name

V4L2_RAW_MODE = (cv2.CAP_PROP_CONVERT_RGB, 0.0)


def is_v4l2_device(path: str) -> bool:
    """A character device is a V4L2 node; anything else is a file or URL."""
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def open_v4l2(
    path: str,
    *,
    pixel_format: str,
    width: int | None,
    height: int | None,
    fps: float | None,
    read_timeout: float,
) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(path, cv2.CAP_V4L2)
    if not cap.isOpened():
        cap.release()
        raise DriverError(f"cannot open video device {path} (busy, or not a capture device)")
    # The format first: a grabber's size and rate choices depend on it.
    cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*pixel_format))
    if width:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
    if height:
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    if fps:
        cap.set(cv2.CAP_PROP_FPS, fps)
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 4)
    cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout * 1000))
    got_format = fourcc_name(cap.get(cv2.CAP_PROP_FOURCC))
    got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    if got_format != pixel_format or (width and got[0] != width) or (height and got[1] != height):
        cap.release()
        asked = f"{pixel_format} {width or '?'}×{height or '?'}"
        raise DriverError(
            f"video device {path} does not offer {asked}; it chose {got_format} {got[0]}×{got[1]} "
            "(see `v4l2-ctl --list-formats-ext`)"
        )
    return cap
