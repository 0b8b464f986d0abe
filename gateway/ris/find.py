"""Modality Worklist C-FIND SCU: matches streamed one by one as they arrive.

A worklist server is a peer we do not control. Every wait is bounded (the
association's time-outs for each message, a deadline and a match count for
the whole query), and a query the consumer abandons, or that runs over its
bounds, is cancelled with C-CANCEL rather than left running on the server.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, replace

from pydicom.dataset import Dataset

from gateway.config import DestinationConfig
from gateway.dicom.part10 import encode_dataset
from gateway.dicom.rawdata import RawDataError, RawItem, read_dataset
from gateway.net.association import DEFAULT_TIMEOUTS, PeerError, connect, describe_link_failure
from gateway.net.ul import (
    Message,
    Proposed,
    Timeouts,
    ULConnection,
    ULError,
    c_cancel_rq,
    c_find_rq,
    command_us,
)

log = logging.getLogger(__name__)

MWL_FIND = "1.2.840.10008.5.1.4.31"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
PENDING = (0xFF00, 0xFF01)
CANCELLED = 0xFE00
C_FIND_RSP = 0x8020
_CONTEXT = Proposed(1, MWL_FIND, (EXPLICIT_VR_LE, IMPLICIT_VR_LE))

_FAILURES = {
    0xA700: "the worklist server is out of resources",
    0xA900: "the worklist server says our query does not fit the worklist model",
    0x0122: "the worklist server does not support Modality Worklist",
}


@dataclass(frozen=True)
class FindLimits:
    """Bounds of one query as a whole: a server streaming pending responses
    forever is cut off here, and the list so far is still shown."""

    max_matches: int = 5000
    seconds: float = 30.0
    # After C-CANCEL, how long the server may take to confirm before we abort.
    cancel_grace: float = 5.0


def describe_status(code: int) -> str:
    if code in _FAILURES:
        return f"{_FAILURES[code]} (status 0x{code:04X})"
    if 0xC000 <= code <= 0xCFFF:
        return f"the worklist server could not process the query (status 0x{code:04X})"
    return f"the worklist server answered status 0x{code:04X}"


class WorklistFind:
    """One query on the lean upper layer. Iterate for the matches, each a
    RawItem (tag → value bytes; decoded by the caller with the answer's
    character set); afterwards `status` and `stopped` tell how it ended.

    Raises PeerError (or TLSSetupError) when the server cannot be reached or
    fails the query before sending anything useful.
    """

    def __init__(
        self,
        calling_ae: str,
        peer: DestinationConfig,
        identifier: Dataset | Sequence[Dataset],
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        limits: FindLimits = FindLimits(),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.calling_ae = calling_ae
        self.peer = peer
        # Several identifiers are asked one after the other on one association
        # (a search box's name, ID and accession keys: one connection per tap).
        self.identifiers = [identifier] if isinstance(identifier, Dataset) else list(identifier)
        self.limits = limits
        # No single message may wait longer than the whole query may take.
        self.timeouts = replace(
            timeouts,
            dimse=min(timeouts.dimse, limits.seconds),
            network=min(timeouts.network, limits.seconds),
        )
        self.ssl_context = ssl_context
        self.status: int | None = None  # final C-FIND status, when one came
        self.stopped: str | None = None  # why we stopped early, said plainly
        self.matches = 0
        self.undecodable = 0
        self.current = 0  # which identifier the match being read answers

    def __iter__(self) -> Iterator[RawItem]:
        return self.matches_generator()

    @property
    def _label(self) -> str:
        return f"{self.peer.ae_title}@{self.peer.host}:{self.peer.port}"

    def matches_generator(self) -> Generator[RawItem, None, None]:
        """The matches; `close()` it to stop early (sends C-CANCEL)."""
        deadline = time.monotonic() + self.limits.seconds
        conn = connect(self.calling_ae, self.peer, [_CONTEXT], self.timeouts, self.ssl_context)
        accepted = conn.accepted.get(_CONTEXT.id)
        if accepted is None:
            conn.release()
            raise PeerError(f"{self._label}: {_FAILURES[0x0122]}")
        finished = True
        message_id = 0
        try:
            explicit = accepted.transfer_syntax == EXPLICIT_VR_LE
            failures: list[int] = []
            for number, identifier in enumerate(self.identifiers):
                self.current, finished, self.status = number, False, None
                message_id = conn.next_message_id()
                conn.send_message(
                    accepted.id,
                    c_find_rq(message_id, MWL_FIND),
                    encode_dataset(identifier, accepted.transfer_syntax),
                )
                while True:
                    message = self._next_response(conn, message_id)
                    if message is None:
                        finished = True
                        break
                    code = command_us(message.command, 0x0900)
                    if code not in PENDING:
                        self.status = code
                        finished = True
                        break
                    item = self._decode(message, explicit)
                    if item is not None:
                        self.matches += 1
                        yield item
                    if self.matches >= self.limits.max_matches:
                        self.stopped = (
                            f"stopped after {self.matches} entries (worklist.max_entries); "
                            "narrow the query"
                        )
                        break
                    if time.monotonic() > deadline:
                        self.stopped = (
                            f"stopped after {self.limits.seconds:g} s with {self.matches} "
                            "entries (worklist.timeout); the server kept sending"
                        )
                        break
                if self.status is not None and self.status not in (0x0000, CANCELLED):
                    failures.append(self.status)
                if not finished or not conn.open:
                    break
            if failures:
                if self.matches == 0:
                    raise PeerError(describe_status(failures[0]))
                self.stopped = describe_status(failures[0])
        finally:
            # Reached on a normal end, on our limits, and when the consumer
            # stops iterating (GeneratorExit): the server is told either way.
            if not finished and conn.open:
                self._cancel(conn, message_id)
            conn.release()

    def _next_response(self, conn: ULConnection, message_id: int) -> Message | None:
        """The next C-FIND-RSP; None when the link broke after some matches
        (the list so far is kept), PeerError when it broke before any."""
        try:
            message = conn.read_message(self.timeouts.dimse)
        except (ULError, OSError) as exc:
            conn.abort()
            why = describe_link_failure(exc)
            if self.matches == 0:
                raise PeerError(f"{self._label}: no answer to the worklist query ({why})") from None
            self.stopped = f"the server stopped answering after {self.matches} entries ({why})"
            return None
        command = message.command
        if command_us(command, 0x0100) != C_FIND_RSP or command_us(command, 0x0120) != message_id:
            conn.abort()
            raise PeerError(f"{self._label}: answered with a message that is not our C-FIND-RSP")
        if command_us(command, 0x0900) is None:
            conn.abort()
            raise PeerError(f"{self._label}: sent a C-FIND-RSP without a status")
        return message

    def _decode(self, message: Message, explicit: bool) -> RawItem | None:
        if not message.dataset:
            self.undecodable += 1
            return None
        try:
            return read_dataset(message.dataset, explicit)
        except RawDataError as exc:
            log.warning("worklist response %d skipped: %s", self.matches + 1, exc)
            self.undecodable += 1
            return None

    def _cancel(self, conn: ULConnection, message_id: int) -> None:
        """C-CANCEL, then read until the server confirms; abort if it will not."""
        if self.stopped is None:
            self.stopped = f"cancelled after {self.matches} entries"
        try:
            conn.send_message(_CONTEXT.id, c_cancel_rq(message_id))
            until = time.monotonic() + self.limits.cancel_grace
            while time.monotonic() < until:
                message = conn.read_message(max(0.05, until - time.monotonic()))
                code = command_us(message.command, 0x0900)
                if code is None or code not in PENDING:
                    self.status = code
                    return
        except (ULError, OSError) as exc:  # the peer is misbehaving; do not let it crash us
            log.warning("worklist C-CANCEL not confirmed: %s", describe_link_failure(exc))
        log.warning("worklist server ignored C-CANCEL; aborting the association")
        conn.abort()
