"""Video files read as the container holds them: the video track's codec,
size, rate and frame count, its compressed packets as an Annex B elementary
stream (what DICOM's MPEG-4 transfer syntaxes carry), or its frames decoded.

PyAV (FFmpeg's libraries) does the reading; the packets are turned into
Annex B by FFmpeg's own `h264_mp4toannexb` / `hevc_mp4toannexb` bitstream
filters, so the stream is byte for byte what `ffmpeg -c copy -bsf:v
h264_mp4toannexb` writes. Nothing here decodes unless asked, and nothing is
held beyond one packet or one frame: a long file streams.

Knows no DICOM (drivers never do): whether a stream may be wrapped as it is
is the DICOM layer's decision, from `VideoTrack` and the stream's own SPS.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt

# The codecs whose packets can be handed on as an elementary stream.
_ANNEXB_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}


class DemuxError(ValueError):
    """The file cannot be read as a video, worded for the person importing it."""


@dataclass(frozen=True)
class VideoTrack:
    """What the container says about its (first) video track."""

    codec: str  # FFmpeg's codec name: h264, hevc, mpeg4, mjpeg, …
    width: int
    height: int
    fps: Fraction  # the track's average frame rate (0 when it has none)
    frames: int  # from the container's index when it has one, else 0
    audio_tracks: int  # tracks left out of the object
    pixel_format: str  # e.g. yuv420p, yuv420p10le, yuvj422p

    @property
    def passable(self) -> bool:
        """Packets that can be handed on as an Annex B elementary stream."""
        return self.codec in _ANNEXB_FILTERS


def _open(path: Path):  # type: ignore[no-untyped-def]
    import av

    try:
        return av.open(str(path), "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise DemuxError(f"cannot open the video ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":", 1)[-1].strip() or type(exc).__name__


def probe(path: Path) -> VideoTrack:
    """The video track, or DemuxError when there is none."""
    with _open(path) as container:
        videos = container.streams.video
        if not videos:
            raise DemuxError("the file has no video track")
        stream = videos[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        return VideoTrack(
            codec=ctx.name,
            width=int(ctx.width),
            height=int(ctx.height),
            fps=Fraction(rate),
            frames=int(stream.frames or 0),
            audio_tracks=len(container.streams.audio),
            pixel_format=str(ctx.format.name) if ctx.format is not None else "",
        )


def annexb_packets(path: Path) -> Generator[bytes, None, None]:
    """The video track's packets in decoding order, each in Annex B form
    (start codes; parameter sets in front of the first key frame), one at a
    time. Empty packets (a demuxer's end-of-stream marker) are skipped."""
    import av
    from av.bitstream import BitStreamFilterContext

    with _open(path) as container:
        if not container.streams.video:
            raise DemuxError("the file has no video track")
        stream = container.streams.video[0]
        name = _ANNEXB_FILTERS.get(stream.codec_context.name)
        if name is None:
            raise DemuxError(f"{stream.codec_context.name} video has no elementary stream form")
        bsf = BitStreamFilterContext(name, stream)
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                for out in bsf.filter(packet):
                    yield bytes(out)
            for out in bsf.filter(None):
                if out.size:
                    yield bytes(out)
        except av.FFmpegError as exc:
            raise DemuxError(f"the video is damaged ({_reason(exc)})") from None


def decoded_frames(path: Path) -> Iterator[npt.NDArray[np.uint8]]:
    """The video track's frames as 8-bit RGB, decoded one at a time."""
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise DemuxError("the file has no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise DemuxError(f"the video is damaged ({_reason(exc)})") from None
