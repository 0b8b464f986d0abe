"""Video in DICOM: an H.264 or HEVC elementary stream encapsulated as PS3.5
§8.2.8/§8.2.9 and Annex A.4 say, whether it comes from our own encoder (a
recording, a clip) or from a file that already held such a stream (wrapped
as it is, never a second lossy generation).

Why the rules below. The transfer syntax names a profile and a level, and a
PACS that accepts it trusts that its decoder can play the stream, so a stream
is wrapped under a syntax only when its own sequence parameter set says it
fits: H.264 up to High Profile level 4.1 as MPEG-4 AVC/H.264 High Profile /
Level 4.1 (…4.102), level 4.2 (1080p at 50/60 frames/s) as the 2D Level 4.2
syntax (…4.104), 8-bit 4:2:0 HEVC Main up to level 5.1 as …4.107. Anything
else is re-encoded.

The encapsulation: the Basic Offset Table is present and empty (a stream has
no per-frame fragments), the stream follows in fragments of at most
`FRAGMENT_BYTES`, cut at even offsets so that the fragments joined are the
stream itself (only the last may carry one pad byte, which an Annex B reader
takes as a trailing zero byte). Photometric Interpretation YBR_PARTIAL_420,
Number of Frames the stream's, Lossy Image Compression 01 with the method
ISO_14496_10 (ISO_23008_2 for HEVC) after any earlier lossy step.

The encoder streams: frames go in one at a time (colour conversion on one
worker thread, pipelined with the encoder, which has its own threads), and
only the compressed stream is kept. The Raspberry Pi's hardware encoder
(`h264_v4l2m2m`) is used when it opens, libx264 otherwise; `encoder` names
the one that ran.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
from pydicom.uid import UID

from gateway.dicom.pixels import LossyHistory, PixelError, Pixels

if TYPE_CHECKING:
    from av.video.codeccontext import VideoCodecContext
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

H264_HP41 = UID("1.2.840.10008.1.2.4.102")
H264_HP42_2D = UID("1.2.840.10008.1.2.4.104")
HEVC_MAIN51 = UID("1.2.840.10008.1.2.4.107")
VIDEO_SYNTAXES = frozenset({H264_HP41, H264_HP42_2D, HEVC_MAIN51})
Codec = Literal["h264", "hevc"]
METHODS: dict[Codec, str] = {"h264": "ISO_14496_10", "hevc": "ISO_23008_2"}
# Fragments of the stream; even, so that only the last fragment is padded.
FRAGMENT_BYTES = 1 << 20
# H.264 profile_idc values a High Profile decoder plays: Constrained Baseline
# (66 with constraint_set1), Main (77), Extended with set1 (88), High (100).
_H264_PROFILES = {66, 77, 88, 100}
# Level limits (ITU-T H.264 Table A-1): frame size in macroblocks, macroblocks/s.
_LEVEL_41 = (8192, 245760)
_LEVEL_42 = (8704, 522240)
# HEVC Main (general_profile_idc 1) at level 5.1 (level_idc = 30 × 5.1).
_HEVC_MAIN = 1
_HEVC_L51 = 153
DEFAULT_CRF = 23  # ≥ 35 dB PSNR on the test pattern (tests/integration/test_video_objects.py)
HARDWARE_H264 = "h264_v4l2m2m"


# Clips encoded in this process, by encoder (the metrics show which ran).
_ENCODED: dict[str, int] = {}


def clips_encoded() -> dict[str, int]:
    """Clips encoded so far in this process, by encoder name."""
    return dict(_ENCODED)


class VideoError(PixelError):
    """A stream that cannot be wrapped, or an encoder that failed."""


# -- what a stream is --------------------------------------------------------------


@dataclass(frozen=True)
class StreamParams:
    """What the stream's own sequence parameter set says."""

    codec: Codec
    profile: int  # profile_idc (general_profile_idc for HEVC)
    level: int  # level_idc: H.264 10 × level, HEVC 30 × level
    constrained: bool = False  # H.264 constraint_set1_flag (Main-decodable)
    chroma_420_8bit: bool = True


def _nal_units(stream: bytes) -> Iterator[bytes]:
    """NAL units (start codes removed) of an Annex B stream."""
    starts: list[int] = []
    i = stream.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = stream.find(b"\x00\x00\x01", i + 3)
    for n, s in enumerate(starts):
        end = starts[n + 1] - 3 if n + 1 < len(starts) else len(stream)
        yield stream[s:end].rstrip(b"\x00")


def _unescape(nal: bytes) -> bytes:
    """The RBSP: emulation prevention bytes (00 00 03) taken out."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def stream_params(head: bytes, codec: Codec) -> StreamParams:
    """Profile and level from the first SPS in the stream's first bytes."""
    for nal in _nal_units(head):
        if not nal:
            continue
        if codec == "h264" and nal[0] & 0x1F == 7 and len(nal) >= 4:
            rbsp = _unescape(nal[:16])
            profile, flags, level = rbsp[1], rbsp[2], rbsp[3]
            # High 10/4:2:2/4:4:4 profiles (110+) carry chroma/bit depth; not wrapped.
            return StreamParams("h264", profile, level, bool(flags & 0x40), profile <= 100)
        if codec == "hevc" and (nal[0] >> 1) & 0x3F == 33 and len(nal) >= 15:
            rbsp = _unescape(nal[:40])
            # 2 bytes NAL header, 1 byte vps id / sub-layers, then
            # profile_tier_level: profile byte, 4 bytes compatibility flags,
            # 6 bytes constraint flags, level.
            profile = rbsp[3] & 0x1F
            return StreamParams("hevc", profile, rbsp[14], False, profile == _HEVC_MAIN)
    raise VideoError(f"no {codec.upper()} sequence parameter set at the start of the stream")


def _macroblocks(width: int, height: int) -> int:
    return ((width + 15) // 16) * ((height + 15) // 16)


def transfer_syntax(params: StreamParams, width: int, height: int, fps: float) -> UID | None:
    """The DICOM transfer syntax that allows this stream as it is, or None."""
    if not params.chroma_420_8bit:
        return None
    if params.codec == "hevc":
        ok = params.profile == _HEVC_MAIN and params.level <= _HEVC_L51
        return HEVC_MAIN51 if ok and width <= 4096 and height <= 2176 else None
    if params.profile not in _H264_PROFILES or (
        params.profile in (66, 88) and not params.constrained
    ):
        return None
    mbs = _macroblocks(width, height)
    rate = mbs * max(fps, 1.0)
    if params.level <= 41 and mbs <= _LEVEL_41[0] and rate <= _LEVEL_41[1] * 1.001:
        return H264_HP41
    if params.level <= 42 and mbs <= _LEVEL_42[0] and rate <= _LEVEL_42[1] * 1.001:
        return H264_HP42_2D
    return None


def level_for(width: int, height: int, fps: float) -> tuple[str, UID] | None:
    """The H.264 level our encoder is asked for, and its transfer syntax."""
    mbs = _macroblocks(width, height)
    if mbs <= _LEVEL_41[0] and mbs * fps <= _LEVEL_41[1] * 1.001:
        return "4.1", H264_HP41
    if mbs <= _LEVEL_42[0] and mbs * fps <= _LEVEL_42[1] * 1.001:
        return "4.2", H264_HP42_2D
    return None


# -- the encoded stream --------------------------------------------------------------


class Fragments:
    """Stream bytes cut into even-sized fragments as they arrive (one copy)."""

    def __init__(self) -> None:
        self.done: list[bytes] = []
        self._open = bytearray()
        self.size = 0

    def add(self, data: bytes) -> None:
        self._open += data
        self.size += len(data)
        while len(self._open) >= FRAGMENT_BYTES:
            self.done.append(bytes(self._open[:FRAGMENT_BYTES]))
            del self._open[:FRAGMENT_BYTES]

    def close(self) -> list[bytes]:
        if self._open:
            self.done.append(bytes(self._open))
            self._open = bytearray()
        return self.done


@dataclass(frozen=True)
class EncodedVideo:
    """An Annex B elementary stream, ready to wrap: its fragments, what it is,
    and under which transfer syntax."""

    fragments: list[bytes]
    params: StreamParams
    transfer_syntax: UID
    width: int
    height: int
    frames: int
    fps: float
    encoder: str  # libx264, h264_v4l2m2m, libx265, or "passthrough"
    history: LossyHistory | None = None  # lossy steps before this one

    @property
    def size(self) -> int:
        return sum(len(f) for f in self.fragments)

    @property
    def method(self) -> str:
        return METHODS[self.params.codec]

    def stream(self) -> bytes:
        return b"".join(self.fragments)


def wrap_stream(
    packets: Iterable[bytes],
    codec: Codec,
    width: int,
    height: int,
    fps: float,
    history: LossyHistory | None = None,
) -> EncodedVideo:
    """An existing elementary stream (one packet per frame, Annex B), as it
    is; VideoError when no transfer syntax allows it."""
    frags = Fragments()
    frames = 0
    for packet in packets:
        frags.add(packet)
        frames += 1
    fragments = frags.close()
    if not frames:
        raise VideoError("the video track has no packets")
    params = stream_params(fragments[0][:4096], codec)
    ts = transfer_syntax(params, width, height, fps)
    if ts is None:
        raise VideoError(
            f"{codec.upper()} profile {params.profile} level {params.level} at "
            f"{width}×{height} {fps:g} frames/s fits no DICOM video transfer syntax"
        )
    return EncodedVideo(fragments, params, ts, width, height, frames, fps, "passthrough", history)


# -- the encoder ----------------------------------------------------------------------


@functools.cache
def _hardware_opens(width: int, height: int) -> bool:
    """Whether the V4L2 memory-to-memory H.264 encoder (the Pi's) opens here.
    FFmpeg builds carry it everywhere; it opens only where the device is."""
    import av

    if HARDWARE_H264 not in av.codecs_available:
        return False
    try:
        ctx = _video_context(HARDWARE_H264)
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = Fraction(1, 30)
        ctx.open()
    except Exception as exc:  # av raises per errno; any failure means "not here"
        log.info("hardware H.264 encoder %s not available (%s)", HARDWARE_H264, exc)
        return False
    return True


def _video_context(name: str) -> VideoCodecContext:
    import av

    return cast("VideoCodecContext", av.CodecContext.create(name, "w"))


def _convert(pixels: Pixels) -> Any:
    """RGB or monochrome pixels → a yuv420p frame (BT.601, limited range:
    YBR_PARTIAL_420), on the conversion worker (FFmpeg releases the GIL)."""
    import av

    fmt = "rgb24" if pixels.ndim == 3 else "gray"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format=fmt)
    return frame.reformat(format="yuv420p")


class VideoEncoder:
    """Frames in one at a time, an H.264 (or HEVC) stream out. Odd sizes lose
    their last row/column (4:2:0 needs even ones)."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        codec: Codec = "h264",
        crf: int = DEFAULT_CRF,
        *,
        hardware: bool = True,
        history: LossyHistory | None = None,
    ) -> None:

        self.width, self.height, self.fps, self.codec = width, height, fps, codec
        self.crf, self.hardware, self.history = crf, hardware, history
        self.frames = 0
        self._packets_in = 0
        self.width &= ~1
        self.height &= ~1
        if self.width < 16 or self.height < 16:
            raise VideoError(f"{self.width}×{self.height} is too small to encode as video")
        if not 0 < self.fps <= 240:
            raise VideoError(f"{self.fps} frames per second cannot be encoded")
        rate = Fraction(self.fps).limit_denominator(1001)
        if self.codec == "h264":
            level = level_for(self.width, self.height, float(rate))
            if level is None:
                raise VideoError(
                    f"{self.width}×{self.height} at {self.fps:g} frames/s exceeds H.264 "
                    'level 4.2; use clip_compression = "hevc"'
                )
            self._ts = level[1]
            if self.hardware and _hardware_opens(self.width, self.height):
                name, options = HARDWARE_H264, {}
            else:
                name = "libx264"
                options = {
                    "preset": "ultrafast",
                    "crf": str(self.crf),
                    "profile": "high",
                    # 8×8 transform: a High Profile stream at ultrafast's speed;
                    # BT.601 limited range said in the VUI; SPS/PPS before
                    # every key frame, a key frame every 2 s (seekable).
                    "x264-params": (
                        f"level={level[0]}:8x8dct=1:repeat-headers=1:"
                        f"keyint={max(1, round(float(rate) * 2))}:"
                        "colorprim=smpte170m:transfer=smpte170m:colormatrix=smpte170m"
                    ),
                }
        else:
            self._ts = HEVC_MAIN51
            name = "libx265"
            options = {
                "preset": "ultrafast",
                "crf": str(self.crf + 5),
                "x265-params": "level-idc=5.1:repeat-headers=1:log-level=error",
            }
        try:
            ctx = _video_context(name)
            ctx.width, ctx.height, ctx.pix_fmt = self.width, self.height, "yuv420p"
            ctx.time_base = 1 / rate
            ctx.framerate = rate
            if name == HARDWARE_H264:
                ctx.bit_rate = max(2_000_000, self.width * self.height * 4)
            ctx.options = options
            ctx.open()
        except Exception as exc:
            raise VideoError(f"{name} cannot encode {self.width}×{self.height}: {exc}") from None
        self._ctx = ctx
        self.encoder = name
        self.rate = rate
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="video-convert")
        self._pending: deque[Future[Any]] = deque()
        self._frags = Fragments()
        self._packets = 0
        log.info("video encoder %s for %d×%d at %s frames/s", name, self.width, self.height, rate)

    def add(self, pixels: Pixels) -> None:
        """One frame; returns once at most two frames wait for the encoder."""
        if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
            raise VideoError(f"frame {self.frames}: {pixels.dtype} {pixels.shape} is not 8-bit")
        h, w = pixels.shape[:2]
        if w < self.width or h < self.height:
            raise VideoError(
                f"frame {self.frames}: {w}×{h} differs from the clip's {self.width}×{self.height}"
            )
        if w != self.width or h != self.height:
            pixels = pixels[: self.height, : self.width]
        self._pending.append(self._pool.submit(_convert, pixels))
        self.frames += 1
        while len(self._pending) > 2:
            self._encode(self._pending.popleft().result())

    def _encode(self, frame: Any) -> None:
        frame.pts = self._packets_in
        self._packets_in += 1
        for packet in self._ctx.encode(frame):
            self._frags.add(bytes(packet))
            self._packets += 1

    def finish(self) -> EncodedVideo:
        """Flush the encoder; the stream, checked against what was asked."""
        try:
            while self._pending:
                self._encode(self._pending.popleft().result())
            for packet in self._ctx.encode(None):
                self._frags.add(bytes(packet))
                self._packets += 1
        finally:
            self._pool.shutdown()
        fragments = self._frags.close()
        if not self._packets:
            raise VideoError("the clip has no frames")
        _ENCODED[self.encoder] = _ENCODED.get(self.encoder, 0) + 1
        if self._packets != self.frames:
            raise VideoError(f"{self.encoder} gave {self._packets} frames for {self.frames}")
        params = stream_params(fragments[0][:4096], self.codec)
        ts = transfer_syntax(params, self.width, self.height, float(self.rate))
        if ts is None:
            raise VideoError(
                f"{self.encoder} made profile {params.profile} level {params.level}, "
                "which no DICOM video transfer syntax allows"
            )
        return EncodedVideo(
            fragments,
            params,
            ts,
            self.width,
            self.height,
            self.frames,
            float(self.rate),
            self.encoder,
            self.history,
        )

    def close(self) -> None:
        """Give up (an error elsewhere): the worker goes, nothing is kept."""
        self._pool.shutdown(cancel_futures=True)
        self._pending.clear()


def encode(
    frames: Iterable[Pixels],
    fps: float,
    codec: Codec = "h264",
    history: LossyHistory | None = None,
    crf: int = DEFAULT_CRF,
) -> EncodedVideo:
    """A whole clip, streamed through the encoder."""
    it = iter(frames)
    try:
        first = next(it)
    except StopIteration:
        raise VideoError("the clip has no frames") from None
    encoder = VideoEncoder(
        int(first.shape[1]), int(first.shape[0]), fps, codec, crf, history=history
    )
    try:
        encoder.add(first)
        for pixels in it:
            encoder.add(pixels)
        return encoder.finish()
    except BaseException:
        encoder.close()
        raise


# -- into the data set ----------------------------------------------------------------


def set_video_pixels(ds: Dataset, video: EncodedVideo) -> UID:
    """Image Pixel and Multi-frame for a video stream, the stream as Pixel
    Data, Lossy Image Compression with every step; the transfer syntax."""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows = video.height
    ds.Columns = video.width
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = video.frames
    ratios = [video.history.ratio] if video.history else []
    methods = [video.history.method] if video.history else []
    ratios.append(video.width * video.height * 3 * video.frames / max(1, video.size))
    methods.append(video.method)
    ds.LossyImageCompression = "01"
    values = [f"{r:.2f}"[:16] for r in ratios]
    ds.LossyImageCompressionRatio = values if len(values) > 1 else values[0]
    known = [m for m in methods if m]
    ds.LossyImageCompressionMethod = known if len(known) > 1 else known[0]
    ds.PixelData = encapsulate_stream(video.fragments)
    ds["PixelData"].VR = "OB"
    return video.transfer_syntax


def encapsulate_stream(fragments: list[bytes]) -> bytes:
    """An empty Basic Offset Table, then the fragments (PS3.5 A.4: a video
    stream's offset table is empty). Only the last fragment may be odd."""
    items = [struct.pack("<HHI", 0xFFFE, 0xE000, 0)]
    for i, frag in enumerate(fragments):
        pad = len(frag) % 2
        if pad and i != len(fragments) - 1:
            raise VideoError("a video fragment other than the last has an odd length")
        items.append(struct.pack("<HHI", 0xFFFE, 0xE000, len(frag) + pad))
        items.append(frag)
        if pad:
            items.append(b"\x00")
    return b"".join(items)


# -- out of a file --------------------------------------------------------------------


def stream_fragments(path: Path) -> Iterator[bytes]:
    """The fragments of a video object's Pixel Data, read from the file one
    at a time (the Basic Offset Table skipped)."""
    from pydicom import dcmread
    from pydicom.encaps import generate_fragments, parse_basic_offsets

    with open(path, "rb") as f:
        # pydicom stops at Pixel Data and leaves the file at its tag.
        dcmread(f, stop_before_pixels=True)
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"\xe0\x7f\x10\x00" or head[8:12] != b"\xff" * 4:
            raise VideoError(f"{path.name} has no encapsulated Pixel Data")
        parse_basic_offsets(f)
        yield from generate_fragments(f)


def codec_of(transfer_syntax_uid: str) -> Codec | None:
    if transfer_syntax_uid in (H264_HP41, H264_HP42_2D):
        return "h264"
    if transfer_syntax_uid == HEVC_MAIN51:
        return "hevc"
    return None


def to_mp4(path: Path) -> bytes:
    """A video object's H.264 stream remuxed (not re-encoded) into a
    fragmented MP4, for a browser's <video> (the touchscreen's review). The
    frames are timed by the object's Frame Time; our encoder makes no
    B-frames, so decoding order is presentation order."""
    import io

    import av
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True)
    if codec_of(str(ds.file_meta.TransferSyntaxUID)) != "h264":
        raise VideoError(f"{path.name} holds no H.264 stream")
    rate = Fraction(1000.0 / float(ds.FrameTime)).limit_denominator(1001)
    source = io.BytesIO(b"".join(stream_fragments(path)))
    out = io.BytesIO()
    with (
        av.open(source, "r", format="h264") as inp,
        av.open(
            out,
            "w",
            format="mp4",
            options={"movflags": "frag_keyframe+empty_moov+default_base_moof"},
        ) as mux,
    ):
        stream_in = inp.streams.video[0]
        stream_out = mux.add_stream_from_template(stream_in)
        stream_out.time_base = 1 / rate
        for i, packet in enumerate(inp.demux(stream_in)):
            if packet.size == 0:
                continue
            packet.stream = stream_out
            packet.time_base = 1 / rate
            packet.pts = packet.dts = i
            packet.duration = 1
            mux.mux(packet)
    return out.getvalue()
