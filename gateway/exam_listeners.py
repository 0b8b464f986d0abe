"""What listens to exams, wired the same way wherever exams are run (the
command line and the touchscreen): MPPS messages queued durably, the worklist
step marked performed, and the exam itself kept durably so an exam cut short
by a power loss can still be finished and its held images sent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import GatewayConfig, mpps_peer
from gateway.exam import Exam, ExamService
from gateway.exam_store import ExamStore
from gateway.queue.outbox import Outbox


@dataclass
class ExamListeners:
    restored: list[Exam] = field(default_factory=list)
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
    store = ExamStore(config.queue.path)
    out.closers.append(store.close)
    if restore:
        out.restored = store.unfinished(outbox)
    exams.subscribe(store)
    if mpps_peer(config) is not None:
        from gateway.mpps import MppsListener
        from gateway.queue.mpps import MppsQueue

        queue = MppsQueue(config.queue.path)
        exams.subscribe(MppsListener(config, queue))
        out.closers.append(queue.close)
    if config.worklist is not None:
        from gateway.worklist.service import WorklistService

        worklist = WorklistService(config)
        exams.subscribe(worklist.listener)
        out.closers.append(worklist.close)
    return out
