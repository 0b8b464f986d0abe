"""From frames to durable queued objects: the one place where a driver's
output, the DICOM builders and the queue meet.

The configuration picks the IOD (US → Ultrasound, anything else → Secondary
Capture, `station.iod` overrides; clips may be Video Endoscopic / Photographic);
the exam supplies patient, study, series and order. A still becomes a
single-frame object, a clip a multi-frame cine: an H.264 (or HEVC) stream
when `capture.clip_compression` says so (the default), encoded frame by frame
by `ClipWriter` so a clip is never held decoded as a whole, else frames stored
as `compression` would store them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from drivers import imagecodec
from drivers.base import Frame, SourceKind
from gateway import __version__
from gateway.config import GatewayConfig
from gateway.dicom.iods import (
    Clip,
    Coding,
    Header,
    multiframe_true_color_sc,
    secondary_capture,
    ultrasound_image,
    ultrasound_multiframe,
    video_endoscopic,
    video_photographic,
)
from gateway.dicom.jpeg import JpegError
from gateway.dicom.modules import Cine, Code, ConversionType, Equipment, ImageInfo
from gateway.dicom.part10 import to_parts
from gateway.dicom.pixels import (
    EncodedJpeg,
    Encoding,
    FrameData,
    LossyHistory,
    PixelError,
    Pixels,
    wrappable,
)
from gateway.dicom.uids import new_uid
from gateway.dicom.video import (
    Codec,
    EncodedVideo,
    Fragments,
    StreamParams,
    VideoEncoder,
    stream_params,
    transfer_syntax,
)
from gateway.ops import clock
from gateway.queue.model import NewObject, QueuedObject
from gateway.queue.outbox import Outbox

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

    from gateway.acquire.exam import Exam

log = logging.getLogger(__name__)

CONVERSION_TYPES: dict[SourceKind, ConversionType] = {
    "video": "DV",
    "digital": "DI",
    "file": "WSD",
    "synthetic": "SYN",
}

IOD = Literal["secondary-capture", "ultrasound", "video-endoscopic", "video-photographic"]
_CLIP_BUILDERS = {
    "ultrasound": ultrasound_multiframe,
    "video-endoscopic": video_endoscopic,
    "video-photographic": video_photographic,
    "secondary-capture": multiframe_true_color_sc,
}
# How long frames of a device's own H.264 are held waiting for a key frame.
KEYFRAME_WAIT_S = 2.0
# The rate a streamed recording's encoder is opened with before the frames'
# own timestamps are known (the object's Frame Time comes from those).
DEFAULT_CLIP_FPS = 30.0


def choose_iod(config: GatewayConfig) -> IOD:
    if config.station.iod != "auto":
        return config.station.iod
    return "ultrasound" if config.station.modality == "US" else "secondary-capture"


def equipment_from(config: GatewayConfig) -> Equipment:
    station = config.station
    return Equipment(
        manufacturer=station.manufacturer,
        model_name=station.model_name,
        software_versions=__version__,
        station_name=station.station_name,
        institution_name=station.institution_name,
        device_serial_number=station.device_serial_number,
    )


def frame_data(frame: Frame, colour_only: bool = False) -> tuple[FrameData, LossyHistory | None]:
    """The device's own JPEG when it sent one we can wrap as is, else pixels
    (marked as once lossy when they were decoded from the device's JPEG)."""
    if frame.jpeg is None:
        return frame.pixels, None
    history = LossyHistory.of_jpeg(
        len(frame.jpeg), frame.width, frame.height, 3 if frame.is_color else 1
    )
    try:
        data = EncodedJpeg.from_bytes(frame.jpeg)
    except JpegError as exc:
        log.warning("frame %d: device JPEG not wrappable (%s); re-encoding", frame.index, exc)
        return frame.pixels, history
    if not wrappable(data.info, colour_only):
        return frame.pixels, history
    return data, None


def clip_data(
    frames: Sequence[Frame], colour_only: bool
) -> tuple[list[FrameData], LossyHistory | None]:
    """All frames passed through, or all from pixels: one object has one
    transfer syntax."""
    pairs = [frame_data(f, colour_only) for f in frames]
    if all(isinstance(d, EncodedJpeg) for d, _ in pairs):
        return [d for d, _ in pairs], None
    histories = [h for _, h in pairs if h is not None]
    history = None
    if histories:  # the clip as a whole: the mean ratio of its device JPEGs
        history = LossyHistory(
            sum(h.ratio for h in histories) / len(histories), histories[0].method
        )
    return [f.pixels for f in frames], history


def frame_pixels(frame: Frame) -> Pixels:
    """A frame's pixels; a ring-buffer frame kept as JPEG alone is decoded
    here, one at a time (`FrameStream.clip(decode=False)`)."""
    if frame.pixels.size or frame.jpeg is None:
        return frame.pixels
    try:
        return imagecodec.decode_image(frame.jpeg, keep_jpeg=False).pixels
    except imagecodec.ImageError as exc:
        raise PixelError(f"frame {frame.index}: {exc}") from None


def jpeg_history(frames: Sequence[Frame]) -> LossyHistory | None:
    """The device's JPEG as the clip's earlier lossy step (the mean ratio)."""
    ratios = [
        LossyHistory.of_jpeg(len(f.jpeg), f.width or 1, f.height or 1, 3 if f.is_color else 1).ratio
        for f in frames
        if f.jpeg
    ]
    return LossyHistory(sum(ratios) / len(ratios), "ISO_10918_1") if ratios else None


class ClipWriter:
    """A clip encoded as its frames come (Record, `capture --clip`): only the
    compressed stream is kept, one frame is in the encoder at a time.

    Frames that carry the device's own H.264 (`Frame.h264`) are wrapped as
    they are when the stream fits a DICOM syntax: a stream starts at a key
    frame, so frames before the first one are held (at most
    `KEYFRAME_WAIT_S`) and left out; with no key frame by then, or a stream
    that fits no syntax, the clip is encoded from the pixels instead."""

    def __init__(self, codec: Codec, fps: float = DEFAULT_CLIP_FPS) -> None:
        self.codec = codec
        self.fps = fps
        self.timestamps: list[float] = []
        self.history: LossyHistory | None = None
        self._ratios: list[float] = []
        self._encoder: VideoEncoder | None = None
        self._held: list[Frame] = []
        self._device: Fragments | None = None
        self._device_stream: tuple[StreamParams, UID, int, int] | None = None

    @property
    def encoder(self) -> str:
        if self._device is not None:
            return "passthrough"
        return self._encoder.encoder if self._encoder is not None else ""

    def add(self, frame: Frame) -> None:
        if self._device is not None:
            if frame.h264 is None:
                raise PixelError(f"frame {frame.index}: pixels among the device's H.264 frames")
            self._device.add(frame.h264)
            self.timestamps.append(frame.timestamp)
            return
        if self._encoder is None and frame.h264 is not None:
            if frame.keyframe:
                fits = self._fits(frame)
                if fits is not None:
                    self._held = []  # before the first key frame: not decodable, left out
                    self._device_stream = fits
                    self._device = Fragments()
                    self.add(frame)
                    return
            else:
                self._held.append(frame)
                if frame.timestamp - self._held[0].timestamp >= KEYFRAME_WAIT_S:
                    self._encode_held()  # no key frame in time: encoded, none lost
                return
        self._encode_held()
        self._encode(frame)

    def _fits(self, frame: Frame) -> tuple[StreamParams, UID, int, int] | None:
        assert frame.h264 is not None
        try:
            params = stream_params(frame.h264[:4096], "h264")
        except PixelError:
            return None
        ts = transfer_syntax(params, frame.width, frame.height, self.fps)
        return None if ts is None else (params, ts, frame.width, frame.height)

    def _encode_held(self) -> None:
        held, self._held = self._held, []
        for frame in held:
            self._encode(frame)

    def _encode(self, frame: Frame) -> None:
        pixels = frame_pixels(frame)
        if self._encoder is None:
            self._encoder = VideoEncoder(
                int(pixels.shape[1]), int(pixels.shape[0]), self.fps, self.codec
            )
        if frame.jpeg:
            h, w = pixels.shape[:2]
            self._ratios.append(
                LossyHistory.of_jpeg(len(frame.jpeg), w, h, 3 if pixels.ndim == 3 else 1).ratio
            )
        self._encoder.add(pixels)
        self.timestamps.append(frame.timestamp)

    def finish(self) -> EncodedVideo:
        if self._device is not None and self._device_stream is not None:
            params, ts, width, height = self._device_stream
            fragments = self._device.close()
            return EncodedVideo(
                fragments,
                params,
                ts,
                width,
                height,
                len(self.timestamps),
                self.fps,
                "passthrough",
            )
        self._encode_held()
        if self._encoder is None:
            raise PixelError("the clip has no frames")
        if self._ratios:
            self._encoder.history = LossyHistory(
                sum(self._ratios) / len(self._ratios), "ISO_10918_1"
            )
        return self._encoder.finish()

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()


class Capturer:
    """Builds and queues objects for an exam from frames of one source."""

    def __init__(self, config: GatewayConfig, outbox: Outbox, source: SourceKind) -> None:
        self.config = config
        self.outbox = outbox
        self.conversion_type = CONVERSION_TYPES[source]
        self.equipment = equipment_from(config)
        self.iod = choose_iod(config)
        region = config.station.anatomic_region
        self.anatomic_region = (
            Code(region.value, region.scheme, region.meaning) if region is not None else None
        )

    def _image(self, exam: Exam, content_time: datetime) -> ImageInfo:
        with exam.lock:
            number = exam.next_instance_number()
        return ImageInfo(
            instance_number=number,
            conversion_type=self.conversion_type,
            content_time=content_time,
            sop_instance_uid=new_uid(self.config.station.uid_root or None),
        )

    def build_still(
        self,
        exam: Exam,
        data: FrameData,
        content_time: datetime,
        history: LossyHistory | None = None,
    ) -> Dataset:
        build = ultrasound_image if self.iod == "ultrasound" else secondary_capture
        return build(data, self._header(exam, content_time), self._coding(history))

    def build_clip(
        self,
        exam: Exam,
        frames: Clip,
        cine: Cine,
        content_time: datetime,
        history: LossyHistory | None = None,
    ) -> Dataset:
        build = _CLIP_BUILDERS[self.iod]
        coding = self._coding(history, clip=True)
        return build(frames, cine, self._header(exam, content_time), coding)

    @property
    def clip_codec(self) -> Codec | None:
        """H.264/HEVC when clips are encoded as video, else None."""
        value = self.config.capture.clip_compression
        return value if value in ("h264", "hevc") else None

    def _header(self, exam: Exam, content_time: datetime) -> Header:
        """What every IOD builder takes from the exam and the configuration."""
        return Header(
            patient=exam.patient,
            study=exam.study,
            series=exam.series,
            equipment=self.equipment,
            image=self._image(exam, content_time),
            order=exam.order,
            anatomic_region=self.anatomic_region,
        )

    def _coding(self, history: LossyHistory | None, clip: bool = False) -> Coding:
        capture = self.config.capture
        encoding: Encoding = capture.compression
        if clip and capture.clip_compression in ("none", "rle", "jpeg-baseline"):
            encoding = capture.clip_compression
        return Coding(encoding, capture.jpeg_quality, history)

    def queue(self, exam: Exam, ds: Dataset, hold: bool = False) -> QueuedObject:
        """Returns only once the object is durable; raises QueueError otherwise.
        Only a complete object ever reaches the queue."""
        return self.queue_many(exam, [ds], hold)[0]

    def queue_many(
        self, exam: Exam, datasets: Sequence[Dataset], hold: bool = False
    ) -> list[QueuedObject]:
        """Several objects of the exam in one durable step (all or none): one
        directory fsync and one commit for the lot, as `import` does."""
        items = [
            NewObject(
                to_parts(ds),
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                study_instance_uid=exam.study.instance_uid,
                exam_id=exam.id,
                hold=hold,
            )
            for ds in datasets
        ]
        with exam.lock:
            queued = self.outbox.add_many(items)
            exam.images.extend(queued)
        clock.flag_captures(self.outbox.root, [q.id for q in queued])  # dates may be wrong
        for ds, q in zip(datasets, queued, strict=True):
            log.info(
                "captured image %s of exam %s as queue object %d",
                ds.InstanceNumber,
                exam.study.study_id,
                q.id,
            )
        return queued

    def capture(self, exam: Exam, frame: Frame, hold: bool = False) -> QueuedObject:
        """A still: one single-frame object."""
        content_time = datetime.fromtimestamp(frame.timestamp).astimezone()
        data, history = frame_data(frame)
        return self.queue(exam, self.build_still(exam, data, content_time, history), hold)

    def capture_clip(self, exam: Exam, frames: Sequence[Frame], hold: bool = False) -> QueuedObject:
        """A clip ("Record", "Save last 10 s"): one multi-frame cine object
        played back at the rate the frames were captured."""
        if not frames:
            raise PixelError("the clip has no frames")
        cine = Cine.from_timestamps([f.timestamp for f in frames])
        content_time = datetime.fromtimestamp(frames[0].timestamp).astimezone()
        codec = self.clip_codec
        if codec is not None:
            writer = ClipWriter(codec, 1000.0 / cine.frame_time_ms)
            try:
                for frame in frames:
                    writer.add(frame)
                return self.queue_writer(exam, writer, hold)
            finally:
                writer.close()
        colour_only = self.iod != "ultrasound"
        data, history = clip_data([_decoded(f) for f in frames], colour_only)
        ds = self.build_clip(exam, data, cine, content_time, history)
        return self.queue(exam, ds, hold)

    def queue_writer(self, exam: Exam, writer: ClipWriter, hold: bool = False) -> QueuedObject:
        """A clip that was encoded while it was recorded."""
        if not writer.timestamps:
            raise PixelError("the clip has no frames")
        video = writer.finish()
        cine = Cine.from_timestamps(writer.timestamps)
        content_time = datetime.fromtimestamp(writer.timestamps[0]).astimezone()
        log.info(
            "clip of %d frames encoded by %s: %d bytes", video.frames, video.encoder, video.size
        )
        return self.queue(exam, self.build_clip(exam, video, cine, content_time), hold)


def _decoded(frame: Frame) -> Frame:
    """A ring-buffer frame kept as JPEG alone gets its pixels back."""
    if frame.pixels.size or frame.jpeg is None:
        return frame
    import dataclasses

    return dataclasses.replace(frame, pixels=frame_pixels(frame))
