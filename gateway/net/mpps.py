"""MPPS SCU: sends the queued N-CREATE / N-SET messages to the RIS, in order
per exam, with the images' retry policy (exponential back-off with jitter).

A message is marked sent only on a success (or warning) status. A lost
response to an N-CREATE is retried and the server's "duplicate SOP instance"
answer then counts as delivered, so a flaky link never leaves the RIS with
two steps or none."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
)

from gateway.config import DestinationConfig
from gateway.net.association import PeerError, open_association, peer_label
from gateway.net.ul import Timeouts
from gateway.queue.mpps import MessageKind, MppsMessage, MppsQueue
from gateway.tls import TLSSetupError

log = logging.getLogger(__name__)

MPPS_CLASS = str(ModalityPerformedProcedureStep)
BATCH = 50
DUPLICATE_INSTANCE = 0x0111


def classify(kind: MessageKind, status: int | None) -> str:
    """ "sent", "retry" or "failed" for an N-CREATE/N-SET response status."""
    if status is None:
        return "retry"
    if status == 0x0000 or status in (0x0001, 0x0107, 0x0116) or (status & 0xF000) == 0xB000:
        return "sent"
    if kind is MessageKind.CREATE and status == DUPLICATE_INSTANCE:
        return "sent"  # our earlier attempt arrived; its response was lost
    if (status & 0xFF00) == 0xA700 or status in (0x0213, 0x0210):
        return "retry"  # out of resources / resource limitation / duplicate invocation
    return "failed"


def describe(status: int | None) -> str:
    if status is None:
        return "no response (association aborted or timed out)"
    names = {
        0x0105: "no such attribute",
        0x0106: "invalid attribute value",
        0x0110: "processing failure (is the step already completed?)",
        0x0111: "duplicate SOP instance",
        0x0112: "no such SOP instance",
        0x0117: "invalid object instance",
        0x0118: "no such SOP class",
        0x0120: "missing attribute",
        0x0121: "missing attribute value",
        0x0122: "SOP class not supported",
        0x0124: "not authorised",
        0x0213: "resource limitation",
    }
    name = names.get(status)
    return f"0x{status:04X} {name}" if name else f"0x{status:04X}"


@dataclass
class SendReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    error: str | None = None


@dataclass
class MppsSender:
    queue: MppsQueue
    peer: DestinationConfig
    calling_ae: str
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(connect=5.0, acse=15.0))

    def send_due(self, now: float | None = None) -> SendReport:
        """Send what is due over one association; repeats while sending made
        the next message of an exam due (N-CREATE then its N-SET)."""
        report = SendReport()
        assoc = None
        try:
            for _round in range(BATCH):
                batch = self.queue.claim(BATCH, now=now)
                if not batch:
                    break
                if assoc is None:
                    try:
                        assoc = open_association(
                            self.calling_ae, self.peer, [build_context(MPPS_CLASS)], self.timeouts
                        )
                    except (PeerError, TLSSetupError, OSError) as exc:
                        reason = str(exc)
                        if isinstance(exc, TLSSetupError):
                            reason = f"{peer_label(self.peer)}: {exc}"
                        for message in batch:
                            self.queue.mark_retry(message.id, reason)
                        report.retried += len(batch)
                        report.error = reason
                        log.warning("%s; %d MPPS message(s) stay queued", reason, len(batch))
                        return report
                progressed = False
                for i, message in enumerate(batch):
                    if not assoc.is_established:
                        for rest in batch[i:]:
                            self.queue.mark_retry(rest.id, "association lost")
                        report.retried += len(batch) - i
                        report.error = f"{peer_label(self.peer)}: association lost"
                        return report
                    progressed = self._send_one(assoc, message, report) or progressed
                if not progressed:
                    break
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()
        return report

    def _send_one(self, assoc: object, message: MppsMessage, report: SendReport) -> bool:
        try:
            ds = message.dataset()
            if message.kind is MessageKind.CREATE:
                status, _ = assoc.send_n_create(  # type: ignore[attr-defined]
                    ds, MPPS_CLASS, message.mpps_uid
                )
            else:
                status, _ = assoc.send_n_set(  # type: ignore[attr-defined]
                    ds, MPPS_CLASS, message.mpps_uid
                )
            code = getattr(status, "Status", None)
        except (ValueError, RuntimeError, OSError) as exc:
            self.queue.mark_failed(message.id, f"cannot send: {exc}")
            report.failed += 1
            log.error("MPPS message %d: cannot send: %s", message.id, exc)
            return False
        outcome = classify(message.kind, code)
        what = f"MPPS N-{message.kind.value.upper()} {message.pps_status}"
        if outcome == "sent":
            self.queue.mark_sent(message.id)
            report.sent += 1
            log.info("%s for exam %s delivered", what, message.exam_id)
            return True
        reason = f"{peer_label(self.peer)}: {what}: {describe(code)}"
        if outcome == "failed":
            self.queue.mark_failed(message.id, reason)
            report.failed += 1
            log.error("%s; message %d moved to the failed list", reason, message.id)
        else:
            self.queue.mark_retry(message.id, reason)
            report.retried += 1
            report.error = reason
            log.warning("%s; message %d will be retried", reason, message.id)
        return False

    def flush(self, timeout: float) -> SendReport:
        """Send everything now, ignoring back-off, until done or `timeout`."""
        total = SendReport()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = self.send_due(now=float("inf"))
            total.sent += report.sent
            total.failed += report.failed
            total.error = report.error or total.error
            counts = self.queue.counts()
            if counts["pending"] + counts["in_flight"] == 0:
                break
            if not (report.sent or report.failed):
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        return total

    def run(
        self, stop: threading.Event, heartbeat: Callable[[], None] | None = None, idle: float = 1.0
    ) -> None:
        """Until `stop`: send what is due, then wait a little."""
        self.queue.recover()
        while not stop.is_set():
            busy = False
            try:
                report = self.send_due()
                busy = report.sent > 0
            except Exception:  # the loop must outlive any one bad batch
                log.exception("MPPS sender batch failed unexpectedly")
            if heartbeat:
                heartbeat()
            if not busy:
                stop.wait(idle)
