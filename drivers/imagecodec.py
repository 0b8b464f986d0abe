"""The one image decoder: image files as devices send them and as people
import them (BMP, PGM/PPM, TIFF, PNG, JPEG) → 8-bit RGB or monochrome
pixels, one policy for both (8- and 16-bit samples, alpha dropped), keeping a
JPEG's own bytes so they can be stored without a second lossy encode.

A JPEG is handed on as the device made it; making it a complete stream for
DICOM (the Huffman tables many grabbers leave out) is the DICOM layer's job
(gateway.dicom.jpeg). libjpeg-turbo decodes such abbreviated streams itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

IMAGE_SUFFIXES = (
    ".bmp", ".dib", ".pgm", ".ppm", ".pnm", ".tif", ".tiff", ".png", ".jpg", ".jpeg",
)  # fmt: skip
KNOWN_FORMATS = "BMP, PGM/PPM, TIFF, PNG or JPEG"
_PNM_MAXVAL = re.compile(
    rb"^P[2356]\s+(?:#[^\n]*\n\s*)*\d+\s+(?:#[^\n]*\n\s*)*\d+\s+(?:#[^\n]*\n\s*)*(\d+)"
)


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


class ImageError(ValueError):
    """Bytes that are not an image we can use, worded for the technician."""


@dataclass(frozen=True)
class DecodedImage:
    pixels: npt.NDArray[np.uint8]
    format: str
    jpeg: bytes | None = None


def sniff(data: bytes) -> str | None:
    """The format from the file's magic bytes (names sent over a serial line
    are often truncated 8.3 names or absent, so they are not trusted)."""
    if data[:2] == b"BM":
        return "BMP"
    if data[:2] in (b"P2", b"P3", b"P5", b"P6"):
        return "PNM"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if is_jpeg(data):
        return "JPEG"
    return None


def _to_8bit(image: npt.NDArray[np.generic], data: bytes, fmt: str) -> npt.NDArray[np.uint8]:
    if image.dtype == np.uint8:
        return np.asarray(image, dtype=np.uint8)
    if image.dtype == np.uint16:
        top = 65535
        if fmt == "PNM":
            match = _PNM_MAXVAL.match(data)
            if match:
                top = max(1, int(match.group(1)))
        scaled = image.astype(np.float32) * (255.0 / top)
        out: npt.NDArray[np.uint8] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return out
    raise ImageError(f"{fmt} image with {image.dtype} samples is not supported (8 or 16 bit)")


def decode_image(data: bytes, keep_jpeg: bool = True) -> DecodedImage:
    fmt = sniff(data)
    if fmt is None:
        raise ImageError(f"received data is not a {KNOWN_FORMATS} image")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageError(f"{fmt} image is damaged or truncated ({len(data)} bytes)")
    pixels = _to_8bit(image, data, fmt)
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        if channels in (1, 2):  # grey, grey + alpha
            pixels = pixels[:, :, 0]
        elif channels == 4:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB).astype(np.uint8, copy=False)
        else:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB).astype(np.uint8, copy=False)
    jpeg = None
    if fmt == "JPEG" and keep_jpeg:
        # XMODEM pads the last block with SUB bytes: the stream ends at EOI.
        end = data.rfind(b"\xff\xd9")
        jpeg = data[: end + 2] if end > 0 else data
    return DecodedImage(np.ascontiguousarray(pixels, dtype=np.uint8), fmt, jpeg)
