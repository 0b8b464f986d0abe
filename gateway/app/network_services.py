"""The network services that run beside the forwarder in `dicom-gateway run`:
the inbound C-STORE SCP (when enabled) and Storage Commitment (its listener
and a loop asking for commitment of finished studies). Each reports to the
service's health: the listeners from their accept loops, the commitment loop
while it waits between rounds."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway.config import GatewayConfig
from gateway.net.listener import Throttle, throttle_key
from gateway.net.ul import Timeouts
from gateway.ops import audit
from gateway.ops.health import Health
from gateway.queue.outbox import outbox_for

log = logging.getLogger(__name__)


def audit_refusals(port: str) -> Callable[[str, str, str], None]:
    """A refused association, object, UID or commitment report as a
    Security Alert (PS3.15 A.5.3.11) in the audit trail. Each audit message
    is itself queued on disk, so a flood is summarised: at most one record
    per address, kind of refusal and 60 s, and 120 a minute in all; the
    rest are counted and the count is in the next record."""
    lock = threading.Lock()
    per_address = Throttle(60.0)
    window: list[float] = []

    def record(ae_title: str, address: str, reason: str) -> None:
        now = time.monotonic()
        key = throttle_key(address, reason)
        with lock:
            window[:] = [t for t in window if now - t < 60]
            if len(window) >= 120:
                per_address.skipped[key] = per_address.skipped.get(key, 0) + 1
                return
            more = per_address.allow(key)
            if more is None:
                return
            window.append(now)
        text = f"{port}: {reason}" + (f" (and {more} more since the last record)" if more else "")
        audit.emit(lambda t: t.security_alert(ae_title or "unknown", address, text))

    return record


def network_loops(config: GatewayConfig) -> list[str]:
    """The health names of what `start_network_services` will start."""
    loops = ["inbound"] if config.inbound.enabled else []
    if any(d.storage_commitment for d in config.destinations):
        loops.append("commitment")
        if config.commitment.listen is not None:
            loops.append("commitment-listener")
    return loops


def start_network_services(
    config: GatewayConfig, stop: threading.Event, health: Health | None = None
) -> list[Callable[[], None]]:
    """Start what the configuration asks for; returns the functions that stop it."""
    health = health or Health(limit=config.watchdog.stale_after)
    stoppers: list[Callable[[], None]] = []
    commit = [d.name for d in config.destinations if d.storage_commitment]

    if config.inbound.enabled:
        from gateway.acquire.inbound import InboundService

        inbound = InboundService(
            outbox_for(config),
            config,
            heartbeat=health.beater("inbound"),
            refused=audit_refusals("inbound"),
        )
        inbound.start()
        stoppers.append(inbound.stop)
    if commit:
        from gateway.send.commitment import CommitmentService

        f = config.forwarding
        service = CommitmentService(
            outbox_for(config),
            config,
            Timeouts(f.connect_timeout_s, f.acse_timeout_s, f.dimse_timeout_s, f.network_timeout_s),
        )
        service.on_refused.append(audit_refusals("Storage Commitment"))
        if config.commitment.listen is not None:
            service.start_listener(health.beater("commitment-listener"))
        stoppers.append(service.stop)
        beat = health.beater("commitment")

        def loop() -> None:
            # Beat while waiting between rounds; a round is bounded by the
            # association time-outs, well inside the watchdog's deadline.
            every = min(health.every, config.commitment.interval_s)
            waited = 0.0
            while not stop.wait(every):
                beat()
                waited += every
                if waited < config.commitment.interval_s:
                    continue
                waited = 0.0
                try:
                    service.request_due(beat)
                except Exception:  # the loop must outlive any one bad round
                    log.exception("Storage Commitment round failed unexpectedly")
                beat()

        thread = threading.Thread(target=loop, name="commitment", daemon=True)
        thread.start()
        stoppers.append(lambda: thread.join(timeout=10))
    return stoppers
