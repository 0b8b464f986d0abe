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

from gateway.config import DestinationConfig
from gateway.dicom.part10 import encode_dataset
from gateway.net.association import PeerError, connect, describe_link_failure, peer_label
from gateway.net.tls import TLSSetupError
from gateway.net.ul import (
    Proposed,
    Timeouts,
    ULConnection,
    ULError,
    command_us,
    n_create_rq,
    n_set_rq,
)
from gateway.queue.messages import MessageKind, MppsMessage, MppsQueue
from gateway.queue.report import SendReport

log = logging.getLogger(__name__)

MPPS_CLASS = "1.2.840.10008.3.1.2.3.3"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
_CONTEXT = Proposed(1, MPPS_CLASS, (EXPLICIT_VR_LE, IMPLICIT_VR_LE))
N_CREATE_RSP, N_SET_RSP = 0x8140, 0x8120
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
class MppsSender:
    queue: MppsQueue
    peer: DestinationConfig
    calling_ae: str
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(connect=5.0, acse=15.0))

    def send_due(self, now: float | None = None) -> SendReport:
        """Send what is due over one association; repeats while sending made
        the next message of an exam due (N-CREATE then its N-SET)."""
        report = SendReport()
        conn: ULConnection | None = None
        try:
            for _round in range(BATCH):
                batch = self.queue.claim(BATCH, now=now)
                if not batch:
                    break
                if conn is None:
                    try:
                        conn = self._connect()
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
                    if not conn.open:
                        for rest in batch[i:]:
                            self.queue.mark_retry(rest.id, "association lost")
                        report.retried += len(batch) - i
                        report.error = f"{peer_label(self.peer)}: association lost"
                        return report
                    progressed = self._send_one(conn, message, report) or progressed
                if not progressed:
                    break
        finally:
            if conn is not None:
                conn.release()
        return report

    def _connect(self) -> ULConnection:
        conn = connect(self.calling_ae, self.peer, [_CONTEXT], self.timeouts)
        if _CONTEXT.id not in conn.accepted:
            conn.release()
            raise PeerError(f"{peer_label(self.peer)}: does not accept MPPS")
        return conn

    def _send_one(self, conn: ULConnection, message: MppsMessage, report: SendReport) -> bool:
        accepted = conn.accepted[_CONTEXT.id]
        try:
            data = encode_dataset(message.dataset(), accepted.transfer_syntax)
        except (ValueError, TypeError) as exc:  # a message we cannot encode never will be
            self.queue.mark_failed(message.id, f"cannot send: {exc}")
            report.failed += 1
            log.error("MPPS message %d: cannot send: %s", message.id, exc)
            return False
        message_id = conn.next_message_id()
        if message.kind is MessageKind.CREATE:
            command, expect = n_create_rq(message_id, MPPS_CLASS, message.mpps_uid), N_CREATE_RSP
        else:
            command, expect = n_set_rq(message_id, MPPS_CLASS, message.mpps_uid), N_SET_RSP
        try:
            response = conn.request(accepted.id, command, data, expect, message_id)
            code = command_us(response.command, 0x0900)
        except (ULError, OSError) as exc:
            conn.abort()
            code = None
            log.warning("MPPS message %d: %s", message.id, describe_link_failure(exc))
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
            total.add(report)
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
