"""One OpenCV capture, read either decoded or raw (undecoded MJPEG packets).

Shared by the video and file drivers. In raw mode (`CAP_PROP_FORMAT = -1` for
OpenCV's FFmpeg back-end, `CAP_PROP_CONVERT_RGB = 0` for its V4L2 back-end)
`read` returns the stream's own JPEG bytes (as the device made them, Huffman
tables or not); they are decoded once for the preview and kept for the DICOM
layer, so a still is not JPEG-compressed a second time.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from drivers.imagecodec import is_jpeg

MJPG = cv2.VideoWriter.fourcc(*"MJPG")
# How FFmpeg is asked for undecoded packets; V4L2 differs (see drivers.v4l2).
FFMPEG_RAW_MODE = (cv2.CAP_PROP_FORMAT, -1.0)


def fourcc_name(code: float) -> str:
    value = int(code)
    return "".join(chr((value >> (8 * i)) & 0xFF) for i in range(4)).strip("\0 ")


def _rgb(bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.uint8, copy=False)


@dataclass(frozen=True)
class Picture:
    pixels: npt.NDArray[np.uint8]  # RGB
    jpeg: bytes | None
    position_ms: float  # the stream's own timestamp of the frame (0 if it has none)


class CvReader:
    """A cv2.VideoCapture that yields RGB pixels and, when raw, the JPEG bytes."""

    def __init__(
        self,
        capture: cv2.VideoCapture,
        want_raw: bool,
        raw_mode: tuple[int, float] = FFMPEG_RAW_MODE,
    ) -> None:
        self.capture = capture
        self.raw = False
        if want_raw and int(capture.get(cv2.CAP_PROP_FOURCC)) == MJPG:
            self.raw = bool(capture.set(*raw_mode))

    @property
    def fps(self) -> float:
        value = float(self.capture.get(cv2.CAP_PROP_FPS))
        return value if 0 < value < 1000 else 0.0

    @property
    def size(self) -> tuple[int, int]:
        return (
            int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )

    def skip(self) -> bool:
        """Pass one frame without decoding it (falling behind a paced source)."""
        return bool(self.capture.grab())

    def read(self) -> Picture | None:
        """The next picture, or None when the source gave nothing."""
        ok, data = self.capture.read()
        if not ok or data is None or data.size == 0:
            return None
        position = float(self.capture.get(cv2.CAP_PROP_POS_MSEC))
        if self.raw:
            packet = data.tobytes()
            if not is_jpeg(packet):
                return None
            bgr = cv2.imdecode(np.frombuffer(packet, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                return None
            return Picture(
                cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.uint8, copy=False), packet, position
            )
        if data.ndim == 2:
            return Picture(np.ascontiguousarray(data, dtype=np.uint8), None, position)
        return Picture(
            cv2.cvtColor(data, cv2.COLOR_BGR2RGB).astype(np.uint8, copy=False), None, position
        )

    def release(self) -> None:
        self.capture.release()
