"""The hook between the exam lifecycle and MPPS: an ExamService listener that
turns "started" / "completed" / "discontinued" into queued MPPS messages.

Queued, not sent: the exam must never wait for the RIS, and a field unit's
exam reports once the link is back, in the order it happened."""

from __future__ import annotations

import logging
from datetime import datetime

from gateway.config import GatewayConfig
from gateway.dicom import mpps
from gateway.dicom.uids import new_uid
from gateway.exam import Exam, ExamEvent
from gateway.queue.mpps import MessageKind, MppsQueue

log = logging.getLogger(__name__)


class MppsListener:
    def __init__(self, config: GatewayConfig, queue: MppsQueue) -> None:
        self.config = config
        self.queue = queue
        # exam id → MPPS SOP Instance UID (also recoverable from the queue rows)
        self._uids: dict[str, str] = {}

    def __call__(self, event: ExamEvent) -> None:
        exam = event.exam
        if event.kind == "started":
            self.started(exam)
        elif event.kind == "completed":
            self.finished(exam, mpps.COMPLETED)
        elif event.kind == "discontinued":
            self.finished(exam, mpps.DISCONTINUED)

    def _uid(self, exam: Exam) -> str | None:
        uid = self._uids.get(exam.id)
        if uid is None:
            rows = self.queue.messages(exam.id)
            if rows:
                uid = rows[0].mpps_uid
        return uid

    def started(self, exam: Exam) -> None:
        uid = new_uid()
        step = mpps.PerformedStep(
            mpps_uid=uid,
            # Unique per performed step (one order may be performed twice).
            step_id=exam.started.strftime("%y%m%d%H%M%S") + exam.id[:4].upper(),
            patient=exam.patient,
            study=exam.study,
            order=exam.order,
            modality=exam.series.modality,
            station_ae_title=self.config.station.ae_title,
            station_name=self.config.station.station_name,
            started=exam.started,
        )
        self.queue.add(exam.id, uid, MessageKind.CREATE, mpps.IN_PROGRESS, mpps.n_create(step))
        self._uids[exam.id] = uid
        log.info("MPPS IN PROGRESS queued for exam %s", exam.id)

    def finished(self, exam: Exam, status: str) -> None:
        uid = self._uid(exam)
        if uid is None:
            log.error("exam %s ended without an MPPS N-CREATE; no N-SET queued", exam.id)
            return
        reason, comments = (None, "")
        if status == mpps.DISCONTINUED:
            reason, comments = mpps.discontinuation_reason(exam.discontinue_reason or "")
        objects = [
            mpps.ReferencedObject(image.sop_class_uid, image.sop_instance_uid)
            for image in exam.images
        ]
        order = exam.order
        protocol = ""
        if order is not None:
            protocol = order.scheduled_procedure_step_description or (
                order.scheduled_protocol_codes[0].meaning if order.scheduled_protocol_codes else ""
            )
        ds = mpps.n_set_final(
            status,
            exam.ended or datetime.now().astimezone(),
            exam.series.instance_uid,
            objects,
            protocol=protocol[:64],
            station_ae_title=self.config.station.ae_title,
            reason=reason,
            comments=comments,
            specific_character_set=order.specific_character_set if order else "ISO_IR 192",
        )
        self.queue.add(exam.id, uid, MessageKind.SET, status, ds)
        self._uids.pop(exam.id, None)
        log.info("MPPS %s queued for exam %s (%d object(s))", status, exam.id, len(objects))
