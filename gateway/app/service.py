"""`dicom-gateway run`: the long-running service. Wires the driver, the
forwarder and (later) the UI together, reports readiness and health to
systemd, and stops cleanly on SIGTERM without losing anything queued."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from drivers.stream import FrameStream
    from drivers.trigger import PedalTrigger
from gateway.config import GatewayConfig
from gateway.ops import appliance, audit, notify
from gateway.ops.health import Health
from gateway.queue.outbox import outbox_for
from gateway.send.forwarder import Forwarder

log = logging.getLogger(__name__)

Part = Literal["capture", "forwarder", "ui"]
ALL_PARTS: tuple[Part, ...] = ("capture", "forwarder", "ui")
# READY=1 waits at most this long for the UI's socket (TimeoutStartSec=90s).
UI_LISTEN_TIMEOUT = 60.0


def run(
    config: GatewayConfig,
    only: Part | Sequence[Part] | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    config_path: Path | None = None,
) -> int:
    stop = stop or threading.Event()
    parts: tuple[Part, ...] = (
        ALL_PARTS if not only else (only,) if isinstance(only, str) else tuple(only)
    )
    health = Health(limit=config.watchdog.stale_after)

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)

    # quick_check first: a damaged database is rebuilt from the files, and
    # capture goes on (gateway.queue.repair).
    outbox = outbox_for(config, check=True)
    report = outbox.recover()
    log.info("queue %s recovered: %s", config.queue.path, report)
    stream: FrameStream | None = None
    if "capture" in parts:
        # Only the capture process loads the drivers (OpenCV, numpy): the
        # forwarder's process stays small (docs/benchmarks.md, memory).
        from drivers import create_driver
        from drivers.stream import FrameStream

        capture = config.capture
        stream = FrameStream(
            create_driver(capture.driver, capture.options),
            buffer_seconds=capture.buffer_seconds,
            buffer_bytes=capture.buffer_mb * 1024 * 1024 if capture.buffer_mb else None,
        )
        log.info(
            "recent-frame buffer: up to %g s or %d MiB",
            stream.buffer_seconds,
            stream.buffer_bytes >> 20,
        )
        stream.start()
    threads: list[threading.Thread] = []
    forwarder: Forwarder | None = None
    pedal: PedalTrigger | None = None
    ui_listening: Callable[[float], bool] | None = None
    if "forwarder" in parts and config.destinations:
        forwarder = Forwarder.from_config(outbox_for(config), config)
        threads.append(
            threading.Thread(
                target=forwarder.run,
                args=(stop, health.beater("forwarder"), min(1.0, health.every)),
                name="forwarder",
                daemon=True,
            )
        )
    if "forwarder" in parts:
        threads.extend(_mpps_threads(config, stop, health))
    if "ui" in parts:
        from gateway.ui.server import UIServer

        status = forwarder.status if forwarder else None
        ui = UIServer(
            config,
            stop,
            stream=stream,
            forwarder_status=(lambda: status) if status is not None else None,
            config_path=config_path,
            heartbeat=health.beater("ui"),
        )
        threads.append(ui.thread)
        if config.capture.trigger is not None:
            from drivers.trigger import PedalTrigger, TriggerEvent

            def _press(event: TriggerEvent) -> None:
                # The pedal presses the same buttons as the screen (and shows on it).
                ui.trigger(event.action)

            pedal = PedalTrigger.from_options(config.capture.trigger, _press).start()
        ui_listening = ui.wait_listening
    control = None
    if "ui" in parts or "capture" in parts:
        # `dicom-gateway import` hands its files to us (gateway/control.py).
        from gateway.app.control_server import ControlServer

        control = ControlServer(config, stop, health.beater("control"), health.every).start()
    flusher = None
    if forwarder is not None:
        # `dicom-gateway queue flush` hands its work to this forwarder.
        from gateway.app.control import FORWARDER_SOCKET_NAME
        from gateway.app.control_server import ControlServer

        flusher = ControlServer(
            config,
            stop,
            health.beater("flush"),
            health.every,
            name=FORWARDER_SOCKET_NAME,
            imports=False,
            flush=forwarder.flush_from_thread,
        ).start()
    running = [t.name for t in threads] + (["capture"] if stream else [])
    if control is not None:
        running.append("control")
    if flusher is not None:
        running.append("flush")
    if "forwarder" in parts:
        from gateway.app.network_services import network_loops

        running += network_loops(config)
    extras = appliance.start(config, outbox, stream, forwarder, health, running)
    if outbox.rebuilt is not None:
        rebuilt = outbox.rebuilt
        audit.emit(lambda t: t.alarm(f"queue database rebuilt: {rebuilt.reason}"))
    for thread in threads:
        thread.start()
    stoppers = []
    if "forwarder" in parts:
        from gateway.app.network_services import start_network_services

        stoppers = start_network_services(config, stop, health)
    if ui_listening is not None and not ui_listening(UI_LISTEN_TIMEOUT):
        # Not fatal here: the health loop below sees the dead UI thread and
        # withholds the watchdog, so systemd restarts us.
        log.error("the UI is not listening on %s", config.ui.listen)
    notify.ready(f"running: {', '.join(running) or 'idle'}")
    if on_ready:
        on_ready()
    interval = min(notify.watchdog_interval() or 5.0, 5.0, health.every)
    while not stop.wait(interval):
        if stream is not None:
            health.beats["capture"] = stream.last_beat
        unhealthy = [n for n in health.stale() if n in running]
        unhealthy += [t.name for t in threads if not t.is_alive()]
        if stream is not None and not stream.alive:
            unhealthy.append("capture")
        unhealthy += extras.tick()
        if unhealthy:
            log.error("loop(s) not healthy: %s; withholding watchdog ping", unhealthy)
            notify.status(f"unhealthy: {', '.join(unhealthy)}")
            continue
        notify.watchdog()
        stats = outbox.stats()
        pending = sum(s["pending"] + s["in_flight"] for s in stats.values())
        notify.status(f"running; {pending} object(s) waiting")
    notify.stopping()
    if pedal is not None:
        pedal.stop()
    extras.stop()
    if stream is not None:
        stream.stop()
    for thread in threads:
        thread.join(timeout=15)
    for stop_service in stoppers:
        stop_service()
    if control is not None:
        control.close()
    if flusher is not None:
        flusher.close()
    outbox.close()
    return 0


def _mpps_threads(
    config: GatewayConfig, stop: threading.Event, health: Health
) -> list[threading.Thread]:
    """The MPPS sender runs beside the forwarder: both drain the same queue file."""
    from gateway.config import mpps_peer
    from gateway.queue.messages import MppsQueue
    from gateway.ris.mpps_sender import MppsSender

    peer = mpps_peer(config)
    if peer is None:
        return []
    sender = MppsSender(MppsQueue(config.queue.path), peer, config.station.ae_title)
    return [
        threading.Thread(
            target=sender.run,
            args=(stop, health.beater("mpps"), min(1.0, health.every)),
            name="mpps",
            daemon=True,
        )
    ]
