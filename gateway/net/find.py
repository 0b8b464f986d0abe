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
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace

from pydicom.dataset import Dataset
from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
)

from gateway.config import DestinationConfig
from gateway.net.association import DEFAULT_TIMEOUTS, PeerError, Timeouts, open_association

log = logging.getLogger(__name__)

# pynetdicom would log every identifier at INFO: patient data stays out of logs.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

MWL_FIND = str(ModalityWorklistInformationFind)
PENDING = (0xFF00, 0xFF01)
CANCELLED = 0xFE00
_MESSAGE_ID = 1

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
    """One query. Iterate for the matches (decoded lazily by pydicom);
    afterwards `status`, `stopped` and `transport` tell how it ended.

    Raises PeerError (or TLSSetupError) when the server cannot be reached or
    fails the query before sending anything useful.
    """

    def __init__(
        self,
        calling_ae: str,
        peer: DestinationConfig,
        identifier: Dataset,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        limits: FindLimits = FindLimits(),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.calling_ae = calling_ae
        self.peer = peer
        self.identifier = identifier
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

    def __iter__(self) -> Iterator[Dataset]:
        return self.matches_generator()

    def matches_generator(self) -> Generator[Dataset, None, None]:
        """The matches; `close()` it to stop early (sends C-CANCEL)."""
        deadline = time.monotonic() + self.limits.seconds
        assoc = open_association(
            self.calling_ae,
            self.peer,
            [build_context(MWL_FIND)],
            self.timeouts,
            ssl_context=self.ssl_context,
        )
        finished = False
        responses: Iterator[tuple[Dataset, Dataset | None]] | None = None
        try:
            responses = assoc.send_c_find(self.identifier, MWL_FIND, msg_id=_MESSAGE_ID)
            for status, identifier in responses:
                code = status.get("Status")
                if code is None:  # pynetdicom has aborted the association
                    if self.matches == 0:
                        raise PeerError(
                            f"{self.peer.ae_title}@{self.peer.host}:{self.peer.port}: "
                            "no answer to the worklist query (timed out or connection lost)"
                        )
                    self.stopped = (
                        f"the server stopped answering after {self.matches} entries "
                        "(timed out or connection lost)"
                    )
                    finished = True
                    break
                if code not in PENDING:
                    self.status = int(code)
                    finished = True
                    break
                if identifier is None:
                    self.undecodable += 1  # pynetdicom could not parse it
                else:
                    self.matches += 1
                    yield identifier
                if self.matches >= self.limits.max_matches:
                    self.stopped = (
                        f"stopped after {self.matches} entries (worklist.max_entries); "
                        "narrow the query"
                    )
                    break
                if time.monotonic() > deadline:
                    self.stopped = (
                        f"stopped after {self.limits.seconds:g} s with {self.matches} entries "
                        "(worklist.timeout); the server kept sending"
                    )
                    break
            if self.status is not None and self.status not in (0x0000, CANCELLED):
                if self.matches == 0:
                    raise PeerError(describe_status(self.status))
                self.stopped = describe_status(self.status)
        finally:
            # Reached on a normal end, on our limits, and when the consumer
            # stops iterating (GeneratorExit): the server is told either way.
            if not finished and assoc.is_established:
                self._cancel(assoc, responses)
            if assoc.is_established:
                assoc.release()

    def _cancel(
        self, assoc: Association, responses: Iterator[tuple[Dataset, Dataset | None]] | None
    ) -> None:
        """C-CANCEL, then read until the server confirms; abort if it will not."""
        if self.stopped is None:
            self.stopped = f"cancelled after {self.matches} entries"
        if responses is None:
            assoc.abort()
            return
        try:
            assoc.send_c_cancel(_MESSAGE_ID, query_model=MWL_FIND)
            until = time.monotonic() + self.limits.cancel_grace
            for status, _ in responses:
                code = status.get("Status")
                if code is None or code not in PENDING:
                    self.status = None if code is None else int(code)
                    return
                if time.monotonic() > until:
                    break
        except Exception as exc:  # the peer is misbehaving; do not let it crash us
            log.warning("worklist C-CANCEL failed: %s", exc)
        log.warning("worklist server ignored C-CANCEL; aborting the association")
        assoc.abort()
