"""The outbox: one SQLite database (WAL, synchronous=FULL) whose rows point at
`.dcm` files written with `write_atomic`.

Order of a capture: the file is made durable first, then its row is committed;
only then is the capture acknowledged. A crash in between leaves a file with no
row, which `recover` removes (it was never acknowledged). A delivery is a row
per (object, destination), so each destination has its own state.

The outbox is its concerns put together, one module each: objects (adding,
deleting, releasing), deliveries (claims and outcomes), the commitment ledger,
the retention policy (a required value) and recovery.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.queue.alarms import alarms
from gateway.queue.db import QueueError
from gateway.queue.deliveries import DeliveriesMixin
from gateway.queue.files import make_dirs
from gateway.queue.ledger import LedgerMixin
from gateway.queue.model import OBJECTS_DIR
from gateway.queue.objects import ObjectsMixin
from gateway.queue.recovery import RecoveryMixin
from gateway.queue.repair import RebuildReport, open_or_rebuild
from gateway.queue.retention import RetentionMixin, RetentionPolicy
from gateway.queue.stats import DestinationStats, queue_stats, stats_json

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


class Outbox(ObjectsMixin, DeliveriesMixin, LedgerMixin, RetentionMixin, RecoveryMixin):
    """The queue's one interface: add, claim, mark, list, recover."""

    def __init__(
        self,
        root: Path,
        destinations: Sequence[str],
        policy: RetentionPolicy,
        *,
        check: bool = False,
    ) -> None:
        """With `check` (the service's start), `PRAGMA quick_check` runs
        first; a damaged database, found then or by any opener, is moved
        aside and rebuilt from the files (gateway.queue.repair), and
        `rebuilt` says so."""
        self.root = Path(root)
        self.objects_dir = self.root / OBJECTS_DIR
        self.destinations = list(destinations)
        self.policy = policy
        try:
            make_dirs(self.objects_dir)
        except OSError as exc:
            raise QueueError(f"cannot create queue directory {self.root}: {exc.strerror}") from None
        self._db, self.rebuilt = open_or_rebuild(self.root, self.destinations, check)

    rebuilt: RebuildReport | None

    def alarms(self) -> list[tuple[str, str, float]]:
        """Alarms not cleared (a rebuilt database, a unit that gave up)."""
        return alarms(self._db)

    def destination_stats(self) -> dict[str, DestinationStats]:
        return queue_stats(self._db, self.destinations)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per destination: counts by state, oldest pending age, last success."""
        return stats_json(self.destination_stats())

    def pending(self) -> int:
        """Objects waiting to be sent now, over all destinations."""
        return sum(s.pending for s in self.destination_stats().values())


def outbox_for(config: GatewayConfig, *, check: bool = False) -> Outbox:
    """The outbox with the configuration's purge policy: which destinations
    must commit before anything may be forgotten, and the retention period.
    Every process that adds to the queue uses this one policy."""
    return Outbox(
        config.queue.path,
        [d.name for d in config.destinations],
        RetentionPolicy.from_config(config),
        check=check,
    )
