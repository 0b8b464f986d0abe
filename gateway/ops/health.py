"""Health of the service's loops: each loop stamps its heartbeat, and the
watchdog is fed only while every running loop has stamped recently, so a
stuck loop gets the service restarted by systemd.

Every loop beats while it is healthy, including while it is idle or waiting
(on a device, a peer, a client), never more than `every` seconds apart: a
loop that only beat on work would look stuck on a quiet afternoon, and the
watchdog would restart a healthy service (that was the "unhealthy: ui"
restart every ~2.5 minutes). A loop that is really stuck stops beating, and
after `limit` seconds the pings stop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Health:
    """Each loop stamps its heartbeat; the watchdog is fed only while every
    running loop has stamped recently, so a stuck loop gets us restarted."""

    beats: dict[str, float] = field(default_factory=dict)
    limit: float = 120.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def every(self) -> float:
        """How long a healthy loop may wait between beats: a quarter of the
        deadline (at most 5 s), so a slow scheduler never makes it late."""
        return max(0.02, min(5.0, self.limit / 4))

    def beat(self, name: str) -> None:
        with self._lock:
            self.beats[name] = time.monotonic()

    def beater(self, name: str) -> Callable[[], None]:
        """The heartbeat a loop calls (registered now, so a loop that never
        gets to its first beat is caught too)."""
        self.beat(name)
        return lambda: self.beat(name)

    def stale(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [n for n, t in self.beats.items() if now - t > self.limit]
