"""MPPS for an exam: "started" and "ended" (completed or discontinued) become
queued MPPS messages (gateway/acquire/listeners.py calls these from the exam's
events).

Queued, not sent: the exam must never wait for the RIS, and a field unit's
exam reports once the link is back, in the order it happened."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from gateway.config import GatewayConfig
from gateway.dicom import procedure_step as mpps
from gateway.dicom.modules import Order, Patient, Series, Study
from gateway.dicom.uids import new_uid
from gateway.queue.messages import MessageKind, MppsQueue

log = logging.getLogger(__name__)


class Image(Protocol):
    @property
    def sop_class_uid(self) -> str: ...

    @property
    def sop_instance_uid(self) -> str: ...


class PerformedExam(Protocol):
    """What MPPS needs to know of an exam (gateway.acquire.exam.Exam fits)."""

    @property
    def id(self) -> str: ...

    @property
    def patient(self) -> Patient: ...

    @property
    def study(self) -> Study: ...

    @property
    def series(self) -> Series: ...

    @property
    def order(self) -> Order | None: ...

    @property
    def started(self) -> datetime: ...

    @property
    def ended(self) -> datetime | None: ...

    @property
    def discontinue_reason(self) -> str | None: ...

    @property
    def images(self) -> Sequence[Image]: ...


class MppsReporter:
    def __init__(self, config: GatewayConfig, queue: MppsQueue) -> None:
        self.config = config
        self.queue = queue
        # exam id → MPPS SOP Instance UID (also recoverable from the queue rows)
        self._uids: dict[str, str] = {}

    def _uid(self, exam: PerformedExam) -> str | None:
        uid = self._uids.get(exam.id)
        if uid is None:
            rows = self.queue.messages(exam.id)
            if rows:
                uid = rows[0].mpps_uid
        return uid

    def started(self, exam: PerformedExam) -> None:
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

    def finished(self, exam: PerformedExam, status: str) -> None:
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
