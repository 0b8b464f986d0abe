"""Pixel data encodings: native, RLE Lossless, JPEG Baseline.

Each encoder fills the Image Pixel module and returns the transfer syntax, so
the IOD builders never need to know how the pixels were packed.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

Encoding = Literal["none", "rle", "jpeg-baseline"]
DEFAULT_JPEG_QUALITY = 90


class PixelError(ValueError):
    """Pixels that cannot be stored as asked (shape, depth, encoder failure)."""


def check_frames(frames: list[npt.NDArray[np.uint8]]) -> tuple[int, int, int]:
    """All frames 8-bit, same size and same number of samples; returns (rows, cols, samples)."""
    if not frames:
        raise PixelError("no frames")
    first = frames[0]
    for i, frame in enumerate(frames):
        if frame.dtype != np.uint8:
            raise PixelError(f"frame {i}: {frame.dtype} pixels; 8-bit expected")
        if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
            raise PixelError(f"frame {i}: shape {frame.shape} is neither H×W nor H×W×3")
        if frame.shape != first.shape:
            raise PixelError(
                f"frame {i}: size {frame.shape[1]}×{frame.shape[0]} differs from "
                f"frame 0's {first.shape[1]}×{first.shape[0]}"
            )
    rows, cols = int(first.shape[0]), int(first.shape[1])
    if rows > 65535 or cols > 65535:
        raise PixelError(f"{cols}×{rows} exceeds DICOM's 65535 rows/columns")
    return rows, cols, 3 if first.ndim == 3 else 1


def _image_pixel(ds: Dataset, rows: int, cols: int, samples: int, photometric: str) -> None:
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def encode_jpeg(frame: npt.NDArray[np.uint8], quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Baseline JPEG through OpenCV's libjpeg-turbo, colour as 4:2:2 so the
    DICOM label YBR_FULL_422 is literally true."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if frame.ndim == 3:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422]
        frame = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR).astype(np.uint8, copy=False)
    ok, buf = cv2.imencode(".jpg", frame, params)
    if not ok:
        raise PixelError("JPEG encoder failed")
    return bytes(buf)


def set_pixels(ds: Dataset, frames: list[npt.NDArray[np.uint8]], encoding: Encoding) -> UID:
    """Fill Image Pixel and Pixel Data; return the transfer syntax to write with."""
    rows, cols, samples = check_frames(frames)
    photometric = "RGB" if samples == 3 else "MONOCHROME2"
    if encoding == "none":
        _image_pixel(ds, rows, cols, samples, photometric)
        ds.PixelData = b"".join(np.ascontiguousarray(f).tobytes() for f in frames)
        return ExplicitVRLittleEndian
    if encoding == "rle":
        _image_pixel(ds, rows, cols, samples, photometric)
        if len(frames) > 1:
            ds.NumberOfFrames = len(frames)
        arr = np.stack(frames) if len(frames) > 1 else frames[0]
        ds.compress(RLELossless, arr, encoding_plugin="pydicom", generate_instance_uid=False)
        return RLELossless
    if encoding == "jpeg-baseline":
        _image_pixel(ds, rows, cols, samples, "YBR_FULL_422" if samples == 3 else photometric)
        encoded = [encode_jpeg(f) for f in frames]
        set_lossy(ds, sum(len(e) for e in encoded), rows * cols * samples * len(frames))
        ds.PixelData = encapsulate(encoded, has_bot=True)
        ds["PixelData"].VR = "OB"
        return JPEGBaseline8Bit
    raise PixelError(f"unknown encoding {encoding!r}")


def set_lossy(ds: Dataset, compressed: int, raw: int) -> None:
    """Lossy Image Compression attributes (PS3.3 C.7.6.1.1.5): once lossy, a
    copy must say so forever."""
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{raw / max(1, compressed):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
