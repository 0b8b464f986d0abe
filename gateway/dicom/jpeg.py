"""JPEG streams wrapped as they are: read their headers, check their structure,
and give MJPEG frames the Huffman tables they leave out.

Wrapping a device's or a file's JPEG without decoding avoids a second lossy
generation and costs almost nothing; but the bytes then go to a PACS that
must decode them for years, so they are checked here first: a truncated or
non-baseline stream is refused instead of being filed as an image nobody can
open.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
_SOF_BASELINE = 0xC0
# Every start-of-frame marker; all but C0 need another transfer syntax.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_DHT, _SOS, _APP14 = 0xC4, 0xDA, 0xEE
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field


class JpegError(ValueError):
    """A JPEG stream that cannot be wrapped as JPEG Baseline, saying why."""


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    components: int
    precision: int
    baseline: bool
    # (horizontal, vertical) sampling factor per component
    sampling: tuple[tuple[int, int], ...]
    has_huffman_tables: bool
    adobe_transform: int | None  # APP14 "Adobe" colour transform, if present
    component_ids: tuple[int, ...]

    @property
    def photometric(self) -> str:
        """The Photometric Interpretation DICOM requires for these bytes
        (PS3.5 8.2.1): what the JPEG stream holds, not what it decodes to."""
        if self.components == 1:
            return "MONOCHROME2"
        if self.adobe_transform == 0 or self.component_ids == (ord("R"), ord("G"), ord("B")):
            return "RGB"
        if all(s == self.sampling[0] for s in self.sampling):
            return "YBR_FULL"
        return "YBR_FULL_422"


def parse(data: bytes) -> JpegInfo:
    """Headers and structure of one JPEG stream; JpegError on anything a
    decoder would choke on (truncation, missing frame header, bad lengths)."""
    if len(data) < 4 or not data.startswith(SOI):
        raise JpegError("not a JPEG stream (no start-of-image marker)")
    pos, n = 2, len(data)
    sof: tuple[int, int, int, int, list[tuple[int, int, int]]] | None = None
    has_dht = False
    adobe: int | None = None
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 2 > n:
            raise JpegError("truncated JPEG stream (ends inside the headers)")
        if data[pos] != 0xFF:
            raise JpegError(f"corrupt JPEG stream (no marker at byte {pos})")
        marker = data[pos + 1]
        pos += 2
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:
            raise JpegError("corrupt JPEG stream (end of image before any scan)")
        if pos + 2 > n:
            raise JpegError("truncated JPEG stream (ends inside a segment)")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or marker < 0xC0:
            raise JpegError(f"corrupt JPEG stream (invalid segment at byte {pos - 2})")
        if pos + length > n:
            raise JpegError("truncated JPEG stream (segment runs past the end)")
        body = data[pos + 2 : pos + length]
        if marker in _SOF_MARKERS:
            if len(body) < 6:
                raise JpegError("corrupt JPEG frame header")
            precision, height, width, count = struct.unpack_from(">BHHB", body)
            if len(body) < 6 + 3 * count:
                raise JpegError("corrupt JPEG frame header")
            comps = [
                (body[6 + 3 * i], body[7 + 3 * i] >> 4, body[7 + 3 * i] & 0x0F)
                for i in range(count)
            ]
            sof = (marker, precision, height, width, comps)
        elif marker == _DHT:
            has_dht = True
        elif marker == _APP14 and body.startswith(b"Adobe") and len(body) >= 12:
            adobe = body[11]
        pos += length
        if marker == _SOS:
            break
    if sof is None:
        raise JpegError("corrupt JPEG stream (no frame header before the scan)")
    _check_tail(data, pos)
    marker, precision, height, width, comps = sof
    if height == 0 or width == 0:
        raise JpegError("JPEG without its size in the frame header is not supported")
    if len(comps) not in (1, 3):
        raise JpegError(f"JPEG with {len(comps)} components; 1 or 3 expected")
    return JpegInfo(
        width=width,
        height=height,
        components=len(comps),
        precision=precision,
        baseline=marker == _SOF_BASELINE,
        sampling=tuple((h, v) for _, h, v in comps),
        has_huffman_tables=has_dht,
        adobe_transform=adobe,
        component_ids=tuple(c for c, _, _ in comps),
    )


def _check_tail(data: bytes, scan_start: int) -> None:
    """The stream must end with EOI (padding after it is tolerated, as many
    cameras and MJPEG devices add some)."""
    end = data.rfind(EOI)
    if end < scan_start:
        raise JpegError("truncated JPEG stream (no end-of-image marker)")
    if data[end + 2 :].strip(b"\x00\xff"):
        raise JpegError("corrupt JPEG stream (data after the end-of-image marker)")


def trim(data: bytes) -> bytes:
    """The stream up to and including EOI, without trailing padding."""
    end = data.rfind(EOI)
    return data if end < 0 or end + 2 == len(data) else data[: end + 2]


# ITU-T T.81 Annex K.3: the tables MJPEG devices assume (and the AVI1 MJPEG
# format says decoders must use) when a frame carries no DHT segment.
_DC_LUMA_BITS = bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
_DC_CHROMA_BITS = bytes([0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
_DC_VALUES = bytes(range(12))
_AC_LUMA_BITS = bytes([0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D])
_AC_LUMA_VALUES = bytes.fromhex(
    """
    01 02 03 00 04 11 05 12 21 31 41 06 13 51 61 07 22 71 14 32 81 91 a1 08
    23 42 b1 c1 15 52 d1 f0 24 33 62 72 82 09 0a 16 17 18 19 1a 25 26 27 28
    29 2a 34 35 36 37 38 39 3a 43 44 45 46 47 48 49 4a 53 54 55 56 57 58 59
    5a 63 64 65 66 67 68 69 6a 73 74 75 76 77 78 79 7a 83 84 85 86 87 88 89
    8a 92 93 94 95 96 97 98 99 9a a2 a3 a4 a5 a6 a7 a8 a9 aa b2 b3 b4 b5 b6
    b7 b8 b9 ba c2 c3 c4 c5 c6 c7 c8 c9 ca d2 d3 d4 d5 d6 d7 d8 d9 da e1 e2
    e3 e4 e5 e6 e7 e8 e9 ea f1 f2 f3 f4 f5 f6 f7 f8 f9 fa
    """
)
_AC_CHROMA_BITS = bytes([0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77])
_AC_CHROMA_VALUES = bytes.fromhex(
    """
    00 01 02 03 11 04 05 21 31 06 12 41 51 07 61 71 13 22 32 81 08 14 42 91
    a1 b1 c1 09 23 33 52 f0 15 62 72 d1 0a 16 24 34 e1 25 f1 17 18 19 1a 26
    27 28 29 2a 35 36 37 38 39 3a 43 44 45 46 47 48 49 4a 53 54 55 56 57 58
    59 5a 63 64 65 66 67 68 69 6a 73 74 75 76 77 78 79 7a 82 83 84 85 86 87
    88 89 8a 92 93 94 95 96 97 98 99 9a a2 a3 a4 a5 a6 a7 a8 a9 aa b2 b3 b4
    b5 b6 b7 b8 b9 ba c2 c3 c4 c5 c6 c7 c8 c9 ca d2 d3 d4 d5 d6 d7 d8 d9 da
    e2 e3 e4 e5 e6 e7 e8 e9 ea f2 f3 f4 f5 f6 f7 f8 f9 fa
    """
)


def _table(klass_id: int, bits: bytes, values: bytes) -> bytes:
    assert sum(bits) == len(values)
    return bytes([klass_id]) + bits + values


_TABLES = (
    _table(0x00, _DC_LUMA_BITS, _DC_VALUES)
    + _table(0x10, _AC_LUMA_BITS, _AC_LUMA_VALUES)
    + _table(0x01, _DC_CHROMA_BITS, _DC_VALUES)
    + _table(0x11, _AC_CHROMA_BITS, _AC_CHROMA_VALUES)
)
STANDARD_DHT = b"\xff\xc4" + struct.pack(">H", len(_TABLES) + 2) + _TABLES


def with_huffman_tables(data: bytes) -> bytes:
    """The stream with the standard tables inserted right after SOI, if it
    has none (a DHT before the frame header is valid, T.81 B.2.4)."""
    if parse(data).has_huffman_tables:
        return data
    return data[:2] + STANDARD_DHT + data[2:]
