"""The C-STORE destination: a batch over one association on the lean upper
layer, each object streamed from its file in its own transfer syntax (or
re-encoded once when the PACS refuses it)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import DestinationConfig
from gateway.dicom.transcode import DEFAULT_MEMORY_LIMIT, JPEG_BASELINE, VIDEO
from gateway.net.association import PeerError, connect, describe_link_failure, peer_label
from gateway.net.tls import TLSSetupError
from gateway.net.ul import Accepted, Proposed, Timeouts, ULConnection, ULError
from gateway.queue.model import Delivery
from gateway.send.cstore import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    FileProblem,
    Prepared,
    ReadAhead,
    check_queued_file,
    classify_status,
    describe_status,
    prepare_store,
    read_store_response,
    store_prepared,
)
from gateway.send.destination import LinkDown, Outcome, Report, Result
from gateway.send.parallel import Relay, run_on_threads

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128
# A second association only for a batch of at least this many objects each.
MIN_PER_ASSOCIATION = 2
# After a second association failed while the first worked, or opened only
# once the batch was all taken after this many seconds: one at a time this long.
SINGLE_FOR_S = 600
SERIAL_EVIDENCE_S = 2.0


@dataclass
class DimseSender:
    dest: DestinationConfig
    calling_ae: str
    timeouts: Timeouts
    workdir: Path  # where a re-encoded copy is written for the time it is sent
    progress: Callable[[], None] = lambda: None  # called while a data set is written
    memory_limit: int = DEFAULT_MEMORY_LIMIT  # for a conversion (gateway.dicom.transcode)
    # Called with (object id, True) before a conversion and (id, False) after.
    converting: Callable[[int, bool], None] = lambda object_id, started: None
    # A video object for a PACS without its syntax: to JPEG Baseline, or refused.
    convert_video: bool = True
    _single_until: float = 0.0  # monotonic time until which one association only

    @property
    def label(self) -> str:
        return peer_label(self.dest)

    def send(self, batch: Sequence[Delivery], report: Report) -> None:
        """The batch over one association, or shared by up to
        `dest.associations` at once: each takes the batch's next object when
        it is free (each object in exactly one, so the queue's claims stay
        exactly-once, and one that is slow to open or breaks leaves the rest
        to the others)."""
        contexts, batch = _contexts(batch)
        wanted = self.dest.associations if time.monotonic() >= self._single_until else 1
        count = min(wanted, len(batch) // MIN_PER_ASSOCIATION)
        work = _Work(deque(batch))
        if count <= 1:
            self._send_one(contexts, work, report, self.converting)
        else:
            self._send_parallel(contexts, work, count, report)

    def _send_parallel(
        self, contexts: list[Proposed], work: _Work, count: int, report: Report
    ) -> None:
        """One thread per association (gateway.send.parallel): outcomes and
        conversions are told from the calling thread, which owns the queue."""
        took: list[int] = [0] * count

        def worker(index: int) -> Callable[[Relay], None]:
            def run(relay: Relay) -> None:
                took[index] = self._send_one(
                    contexts,
                    work,
                    lambda result: relay.post(lambda: report(result)),
                    lambda oid, started: relay.call(lambda: self.converting(oid, started)),
                )

            return run

        started = time.monotonic()
        failures: list[LinkDown | None] = []
        for index, exc in enumerate(
            run_on_threads([worker(i) for i in range(count)], "assoc", waiting=self.progress)
        ):
            if exc is None or isinstance(exc, LinkDown):
                failures.append(exc)
                continue
            # A bug: what it had taken stays queued, the others went on.
            log.error("association %d to %s failed", index + 1, self.label, exc_info=exc)
            failures.append(LinkDown(f"{self.label}: internal error: {exc}"))
        if all(failures):
            raise failures[0]  # type: ignore[misc]
        if any(failures):
            # One association works but another did not: this peer wants one
            # at a time (or cannot take more now). The one that worked took
            # the whole batch; one association for a while.
            self._single_until = time.monotonic() + SINGLE_FOR_S
            log.warning(
                "%s: a second association failed (%s); one at a time for %d min",
                self.label,
                next(f for f in failures if f),
                SINGLE_FOR_S // 60,
            )
        elif 0 in took and time.monotonic() - started >= SERIAL_EVIDENCE_S:
            # Every association opened, but one only after the others had
            # taken everything, over seconds: a PACS that serves one
            # association at a time (the second waited in its listen queue).
            self._single_until = time.monotonic() + SINGLE_FOR_S
            log.info(
                "%s serves one association at a time; one at a time for %d min",
                self.label,
                SINGLE_FOR_S // 60,
            )

    def _send_one(
        self,
        contexts: list[Proposed],
        work: _Work,
        report: Report,
        converting: Callable[[int, bool], None],
    ) -> int:
        """One association taking objects from `work` until none is left or
        its link breaks. Returns how many it took."""
        try:
            conn = connect(self.calling_ae, self.dest, contexts, self.timeouts)
        except PeerError as exc:
            raise LinkDown(str(exc)) from None
        except TLSSetupError as exc:
            raise LinkDown(f"{self.label}: {exc}") from None
        try:
            reader = ReadAhead(conn.max_fragment)
        except ULError as exc:  # a maximum PDU length too small to be real
            conn.abort()
            raise LinkDown(f"{self.label}: {exc}") from None
        try:
            return self._pipeline(conn, reader, work, report, converting)
        finally:
            reader.close()
            conn.release()

    def _pipeline(
        self,
        conn: ULConnection,
        reader: ReadAhead,
        work: _Work,
        report: Report,
        converting: Callable[[int, bool], None],
    ) -> int:
        """One object's data set is written while the next is read ahead; the
        next is checked and its reading started while the peer answers the
        current one (the C-STORE-RSP wait is most of the gap between objects).
        Outcomes are reported in the order taken. Returns how many it took."""
        took = 0

        def take() -> tuple[Delivery, Prepared | Result] | None:
            nonlocal took
            delivery = work.take()
            if delivery is None:
                return None
            took += 1
            return self._prepare(conn, reader, delivery)

        ready = take()
        while ready is not None:
            if not conn.open:
                # The link broke: what it took and did not send goes back,
                # for another association or, as it was, to the next round.
                work.give_back(ready[0])
                break
            delivery, prepared = ready
            ready = None
            if isinstance(prepared, Result):
                report(prepared)
                ready = take()
                continue
            result, message_id = self._write(conn, reader, delivery, prepared, converting)
            if result is None:
                ready = take()
                result = self._answer(conn, delivery, message_id)
            report(result)
            if ready is None and conn.open:
                ready = take()
        return took

    def _prepare(
        self, conn: ULConnection, reader: ReadAhead, delivery: Delivery
    ) -> tuple[Delivery, Prepared | Result]:
        obj = delivery.object
        try:
            sop = check_queued_file(obj)
            choice = _choose_context(conn, sop.sop_class, sop.transfer_syntax)
            video = sop.transfer_syntax in VIDEO
            if (
                video
                and not self.convert_video
                and (choice is None or choice.transfer_syntax != sop.transfer_syntax)
            ):
                return delivery, Result(
                    obj.id,
                    Outcome.PERMANENT,
                    f"{self.label}: does not accept video ({sop.transfer_syntax}) for "
                    f"SOP class {sop.sop_class}, and forwarding.convert_video is off",
                )
            if choice is None:
                return delivery, Result(
                    obj.id,
                    Outcome.PERMANENT,
                    f"{self.label}: accepts neither {sop.transfer_syntax} nor "
                    f"{'JPEG Baseline nor ' if video else ''}an uncompressed transfer syntax "
                    f"for SOP class {sop.sop_class}",
                )
            return delivery, prepare_store(reader, sop, choice.id, choice.transfer_syntax)
        except FileProblem as exc:
            return delivery, Result(obj.id, Outcome.PERMANENT, f"queue file problem: {exc}")

    def _write(
        self,
        conn: ULConnection,
        reader: ReadAhead,
        delivery: Delivery,
        prepared: Prepared,
        converting: Callable[[int, bool], None],
    ) -> tuple[Result | None, int]:
        """The object's C-STORE written: (None, its Message ID), or its
        outcome when it failed before a response could come."""
        obj = delivery.object
        try:
            message_id = store_prepared(
                conn,
                reader,
                prepared,
                self.workdir,
                self.progress,
                self.memory_limit,
                lambda started: converting(obj.id, started),
            )
        except FileProblem as exc:
            return Result(obj.id, Outcome.PERMANENT, f"queue file problem: {exc}"), 0
        except Exception as exc:
            return self._failed(conn, obj.id, exc), 0
        return None, message_id

    def _answer(self, conn: ULConnection, delivery: Delivery, message_id: int) -> Result:
        obj = delivery.object
        try:
            code = read_store_response(conn, message_id)
        except Exception as exc:
            return self._failed(conn, obj.id, exc)
        outcome = classify_status(code)
        if outcome is Outcome.STORED:
            return Result(obj.id, outcome)
        return Result(obj.id, outcome, f"{self.label}: C-STORE {describe_status(code)}")

    def _failed(self, conn: ULConnection, object_id: int, exc: Exception) -> Result:
        conn.abort()
        if isinstance(exc, ULError | OSError):
            reason = f"{self.label}: {describe_link_failure(exc)} during C-STORE"
            return Result(object_id, Outcome.TRANSIENT, reason)
        # A bug or MemoryError on this object: not the link's fault.
        log.error("sending object %d failed unexpectedly", object_id, exc_info=exc)
        reason = f"internal error sending this object: {type(exc).__name__}: {exc}"
        return Result(object_id, Outcome.TRANSIENT, reason, about_object=True)


@dataclass
class _Work:
    """The batch's objects, taken in order by whichever association is free."""

    todo: deque[Delivery]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> Delivery | None:
        with self.lock:
            return self.todo.popleft() if self.todo else None

    def give_back(self, delivery: Delivery) -> None:
        with self.lock:
            self.todo.appendleft(delivery)


def _fallback(transfer_syntax: str) -> tuple[str, ...]:
    """What an object may be converted to: video to JPEG Baseline first (a
    cine any viewer plays, ~10× smaller than native), then, like anything
    else, to Explicit/Implicit VR Little Endian, which every SCP accepts."""
    plain = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
    return (JPEG_BASELINE, *plain) if transfer_syntax in VIDEO else plain


def _contexts(batch: Sequence[Delivery]) -> tuple[list[Proposed], list[Delivery]]:
    """The object's own transfer syntax first, and a fallback (`_fallback`)
    per SOP class; at most 128 contexts (the rest wait a round)."""
    contexts: dict[tuple[str, tuple[str, ...]], Proposed] = {}
    kept: list[Delivery] = []
    for delivery in batch:
        obj = delivery.object
        wanted = [
            (obj.sop_class_uid, (obj.transfer_syntax_uid,)),
            (obj.sop_class_uid, _fallback(obj.transfer_syntax_uid)),
        ]
        new = [w for w in wanted if w not in contexts]
        if len(contexts) + len(new) > MAX_CONTEXTS:
            continue
        for key in new:
            contexts[key] = Proposed(2 * len(contexts) + 1, key[0], key[1])
        kept.append(delivery)
    return list(contexts.values()), kept


def _choose_context(conn: ULConnection, sop_class: str, transfer_syntax: str) -> Accepted | None:
    """The object's own syntax when accepted, else its fallback."""
    for ts in (transfer_syntax, *_fallback(transfer_syntax)):
        for a in conn.accepted.values():
            if a.abstract_syntax == sop_class and a.transfer_syntax == ts:
                return a
    return None
