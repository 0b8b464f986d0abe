"""JPEG bytes as grabbers send them, made fit to hand on undecoded.

Many UVC/MJPEG grabbers leave the Huffman tables out of every frame (the
"abbreviated" AVI1 form, relying on the standard tables of ITU T.81 Annex K).
A DICOM JPEG Baseline object must carry a complete interchange-format stream,
so passthrough inserts the standard tables where they are missing.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

SOI = b"\xff\xd8"
_DHT = 0xC4
_SOS = 0xDA
# Markers without a length field (RSTn, SOI, EOI, TEM).
_STANDALONE = {0x01, *range(0xD0, 0xDA)}


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment up to and including SOS."""
    out: list[tuple[int, int, int]] = []
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            out.append((marker, pos, pos + 2))
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise ValueError(f"JPEG segment at byte {pos} runs past the end")
        out.append((marker, pos, end))
        if marker == _SOS:
            break
        pos = end
    return out


@functools.cache
def standard_huffman_tables() -> bytes:
    """The DHT segments of Annex K, taken from libjpeg's own encoder (which
    uses exactly those tables unless asked to optimise), so no table is typed
    in by hand here."""
    sample = np.zeros((16, 16, 3), np.uint8)
    ok, buf = cv2.imencode(".jpg", sample, [cv2.IMWRITE_JPEG_OPTIMIZE, 0])
    if not ok:  # pragma: no cover - OpenCV without a JPEG encoder
        raise RuntimeError("OpenCV cannot encode JPEG")
    data = bytes(buf)
    return b"".join(data[s:e] for m, s, e in _segments(data) if m == _DHT)


def ensure_huffman_tables(data: bytes) -> bytes:
    """`data` unchanged if it defines Huffman tables, else with Annex K's
    inserted before the start of scan. Raises ValueError for a non-JPEG."""
    if not is_jpeg(data):
        raise ValueError("not a JPEG stream")
    segments = _segments(data)
    if any(m == _DHT for m, _, _ in segments):
        return data
    sos = next((s for m, s, _ in segments if m == _SOS), None)
    if sos is None:
        raise ValueError("JPEG stream has no start of scan")
    return data[:sos] + standard_huffman_tables() + data[sos:]
