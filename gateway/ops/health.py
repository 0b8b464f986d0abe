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

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Test hook (tests/image): with this variable naming a directory, a loop whose
# `kill-NAME` file appears there holding this process's PID ends its thread at
# its next beat, as a crash in that loop would, so a test can show systemd's
# watchdog restarting the service (the restarted process, another PID, lives
# on). Unset (always, in the shipped units) it costs nothing.
KILL_HOOK_ENV = "DICOM_GATEWAY_TEST_KILL_DIR"


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
        hook = os.environ.get(KILL_HOOK_ENV)
        if not hook:
            return lambda: self.beat(name)
        kill = Path(hook) / f"kill-{name}"

        def beat_or_die() -> None:
            try:
                doomed = kill.read_text().strip() == str(os.getpid())
            except OSError:
                doomed = False
            if doomed:
                logging.getLogger(__name__).error("test hook: loop %s killed", name)
                raise SystemExit(f"test hook: loop {name} killed")
            self.beat(name)

        return beat_or_die

    def stale(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [n for n, t in self.beats.items() if now - t > self.limit]
