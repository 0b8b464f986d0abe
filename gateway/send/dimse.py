"""The C-STORE destination: a batch over one association on the lean upper
layer, each object streamed from its file in its own transfer syntax (or
re-encoded once when the PACS refuses it)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128


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

    @property
    def label(self) -> str:
        return peer_label(self.dest)

    def send(self, batch: Sequence[Delivery], report: Report) -> None:
        contexts, batch = _contexts(batch)
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
            self._pipeline(conn, reader, batch, report)
        finally:
            reader.close()
            conn.release()

    def _pipeline(
        self, conn: ULConnection, reader: ReadAhead, batch: Sequence[Delivery], report: Report
    ) -> None:
        """One object's data set is written while the next is read ahead; the
        next is checked and its reading started while the peer answers the
        current one (the C-STORE-RSP wait is most of the gap between objects).
        Outcomes are reported in the batch's order."""
        queue = list(batch)
        ready = self._prepare(conn, reader, queue.pop(0)) if queue else None
        while ready is not None:
            if not conn.open:
                # The link broke: the rest were never attempted and go
                # back as they were; the next round reconnects.
                break
            delivery, prepared = ready
            ready = None
            if isinstance(prepared, Result):
                report(prepared)
                ready = self._prepare(conn, reader, queue.pop(0)) if queue else None
                continue
            result, message_id = self._write(conn, reader, delivery, prepared)
            if result is None and queue:
                ready = self._prepare(conn, reader, queue.pop(0))
            if result is None:
                result = self._answer(conn, delivery, message_id)
            report(result)
            if ready is None and queue and conn.open:
                ready = self._prepare(conn, reader, queue.pop(0))

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
        self, conn: ULConnection, reader: ReadAhead, delivery: Delivery, prepared: Prepared
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
                lambda started: self.converting(obj.id, started),
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
