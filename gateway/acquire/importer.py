"""`dicom-gateway import`: image and video files into DICOM objects in the queue.

JPEG files are wrapped as they are (no second lossy generation); PNG, BMP and
TIFF are encoded as configured; a video (MP4, MOV, MKV, MPEG-TS, AVI) becomes
one multi-frame object: an H.264 or HEVC track that a DICOM transfer syntax
allows is wrapped as it is (its Annex B stream byte for byte, read packet by
packet: `drivers.demux`), MJPEG frames as their JPEG, anything else decoded
and encoded as `capture.clip_compression` says. Audio is left out, and the
import says so.
Every file is checked before anything is queued, and an object is queued only
once it is complete, so bad input leaves nothing half-made in the queue.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from drivers import demux, imagecodec
from gateway.acquire.capture import Capturer
from gateway.acquire.subject import Subject
from gateway.config import GatewayConfig
from gateway.dicom.jpeg import JpegError
from gateway.dicom.jpeg import parse as parse_jpeg
from gateway.dicom.modules import Cine, ModuleError
from gateway.dicom.pixels import (
    EncodedJpeg,
    FrameData,
    LossyHistory,
    PixelError,
    Pixels,
    wrappable,
)
from gateway.dicom.video import Codec, VideoError, stream_params, transfer_syntax, wrap_stream
from gateway.dicom.video import encode as encode_video
from gateway.queue.model import QueuedObject
from gateway.queue.outbox import Outbox

if TYPE_CHECKING:
    import cv2
    from pydicom.dataset import Dataset

    from gateway.acquire.exam import Exam

log = logging.getLogger(__name__)

Kind = Literal["jpeg", "image", "video"]
SUPPORTED = f"{imagecodec.KNOWN_FORMATS}, MP4, MOV, MKV, MPEG-TS or AVI"
# ISO base media (MP4, MOV) boxes a file may start with.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
_TS_PACKET = 188
HEAD_BYTES = 2 * _TS_PACKET + 1
DEFAULT_FPS = 30.0
BATCH_FILES = 32
BATCH_BYTES = 64 << 20


class ImportFileError(Exception):
    """A file that cannot be imported; the message starts with its path."""


@dataclass(frozen=True)
class Planned:
    path: Path
    kind: Kind
    jpeg: EncodedJpeg | None = None
    history: LossyHistory | None = None  # a JPEG file that has to be decoded


def sniff(head: bytes) -> Kind | None:
    """The file type from its first bytes, not its name (names lie). Still
    images by the one image decoder's rules (drivers.imagecodec), the same
    as for images a device sends."""
    image = imagecodec.sniff(head)
    if image == "JPEG":
        return "jpeg"
    if image is not None:
        return "image"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "video"
    if head[4:8] in _ISO_BOXES:
        return "video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska / WebM
        return "video"
    if len(head) > 2 * _TS_PACKET and all(head[i * _TS_PACKET] == 0x47 for i in range(3)):
        return "video"  # MPEG transport stream: a sync byte every 188 bytes
    return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImportFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImportFileError(f"{path}: is a directory") from None
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror}") from None


@dataclass(frozen=True)
class Caps:
    """Input-bomb caps (capture.max_image_megapixels, max_video_seconds,
    max_video_mb), checked from headers before anything is decoded."""

    megapixels: float = imagecodec.DEFAULT_MAX_MEGAPIXELS
    video_seconds: float = 600.0
    video_mb: int = 2048
    # Clips stored as H.264/HEVC (capture.clip_compression): a video is wrapped
    # as it is or streamed through the encoder, never held decoded, so
    # max_video_mb bounds the file itself (what the object holds), not its
    # decoded size.
    encoded: bool = False

    @classmethod
    def of(cls, config: GatewayConfig) -> Caps:
        c = config.capture
        encoded = c.clip_compression in ("h264", "hevc")
        return cls(c.max_image_megapixels, c.max_video_seconds, c.max_video_mb, encoded)

    def max_frames(self, fps: float, width: int, height: int) -> int:
        """The most frames a video of this rate and size may decode to."""
        by_time = self.video_seconds * (fps if 0 < fps <= 1000 else DEFAULT_FPS)
        if self.encoded:
            return max(1, int(by_time))
        by_size = self.video_mb * 1024 * 1024 / max(1, width * height * 3)
        return max(1, int(min(by_time, by_size)))


def decode_image(path: Path, data: bytes, caps: Caps | None = None) -> Pixels:
    """8-bit RGB or monochrome pixels of a still image file (the one decoder
    and its policy: 8- and 16-bit samples, alpha dropped), once its header
    says it is within the pixel cap."""
    caps = caps or Caps()
    try:
        return imagecodec.decode_image(
            data,
            keep_jpeg=False,
            max_megapixels=caps.megapixels,
            cap_key="capture.max_image_megapixels",
        ).pixels
    except imagecodec.ImageError as exc:
        raise ImportFileError(f"{path}: {exc}") from None


def _check_video(path: Path, cap: cv2.VideoCapture, caps: Caps) -> None:
    """Frame size, length and decoded size from the container's header."""
    import cv2

    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
    try:
        imagecodec.check_pixels(
            width, height, caps.megapixels, "a frame", "capture.max_image_megapixels"
        )
    except imagecodec.ImageError as exc:
        raise ImportFileError(f"{path}: {exc}") from None
    rate = fps if 0 < fps <= 1000 else DEFAULT_FPS
    if frames / rate > caps.video_seconds:
        raise ImportFileError(
            f"{path}: the video is {frames / rate:.1f} s long ({frames} frames), over the "
            f"{caps.video_seconds:g} s cap (capture.max_video_seconds); refused without decoding"
        )
    if caps.encoded:
        file_mb = path.stat().st_size / (1024 * 1024)
        if file_mb > caps.video_mb:
            raise ImportFileError(
                f"{path}: the video file is {file_mb:.0f} MB, over the {caps.video_mb} MB "
                "cap (capture.max_video_mb); refused"
            )
        return
    decoded_mb = frames * width * height * 3 / (1024 * 1024)
    if decoded_mb > caps.video_mb:
        raise ImportFileError(
            f"{path}: the video decodes to {decoded_mb:.0f} MB ({frames} frames of "
            f"{width}×{height}), over the {caps.video_mb} MB cap (capture.max_video_mb); "
            "refused without decoding"
        )


def plan(path: Path, caps: Caps | None = None) -> Planned:
    """Check one file enough to know it will import: type, structure, size
    within the caps (from the header, before decoding), and for video that it
    opens and has a frame."""
    caps = caps or Caps()
    if path.is_dir():
        raise ImportFileError(f"{path}: is a directory")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImportFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror}") from None
    if size == 0:
        raise ImportFileError(f"{path}: empty file")
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror}") from None
    kind = sniff(head)
    if kind is None:
        raise ImportFileError(f"{path}: unsupported file type ({SUPPORTED} expected)")
    if kind == "jpeg":
        data = _read(path)
        try:
            info = parse_jpeg(data)
        except JpegError as exc:
            raise ImportFileError(f"{path}: {exc}") from None
        if info.baseline and info.precision == 8 and wrappable(info):
            return Planned(path, "jpeg", EncodedJpeg.from_bytes(data))
        # Progressive, 12-bit or 4:4:4: decode it and store it as configured,
        # saying it was lossy once.
        decode_image(path, data, caps)
        history = LossyHistory.of_jpeg(len(data), info.width, info.height, info.components)
        return Planned(path, "image", history=history)
    if kind == "image":
        decode_image(path, _read(path), caps)
        return Planned(path, "image")
    with _video(path) as video:
        _check_video(path, video, caps)
        ok, _ = video.read()
        if not ok:
            raise ImportFileError(f"{path}: the video has no readable frame")
    return Planned(path, "video")


class _video:
    """cv2.VideoCapture as a context manager that always releases."""

    def __init__(self, path: Path) -> None:
        import cv2

        self.path = path
        self.cap = cv2.VideoCapture(str(path))

    def __enter__(self) -> cv2.VideoCapture:
        if not self.cap.isOpened():
            self.cap.release()
            raise ImportFileError(f"{self.path}: cannot open the video (corrupt or unsupported)")
        return self.cap

    def __exit__(self, *exc: object) -> None:
        self.cap.release()


def _video_frames(cap: cv2.VideoCapture, limit: int) -> Iterator[Pixels]:
    """Decoded frames, at most `limit` of them (a header can understate)."""
    import cv2

    count = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        count += 1
        if count > limit:
            raise PixelError(f"the video has more than the {limit} frames its caps allow")
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else frame
        yield np.asarray(rgb, dtype=np.uint8)


# FourCC → DICOM Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1).
_VIDEO_METHODS = {
    b"avc1": "ISO_14496_10",
    b"h264": "ISO_14496_10",
    b"hvc1": "ISO_23008_2",
    b"hev1": "ISO_23008_2",
    b"hevc": "ISO_23008_2",
    b"mpg2": "ISO_13818_2",
    b"mp2v": "ISO_13818_2",
    b"mjpg": "ISO_10918_1",
}


def _video_history(path: Path, cap: cv2.VideoCapture) -> LossyHistory:
    """Decoded video was lossy once; the ratio is estimated from the file size."""
    import cv2

    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").lower()
    frames = max(1, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 1))
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 1)
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 1)
    raw = width * height * 3 * frames
    return LossyHistory(raw / max(1, path.stat().st_size), _VIDEO_METHODS.get(fourcc))


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(os.stat(path).st_mtime).astimezone()


# (files done, files in all, the file being done, as the user named it)
Progress = Callable[[int, int, str], None]


class Importer:
    """Files → objects of one exam (conversion type WSD) → the queue."""

    def __init__(self, capturer: Capturer) -> None:
        self.capturer = capturer
        self.caps = Caps.of(capturer.config)
        # What the user should hear about a file (audio left out, how the
        # video was stored), by path.
        self.notes: dict[Path, str] = {}

    def build(self, exam: Exam, item: Planned) -> Dataset:
        path = item.path
        try:
            if item.kind == "video":
                ds = self._build_video(exam, path)
            else:
                data: FrameData = (
                    item.jpeg
                    if item.jpeg is not None
                    else decode_image(path, _read(path), self.caps)
                )
                ds = self.capturer.build_still(exam, data, _mtime(path), item.history)
        except (PixelError, JpegError, ModuleError, demux.DemuxError) as exc:
            raise ImportFileError(f"{path}: {exc}") from None
        return ds

    def _build_video(self, exam: Exam, path: Path) -> Dataset:
        track = demux.probe(path)
        notes = []
        if track.audio_tracks:
            notes.append(f"{track.audio_tracks} audio track(s) left out")
            log.warning("%s: %d audio track(s) left out of the object", path, track.audio_tracks)
        fps = float(track.fps) if 0 < track.fps <= 1000 else DEFAULT_FPS
        cine = Cine.from_fps(fps)
        mtime = _mtime(path)
        if track.passable:
            stream = self._passthrough(path, track, fps)
            if stream is not None:
                notes.insert(0, f"{track.codec.upper()} wrapped as it is")
                self.notes[path] = "; ".join(notes)
                return self.capturer.build_clip(exam, stream, cine, mtime)
        with _video(path) as cap:
            passed = self._mjpeg_frames(path, cap)
            if passed is not None:
                notes.insert(0, "MJPEG frames wrapped as they are")
                self.notes[path] = "; ".join(notes)
                return self.capturer.build_clip(exam, passed, cine, mtime)
            history = _video_history(path, cap)
            codec = self.capturer.clip_codec
            limit = self.caps.max_frames(fps, track.width, track.height)
            if codec is None:
                frames: Iterator[FrameData] | Any = _video_frames(cap, limit)
                ds = self.capturer.build_clip(exam, frames, cine, mtime, history)
            else:
                encoded = encode_video(_video_frames(cap, limit), fps, codec, history=history)
                notes.insert(0, f"{track.codec} re-encoded by {encoded.encoder}")
                ds = self.capturer.build_clip(exam, encoded, cine, mtime)
        self.notes[path] = "; ".join(notes)
        return ds

    def _passthrough(self, path: Path, track: demux.VideoTrack, fps: float) -> Any:
        """The track's own stream when a DICOM video transfer syntax allows
        it (its SPS says profile and level), else None (it is re-encoded)."""
        codec: Codec = "h264" if track.codec == "h264" else "hevc"
        packets = demux.annexb_packets(path)
        try:
            first = next(packets)
        except StopIteration:
            return None
        try:
            params = stream_params(first[:4096], codec)
        except VideoError:
            packets.close()
            return None
        if transfer_syntax(params, track.width, track.height, fps) is None:
            packets.close()
            log.info(
                "%s: %s profile %d level %d fits no DICOM syntax; re-encoding",
                path,
                codec,
                params.profile,
                params.level,
            )
            return None

        def every() -> Iterator[bytes]:
            yield first
            yield from packets

        return wrap_stream(every(), codec, track.width, track.height, fps)

    def _mjpeg_frames(self, path: Path, cap: cv2.VideoCapture) -> Iterator[FrameData] | None:
        """An MJPEG video's frames as the JPEG it holds (no second lossy
        generation), when the IOD accepts their colour layout; else None and
        `cap` is reopened for decoding."""
        import cv2

        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little")
        if fourcc.upper() not in (b"MJPG", b"JPEG", b"AVRN") or not cap.set(
            cv2.CAP_PROP_FORMAT, -1
        ):
            return None
        ok, packet = cap.read()
        try:
            first = EncodedJpeg.from_bytes(packet.tobytes()) if ok else None
        except JpegError:
            first = None
        wanted = {"YBR_FULL_422"} | (
            {"MONOCHROME2"} if self.capturer.iod == "ultrasound" else set()
        )
        if first is None or first.info.photometric not in wanted:
            cap.open(str(path))  # back to decoded frames from the start
            return None

        def frames() -> Iterator[FrameData]:
            yield first
            index = 1
            while True:
                ok, packet = cap.read()
                if not ok:
                    return
                try:
                    yield EncodedJpeg.from_bytes(packet.tobytes())
                except JpegError as exc:
                    raise PixelError(f"frame {index}: {exc}") from None
                index += 1

        return frames()

    def run(
        self,
        exam: Exam,
        paths: Sequence[Path],
        progress: Progress | None = None,
        labels: Mapping[Path, str] | None = None,
    ) -> list[QueuedObject]:
        """All files are checked first; a bad one stops the import before
        anything is queued. `labels` name files by what the user typed when
        `paths` are copies (an import handed to the running service)."""
        labels = labels or {}

        def label(path: Path) -> str:
            return labels.get(path, str(path))

        planned = []
        for path in paths:
            try:
                planned.append(plan(path, self.caps))
            except ImportFileError as exc:
                raise _relabel(exc, path, label(path)) from None
        done: list[QueuedObject] = []
        batch: list[Dataset] = []
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch, batch_bytes
            done.extend(self.capturer.queue_many(exam, batch))
            batch, batch_bytes = [], 0

        for i, item in enumerate(planned):
            if progress:
                progress(i, len(planned), label(item.path))
            try:
                ds = self.build(exam, item)
            except ImportFileError as exc:
                exc = _relabel(exc, item.path, label(item.path))
                flush()  # what was made before it is queued, as the message says
                if done:
                    raise ImportFileError(
                        f"{exc} ({len(done)} file(s) before it were queued)"
                    ) from None
                raise exc from None
            # Stills are queued in batches (one directory fsync and one commit
            # each); a cine, hundreds of MB, alone.
            batch.append(ds)
            batch_bytes += len(ds.PixelData)  # what the batch holds in memory
            if item.kind == "video" or len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                flush()
        flush()
        if progress:
            progress(len(planned), len(planned), label(planned[-1].path))
        return done


def _relabel(exc: ImportFileError, path: Path, label: str) -> ImportFileError:
    """The same error under the file's name as the user knows it (messages
    start with the path)."""
    text = str(exc)
    if label != str(path) and text.startswith(str(path)):
        return ImportFileError(label + text[len(str(path)) :])
    return exc


def import_exam(
    config: GatewayConfig,
    outbox: Outbox,
    subject: Subject,
    paths: Sequence[Path],
    progress: Progress | None = None,
    labels: Mapping[Path, str] | None = None,
) -> dict[str, Any]:
    """One exam made of the files, queued, reported to the RIS (MPPS
    completed, or discontinued when anything fails: what was queued stays).
    Returns the study and a row per queued object."""
    from gateway.acquire.station import Station

    outbox.check_space()
    with (
        Station(config, outbox, "file", review=False) as station,
        station.exam(subject, "import") as exam,
    ):
        importer = Importer(station.capturer)
        queued = importer.run(exam, paths, progress, labels)
    labels = labels or {}
    notes = importer.notes
    return {
        "study_instance_uid": exam.study.instance_uid,
        "imported": [
            {
                "id": q.id,
                "sop_instance_uid": q.sop_instance_uid,
                "sop_class_uid": q.sop_class_uid,
                "path": str(q.path),
                "source": labels.get(src, str(src)),
                **({"note": notes[src]} if src in notes else {}),
            }
            for q, src in zip(queued, paths, strict=True)
        ],
    }
