"""`dicom-gateway run`: the long-running service. Wires the driver, the
forwarder and (later) the UI together, reports readiness and health to
systemd, and stops cleanly on SIGTERM without losing anything queued."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Literal

from drivers import Driver, DriverError, Frame, create_driver
from gateway import notify
from gateway.config import GatewayConfig
from gateway.forwarder import Forwarder
from gateway.queue.outbox import Outbox

log = logging.getLogger(__name__)

Part = Literal["capture", "forwarder", "ui"]
ALL_PARTS: tuple[Part, ...] = ("capture", "forwarder", "ui")


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


@dataclass
class LiveSource:
    """Keeps the driver running and its latest frame at hand (the preview and
    a capture both read it); reopens a lost device with back-off."""

    driver: Driver
    health: Health
    latest: Frame | None = None
    frames: int = 0
    errors: int = 0
    error: str | None = None

    def run(self, stop: threading.Event) -> None:
        delay = 1.0
        while not stop.is_set():
            try:
                if not self.driver.is_open:
                    self.driver.open()
                    log.info("capture device %s open", self.driver.name)
                    self.error, delay = None, 1.0
                self.latest = self.driver.read()
                self.frames += 1
                self.health.beat("capture")
            except DriverError as exc:
                self.errors += 1
                if self.error != str(exc):
                    log.warning("capture device %s: %s; retrying", self.driver.name, exc)
                self.error = str(exc)
                self.driver.close()
                self.health.beat("capture")  # a missing device is not a stuck loop
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
        self.driver.close()


def run(
    config: GatewayConfig,
    only: Part | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    stop = stop or threading.Event()
    parts = (only,) if only else ALL_PARTS
    health = Health()

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)

    outbox = Outbox(
        config.queue.path, [d.name for d in config.destinations], config.queue.min_free_mb
    )
    report = outbox.recover()
    log.info("queue %s recovered: %s", config.queue.path, report)
    threads: list[threading.Thread] = []
    if "capture" in parts:
        source = LiveSource(create_driver(config.capture.driver, config.capture.options), health)
        threads.append(threading.Thread(target=source.run, args=(stop,), name="capture"))
    if "forwarder" in parts and config.destinations:
        forwarder = Forwarder(
            Outbox(config.queue.path, [d.name for d in config.destinations]),
            list(config.destinations),
            config.station.ae_title,
        )
        threads.append(
            threading.Thread(
                target=forwarder.run,
                args=(stop, lambda: health.beat("forwarder")),
                name="forwarder",
            )
        )
    for thread in threads:
        thread.daemon = True
        thread.start()
    notify.ready(f"running: {', '.join(t.name for t in threads) or 'idle'}")
    if on_ready:
        on_ready()
    interval = notify.watchdog_interval() or 5.0
    while not stop.wait(min(interval, 5.0)):
        stale = [n for n in health.stale() if n in {t.name for t in threads}]
        dead = [t.name for t in threads if not t.is_alive()]
        if stale or dead:
            log.error("loop(s) not healthy: %s; withholding watchdog ping", stale + dead)
            notify.status(f"unhealthy: {', '.join(stale + dead)}")
            continue
        notify.watchdog()
        stats = outbox.stats()
        pending = sum(s["pending"] + s["in_flight"] for s in stats.values())
        notify.status(f"running; {pending} object(s) waiting")
    notify.stopping()
    for thread in threads:
        thread.join(timeout=15)
    outbox.close()
    return 0
