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
    check_queued_file,
    classify_status,
    describe_status,
    store_file,
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
            for delivery in batch:
                if not conn.open:
                    # The link broke: the rest were never attempted and go
                    # back as they were; the next round reconnects.
                    break
                report(self._send_one(conn, delivery))
        finally:
            conn.release()

    def _send_one(self, conn: ULConnection, delivery: Delivery) -> Result:
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
                return Result(
                    obj.id,
                    Outcome.PERMANENT,
                    f"{self.label}: does not accept video ({sop.transfer_syntax}) for "
                    f"SOP class {sop.sop_class}, and forwarding.convert_video is off",
                )
            if choice is None:
                return Result(
                    obj.id,
                    Outcome.PERMANENT,
                    f"{self.label}: accepts neither {sop.transfer_syntax} nor "
                    f"{'JPEG Baseline nor ' if video else ''}an uncompressed transfer syntax "
                    f"for SOP class {sop.sop_class}",
                )
            code = store_file(
                conn,
                sop,
                choice.id,
                choice.transfer_syntax,
                self.workdir,
                self.progress,
                self.memory_limit,
                lambda started: self.converting(obj.id, started),
            )
        except FileProblem as exc:
            return Result(obj.id, Outcome.PERMANENT, f"queue file problem: {exc}")
        except (ULError, OSError) as exc:
            conn.abort()
            reason = f"{self.label}: {describe_link_failure(exc)} during C-STORE"
            return Result(obj.id, Outcome.TRANSIENT, reason)
        except Exception as exc:  # a bug or MemoryError on this object: not the link's fault
            conn.abort()
            log.exception("sending object %d failed unexpectedly", obj.id)
            reason = f"internal error sending this object: {type(exc).__name__}: {exc}"
            return Result(obj.id, Outcome.TRANSIENT, reason, about_object=True)
        outcome = classify_status(code)
        if outcome is Outcome.STORED:
            return Result(obj.id, outcome)
        return Result(obj.id, outcome, f"{self.label}: C-STORE {describe_status(code)}")


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
