"""Misbehaving and special-purpose peers for the forwarding tests, on loopback:
a pynetdicom Storage SCP with per-UID answers, a raw TLS endpoint with a chosen
certificate and TLS version range, and a raw TCP peer that speaks garbage."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.config import DestinationConfig, TLSConfig
from gateway.net.tls import server_context
from gateway.ops.certs import Issued
from gateway.queue.model import QueuedObject
from gateway.queue.outbox import Outbox
from tests.support.pki import PKI
from tests.support.process import free_port

SC = "1.2.840.10008.5.1.4.1.1.7"


def small_object(uid: str | None = None, study: str = "1.2.3.4") -> tuple[str, bytes]:
    uid = uid or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SC, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, study + ".1"
    ds.PatientName, ds.PatientID, ds.Modality = "Fault^Test", "F1", "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(256)) * 16
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return uid, out.getvalue()


def queue_objects(outbox: Outbox, count: int, study: str = "1.2.3.4") -> list[QueuedObject]:
    out = []
    for _ in range(count):
        uid, data = small_object(study=study)
        out.append(
            outbox.add(
                data,
                sop_instance_uid=uid,
                sop_class_uid=SC,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                study_instance_uid=study,
            )
        )
    return out


@dataclass
class StoreSCPy:
    """pynetdicom Storage SCP (TLS with mutual auth when `tls` is given).
    `status_for(uid)` decides each answer; `abort_after_pdus` aborts the
    association mid-transfer once that many PDUs arrived."""

    tls: ssl.SSLContext | None = None
    status_for: Callable[[str], int] = lambda uid: 0x0000
    abort_after_pdus: int | None = None
    ae_title: str = "PACS"
    port: int = field(default_factory=free_port)
    received: list[str] = field(default_factory=list)
    datasets: dict[str, Any] = field(default_factory=dict)
    max_pdu: int | None = None  # what it advertises (0: unlimited); None: pynetdicom's
    pdu_sizes: list[int] = field(default_factory=list)  # of every P-DATA-TF received
    server: Any = None

    def start(self) -> StoreSCPy:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title=self.ae_title)
        if self.max_pdu is not None:
            ae.maximum_pdu_size = self.max_pdu
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian])
        pdus = {"n": 0}

        def on_store(event: Any) -> int:
            uid = str(event.request.AffectedSOPInstanceUID)
            status = self.status_for(uid)
            if status == 0:
                self.received.append(uid)
                ds = event.dataset
                ds.file_meta = event.file_meta
                self.datasets[uid] = ds
            return status

        def on_pdu(event: Any) -> None:
            pdus["n"] += 1
            if type(event.pdu).__name__ == "P_DATA_TF":
                self.pdu_sizes.append(len(event.pdu))
            if self.abort_after_pdus is not None and pdus["n"] >= self.abort_after_pdus:
                event.assoc.abort()

        handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_PDU_RECV, on_pdu)]
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=handlers, ssl_context=self.tls
        )
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def server_tls(
    cert: Issued,
    ca: Path,
    *,
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if minimum < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 hides TLS 1.0/1.1 otherwise
    ctx.minimum_version, ctx.maximum_version = minimum, maximum
    ctx.load_cert_chain(cert.cert, cert.key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@contextlib.contextmanager
def raw_peer(
    respond: Callable[[socket.socket], None], tls: ssl.SSLContext | None = None
) -> Iterator[int]:
    """Accepts connections on a loopback port and hands each to `respond`."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                if tls is not None:
                    conn = tls.wrap_socket(conn, server_side=True)
                respond(conn)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


def destination(pki: PKI, port: int, tls: bool = True) -> DestinationConfig:
    return DestinationConfig(
        name="pacs",
        ae_title="PACS",
        host="localhost",
        port=port,
        tls=TLSConfig(ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key) if tls else None,
    )


def mutual_tls(pki: PKI) -> ssl.SSLContext:
    return server_context(TLSConfig(ca=pki.ca.cert, cert=pki.server.cert, key=pki.server.key))
