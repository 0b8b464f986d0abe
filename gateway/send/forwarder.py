"""The forwarder: takes due deliveries from the outbox and hands each batch to
its destination's sender (gateway.send.destination), then records what the
sender reports. A row is marked sent only on the destination's word.

Everything the queue promises happens here, the same for every protocol:
successes committed in groups, transient failures retried with back-off,
permanent ones set aside on the failed list with their reason, claims never
outliving the round, and a link status for the screen and `queue stats`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Destination, GatewayConfig
from gateway.dicom.transcode import DEFAULT_MEMORY_LIMIT
from gateway.net.ul import Timeouts
from gateway.queue.db import QueueError
from gateway.queue.deliveries import PROBE_CAP_S, backoff_delay
from gateway.queue.model import DeliveryState
from gateway.queue.outbox import Outbox
from gateway.queue.report import SendReport
from gateway.send.destination import LinkDown, Outcome, Result, Sender
from gateway.send.protocols import sender_for

log = logging.getLogger(__name__)

BATCH = 200
# Successes are committed in groups: one fsync per this many objects or seconds.
COMMIT_EVERY = 64
COMMIT_AFTER_S = 0.5
CLAIMS_CHECK_S = 60.0


@dataclass
class DestinationStatus:
    """What the status bar and `queue stats` say about a link."""

    name: str
    reachable: bool | None = None
    last_error: str | None = None
    last_success: float | None = None
    next_try: float | None = None


@dataclass
class _Round:
    """One batch to one destination: what was reported, and the successes
    not yet committed."""

    dest: Destination
    report: SendReport = field(default_factory=SendReport)
    decided: set[int] = field(default_factory=set)
    sent: list[int] = field(default_factory=list)
    last_errors: dict[int, str | None] = field(default_factory=dict)  # as claimed
    since: float = field(default_factory=time.monotonic)


@dataclass
class _FlushJob:
    """A `queue flush` handed over by another thread (the forwarder's control
    socket): done by the loop's own thread, which owns the senders and the
    queue connection, so a flush never races the loop for a claim."""

    timeout: float
    done: threading.Event = field(default_factory=threading.Event)
    summary: dict[str, Any] | None = None
    error: str | None = None


class ForwarderStopped(Exception):
    """The forwarder's loop ended before it could do what was asked."""


@dataclass
class Forwarder:
    outbox: Outbox
    destinations: list[Destination]
    calling_ae: str
    timeouts: Timeouts = field(default_factory=Timeouts)
    status: dict[str, DestinationStatus] = field(default_factory=dict)
    retry_base: float = 5.0  # seconds before the first retry (doubles, with jitter)
    retry_cap: float = 300.0  # never wait longer than this between tries
    # While a destination is down, one waiting object tries the link at least
    # this often, whatever the objects' own back-offs: those grow with each
    # failed round of a long outage, and a PACS that is back must not wait
    # out the longest of them.
    probe_cap: float = PROBE_CAP_S
    # Listeners (audit, metrics): called with the object IDs just recorded as
    # sent, and with each batch's report. Their failures never stop sending.
    on_sent: list[Callable[[Destination, list[int]], None]] = field(default_factory=list)
    on_batch: list[Callable[[Destination, SendReport], None]] = field(default_factory=list)
    senders: dict[str, Sender] = field(default_factory=dict)
    # The service's heartbeat for this loop (set by `run`): beaten every round,
    # after every object and while a large one is being written.
    heartbeat: Callable[[], None] = lambda: None
    memory_limit: int = DEFAULT_MEMORY_LIMIT  # of one conversion (forwarding.convert_memory_mb)
    convert_video: bool = True  # forwarding.convert_video
    _queue_problem: str | None = None
    _jobs: list[_FlushJob] = field(default_factory=list)
    _jobs_lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _looping: bool = False
    _probe_at: dict[str, float] = field(default_factory=dict)  # monotonic
    _link_failures: dict[str, int] = field(default_factory=dict)

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
            memory_limit=f.convert_memory_mb << 20,
            convert_video=f.convert_video,
        )

    def __post_init__(self) -> None:
        for dest in self.destinations:
            self.status.setdefault(dest.name, DestinationStatus(dest.name))
            self.senders.setdefault(
                dest.name,
                sender_for(
                    dest,
                    self.calling_ae,
                    self.timeouts,
                    self.outbox.root,
                    progress=self._beat,
                    memory_limit=self.memory_limit,
                    converting=self._converting(dest.name),
                    convert_video=self.convert_video,
                ),
            )

    def _beat(self) -> None:
        self.heartbeat()

    def _converting(self, destination: str) -> Callable[[int, bool], None]:
        def record(object_id: int, started: bool) -> None:
            self.outbox.converting(object_id, destination, started)

        return record

    @staticmethod
    def _notify(listeners: Sequence[Callable[..., None]], *args: Any) -> None:
        for listener in listeners:
            try:
                listener(*args)
            except Exception:
                log.exception("forwarder listener failed")

    def send_batch(self, dest: Destination, now: float | None = None) -> SendReport:
        """Claim what is due for `dest` and hand it to its sender."""
        report = self._send_batch(dest, now)
        if report.sent or report.retried or report.failed:
            self._notify(self.on_batch, dest, report)
        return report

    def _send_batch(self, dest: Destination, now: float | None) -> SendReport:
        started = time.time()
        state = self.status[dest.name]
        batch = self.outbox.claim(dest.name, BATCH, now=now)
        if not batch and state.reachable is not True and self._probe_due(dest.name):
            # Down, or not tried since start, and every object waits out a
            # back-off: the one due soonest tries the link now.
            batch = self.outbox.claim(dest.name, 1, now=float("inf"))
        current = _Round(dest, last_errors={d.object.id: d.last_error for d in batch})
        if not batch:
            return current.report
        try:
            self.senders[dest.name].send(batch, lambda result: self._record(current, result))
        except LinkDown as exc:
            reason = str(exc)
            rest = [d.object.id for d in batch if d.object.id not in current.decided]
            first = self.outbox.mark_retry_many(
                rest, dest.name, reason, base=self.retry_base, cap=self.retry_cap
            )
            current.report.retried += len(rest)
            state.next_try = min(first, self._link_down(dest.name))
            state.reachable, state.last_error = False, reason
            current.report.error = reason
            log.warning("%s; %d object(s) stay queued", reason, current.report.retried)
        else:
            if state.reachable is not True and current.report.sent:
                # Back after an outage (or first contact since start): what
                # waits out a back-off from the outage goes now, not over
                # the next minutes.
                waiting = self.outbox.due_now(dest.name, waiting_since=started)
                if waiting:
                    log.info("%s reachable: %d waiting object(s) due now", dest.name, waiting)
            state.reachable = True
            self._link_failures.pop(dest.name, None)
        finally:
            self._commit_sent(current, force=True)
            # Whatever ended the round, no claim outlives it: rows still in
            # flight go back to pending (a no-op for rows already decided).
            self.outbox.release_many([d.object.id for d in batch], dest.name)
        if current.report.sent:
            state.last_success = time.time()
            state.last_error = current.report.error
        return current.report

    def _probe_due(self, destination: str) -> bool:
        due = time.monotonic() >= self._probe_at.get(destination, 0.0)
        if due:  # nothing waiting makes the next look a probe's interval away
            self._probe_at[destination] = time.monotonic() + min(self.retry_cap, self.probe_cap)
        return due

    def _link_down(self, destination: str) -> float:
        """Another failed round on a link: the next probe of it backs off
        (doubling, jittered) up to `probe_cap`. Returns its wall-clock time."""
        failures = self._link_failures.get(destination, 0) + 1
        self._link_failures[destination] = failures
        delay = backoff_delay(failures, self.retry_base, min(self.retry_cap, self.probe_cap))
        self._probe_at[destination] = time.monotonic() + delay
        return time.time() + delay

    def _record(self, current: _Round, result: Result) -> None:
        """One object's outcome, as its sender reported it."""
        dest, report = current.dest, current.report
        self._beat()
        current.decided.add(result.object_id)
        if result.outcome is Outcome.STORED:
            current.sent.append(result.object_id)
            report.sent += 1
            self._commit_sent(current)
            return
        reason = result.reason or "refused"
        if result.about_object and current.last_errors.get(result.object_id) == reason:
            # The same failure of this object twice: a poison object. It goes
            # to the failed list with its reason; the queue moves on.
            reason = f"{reason} (failed the same way twice; set aside)"
            self.outbox.mark_failed(result.object_id, dest.name, reason)
            report.failed += 1
            log.error("%s; object %d moved to the failed list", reason, result.object_id)
            return
        if result.outcome is Outcome.PERMANENT:
            self.outbox.mark_failed(result.object_id, dest.name, reason)
            report.failed += 1
            log.error("%s; object %d moved to the failed list", reason, result.object_id)
        else:
            self.status[dest.name].next_try = self._retry(result.object_id, dest.name, reason)
            report.retried += 1
            report.error = reason
            log.warning("%s; object %d will be retried", reason, result.object_id)

    def _retry(self, object_id: int, destination: str, reason: str) -> float:
        return self.outbox.mark_retry(
            object_id, destination, reason, base=self.retry_base, cap=self.retry_cap
        )

    def _commit_sent(self, current: _Round, force: bool = False) -> None:
        """Successes are committed in groups: a crash in between only means a
        harmless resend."""
        if not current.sent:
            return
        due = len(current.sent) >= COMMIT_EVERY or time.monotonic() - current.since > COMMIT_AFTER_S
        if force or due:
            self.outbox.mark_sent_many(current.sent, current.dest.name)
            self._notify(self.on_sent, current.dest, current.sent)
            current.sent = []
            current.since = time.monotonic()

    def pending(self) -> int:
        stats = self.outbox.destination_stats()
        return sum(stats[d.name].counts["pending"] for d in self.destinations if d.name in stats)

    def flush(self, timeout: float) -> SendReport:
        """Send everything now, ignoring back-off, until done or `timeout`."""
        total = SendReport()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            progress = False
            for dest in self.destinations:
                report = self.send_batch(dest, now=float("inf"))
                total.add(report)
                progress = progress or report.progressed
            if self.pending() == 0:
                break
            if not progress:
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        return total

    def flush_summary(self, timeout: float) -> dict[str, Any]:
        """`queue flush`: send everything now, then what is left in the queue
        (pending and failed over every destination) and the last error."""
        report = self.flush(timeout)
        stats = self.outbox.stats()
        pending = sum(s[DeliveryState.PENDING] + s[DeliveryState.IN_FLIGHT] for s in stats.values())
        failed = sum(s[DeliveryState.FAILED] for s in stats.values())
        return {"sent": report.sent, "pending": pending, "failed": failed, "error": report.error}

    def flush_from_thread(
        self, timeout: float, waiting: Callable[[], None] = lambda: None
    ) -> dict[str, Any]:
        """`flush_summary`, asked from another thread while `run` loops: the
        loop does it at its next turn (woken now, not after its idle wait).
        `waiting` is called about every second meanwhile (a heartbeat).
        Raises ForwarderStopped when the loop is not (or no longer) running."""
        job = _FlushJob(timeout)
        with self._jobs_lock:
            if not self._looping:
                raise ForwarderStopped("the forwarder is not running")
            self._jobs.append(job)
        self._wake.set()
        while not job.done.wait(1.0):
            waiting()
            if not self._looping:
                raise ForwarderStopped("the forwarder stopped before the flush was done")
        if job.summary is None:
            raise ForwarderStopped(job.error or "the forwarder stopped before the flush was done")
        return job.summary

    def _run_jobs(self) -> None:
        with self._jobs_lock:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            try:
                job.summary = self.flush_summary(job.timeout)
            except (sqlite3.Error, QueueError, OSError) as exc:
                job.error = f"cannot update the queue ({exc})"
            except Exception as exc:  # the loop must outlive a failed flush
                log.exception("flush handed to the forwarder failed unexpectedly")
                job.error = f"the flush failed ({type(exc).__name__}: {exc}); see the service's log"
            finally:
                job.done.set()

    def run(
        self, stop: threading.Event, heartbeat: Callable[[], None] | None = None, idle: float = 1.0
    ) -> None:
        """Until `stop`: send what is due, then wait `idle` seconds (beating:
        waiting for work is healthy)."""
        if heartbeat is not None:
            self.heartbeat = heartbeat
        next_reset = time.monotonic() + CLAIMS_CHECK_S
        with self._jobs_lock:
            self._looping = True
        try:
            self._loop(stop, next_reset, idle)
        finally:
            with self._jobs_lock:
                self._looping = False
                jobs, self._jobs = self._jobs, []
            for job in jobs:  # asked for as the loop ended: the asker says so
                job.done.set()

    def _loop(self, stop: threading.Event, next_reset: float, idle: float) -> None:
        while not stop.is_set():
            self._beat()
            if self._jobs:
                self._run_jobs()
            if time.monotonic() >= next_reset:
                # A claim whose holder died or whose lease ran out since our
                # start (another forwarder, a `queue flush`) goes back to pending.
                next_reset = time.monotonic() + CLAIMS_CHECK_S
                try:
                    self.outbox.reset_stale_claims()
                except (sqlite3.Error, QueueError) as exc:
                    log.error("cannot check the queue's claims (%s); will try again", exc)
            busy = False
            for dest in self.destinations:
                try:
                    report = self.send_batch(dest)
                except (sqlite3.Error, QueueError, OSError) as exc:
                    # The queue's disk is full or failing: nothing is lost (a
                    # failed write rolls back); say so once, try again later.
                    if str(exc) != self._queue_problem:
                        log.error("cannot update the queue (%s); will try again", exc)
                        self._queue_problem = str(exc)
                    continue
                except Exception:  # the loop must outlive any one bad batch
                    log.exception("forwarder batch to %s failed unexpectedly", dest.name)
                    continue
                self._queue_problem = None
                busy = busy or report.sent > 0
            self._beat()
            if not busy:
                # Woken early by a flush handed over (flush_from_thread).
                self._wake.wait(idle)
                self._wake.clear()
