"""Outboxes for tests that drive the queue directly: the retention policy is
a required value, given here explicitly (nothing purged unless a test says)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gateway.queue.outbox import Outbox
from gateway.queue.retention import RetentionPolicy


def new_outbox(
    root: Path,
    destinations: Sequence[str],
    *,
    min_free_mb: int = 0,
    retention_days: float = 7.0,
    commitment: Sequence[str] = (),
    check: bool = False,
) -> Outbox:
    policy = RetentionPolicy(min_free_mb, retention_days, frozenset(commitment))
    return Outbox(root, destinations, policy, check=check)


def add_object(outbox: Outbox, uid: str) -> int:
    """A tiny stand-in object (the queue does not parse what it stores)."""
    return outbox.add(
        b"DICM" * 10,
        sop_instance_uid=uid,
        sop_class_uid="1.2.3",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        study_instance_uid="1.2.3.4",
    ).id
