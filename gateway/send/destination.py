"""One interface for every destination, whatever its protocol: the forwarder
claims a batch from the outbox and hands it to the destination's sender,
which reports each object's outcome as soon as it is known. The forwarder
then does for every protocol alike what the queue promises: marks, back-off,
the failed list, the link status, metrics and audit.

A sender knows its protocol (DIMSE C-STORE, DICOMweb STOW-RS); it never
touches the outbox.

What commitment means differs by protocol, and the queue's ledger holds it
the same way for both (gateway.queue.ledger): for DIMSE, Storage Commitment
(an N-ACTION answered by an N-EVENT-REPORT, now or later); for a protocol
without it, a `Confirmer` asks the archive, after storing, whether each
instance is there, and answers at once. Only then may the object be purged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from gateway.queue.model import Delivery


class Outcome(Enum):
    STORED = "stored"
    TRANSIENT = "transient"  # try again later: the PACS may accept it then
    PERMANENT = "permanent"  # the PACS will never accept this object as it is


@dataclass(frozen=True)
class Result:
    """What became of one object of the batch; `reason` for an operator."""

    object_id: int
    outcome: Outcome
    reason: str | None = None
    # A transient failure caused by this object itself (not the link, not the
    # PACS's load): the same one twice sets the object aside (a poison
    # object must not hold up the queue behind it).
    about_object: bool = False


class LinkDown(Exception):
    """The destination could not be reached (or refused us) before anything
    was sent: the whole batch waits, with this reason."""


Report = Callable[[Result], None]


class Sender(Protocol):
    """A destination's protocol. `send` reports a Result per object it
    attempted, in any order; objects it did not attempt (the link broke, a
    limit of the protocol) are simply not reported and go back to the queue
    as they were. Raises LinkDown when nothing could be attempted."""

    @property
    def label(self) -> str:
        """How messages name the destination: "pacs (PACS@host:11112)"."""
        ...

    def send(self, batch: Sequence[Delivery], report: Report) -> None: ...


# A sent object as the ledger names it: (object id, SOP Class UID, SOP Instance UID).
Ref = tuple[int, str, str]


@dataclass(frozen=True)
class Confirmation:
    """The archive's word: instances it holds, and those it does not (with why)."""

    committed: list[str]
    failed: list[tuple[str, str]]


class Confirmer(Protocol):
    """Storage Commitment's equivalent for a protocol that has none: asks the
    archive whether each sent instance of one study is there. Raises
    LinkDown when the archive could not be asked (ask again later)."""

    def confirm(self, study: str, refs: Sequence[Ref]) -> Confirmation: ...

    def close(self) -> None: ...
