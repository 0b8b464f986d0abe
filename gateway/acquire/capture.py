"""From frames to durable queued objects: the one place where a driver's
output, the DICOM builders and the queue meet.

The configuration picks the IOD (US → Ultrasound, anything else → Secondary
Capture, `station.iod` overrides); the exam supplies patient, study, series
and order. A still becomes a single-frame object, a clip a multi-frame cine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from drivers.base import Frame, SourceKind
from gateway import __version__
from gateway.config import GatewayConfig
from gateway.dicom.iods import (
    Coding,
    Header,
    multiframe_true_color_sc,
    secondary_capture,
    ultrasound_image,
    ultrasound_multiframe,
)
from gateway.dicom.jpeg import JpegError
from gateway.dicom.modules import Cine, ConversionType, Equipment, ImageInfo
from gateway.dicom.part10 import to_parts
from gateway.dicom.pixels import EncodedJpeg, FrameData, LossyHistory, PixelError, wrappable
from gateway.dicom.uids import new_uid
from gateway.ops import clock
from gateway.queue.model import NewObject, QueuedObject
from gateway.queue.outbox import Outbox

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from gateway.acquire.exam import Exam

log = logging.getLogger(__name__)

CONVERSION_TYPES: dict[SourceKind, ConversionType] = {
    "video": "DV",
    "digital": "DI",
    "file": "WSD",
    "synthetic": "SYN",
}

IOD = Literal["secondary-capture", "ultrasound"]


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


class Capturer:
    """Builds and queues objects for an exam from frames of one source."""

    def __init__(self, config: GatewayConfig, outbox: Outbox, source: SourceKind) -> None:
        self.config = config
        self.outbox = outbox
        self.conversion_type = CONVERSION_TYPES[source]
        self.equipment = equipment_from(config)
        self.iod = choose_iod(config)

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
        frames: Iterable[FrameData],
        cine: Cine,
        content_time: datetime,
        history: LossyHistory | None = None,
    ) -> Dataset:
        build = ultrasound_multiframe if self.iod == "ultrasound" else multiframe_true_color_sc
        return build(frames, cine, self._header(exam, content_time), self._coding(history))

    def _header(self, exam: Exam, content_time: datetime) -> Header:
        """What every IOD builder takes from the exam and the configuration."""
        return Header(
            patient=exam.patient,
            study=exam.study,
            series=exam.series,
            equipment=self.equipment,
            image=self._image(exam, content_time),
            order=exam.order,
        )

    def _coding(self, history: LossyHistory | None) -> Coding:
        capture = self.config.capture
        return Coding(capture.compression, capture.jpeg_quality, history)

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
        data, history = clip_data(frames, colour_only=self.iod != "ultrasound")
        ds = self.build_clip(exam, data, cine, content_time, history)
        return self.queue(exam, ds, hold)
