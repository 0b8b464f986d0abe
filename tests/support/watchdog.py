"""A systemd notify socket the tests own: every datagram `run` sends
(READY=1, STATUS=…, WATCHDOG=1), with the time it arrived, collected on a
thread; and a configuration that turns every loop of `run` on."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.gateway import gateway_config
from tests.support.pki import PKI
from tests.support.process import free_port


@dataclass
class NotifySocket:
    path: Path
    messages: list[tuple[float, str]] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> NotifySocket:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        sock, self._sock = self._sock, None
        if self._thread is not None:
            self._thread.join(timeout=2)
        if sock is not None:
            sock.close()

    def _collect(self) -> None:
        while (sock := self._sock) is not None:
            try:
                data = sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def env(self, watchdog_usec: int) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(watchdog_usec)}

    def service_env(self, watchdog_usec: int, audit_socket: Path | None = None) -> dict[str, str]:
        """The environment systemd gives `run`: this process's, with the
        notify socket and WATCHDOG_USEC (no WATCHDOG_PID: any PID may ping),
        and the audit trail's syslog socket pointed somewhere harmless."""
        env = {**os.environ, **self.env(watchdog_usec)}
        env.pop("WATCHDOG_PID", None)
        if audit_socket is not None:
            env["DICOM_GATEWAY_AUDIT_SOCKET"] = str(audit_socket)
        return env

    def since(self, t0: float) -> list[tuple[float, str]]:
        with self._lock:
            return [(t, m) for t, m in self.messages if t >= t0]

    def wait_for(self, needle: str, timeout: float, after: float = 0.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in m for _, m in self.since(after)):
                return True
            time.sleep(0.05)
        return False

    def pings(self, t0: float = 0.0) -> list[float]:
        return [t for t, m in self.since(t0) if "WATCHDOG=1" in m.split("\n")]

    def unhealthy(self, t0: float = 0.0) -> list[str]:
        return [m for _, m in self.since(t0) if "unhealthy" in m]


def largest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without a ping."""
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def whole_service_config(
    tmp_path: Path, pki: PKI, pacs_port: int, stale_after: float, **overrides: Any
) -> dict[str, Any]:
    """Every loop of `run` on: capture, UI, forwarder with Storage Commitment
    (and its listener), MPPS sender, inbound C-STORE SCP, control socket,
    metrics; the watchdog's deadline scaled to `stale_after` seconds."""
    data = gateway_config(tmp_path, pki, pacs_port)
    data["destinations"][0]["storage_commitment"] = True
    data["commitment"] = {
        "listen": f"127.0.0.1:{free_port()}",
        # A listening commitment port takes reports over TLS only.
        "tls": dict(data["destinations"][0]["tls"]),
    }
    data["mpps"] = {"ae_title": "RIS", "host": "127.0.0.1", "port": free_port()}
    data["inbound"] = {
        "enabled": True,
        "listen": f"127.0.0.1:{free_port()}",
        "allowed": [{"ae_title": "MODALITY", "address": "127.0.0.1"}],
    }
    data["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
    data["watchdog"] = {"stale_after": stale_after}
    data.update(overrides)
    return data
