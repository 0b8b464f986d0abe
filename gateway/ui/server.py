"""Serving the touchscreen from `dicom-gateway run`: uvicorn on its own
thread, stopped with the rest of the service."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from drivers.stream import FrameStream
from gateway.acquire.station import Station
from gateway.config import GatewayConfig
from gateway.paths import pin_credential_path
from gateway.queue.outbox import outbox_for
from gateway.ui.app import UIContext, WorklistSource, app_state, create_app
from gateway.ui.desk import DeskError
from gateway.ui.status import ForwarderStatus

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """Exits when the service's stop event is set (uvicorn polls on_tick)."""

    def __init__(
        self,
        config: uvicorn.Config,
        stop: threading.Event,
        closing: threading.Event,
        heartbeat: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self.stop = stop
        self.closing = closing
        self.heartbeat = heartbeat

    async def on_tick(self, counter: int) -> bool:
        # uvicorn ticks ten times a second on the event loop: a handler that
        # blocks the loop stops the ticks, so this beat is the UI's health.
        self.heartbeat()
        if self.stop.is_set():
            self.closing.set()  # SSE and MJPEG streams end within a second
            return True
        return await super().on_tick(counter)


def default_worklist(config: GatewayConfig) -> WorklistSource | None:
    """The worklist service when this build has it and a server is configured."""
    if config.worklist is None:
        return None
    from gateway.ris.worklist import WorklistService

    # Long-lived: it remembers a dead link, answers from the cache at once
    # and retries on its own thread.
    source: WorklistSource = WorklistService(config, background=True)
    return source


class UIServer:
    """The UI's thread; `thread` joins the service's list of watched loops."""

    def __init__(
        self,
        config: GatewayConfig,
        stop: threading.Event,
        *,
        stream: FrameStream | None,
        forwarder_status: ForwarderStatus | None = None,
        config_path: Path | None = None,
        worklist: WorklistSource | None = None,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self.stream = stream
        self._stopping = stop
        self.worklist = worklist if worklist is not None else default_worklist(config)
        # The same purge policy as every other process adding to the queue:
        # room is never made by dropping an object a PACS has yet to commit.
        self.outbox = outbox_for(config)
        self.status_outbox = outbox_for(config)
        source = stream.driver.source if stream is not None else "synthetic"
        # MPPS, worklist "performed", and the durable exam record; an exam cut
        # short by a power loss comes back on screen with its held images.
        self.station = Station(config, self.outbox, source, review=True, restore=True)
        self.app = create_app(
            UIContext(
                config=config,
                exams=self.station.exams,
                status_outbox=self.status_outbox,
                stream=stream,
                forwarder_status=forwarder_status,
                worklist=self.worklist,
                config_path=config_path,
            )
        )
        host, _, port = config.ui.listen.rpartition(":")
        # HTTPS with the station's certificate (required beyond loopback by
        # the configuration); Python's server context refuses below TLS 1.2.
        tls = config.ui.tls
        uv_config = uvicorn.Config(
            self.app,
            host=host.strip("[]"),
            port=int(port),
            log_level="warning",
            access_log=False,  # URLs carry no patient data, but keep the journal quiet
            timeout_graceful_shutdown=3,
            lifespan="on",
            log_config=None,  # our logging set-up (journald), not uvicorn's
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
        )
        for exam in self.station.restored:
            app_state(self.app).desk.adopt(exam)
        self.server = _Server(uv_config, stop, app_state(self.app).closing, heartbeat)
        # The kiosk's plain-HTTP loopback listener beside the HTTPS one (the
        # same application; one lifespan, the main server's).
        self.kiosk_server: _Server | None = None
        if config.ui.kiosk_listen:
            khost, _, kport = config.ui.kiosk_listen.rpartition(":")
            kiosk_config = uvicorn.Config(
                self.app,
                host=khost.strip("[]"),
                port=int(kport),
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=3,
                lifespan="off",
                log_config=None,
            )
            self.kiosk_server = _Server(
                kiosk_config, stop, app_state(self.app).closing, lambda: None
            )
        self.thread = threading.Thread(target=self._serve, name="ui", daemon=True)

    def _receive_device_images(self) -> None:
        """For a digital source (serial XMODEM), every frame is an image the
        device sent on purpose: hand each to the desk, never only to the preview."""
        assert self.stream is not None
        desk = app_state(self.app).desk
        last: int | None = None
        while not self._stopping.is_set():
            frame = self.stream.wait_frame(after_index=last, timeout=1.0)
            if frame is None:
                continue
            last = frame.index
            try:
                desk.receive(frame)
            except DeskError as exc:
                log.error("image from the device not kept: %s", exc.message)

    def _serve(self) -> None:
        # The PIN provisioned through LoadCredential=pin, hashed into the state
        # file before the first page (here: the service's audit trail is up).
        app_state(self.app).settings.provision_pin(pin_credential_path())
        if self.stream is not None and self.stream.driver.source == "digital":
            threading.Thread(
                target=self._receive_device_images, name="ui-device-images", daemon=True
            ).start()
        try:
            if self.kiosk_server is None:
                self.server.run()
            else:
                asyncio.run(self._serve_both(self.kiosk_server))
        finally:
            if self.worklist is not None:
                self.worklist.close()
            self.station.close()
            self.outbox.close()
            self.status_outbox.close()

    async def _serve_both(self, kiosk: _Server) -> None:
        """Both listeners on the one event loop; either ending ends the UI."""
        tasks = [asyncio.ensure_future(s.serve()) for s in (self.server, kiosk)]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for server in (self.server, kiosk):
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # a failure to bind is the UI's failure

    def start(self) -> UIServer:
        self.thread.start()
        return self

    @property
    def started(self) -> bool:
        servers = [self.server] + ([self.kiosk_server] if self.kiosk_server else [])
        return all(s.started for s in servers)

    def wait_listening(self, timeout: float) -> bool:
        """Block until uvicorn has bound its socket, so the service's READY=1
        promises a page: the kiosk unit is ordered after that readiness instead
        of polling the port. False when the server died or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while not self.started:
            if not self.thread.is_alive() or time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def trigger(self, action: str) -> dict[str, Any]:
        """For the pedal's callbacks: "capture" or "record"."""
        return app_state(self.app).desk.trigger(action)
