"""sd_notify through systemd-python: readiness, status text and watchdog pings.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the same code
runs from a terminal.
"""

from __future__ import annotations

import os

from systemd import daemon  # type: ignore[attr-defined]


def _send(message: str) -> bool:
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    return bool(daemon.notify(message))


def ready(status: str = "") -> bool:
    return _send("READY=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    return _send(f"STATUS={text}")


def watchdog() -> bool:
    return _send("WATCHDOG=1")


def stopping() -> bool:
    return _send("STOPPING=1")


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, as systemd recommends; None when no watchdog is asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
