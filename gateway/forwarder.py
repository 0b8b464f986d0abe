"""The forwarder: takes due deliveries from the outbox and C-STOREs them,
one association per batch, marking a row sent only on a success status."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import DestinationConfig, GatewayConfig
from gateway.net.association import PeerError, connect, describe_link_failure, peer_label
from gateway.net.store import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    FileProblem,
    Outcome,
    Part10,
    classify_status,
    describe_status,
    read_part10_header,
    store_file,
)
from gateway.net.ul import Accepted, Proposed, Timeouts, ULConnection, ULError
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
    retry_base: float = 5.0  # seconds before the first retry (doubles, with jitter)
    retry_cap: float = 300.0  # never wait longer than this between tries
    # Listeners (audit, metrics): called with the object IDs just recorded as
    # sent, and with each batch's report. Their failures never stop sending.
    on_sent: list[Callable[[DestinationConfig, list[int]], None]] = field(default_factory=list)
    on_batch: list[Callable[[DestinationConfig, BatchReport], None]] = field(default_factory=list)
    _sent: list[int] = field(default_factory=list, init=False)
    _sent_since: float = field(default=0.0, init=False)

    @classmethod
    def from_config(cls, outbox: Outbox, config: GatewayConfig) -> Forwarder:
        f = config.forwarding
        return cls(
            outbox,
            list(config.destinations),
            config.station.ae_title,
            timeouts=Timeouts(
                connect=f.connect_timeout_s,
                acse=f.acse_timeout_s,
                dimse=f.dimse_timeout_s,
                network=f.network_timeout_s,
            ),
            retry_base=f.retry_base_s,
            retry_cap=f.retry_cap_s,
        )

    def __post_init__(self) -> None:
        for dest in self.destinations:
            self.status.setdefault(dest.name, DestinationStatus(dest.name))

    @staticmethod
    def _notify(listeners: list[Callable[..., None]], *args: Any) -> None:
        for listener in listeners:
            try:
                listener(*args)
            except Exception:
                log.exception("forwarder listener failed")

    def send_batch(self, dest: DestinationConfig, now: float | None = None) -> BatchReport:
        """Claim what is due for `dest` and send it over one association."""
        report = self._send_batch(dest, now)
        if report.sent or report.retried or report.failed:
            self._notify(self.on_batch, dest, report)
        return report

    def _send_batch(self, dest: DestinationConfig, now: float | None) -> BatchReport:
        batch = self.outbox.claim(dest.name, BATCH, now=now)
        report = BatchReport()
        if not batch:
            return report
        state = self.status[dest.name]
        contexts, batch = self._contexts(dest, batch)
        try:
            conn = connect(self.calling_ae, dest, contexts, self.timeouts)
        except (PeerError, TLSSetupError) as exc:
            reason = str(exc) if isinstance(exc, PeerError) else f"{peer_label(dest)}: {exc}"
            for delivery in batch:
                state.next_try = self._retry(delivery.object.id, dest.name, reason)
            state.reachable, state.last_error = False, reason
            report.retried, report.error = len(batch), reason
            log.warning("%s; %d object(s) stay queued", reason, len(batch))
            return report
        state.reachable = True
        self._sent = []
        self._sent_since = time.monotonic()
        try:
            for delivery in batch:
                if not conn.open:
                    # The link broke: the rest were never attempted; they go
                    # back as they were and the next round reconnects.
                    break
                self._send_one(conn, dest, delivery, report)
        finally:
            conn.release()
            self._commit_sent(dest, force=True)
            # Whatever ended the loop, no claim outlives it: rows still in
            # flight go back to pending (a no-op for rows already decided).
            self.outbox.release_many([d.object.id for d in batch], dest.name)
        if report.sent:
            state.last_success = time.time()
            state.last_error = report.error
        return report

    def _retry(self, object_id: int, destination: str, reason: str) -> float:
        return self.outbox.mark_retry(
            object_id, destination, reason, base=self.retry_base, cap=self.retry_cap
        )

    def _commit_sent(self, dest: DestinationConfig, force: bool = False) -> None:
        """Successes are committed in groups (every 64 objects or half a second)."""
        if not self._sent:
            return
        if force or len(self._sent) >= 64 or time.monotonic() - self._sent_since > 0.5:
            self.outbox.mark_sent_many(self._sent, dest.name)
            self._notify(self.on_sent, dest, self._sent)
            self._sent = []
            self._sent_since = time.monotonic()

    def _contexts(
        self, dest: DestinationConfig, batch: list[Delivery]
    ) -> tuple[list[Proposed], list[Delivery]]:
        """The object's own transfer syntax, and Explicit VR Little Endian as a
        fallback, per SOP class; at most 128 contexts (the rest wait a round)."""
        contexts: dict[tuple[str, tuple[str, ...]], Proposed] = {}
        kept: list[Delivery] = []
        for delivery in batch:
            obj = delivery.object
            wanted: list[tuple[str, tuple[str, ...]]] = [
                (obj.sop_class_uid, (obj.transfer_syntax_uid,))
            ]
            wanted.append((obj.sop_class_uid, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)))
            new = [w for w in wanted if w not in contexts]
            if len(contexts) + len(new) > 128:
                self.outbox.release(obj.id, dest.name)
                continue
            for key in new:
                contexts[key] = Proposed(2 * len(contexts) + 1, key[0], key[1])
            kept.append(delivery)
        return list(contexts.values()), kept

    def _send_one(
        self, conn: ULConnection, dest: DestinationConfig, delivery: Delivery, report: BatchReport
    ) -> None:
        obj = delivery.object
        try:
            sop = read_part10_header(obj.path)
            if sop.size != obj.size:
                raise FileProblem(
                    f"{obj.path.name} is {sop.size} bytes, but {obj.size} were queued "
                    "(changed behind the gateway's back)"
                )
            if sop.sop_instance != obj.sop_instance_uid:
                raise FileProblem(
                    f"{obj.path.name} holds SOP Instance UID {sop.sop_instance}, "
                    f"not the queued {obj.sop_instance_uid}"
                )
            choice = self._choose_context(conn, sop)
            if choice is None:
                reason = (
                    f"{peer_label(dest)}: accepts neither {sop.transfer_syntax} nor an "
                    f"uncompressed transfer syntax for SOP class {sop.sop_class}"
                )
                self.outbox.mark_failed(obj.id, dest.name, reason)
                report.failed += 1
                log.error("%s; object %d moved to the failed list", reason, obj.id)
                return
            code = store_file(conn, sop, choice.id, choice.transfer_syntax, self._workdir())
        except FileProblem as exc:
            msg = f"queue file problem: {exc}"
            self.outbox.mark_failed(obj.id, dest.name, msg)
            report.failed += 1
            log.error("%s; object %d isolated as failed", msg, obj.id)
            return
        except (ULError, OSError) as exc:
            conn.abort()
            reason = f"{peer_label(dest)}: {describe_link_failure(exc)} during C-STORE"
            self._retry(obj.id, dest.name, reason)
            report.retried += 1
            report.error = reason
            log.warning("%s; object %d will be retried", reason, obj.id)
            return
        outcome = classify_status(code)
        if outcome is Outcome.STORED:
            self._sent.append(obj.id)
            report.sent += 1
            self._commit_sent(dest)
            return
        reason = f"{peer_label(dest)}: C-STORE {describe_status(code)}"
        if outcome is Outcome.PERMANENT:
            self.outbox.mark_failed(obj.id, dest.name, reason)
            report.failed += 1
            log.error("%s; object %d moved to the failed list", reason, obj.id)
        else:
            self._retry(obj.id, dest.name, reason)
            report.retried += 1
            report.error = reason
            log.warning("%s; object %d will be retried", reason, obj.id)

    @staticmethod
    def _choose_context(conn: ULConnection, sop: Part10) -> Accepted | None:
        same = [
            a
            for a in conn.accepted.values()
            if a.abstract_syntax == sop.sop_class and a.transfer_syntax == sop.transfer_syntax
        ]
        if same:
            return same[0]
        for ts in (EXPLICIT_VR_LE, IMPLICIT_VR_LE):
            for a in conn.accepted.values():
                if a.abstract_syntax == sop.sop_class and a.transfer_syntax == ts:
                    return a
        return None

    def _workdir(self) -> Path:
        return self.outbox.root / "convert"

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
