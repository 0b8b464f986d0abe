"""From a frame to a durable queued object: the one place where a driver's
output, the DICOM builders and the queue meet."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from drivers.base import Frame, SourceKind
from gateway import __version__, clock
from gateway.config import GatewayConfig
from gateway.dicom.iods import secondary_capture, to_bytes
from gateway.dicom.modules import ConversionType, Equipment, ImageInfo
from gateway.queue.outbox import Outbox, QueuedObject

if TYPE_CHECKING:
    from gateway.exam import Exam

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


class Capturer:
    """Builds and queues objects for an exam from frames of one source."""

    def __init__(self, config: GatewayConfig, outbox: Outbox, source: SourceKind) -> None:
        self.config = config
        self.outbox = outbox
        self.conversion_type = CONVERSION_TYPES[source]
        self.equipment = equipment_from(config)

    def capture(self, exam: Exam, frame: Frame, hold: bool = False) -> QueuedObject:
        """Returns only once the object is durable; raises QueueError otherwise."""
        with exam.lock:
            number = exam.next_instance_number()
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
                exam_id=exam.id,
                hold=hold,
            )
            exam.images.append(queued)
        clock.flag_capture(self.outbox.root, queued.id)  # dates may be wrong: say so
        log.info(
            "captured image %d of exam %s as queue object %d",
            number,
            exam.study.study_id,
            queued.id,
        )
        return queued
