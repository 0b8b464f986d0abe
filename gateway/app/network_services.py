"""The network services that run beside the forwarder in `dicom-gateway run`:
the inbound C-STORE SCP (when enabled) and Storage Commitment (its listener
and a loop asking for commitment of finished studies)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gateway.config import GatewayConfig
from gateway.net.ul import Timeouts
from gateway.queue.outbox import outbox_for

log = logging.getLogger(__name__)

COMMITMENT_INTERVAL_S = 30.0


def start_network_services(
    config: GatewayConfig, stop: threading.Event
) -> list[Callable[[], None]]:
    """Start what the configuration asks for; returns the functions that stop it."""
    stoppers: list[Callable[[], None]] = []
    commit = [d.name for d in config.destinations if d.storage_commitment]

    if config.inbound.enabled:
        from gateway.acquire.inbound import InboundService

        inbound = InboundService(outbox_for(config), config)
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
        service.start_listener()
        stoppers.append(service.stop)

        def loop() -> None:
            while not stop.wait(COMMITMENT_INTERVAL_S):
                try:
                    service.request_due()
                except Exception:  # the loop must outlive any one bad round
                    log.exception("Storage Commitment round failed unexpectedly")

        threading.Thread(target=loop, name="commitment", daemon=True).start()
    return stoppers
