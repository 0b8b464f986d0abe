"""What listens to exams, wired the same way wherever exams are run (the
command line and the touchscreen): MPPS messages queued durably, the worklist
step marked performed, and the exam itself kept durably so an exam cut short
by a power loss can still be finished and its held images sent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.acquire.exam import Exam, ExamEvent, ExamService
from gateway.acquire.exam_store import ExamStore
from gateway.config import GatewayConfig, mpps_peer
from gateway.queue.outbox import Outbox


@dataclass
class ExamListeners:
    restored: list[Exam] = field(default_factory=list)
    # Headless exams of processes that died mid-exam (see ExamStore.abandoned).
    abandoned: list[Exam] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()


def attach(
    config: GatewayConfig, exams: ExamService, outbox: Outbox, *, restore: bool = False
) -> ExamListeners:
    """Subscribe the listeners; with `restore`, return the exams that were in
    progress when the last process ended (their images still held)."""
    out = ExamListeners()
    store = ExamStore(config.queue.path, review=exams.hold)
    out.closers.append(store.close)
    if restore:
        out.restored = store.unfinished(outbox)
        out.abandoned = store.abandoned(outbox)
    exams.subscribe(store)
    if mpps_peer(config) is not None:
        from gateway.dicom import procedure_step
        from gateway.queue.messages import MppsQueue
        from gateway.ris.mpps import MppsReporter

        queue = MppsQueue(config.queue.path)
        reporter = MppsReporter(config, queue)
        ended = {"completed": procedure_step.COMPLETED, "discontinued": procedure_step.DISCONTINUED}

        def mpps(event: ExamEvent) -> None:
            if event.kind == "started":
                reporter.started(event.exam)
            elif event.kind in ended:
                reporter.finished(event.exam, ended[event.kind])

        exams.subscribe(mpps)
        out.closers.append(queue.close)
    if config.worklist is not None:
        from gateway.ris.worklist import WorklistService

        worklist = WorklistService(config)

        def performed(event: ExamEvent) -> None:
            if event.kind == "completed" and event.exam.order is not None:
                worklist.performed(event.exam.order, event.exam.id)

        exams.subscribe(performed)
        out.closers.append(worklist.close)
    return out
