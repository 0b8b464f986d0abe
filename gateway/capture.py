"""From a frame to a durable queued object: the one place where a driver's
output, the DICOM builders and the queue meet."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime

from drivers.base import Frame, SourceKind
from gateway import __version__
from gateway.config import GatewayConfig
from gateway.dicom.iods import secondary_capture, to_bytes
from gateway.dicom.modules import ConversionType, Equipment, ImageInfo, Patient, Series, Study
from gateway.queue.outbox import Outbox, QueuedObject

log = logging.getLogger(__name__)

CONVERSION_TYPES: dict[SourceKind, ConversionType] = {
    "video": "DV",
    "digital": "DI",
    "file": "WSD",
    "synthetic": "SYN",
}

MANUFACTURER = "dicom-edge-gateway"


def equipment_from(config: GatewayConfig) -> Equipment:
    return Equipment(
        manufacturer=MANUFACTURER,
        model_name=MANUFACTURER,
        software_versions=__version__,
        station_name=config.station.station_name,
        institution_name=config.station.institution_name,
    )


@dataclass
class Exam:
    """One patient's exam on this box: the study, our series in it, and the
    count of images so far (Instance Number counts up within the exam)."""

    patient: Patient
    study: Study
    series: Series
    images: list[QueuedObject] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def unscheduled(cls, config: GatewayConfig, patient: Patient) -> Exam:
        """IHE's unscheduled case: a new Study Instance UID, no accession number."""
        started = datetime.now().astimezone()
        return cls(
            patient=patient,
            study=Study(started=started, study_id=started.strftime("%H%M%S")),
            series=Series(modality=config.station.modality, number=1),
        )


class Capturer:
    """Builds and queues objects for an exam from frames of one source."""

    def __init__(self, config: GatewayConfig, outbox: Outbox, source: SourceKind) -> None:
        self.config = config
        self.outbox = outbox
        self.conversion_type = CONVERSION_TYPES[source]
        self.equipment = equipment_from(config)

    def capture(self, exam: Exam, frame: Frame) -> QueuedObject:
        """Returns only once the object is durable; raises QueueError otherwise."""
        with exam._lock:
            number = len(exam.images) + 1
            image = ImageInfo(
                instance_number=number,
                conversion_type=self.conversion_type,
                content_time=datetime.fromtimestamp(frame.timestamp).astimezone(),
            )
            ds = secondary_capture(
                frame.pixels,
                patient=exam.patient,
                study=exam.study,
                series=exam.series,
                equipment=self.equipment,
                image=image,
                encoding=self.config.capture.compression,
            )
            queued = self.outbox.add(
                to_bytes(ds),
                sop_instance_uid=image.sop_instance_uid,
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                study_instance_uid=exam.study.instance_uid,
            )
            exam.images.append(queued)
        log.info(
            "captured image %d of exam %s as queue object %d",
            number,
            exam.study.study_id,
            queued.id,
        )
        return queued
