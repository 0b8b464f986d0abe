"""The exam: the unit a technician works in (pick patient → capture → review
→ finish or discontinue). The touchscreen, the command line and MPPS all go
through `ExamService`, so there is one way to run an exam.

Images captured during an exam are durable at once but *held* in the queue
until the exam is finished, so a rejected image can still be deleted.
Listeners (MPPS, audit, the UI's live status) subscribe to the exam events.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from drivers.base import Frame
from gateway.acquire.capture import Capturer, ClipWriter
from gateway.config import GatewayConfig
from gateway.dicom.modules import Order, Patient, Series, Study
from gateway.dicom.uids import new_uid
from gateway.queue.db import QueueError
from gateway.queue.model import QueuedObject
from gateway.queue.outbox import Outbox

log = logging.getLogger(__name__)


class ExamState(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    DISCONTINUED = "discontinued"


class ExamError(Exception):
    """An exam action that does not fit the exam's state, worded for the user."""


@dataclass
class Exam:
    patient: Patient
    study: Study
    series: Series
    order: Order | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: ExamState = ExamState.IN_PROGRESS
    started: datetime = field(default_factory=lambda: datetime.now().astimezone())
    ended: datetime | None = None
    discontinue_reason: str | None = None
    images: list[QueuedObject] = field(default_factory=list)
    # Instance Numbers only count up, so a deleted image's number is never reused.
    instances_made: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def scheduled(self) -> bool:
        return self.order is not None

    def next_instance_number(self) -> int:
        """Call with `lock` held."""
        self.instances_made += 1
        return self.instances_made


@dataclass(frozen=True)
class ExamEvent:
    kind: str  # "started", "captured", "deleted", "completed", "discontinued"
    exam: Exam
    image: QueuedObject | None = None


Listener = Callable[[ExamEvent], None]


def new_study(config: GatewayConfig, order: Order | None, started: datetime) -> Study:
    """From the order when scheduled; else IHE's unscheduled case: a new Study
    Instance UID and an empty Accession Number."""
    study_id = started.strftime("%H%M%S")
    if order is None:
        return Study(
            instance_uid=new_uid(config.station.uid_root or None),
            started=started,
            study_id=study_id,
        )
    return Study(
        instance_uid=order.study_instance_uid,
        started=started,
        accession_number=order.accession_number,
        referring_physician=order.referring_physician,
        study_id=(order.requested_procedure_id or study_id)[:16],
        description=order.requested_procedure_description,
    )


class ExamService:
    def __init__(
        self,
        config: GatewayConfig,
        outbox: Outbox,
        capturer: Capturer,
        *,
        hold_until_finished: bool = True,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.capturer = capturer
        # Headless capture has no review step: its images go out at once.
        self.hold = hold_until_finished
        self.listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def _emit(self, event: ExamEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except (sqlite3.Error, QueueError, OSError) as exc:  # a full or failing disk
                log.error("exam %s not recorded (%s): %s", event.kind, type(listener).__name__, exc)
            except Exception:  # a listener's bug must not lose the capture
                log.exception("exam listener failed on %s", event.kind)

    def start(self, patient: Patient, order: Order | None = None) -> Exam:
        started = datetime.now().astimezone()
        exam = Exam(
            patient=patient,
            study=new_study(self.config, order, started),
            series=Series(
                modality=self.config.station.modality,
                number=1,
                instance_uid=new_uid(self.config.station.uid_root or None),
            ),
            order=order,
            started=started,
        )
        self._emit(ExamEvent("started", exam))
        return exam

    def capture(self, exam: Exam, frame: Frame) -> QueuedObject:
        """Durable when this returns; held until the exam is finished."""
        if exam.state is not ExamState.IN_PROGRESS:
            raise ExamError(f"exam is {exam.state.value}; start a new exam to capture")
        image = self.capturer.capture(exam, frame, hold=self.hold)
        self._emit(ExamEvent("captured", exam, image))
        return image

    def capture_clip(self, exam: Exam, frames: Sequence[Frame]) -> QueuedObject:
        """A clip ("Record", "Save last 10 s") as one multi-frame object;
        durable when this returns, held like a still."""
        if exam.state is not ExamState.IN_PROGRESS:
            raise ExamError(f"exam is {exam.state.value}; start a new exam to capture")
        image = self.capturer.capture_clip(exam, frames, hold=self.hold)
        self._emit(ExamEvent("captured", exam, image))
        return image

    def capture_recorded(self, exam: Exam, writer: ClipWriter) -> QueuedObject:
        """A clip encoded while it was recorded (`capture --clip`, Record)."""
        if exam.state is not ExamState.IN_PROGRESS:
            raise ExamError(f"exam is {exam.state.value}; start a new exam to capture")
        image = self.capturer.queue_writer(exam, writer, hold=self.hold)
        self._emit(ExamEvent("captured", exam, image))
        return image

    def delete(self, exam: Exam, object_id: int) -> None:
        if exam.state is not ExamState.IN_PROGRESS:
            raise ExamError("images can only be deleted before the exam is finished")
        with exam.lock:
            match = [i for i in exam.images if i.id == object_id]
            if not match:
                raise ExamError(f"image {object_id} is not part of this exam")
            self.outbox.discard_held(object_id)
            exam.images.remove(match[0])
        self._emit(ExamEvent("deleted", exam, match[0]))

    def finish(self, exam: Exam) -> int:
        """Release the exam's images for sending; returns how many."""
        if exam.state is not ExamState.IN_PROGRESS:
            raise ExamError(f"exam is already {exam.state.value}")
        released = self.outbox.release_exam(exam.id)
        exam.state, exam.ended = ExamState.COMPLETED, datetime.now().astimezone()
        self._emit(ExamEvent("completed", exam))
        return released

    def discontinue(self, exam: Exam, reason: str, *, discard: bool = False) -> int:
        """Abandoned exam: images already taken are still sent (they were
        acknowledged to the technician); the RIS is told it was discontinued.

        `discard`: the technician confirmed the held images belong to someone
        else (the wrong patient was picked): they are deleted, never sent, and
        the MPPS names no images."""
        if exam.state is not ExamState.IN_PROGRESS:
            raise ExamError(f"exam is already {exam.state.value}")
        if discard:
            if not self.hold:
                raise ExamError("images of this exam were sent as they were made")
            with exam.lock:
                for image in list(exam.images):
                    self.outbox.discard_held(image.id)
                    exam.images.remove(image)
        released = self.outbox.release_exam(exam.id)
        exam.state, exam.ended = ExamState.DISCONTINUED, datetime.now().astimezone()
        exam.discontinue_reason = reason
        self._emit(ExamEvent("discontinued", exam))
        return released
