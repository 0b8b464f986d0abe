"""The forwarder: takes due deliveries from the outbox and C-STOREs them,
one association per batch, marking a row sent only on a success status."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import DestinationConfig
from gateway.net.association import (
    PeerError,
    Timeouts,
    contexts_for,
    open_association,
    peer_label,
)
from gateway.net.store import Outcome, classify_status, describe_status
from gateway.queue.outbox import Delivery, Outbox
from gateway.tls import TLSSetupError

log = logging.getLogger(__name__)

BATCH = 200


@dataclass
class DestinationStatus:
    """What the status bar and `queue stats` say about a link."""

    name: str
    reachable: bool | None = None
    last_error: str | None = None
    last_success: float | None = None
    next_try: float | None = None


@dataclass
class BatchReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    error: str | None = None


@dataclass
class Forwarder:
    outbox: Outbox
    destinations: list[DestinationConfig]
    calling_ae: str
    timeouts: Timeouts = field(default_factory=Timeouts)
    status: dict[str, DestinationStatus] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for dest in self.destinations:
            self.status.setdefault(dest.name, DestinationStatus(dest.name))

    def send_batch(self, dest: DestinationConfig, now: float | None = None) -> BatchReport:
        """Claim what is due for `dest` and send it over one association."""
        batch = self.outbox.claim(dest.name, BATCH, now=now)
        report = BatchReport()
        if not batch:
            return report
        state = self.status[dest.name]
        try:
            assoc = open_association(
                self.calling_ae,
                dest,
                contexts_for((d.object.sop_class_uid, d.object.transfer_syntax_uid) for d in batch),
                self.timeouts,
            )
        except (PeerError, TLSSetupError, OSError) as exc:
            reason = str(exc)
            if isinstance(exc, TLSSetupError):
                reason = f"{peer_label(dest)}: {exc}"
            for delivery in batch:
                state.next_try = self.outbox.mark_retry(delivery.object.id, dest.name, reason)
            state.reachable, state.last_error = False, reason
            report.retried, report.error = len(batch), reason
            log.warning("%s; %d object(s) stay queued", reason, len(batch))
            return report
        state.reachable = True
        try:
            for i, delivery in enumerate(batch):
                if not assoc.is_established:
                    for rest in batch[i:]:
                        self.outbox.mark_retry(rest.object.id, dest.name, "association lost")
                    report.retried += len(batch) - i
                    report.error = f"{peer_label(dest)}: association lost"
                    break
                self._send_one(assoc, dest, delivery, report)
        finally:
            if assoc.is_established:
                assoc.release()
        if report.sent:
            state.last_success = time.time()
            state.last_error = report.error
        return report

    def _send_one(
        self, assoc: object, dest: DestinationConfig, delivery: Delivery, report: BatchReport
    ) -> None:
        obj = delivery.object
        if not obj.path.is_file():
            msg = f"queue file {obj.path} is missing"
            self.outbox.mark_failed(obj.id, dest.name, msg)
            report.failed += 1
            log.error("%s; object %d isolated as failed", msg, obj.id)
            return
        try:
            response = assoc.send_c_store(obj.path)  # type: ignore[attr-defined]
            code = getattr(response, "Status", None)
        except (ValueError, OSError) as exc:  # no accepted context, unreadable file
            self.outbox.mark_failed(obj.id, dest.name, f"cannot send: {exc}")
            report.failed += 1
            log.error("object %d to %s: cannot send: %s", obj.id, dest.name, exc)
            return
        outcome = classify_status(code)
        if outcome is Outcome.STORED:
            self.outbox.mark_sent(obj.id, dest.name)
            report.sent += 1
            return
        reason = f"{peer_label(dest)}: C-STORE {describe_status(code)}"
        if outcome is Outcome.PERMANENT:
            self.outbox.mark_failed(obj.id, dest.name, reason)
            report.failed += 1
            log.error("%s; object %d moved to the failed list", reason, obj.id)
        else:
            self.outbox.mark_retry(obj.id, dest.name, reason)
            report.retried += 1
            report.error = reason
            log.warning("%s; object %d will be retried", reason, obj.id)

    def pending(self) -> int:
        stats = self.outbox.stats()
        return sum(stats.get(d.name, {}).get("pending", 0) for d in self.destinations)

    def flush(self, timeout: float) -> BatchReport:
        """Send everything now, ignoring back-off, until done or `timeout`."""
        total = BatchReport()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            progress = False
            for dest in self.destinations:
                report = self.send_batch(dest, now=float("inf"))
                total.sent += report.sent
                total.failed += report.failed
                total.error = report.error or total.error
                progress = progress or report.sent > 0 or report.failed > 0
            if self.pending() == 0:
                break
            if not progress:
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        return total

    def run(
        self, stop: threading.Event, heartbeat: Callable[[], None] | None = None, idle: float = 1.0
    ) -> None:
        """Until `stop`: send what is due, sleep until the next thing is due."""
        while not stop.is_set():
            busy = False
            for dest in self.destinations:
                try:
                    report = self.send_batch(dest)
                except Exception:  # the loop must outlive any one bad batch
                    log.exception("forwarder batch to %s failed unexpectedly", dest.name)
                    continue
                busy = busy or report.sent > 0
            if heartbeat:
                heartbeat()
            if not busy:
                stop.wait(idle)
