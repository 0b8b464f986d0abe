"""What one round of sending did to queued items (images or MPPS messages):
one report type for every sender, so the forwarder, the MPPS sender, `queue
flush` and their listeners (audit, metrics) count the same way."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SendReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    error: str | None = None  # the last transient failure, for the operator

    @property
    def progressed(self) -> bool:
        """Something was decided (sent or given up), so another round may do more."""
        return bool(self.sent or self.failed)

    def add(self, other: SendReport) -> None:
        self.sent += other.sent
        self.retried += other.retried
        self.failed += other.failed
        self.error = other.error or self.error
