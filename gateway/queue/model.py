"""What the queue holds, as values: objects, their deliveries (one per
destination, each with its own state), and the errors the queue raises."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.queue.db import QueueError

OBJECTS_DIR = "objects"
LOCK_NAME = "add.lock"


def object_file_name(sop_instance_uid: str) -> str:
    """The queue file's name: a hash of the SOP Instance UID, never the UID
    itself. The UID is the sender's string (a peer once sent `../../x`), so
    no name on disk is made from it; the hash keeps one name per UID, which
    the duplicate checks rely on."""
    return (
        hashlib.sha256(sop_instance_uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]
        + ".dcm"
    )


class AlreadyQueued(QueueError):
    """This SOP Instance UID is in the queue already (durably)."""


class QueueFull(QueueError):
    """Below `queue.min_free_mb`: new captures are refused, nothing old is evicted."""


class DeliveryState(StrEnum):
    HELD = "held"  # captured during an exam that is not finished yet
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SENT = "sent"
    COMMITTED = "committed"
    FAILED = "failed"


@dataclass(frozen=True)
class QueuedObject:
    id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    path: Path
    size: int
    created_at: float
    exam_id: str | None = None


@dataclass(frozen=True)
class NewObject:
    """A complete Part 10 file about to be queued (in pieces, written in turn)."""

    data: bytes | Sequence[bytes]
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    exam_id: str | None = None
    hold: bool = False

    @property
    def size(self) -> int:
        if isinstance(self.data, bytes):
            return len(self.data)
        return sum(len(part) for part in self.data)


@dataclass(frozen=True)
class Delivery:
    object: QueuedObject
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    sent_at: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.object.id,
            "sop_instance_uid": self.object.sop_instance_uid,
            "sop_class_uid": self.object.sop_class_uid,
            "transfer_syntax_uid": self.object.transfer_syntax_uid,
            "study_instance_uid": self.object.study_instance_uid,
            "path": str(self.object.path),
            "size": self.object.size,
            "created_at": self.object.created_at,
            "exam_id": self.object.exam_id,
            "destination": self.destination,
            "state": self.state.value,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "sent_at": self.sent_at,
        }


@dataclass(frozen=True)
class RecoveryReport:
    temp_files_removed: int
    orphan_files_removed: int
    missing_files: int
    claims_reset: int
    files_skipped: bool = False  # another process was adding: clean-up left for later
