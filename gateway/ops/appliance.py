"""What `run` adds when it is an appliance: the audit trail, the metrics
endpoint, the clock guard, certificate alarms and the queue-writable check
that gates the watchdog. Kept out of service.py so the service's loop stays
about capture and forwarding."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.config import GatewayConfig
from gateway.ops import audit, certalarm
from gateway.ops.certalarm import CertStatus, check_certificates, log_alarms
from gateway.ops.clock import ClockGuard, ClockStatus
from gateway.ops.health import Health
from gateway.ops.metrics import MetricsServer, Sources
from gateway.queue.outbox import Outbox
from gateway.queue.schema import DB_NAME

if TYPE_CHECKING:
    from drivers.stream import FrameStream
    from gateway.send.forwarder import Forwarder

log = logging.getLogger(__name__)

CLOCK_EVERY = 60.0
CERTS_EVERY = 6 * 3600.0


def queue_writable(outbox: Outbox, timeout: float = 5.0) -> str | None:
    """None when the queue can take a capture now, else why not. Takes the
    database write lock and lets go without writing (no SD-card wear)."""
    if not os.access(outbox.objects_dir, os.W_OK):
        return f"queue directory {outbox.objects_dir} is not writable"
    try:
        db = sqlite3.connect(outbox.root / DB_NAME, timeout=timeout)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        finally:
            db.close()
    except sqlite3.Error as exc:
        return f"queue database not writable: {exc}"
    return None


@dataclass
class Extras:
    config: GatewayConfig
    outbox: Outbox
    health: Health
    running: list[str]
    clock_guard: ClockGuard = field(default_factory=ClockGuard)
    certificates: list[CertStatus] = field(default_factory=list)
    metrics: MetricsServer | None = None
    trail: audit.AuditTrail | None = None
    _next_clock: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _cert_thread: threading.Thread | None = None

    def clock(self) -> ClockStatus:
        return self.clock_guard.last or self.clock_guard.check()

    def loops(self) -> dict[str, bool]:
        stale = set(self.health.stale())
        return {name: name not in stale for name in self.running}

    def tick(self) -> list[str]:
        """Called from the service loop; returns what is unhealthy."""
        now = time.monotonic()
        if now >= self._next_clock:
            self._next_clock = now + CLOCK_EVERY
            self.clock_guard.check()
        problem = queue_writable(self.outbox)
        if problem:
            log.error("%s", problem)
            return ["queue"]
        return []

    def _refresh_certificates(self) -> None:
        """Our own and the CAs' certificates at once; peers' after the probe
        delay, then everything every few hours."""
        probe, wait = False, self.config.certificates.peer_probe_delay
        while True:
            try:
                self.certificates = check_certificates(self.config, probe_peers=probe)
                certalarm.remember(self.certificates)
                log_alarms(self.certificates)
            except Exception:
                log.exception("certificate check failed")
            if self._stop.wait(wait):
                return
            probe, wait = True, CERTS_EVERY

    def stop(self) -> None:
        self._stop.set()
        if self.metrics:
            self.metrics.stop()
        if self.trail:
            audit.emit(lambda t: t.application(started=False))
            self.trail.close()
            audit.install(None)


def start(
    config: GatewayConfig,
    outbox: Outbox,
    stream: FrameStream | None,
    forwarder: Forwarder | None,
    health: Health,
    running: list[str],
) -> Extras:
    extras = Extras(config, outbox, health, running)
    for name in running:
        # Registered now (each loop beats on its own from here on): a loop
        # stuck before its first beat is still caught.
        health.beats.setdefault(name, time.monotonic())
    extras.trail = audit.AuditTrail(config, outbox.root)
    audit.install(extras.trail)
    audit.emit(lambda t: t.application(started=True))
    if forwarder is not None:
        audit.watch_forwarder(forwarder)
    extras.clock_guard.check()
    extras._cert_thread = threading.Thread(
        target=extras._refresh_certificates, name="certificates", daemon=True
    )
    extras._cert_thread.start()
    listen = metrics_listen(config, running)
    if listen:
        sources = Sources(
            queue_root=outbox.root,
            destinations=[d.name for d in config.destinations],
            station=config.station.ae_title,
            stream=(lambda: stream.stats()) if stream is not None else (lambda: None),
            loops=extras.loops,
            certificates=lambda: extras.certificates,
            clock=extras.clock,
        )
        try:
            extras.metrics = MetricsServer(listen, sources).start()
        except OSError as exc:  # a busy port must not stop capture
            log.error("metrics endpoint %s not started: %s", listen, exc.strerror)
    return extras


def metrics_listen(config: GatewayConfig, running: list[str]) -> str:
    """The address this process serves metrics on: the forwarder's own
    process (no capture, no screen) has `forwarder_listen`, every other
    `run` has `listen` (empty: none)."""
    forwarder_alone = "forwarder" in running and not {"capture", "ui"} & set(running)
    return config.metrics.forwarder_listen if forwarder_alone else config.metrics.listen
