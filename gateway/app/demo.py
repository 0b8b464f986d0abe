"""`dicom-gateway demo`: the whole path on loopback with nothing configured.

Throwaway CA and certificates → one loopback "hospital" peer speaking TLS
with mutual authentication (Modality Worklist, MPPS and C-STORE, like a
RIS/PACS pair) → the worklist queried and today's entry picked → test-pattern
frames captured into the durable queue under that order → exam finished (MPPS
COMPLETED) → forwarded → a report of what arrived where.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)

from drivers import create_driver
from gateway.acquire.station import Station
from gateway.acquire.subject import Subject
from gateway.config import GatewayConfig, TLSConfig, mpps_peer, parse_config
from gateway.dicom.uids import new_uid
from gateway.net.tls import server_context
from gateway.ops.certs import make_authority
from gateway.queue.files import write_atomic
from gateway.queue.messages import MppsQueue
from gateway.queue.model import object_file_name
from gateway.queue.outbox import outbox_for
from gateway.ris.model import WorklistQuery
from gateway.ris.mpps_sender import MppsSender
from gateway.ris.worklist import WorklistService
from gateway.send.forwarder import Forwarder

DEMO_ACCESSION = "DEMO0001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_worklist_entry(station_ae: str) -> Dataset:
    """One scheduled step for today, as a RIS would return it."""
    now = datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Demo^Patient"
    ds.PatientID = "DEMO-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = new_uid()
    ds.AccessionNumber = DEMO_ACCESSION
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.RequestedProcedureID = "RP-DEMO"
    ds.RequestedProcedureDescription = "Demo capture"
    step = Dataset()
    step.Modality = "OT"
    step.ScheduledStationAETitle = station_ae
    step.ScheduledProcedureStepStartDate = now.strftime("%Y%m%d")
    step.ScheduledProcedureStepStartTime = now.strftime("%H%M%S")
    step.ScheduledProcedureStepID = "SPS-DEMO"
    step.ScheduledProcedureStepDescription = "Demo capture"
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledStationName = "DEMO"
    step.ScheduledProcedureStepLocation = "Demo room"
    ds.ScheduledProcedureStepSequence = [step]
    return ds


@dataclass
class LoopbackHospital:
    """A small TLS peer (pynetdicom) acting as RIS and PACS: answers worklist
    queries with one entry, takes MPPS, and writes what it stores to disk."""

    directory: Path
    tls: TLSConfig
    station_ae: str
    ae_title: str = "DEMOPACS"
    port: int = field(default_factory=free_port)
    received: list[Path] = field(default_factory=list)
    mpps: list[str] = field(default_factory=list)

    def _on_store(self, event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.directory / object_file_name(str(ds.SOPInstanceUID))  # never the peer's string
        write_atomic(path, event.encoded_dataset())
        self.received.append(path)
        return 0x0000

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, demo_worklist_entry(self.station_ae)

    def _on_n_create(self, event: Event) -> tuple[int, Dataset]:
        self.mpps.append(str(event.attribute_list.PerformedProcedureStepStatus))
        return 0x0000, event.attribute_list

    def _on_n_set(self, event: Event) -> tuple[int, Dataset]:
        self.mpps.append(str(getattr(event.attribute_list, "PerformedProcedureStepStatus", "")))
        return 0x0000, event.attribute_list

    @contextmanager
    def running(self) -> Iterator[LoopbackHospital]:
        self.directory.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(ModalityWorklistInformationFind)
        ae.add_supported_context(ModalityPerformedProcedureStep)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_N_CREATE, self._on_n_create),
            (evt.EVT_N_SET, self._on_n_set),
        ]
        server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=server_context(self.tls),
        )
        assert server is not None  # non-blocking start always returns the server
        try:
            yield self
        finally:
            server.shutdown()


def demo_config(workdir: Path, port: int, tls: TLSConfig) -> GatewayConfig:
    peer = {
        "ae_title": "DEMOPACS",
        "host": "localhost",
        "port": port,
        "tls": {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)},
    }
    data: dict[str, Any] = {
        "station": {"ae_title": "EDGE1", "station_name": "DEMO", "modality": "OT"},
        "capture": {"driver": "testpattern", "options": {"width": 640, "height": 480}},
        "destinations": [{"name": "demo-pacs", **peer}],
        "worklist": peer,
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
    hospital = LoopbackHospital(
        workdir / "received", TLSConfig(ca=ca.cert, cert=server.cert, key=server.key), "EDGE1"
    )
    config = demo_config(
        workdir, hospital.port, TLSConfig(ca=ca.cert, cert=client.cert, key=client.key)
    )
    with hospital.running(), outbox_for(config) as outbox:
        echo(
            f"demo: RIS/PACS {hospital.ae_title} on localhost:{hospital.port} "
            "(TLS, mutual authentication)"
        )
        today = datetime.now().date()
        with WorklistService(config) as worklist:
            result = worklist.query(WorklistQuery(date_from=today, date_to=today))
        if not result.entries:
            echo(f"demo: worklist query failed: {result.error}")
            return 1
        entry = result.entries[0]
        echo(
            f"demo: worklist: picked {entry.patient.name}, accession "
            f"{entry.order.accession_number} ({entry.order.requested_procedure_description})"
        )
        driver = create_driver(config.capture.driver, config.capture.options)
        with Station(config, outbox, driver.source, review=False) as station:
            with station.exam(Subject(entry.patient, entry.order), "demo") as exam, driver:
                for frame in driver.frames(frames):
                    queued = station.exams.capture(exam, frame)
                    echo(f"demo: captured frame {frame.index} → queue object {queued.id}")
            echo(f"demo: exam {exam.state.value}, its objects queued for sending")
        report = Forwarder.from_config(outbox, config).flush(timeout=60)
        echo(
            f"demo: forwarded {report.sent} object(s) over TLS, {report.failed} failed"
            + (f" ({report.error})" if report.error else "")
        )
        peer = mpps_peer(config)
        assert peer is not None  # the worklist server is the MPPS peer here
        with MppsQueue(config.queue.path) as queue:
            MppsSender(queue, peer, config.station.ae_title).flush(timeout=30)
        echo(f"demo: MPPS at the RIS: {' → '.join(hospital.mpps) or 'nothing'}")
        for path in hospital.received:
            ds = dcmread(path, stop_before_pixels=True)
            echo(
                f"demo: arrived {path} — {ds.PatientName}, accession {ds.AccessionNumber}, "
                f"{ds.Modality}, instance {ds.InstanceNumber}, {ds.Columns}×{ds.Rows}"
            )
    ok = (
        report.sent == frames
        and len(hospital.received) == frames
        and hospital.mpps == ["IN PROGRESS", "COMPLETED"]
    )
    echo("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1
