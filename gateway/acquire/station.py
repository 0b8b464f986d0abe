"""The one exam set-up, whichever way an exam is run: the headless `capture`,
`import` (in the command or handed to the service), the touchscreen and the
images a device sends on its own.

Each used to wire the capturer, the exam service and its listeners (MPPS,
worklist "performed", the durable exam record) itself, and only some closed
the exam on every failure: an import failing on its second batch left its
exam in progress and an MPPS IN PROGRESS queued for ever. Here it is wired
once, and a one-shot exam (`Station.exam`) is finished when its block ends
and discontinued, with the failure as the reason, whatever raised.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Self

from drivers.base import SourceKind
from gateway.acquire.capture import Capturer
from gateway.acquire.exam import Exam, ExamService, ExamState
from gateway.acquire.listeners import ExamListeners, attach
from gateway.acquire.subject import Subject
from gateway.config import GatewayConfig
from gateway.queue.outbox import Outbox

log = logging.getLogger(__name__)

# Discontinuation Reason: Comments on the Performed Procedure Step is LO (64).
MAX_REASON = 64
INTERRUPTED = "interrupted: the process ended before the exam did"


def failure_reason(what: str, exc: BaseException) -> str:
    """ "import failed: <why>", fitted to the MPPS comment."""
    if isinstance(exc, KeyboardInterrupt):
        return f"{what} interrupted"
    return f"{what} failed: {exc}"[:MAX_REASON]


class Station:
    """Capturer, exam service and listeners over one outbox.

    `review`: images are held until the exam is finished (the touchscreen,
    where the technician may still delete them); headless exams send at once.
    `restore`: exams left in progress by the last process come back in
    `restored` (the touchscreen adopts them); headless ones whose process
    died (a `capture` or `import` killed mid-exam) are discontinued here,
    MPPS included, so none stays open."""

    def __init__(
        self,
        config: GatewayConfig,
        outbox: Outbox,
        source: SourceKind,
        *,
        review: bool,
        restore: bool = False,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.capturer = Capturer(config, outbox, source)
        self.exams = ExamService(config, outbox, self.capturer, hold_until_finished=review)
        self.listeners: ExamListeners = attach(config, self.exams, outbox, restore=restore)
        for exam in self.listeners.abandoned:
            log.warning("exam %s was left in progress by a process that ended", exam.id)
            try:
                self.exams.discontinue(exam, INTERRUPTED)
            except Exception:  # the next start tries again
                log.exception("exam %s could not be discontinued", exam.id)

    @property
    def restored(self) -> list[Exam]:
        return self.listeners.restored

    def close(self) -> None:
        self.listeners.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def exam(self, subject: Subject, what: str) -> Iterator[Exam]:
        """A one-shot exam for `subject`: finished (MPPS COMPLETED, the
        worklist step performed) when the block ends, discontinued (MPPS
        DISCONTINUED with the reason) when anything in it raises. What was
        queued before the failure stays queued: it was acknowledged."""
        exam = self.exams.start(subject.patient, subject.order)
        try:
            yield exam
        except BaseException as exc:
            if exam.state is ExamState.IN_PROGRESS:
                try:
                    self.exams.discontinue(exam, failure_reason(what, exc))
                except Exception:  # the original failure is the one to report
                    log.exception("exam %s could not be discontinued", exam.id)
            raise
        else:
            if exam.state is ExamState.IN_PROGRESS:
                self.exams.finish(exam)
