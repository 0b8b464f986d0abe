"""Pixel data encodings: native, RLE Lossless, JPEG Baseline, and JPEG
passed through as delivered.

Each encoder fills the Image Pixel module and returns the transfer syntax, so
the IOD builders never need to know how the pixels were packed. Frames are
taken from an iterable and encoded as they come, so a long clip is never held
uncompressed in memory when it is stored as JPEG.
"""

from __future__ import annotations

import functools
import os
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.pixels.encoders.base import RLELosslessEncoder
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from gateway.dicom import jpeg
from gateway.dicom.jpeg import JpegError, JpegInfo

Encoding = Literal["none", "rle", "jpeg-baseline"]
ENCODINGS: tuple[Encoding, ...] = ("none", "rle", "jpeg-baseline")
# 90 keeps the test pattern above 40 dB PSNR (tests/test_dicom_objects.py).
DEFAULT_JPEG_QUALITY = 90
# Native Pixel Data has a 32-bit length (PS3.5 7.1.2), even length required.
_MAX_NATIVE = 0xFFFFFFFE


class PixelError(ValueError):
    """Pixels that cannot be stored as asked (shape, depth, encoder failure)."""


Pixels = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG Baseline stream from a device or a file, checked and ready to
    wrap without decoding."""

    data: bytes
    info: JpegInfo

    @classmethod
    def from_bytes(cls, data: bytes) -> EncodedJpeg:
        info = jpeg.parse(data)
        if not info.baseline or info.precision != 8:
            raise JpegError(
                f"JPEG is not 8-bit baseline (precision {info.precision}, "
                f"{'baseline' if info.baseline else 'progressive/extended/lossless'})"
            )
        if not info.has_huffman_tables:
            data = jpeg.with_huffman_tables(data)
        return cls(jpeg.trim(data), info)


FrameData = Pixels | EncodedJpeg

# The layouts DICOM accepts for JPEG Baseline in these IODs (dciodvfy refuses
# YBR_FULL, i.e. 4:4:4 colour, and RGB-coded JPEG).
_WRAPPABLE = ("YBR_FULL_422", "MONOCHROME2")


def wrappable(info: JpegInfo, colour_only: bool = False) -> bool:
    """Whether a JPEG stream can be wrapped as is; otherwise it is decoded."""
    if colour_only and info.components != 3:
        return False
    return info.photometric in _WRAPPABLE


@dataclass(frozen=True)
class LossyHistory:
    """A lossy compression the pixels went through before they reached us (a
    device's JPEG, an MPEG-4 video): a copy must say so forever, even when we
    store it losslessly (PS3.3 C.7.6.1.1.5)."""

    ratio: float
    method: str | None  # DICOM defined term, e.g. ISO_10918_1; None if unknown

    @classmethod
    def of_jpeg(cls, size: int, width: int, height: int, samples: int) -> LossyHistory:
        return cls(width * height * samples / max(1, size), "ISO_10918_1")


def check_frame(i: int, frame: Pixels, first: Pixels) -> None:
    if frame.dtype != np.uint8:
        raise PixelError(f"frame {i}: {frame.dtype} pixels; 8-bit expected")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise PixelError(f"frame {i}: shape {frame.shape} is neither H×W nor H×W×3")
    if frame.shape != first.shape:
        raise PixelError(
            f"frame {i}: size {frame.shape[1]}×{frame.shape[0]}"
            f"{'' if frame.ndim == first.ndim else ' (' + _kind(frame) + ')'} differs from "
            f"frame 0's {first.shape[1]}×{first.shape[0]}"
            f"{'' if frame.ndim == first.ndim else ' (' + _kind(first) + ')'}"
        )


def _kind(frame: Pixels) -> str:
    return "colour" if frame.ndim == 3 else "monochrome"


def check_frames(frames: list[Pixels]) -> tuple[int, int, int]:
    """All frames 8-bit, same size and same number of samples; returns (rows, cols, samples)."""
    if not frames:
        raise PixelError("no frames")
    for i, frame in enumerate(frames):
        check_frame(i, frame, frames[0])
    return _geometry(frames[0])


def _geometry(first: Pixels) -> tuple[int, int, int]:
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


def encode_jpeg(frame: Pixels, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Baseline JPEG through OpenCV's libjpeg-turbo, colour as 4:2:2 so the
    DICOM label YBR_FULL_422 is literally true."""
    import cv2  # only when encoding: wrapping a JPEG needs no codec

    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if frame.ndim == 3:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422]
        frame = np.asarray(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", frame, params)
    if not ok:
        raise PixelError("JPEG encoder failed")
    return buf.tobytes()


def encapsulate(fragments: list[bytes]) -> bytes:
    """Encapsulated Pixel Data (PS3.5 A.4): a Basic Offset Table, then one
    even-length item per frame."""
    items: list[bytes] = []
    offsets: list[int] = []
    offset = 0
    for frag in fragments:
        pad = b"\x00" if len(frag) % 2 else b""
        offsets.append(offset)
        items.append(struct.pack("<HHI", 0xFFFE, 0xE000, len(frag) + len(pad)))
        items.append(frag)
        if pad:
            items.append(pad)
        offset += 8 + len(frag) + len(pad)
    if offset > 0xFFFFFFFF:
        raise PixelError("encoded frames exceed the 4 GB a Basic Offset Table can address")
    bot = struct.pack(f"<{len(offsets)}I", *offsets)
    return b"".join([struct.pack("<HHI", 0xFFFE, 0xE000, len(bot)), bot, *items])


def _pipelined(
    frames: Iterator[Pixels], first: Pixels, quality: int, workers: int
) -> Iterator[bytes]:
    """JPEG-encode on a thread pool, in order, with a bounded number of frames
    in flight (OpenCV releases the GIL while encoding)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jpeg") as pool:
        pending: deque[Future[bytes]] = deque()
        for i, frame in enumerate(frames):
            check_frame(i, frame, first)
            pending.append(pool.submit(encode_jpeg, frame, quality))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@functools.cache
def _rle_plugin() -> str:
    """pydicom's RLE encoder through pylibjpeg-rle (a dependency; ~13× the
    speed of the pure-Python plugin), else its own."""
    return "pylibjpeg" if "pylibjpeg" in RLELosslessEncoder.available_plugins else "pydicom"


def _rle(frame: Pixels, rows: int, cols: int, samples: int) -> bytes:
    return RLELosslessEncoder.encode(
        np.ascontiguousarray(frame),
        encoding_plugin=_rle_plugin(),
        rows=rows,
        columns=cols,
        samples_per_pixel=samples,
        bits_allocated=8,
        bits_stored=8,
        pixel_representation=0,
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
        number_of_frames=1,
        planar_configuration=0,
    )


def set_pixels(
    ds: Dataset,
    frames: Iterable[FrameData],
    encoding: Encoding,
    *,
    multiframe: bool = False,
    quality: int = DEFAULT_JPEG_QUALITY,
    colour_only: bool = False,
    workers: int | None = None,
    history: LossyHistory | None = None,
) -> UID:
    """Fill Image Pixel (and Number of Frames when `multiframe`) and Pixel
    Data; return the transfer syntax to write with.

    Frames already in JPEG are wrapped as they are, whatever `encoding` says:
    decoding and re-encoding would only lose quality. `colour_only` (Multi-frame
    True Colour SC) turns monochrome pixels into RGB.
    """
    it = iter(frames)
    try:
        first = next(it)
    except StopIteration:
        raise PixelError("no frames") from None
    if isinstance(first, EncodedJpeg):
        return _set_passthrough(ds, first, it, multiframe=multiframe, colour_only=colour_only)
    if colour_only and first.ndim == 2:
        return set_pixels(
            ds,
            (_as_rgb(f) for f in _arrays(_chain(first, it))),
            encoding,
            multiframe=multiframe,
            quality=quality,
            workers=workers,
            history=history,
        )
    rows, cols, samples = _geometry(first)
    arrays = _arrays(_chain(first, it))
    raw_size = rows * cols * samples
    if encoding == "none":
        _image_pixel(ds, rows, cols, samples, "RGB" if samples == 3 else "MONOCHROME2")
        # The frames themselves (a clip's are the ring buffer's arrays), copied
        # once by the join: a 10 s clip costs its size once, not three times.
        chunks: list[memoryview | bytes] = []
        for i, frame in enumerate(arrays):
            check_frame(i, frame, first)
            if (i + 1) * raw_size > _MAX_NATIVE:
                raise PixelError(
                    f"{i + 1} uncompressed frames of {cols}×{rows} exceed the 4 GB one "
                    "object can hold; use jpeg-baseline or a shorter clip"
                )
            chunks.append(np.ascontiguousarray(frame).data)
        count = len(chunks)
        if (count * raw_size) % 2:
            chunks.append(b"\x00")
        ds.PixelData = b"".join(chunks)
        transfer_syntax = ExplicitVRLittleEndian
    elif encoding == "rle":
        _image_pixel(ds, rows, cols, samples, "RGB" if samples == 3 else "MONOCHROME2")
        encoded: list[bytes] = []
        for i, frame in enumerate(arrays):
            check_frame(i, frame, first)
            encoded.append(_rle(frame, rows, cols, samples))
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        count = len(encoded)
        transfer_syntax = RLELossless
    elif encoding == "jpeg-baseline":
        _image_pixel(ds, rows, cols, samples, "YBR_FULL_422" if samples == 3 else "MONOCHROME2")
        n_workers = workers or min(4, os.cpu_count() or 1)
        encoded = list(_pipelined(arrays, first, quality, n_workers))
        set_lossy(ds, sum(len(e) for e in encoded), raw_size * len(encoded), history)
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        count = len(encoded)
        transfer_syntax = JPEGBaseline8Bit
    else:
        raise PixelError(f"unknown encoding {encoding!r}")
    if history is not None and encoding != "jpeg-baseline":
        set_lossy(ds, 0, 0, history, now=False)
    if multiframe:
        ds.NumberOfFrames = count
    elif count != 1:
        raise PixelError(f"{count} frames given for a single-frame image")
    return transfer_syntax


def _chain(first: FrameData, rest: Iterator[FrameData]) -> Iterator[FrameData]:
    yield first
    yield from rest


def _arrays(frames: Iterator[FrameData]) -> Iterator[Pixels]:
    for i, frame in enumerate(frames):
        if isinstance(frame, EncodedJpeg):
            raise PixelError(f"frame {i}: JPEG bytes among decoded frames")
        yield frame


def _as_rgb(frame: Pixels) -> Pixels:
    return np.repeat(frame[:, :, None], 3, axis=2) if frame.ndim == 2 else frame


def _set_passthrough(
    ds: Dataset,
    first: EncodedJpeg,
    rest: Iterator[FrameData],
    *,
    multiframe: bool,
    colour_only: bool,
) -> UID:
    info = first.info
    if not wrappable(info, colour_only):
        raise PixelError(
            f"JPEG frames coded as {info.photometric}"
            f"{' (monochrome)' if info.components == 1 else ''} cannot be wrapped in this "
            "object; decode them instead"
        )
    fragments: list[bytes] = []
    for i, frame in enumerate(_chain(first, rest)):
        if not isinstance(frame, EncodedJpeg):
            raise PixelError(f"frame {i}: decoded pixels among JPEG frames")
        other = frame.info
        if (other.width, other.height, other.components, other.sampling) != (
            info.width,
            info.height,
            info.components,
            info.sampling,
        ):
            raise PixelError(
                f"frame {i}: JPEG {other.width}×{other.height}, {other.components} "
                f"component(s) differs from frame 0's {info.width}×{info.height}, "
                f"{info.components} component(s)"
            )
        fragments.append(frame.data)
    if not multiframe and len(fragments) != 1:
        raise PixelError(f"{len(fragments)} frames given for a single-frame image")
    _image_pixel(ds, info.height, info.width, info.components, info.photometric)
    raw = info.width * info.height * info.components * len(fragments)
    set_lossy(ds, sum(len(f) for f in fragments), raw)
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    if multiframe:
        ds.NumberOfFrames = len(fragments)
    return JPEGBaseline8Bit


def set_lossy(
    ds: Dataset,
    compressed: int,
    raw: int,
    history: LossyHistory | None = None,
    *,
    now: bool = True,
) -> None:
    """Lossy Image Compression attributes (PS3.3 C.7.6.1.1.5): once lossy, a
    copy must say so forever; ratio and method list every lossy step, oldest
    first (`now`: this encoding is one of them)."""
    ratios = [history.ratio] if history else []
    methods = [history.method] if history else []
    if now:
        ratios.append(raw / max(1, compressed))
        methods.append("ISO_10918_1")
    ds.LossyImageCompression = "01"
    values = [f"{r:.2f}"[:16] for r in ratios]
    ds.LossyImageCompressionRatio = values if len(values) > 1 else values[0]
    if all(methods):
        known = [m for m in methods if m]
        ds.LossyImageCompressionMethod = known if len(known) > 1 else known[0]
