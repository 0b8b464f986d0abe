"""`dicom-gateway demo`: the whole path on loopback with nothing configured.

Throwaway CA and certificates → a TLS C-STORE receiver with mutual
authentication → test-pattern frames captured into a queue → forwarded →
a report of what arrived where.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event

from drivers import create_driver
from gateway.capture import Capturer
from gateway.certs import make_authority
from gateway.config import GatewayConfig, TLSConfig, parse_config
from gateway.dicom.modules import Patient
from gateway.exam import ExamService
from gateway.forwarder import Forwarder
from gateway.queue.files import write_atomic
from gateway.queue.outbox import Outbox
from gateway.tls import server_context


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LoopbackReceiver:
    """A small TLS C-STORE SCP (pynetdicom) that writes what it gets to disk."""

    directory: Path
    tls: TLSConfig
    ae_title: str = "DEMOPACS"
    port: int = field(default_factory=free_port)
    received: list[Path] = field(default_factory=list)

    def _on_store(self, event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.directory / f"{ds.SOPInstanceUID}.dcm"
        write_atomic(path, event.encoded_dataset())
        self.received.append(path)
        return 0x0000

    @contextmanager
    def running(self) -> Iterator[LoopbackReceiver]:
        self.directory.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            ssl_context=server_context(self.tls),
        )
        assert server is not None  # non-blocking start always returns the server
        try:
            yield self
        finally:
            server.shutdown()


def demo_config(workdir: Path, port: int, tls: TLSConfig) -> GatewayConfig:
    data: dict[str, Any] = {
        "station": {"ae_title": "EDGE1", "station_name": "DEMO", "modality": "OT"},
        "capture": {"driver": "testpattern", "options": {"width": 640, "height": 480}},
        "destinations": [
            {
                "name": "demo-pacs",
                "ae_title": "DEMOPACS",
                "host": "localhost",
                "port": port,
                "tls": {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)},
            }
        ],
        "queue": {"path": str(workdir / "queue"), "min_free_mb": 50},
    }
    return parse_config(data, "demo")


def run_demo(frames: int = 3, keep: Path | None = None, echo: Any = print) -> int:
    workdir = keep or Path(tempfile.mkdtemp(prefix="dicom-gateway-demo-"))
    certs = workdir / "tls"
    ca = make_authority(certs)
    server = ca.issue(certs, "pacs")
    client = ca.issue(certs, "gateway")
    echo(f"demo: throwaway certificates in {certs}")
    receiver = LoopbackReceiver(
        workdir / "received", TLSConfig(ca=ca.cert, cert=server.cert, key=server.key)
    )
    config = demo_config(
        workdir, receiver.port, TLSConfig(ca=ca.cert, cert=client.cert, key=client.key)
    )
    with receiver.running(), Outbox(config.queue.path, ["demo-pacs"]) as outbox:
        echo(
            f"demo: TLS receiver {receiver.ae_title} on localhost:{receiver.port} "
            "(mutual authentication)"
        )
        driver = create_driver(config.capture.driver, config.capture.options)
        exams = ExamService(config, outbox, Capturer(config, outbox, driver.source))
        exam = exams.start(Patient(name="Demo^Patient", id="DEMO-0001"))
        with driver:
            for frame in driver.frames(frames):
                queued = exams.capture(exam, frame)
                echo(f"demo: captured frame {frame.index} → queue object {queued.id}")
        echo(f"demo: exam finished, {exams.finish(exam)} object(s) released for sending")
        forwarder = Forwarder(outbox, list(config.destinations), config.station.ae_title)
        report = forwarder.flush(timeout=60)
        echo(
            f"demo: forwarded {report.sent} object(s) over TLS, {report.failed} failed"
            + (f" ({report.error})" if report.error else "")
        )
        for path in receiver.received:
            ds = dcmread(path, stop_before_pixels=True)
            echo(
                f"demo: arrived {path} — {ds.PatientName}, {ds.Modality}, "
                f"instance {ds.InstanceNumber}, {ds.Columns}×{ds.Rows}"
            )
    ok = report.sent == frames and len(receiver.received) == frames
    echo("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1
