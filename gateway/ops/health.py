"""Health of the service's loops: each loop stamps its heartbeat, and the
watchdog is fed only while every running loop has stamped recently, so a
stuck loop gets the service restarted by systemd."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Health:
    """Each loop stamps its heartbeat; the watchdog is fed only while every
    running loop has stamped recently, so a stuck loop gets us restarted."""

    beats: dict[str, float] = field(default_factory=dict)
    limit: float = 120.0

    def beat(self, name: str) -> None:
        self.beats[name] = time.monotonic()

    def stale(self) -> list[str]:
        now = time.monotonic()
        return [n for n, t in self.beats.items() if now - t > self.limit]
