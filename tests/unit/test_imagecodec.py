"""Decoding what instruments send, and making grabbers' JPEGs complete."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from drivers.imagecodec import ImageError, decode_image
from gateway.dicom import jpeg
from tests.support.driver_sources import numbered_image


def _segments(jpeg: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment up to and including SOS."""
    out, pos = [], 2
    while True:
        marker = jpeg[pos + 1]
        end = pos + 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        out.append((marker, pos, end))
        if marker == 0xDA:
            return out
        pos = end


def _without_huffman_tables(jpeg: bytes) -> bytes:
    """What many UVC grabbers send: the DHT segments left out."""
    segments = _segments(jpeg)
    sos = next(s for m, s, _ in segments if m == 0xDA)
    kept = b"".join(jpeg[s:e] for m, s, e in segments if m not in (0xC4, 0xDA))
    return jpeg[:2] + kept + jpeg[sos:]


def _tables(jpeg: bytes) -> bytes:
    """The Huffman table definitions of a stream, whatever DHT segments hold them."""
    return b"".join(jpeg[s + 4 : e] for m, s, e in _segments(jpeg) if m == 0xC4)


def test_missing_huffman_tables_are_inserted_and_decode_identically() -> None:
    ok, buf = cv2.imencode(".jpg", numbered_image(4, 320, 240))
    assert ok
    full = bytes(buf)
    bare = _without_huffman_tables(full)
    assert b"\xff\xc4" not in bare
    fixed = jpeg.with_huffman_tables(bare)
    # The tables typed in from T.81 Annex K are the ones libjpeg uses itself.
    assert _tables(fixed) == _tables(full)
    decode = lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)  # noqa: E731
    assert np.array_equal(decode(fixed), decode(full))
    assert np.array_equal(decode(bare), decode(full))  # libjpeg-turbo reads it as it is
    assert jpeg.with_huffman_tables(full) is full  # complete streams pass untouched


def test_non_jpeg_is_refused() -> None:
    with pytest.raises(ValueError, match="not a JPEG"):
        jpeg.with_huffman_tables(b"BM....")


def test_grey_jpeg_is_monochrome_and_keeps_its_bytes_without_xmodem_padding() -> None:
    ok, buf = cv2.imencode(".jpg", numbered_image(2)[:, :, 0])
    assert ok
    padded = bytes(buf) + b"\x1a" * 100  # XMODEM fills the last block with SUB
    image = decode_image(padded)
    assert image.format == "JPEG" and image.pixels.ndim == 2
    assert image.jpeg == bytes(buf)


def test_png_with_alpha_and_16_bit_png() -> None:
    rgba = np.dstack([numbered_image(1), np.full((120, 160), 128, np.uint8)])
    ok, buf = cv2.imencode(".png", rgba)
    assert ok
    image = decode_image(bytes(buf))
    assert image.pixels.shape == (120, 160, 3)
    assert np.array_equal(image.pixels, cv2.cvtColor(numbered_image(1), cv2.COLOR_BGR2RGB))
    deep = (np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 31).astype(np.uint16)
    ok, buf = cv2.imencode(".png", deep)
    assert ok
    grey = decode_image(bytes(buf))
    assert grey.pixels.dtype == np.uint8 and grey.pixels.shape == (32, 64)
    assert grey.pixels[-1, -1] == round(int(deep[-1, -1]) * 255 / 65535)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"%PDF-1.4 report", "not a BMP, PGM/PPM, TIFF, PNG or JPEG image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "PNG image is damaged or truncated"),
        (b"P5\n10 10\n255\n" + b"\0" * 5, "PNM image is damaged or truncated"),
    ],
)
def test_bad_files_are_named(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_image(data)
