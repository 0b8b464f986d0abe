"""The one image decoder: image files as devices send them and as people
import them (BMP, PGM/PPM, TIFF, PNG, JPEG) → 8-bit RGB or monochrome
pixels, one policy for both (8- and 16-bit samples, alpha dropped), keeping a
JPEG's own bytes so they can be stored without a second lossy encode.

Pixel bombs: a 3 MB PNG can inflate to gigabytes. Every image's size is read
from its header (PNG IHDR, JPEG SOF, BMP/PNM/TIFF headers) and checked
against a cap before anything is decoded; an image whose header gives no size
is refused rather than decoded blind.

A JPEG is handed on as the device made it; making it a complete stream for
DICOM (the Huffman tables many grabbers leave out) is the DICOM layer's job
(gateway.dicom.jpeg). libjpeg-turbo decodes such abbreviated streams itself.
"""

from __future__ import annotations

import re
import struct
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


# An 8-bit RGB image of this many pixels is 120 MB decoded: far beyond any
# ultrasound, endoscope or scanner image (a 4K frame is 8.3 MP).
DEFAULT_MAX_MEGAPIXELS = 40.0


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


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments to the first SOFn (T.81 B.2.2)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        i += 2 + length
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


_PNM_SIZE = re.compile(rb"^P[2356]\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)")


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    match = _PNM_SIZE.match(data[:1024])
    return (int(match.group(1)), int(match.group(2))) if match else None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first IFD (the page
    OpenCV decodes)."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
        found: dict[int, int] = {}
        for n in range(min(count, 512)):
            at = ifd + 2 + 12 * n
            tag, kind = struct.unpack(order + "HH", data[at : at + 4])
            if tag in (256, 257):
                fmt = "H" if kind == 3 else "I"
                (found[tag],) = struct.unpack(
                    order + fmt, data[at + 8 : at + 8 + struct.calcsize(fmt)]
                )
        return found[256], found[257]
    except (struct.error, KeyError):
        return None


_SIZE_OF = {"PNG": _png_size, "JPEG": _jpeg_size, "BMP": _bmp_size, "PNM": _pnm_size}


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header alone, or None."""
    fmt = sniff(data)
    if fmt is None:
        return None
    return (_SIZE_OF.get(fmt) or _tiff_size)(data)


def check_pixels(width: int, height: int, max_megapixels: float, what: str, key: str) -> None:
    """ImageError naming the size and the cap when `width`×`height` is over it."""
    if width * height > max_megapixels * 1e6:
        raise ImageError(
            f"{what} is {width}×{height} pixels ({width * height / 1e6:.1f} MP), over the "
            f"{max_megapixels:g} MP cap ({key}); refused without decoding"
        )


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


def decode_image(
    data: bytes,
    keep_jpeg: bool = True,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    cap_key: str = "max_megapixels",
) -> DecodedImage:
    """Decode, once the header's size is within `max_megapixels` (`cap_key`
    names the setting in the refusal)."""
    fmt = sniff(data)
    if fmt is None:
        raise ImageError(f"received data is not a {KNOWN_FORMATS} image")
    size = image_size(data)
    if size is None or 0 in size:
        raise ImageError(
            f"{fmt} image is damaged or truncated ({len(data)} bytes; no size in its header)"
        )
    check_pixels(*size, max_megapixels, f"{fmt} image", cap_key)
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
