"""Inbound C-STORE SCP (off by default) for modalities on the local network:
plain TCP for legacy devices that speak DICOM but not TLS, or TLS with client
certificates (`[inbound.tls]`) for those that can. Only AE titles and
addresses on the allow-list may send; each object is made durable in the
outbox (fsync of file and row) before we answer success, and is then
forwarded over TLS like our own captures."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import GatewayConfig, InboundConfig
from gateway.dicom.uids import InvalidUID, check_uid
from gateway.net.listener import Request, check_peer, limits_from, parse_listen, start_server
from gateway.net.tls import server_context
from gateway.net.ul import OUR_MAX_PDU
from gateway.queue.db import QueueError
from gateway.queue.model import AlreadyQueued, QueueFull
from gateway.queue.outbox import Outbox

log = logging.getLogger(__name__)

SUCCESS = 0x0000
NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900  # PS3.4 B.2.3: data set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
VERIFICATION = "1.2.840.10008.1.1"

Refusal = Callable[[str, str, str], None]  # (AE title, address, reason): the audit trail


def allowed(config: InboundConfig, ae_title: str, address: str) -> bool:
    """On the allow-list by AE title and address (the certificate is the gate's)."""
    request = Request(address, 0, ae_title.strip(), "", None)
    peers = [p.model_copy(update={"certificate_cn": None}) for p in config.allowed]
    return check_peer(peers, request) is None


def transfer_syntaxes() -> list[str]:
    """Every transfer syntax pynetdicom knows but Deflate: a deflated data
    set is inflated whole in memory, so a few kilobytes become gigabytes."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES

    return [str(ts) for ts in ALL_TRANSFER_SYNTAXES if str(ts) not in DEFLATED]


@dataclass
class InboundService:
    outbox: Outbox
    config: GatewayConfig
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None
    heartbeat: Callable[[], None] | None = None  # the service's health (accept loop)
    refused: Refusal | None = None  # associations, objects and UIDs refused

    @property
    def ae_title(self) -> str:
        return self.config.inbound.ae_title or self.config.station.ae_title

    def admit(self, request: Request) -> str | None:
        """At the A-ASSOCIATE-RQ, before any data set is read."""
        if request.called_ae != self.ae_title:
            return f"called AE title {request.called_ae!r} is not ours"
        return check_peer(self.config.inbound.allowed, request)

    def _refuse(self, ae_title: str, address: str, reason: str, status: int) -> int:
        log.warning("inbound C-STORE from %s at %s refused: %s", ae_title, address, reason)
        if self.refused is not None:
            try:
                self.refused(ae_title, address, reason)
            except Exception:
                log.exception("refused C-STORE could not be reported")
        return status

    def on_echo(self, event: Any) -> int:
        """Verification: a modality's "test connection" (admitted peers only)."""
        return SUCCESS

    def on_store(self, event: Any) -> int:
        requestor = event.assoc.requestor
        ae_title, address = str(requestor.ae_title).strip(), str(requestor.address)
        if not allowed(self.config.inbound, ae_title, address):  # the gate checked; twice is cheap
            return self._refuse(ae_title, address, "not on the allow-list", NOT_AUTHORISED)
        try:
            sop_class = str(event.request.AffectedSOPClassUID or "")
            sop_instance = str(event.request.AffectedSOPInstanceUID or "")
            ts = str(event.context.transfer_syntax)
            ds = event.dataset
            data_sop_instance = str(ds.get("SOPInstanceUID", "") or "")
            data_sop_class = str(ds.get("SOPClassUID", "") or "")
            study = str(ds.get("StudyInstanceUID", "") or "")
        except Exception as exc:  # whatever the peer sent, the SCP lives on
            return self._refuse(ae_title, address, f"not understood: {exc}", CANNOT_UNDERSTAND)
        try:
            for value, what in (
                (sop_instance, "Affected SOP Instance UID"),
                (sop_class, "Affected SOP Class UID"),
                (study, "Study Instance UID"),
                (ts, "Transfer Syntax UID"),
            ):
                note = check_uid(value, what)
                if note is not None:
                    log.info("inbound object from %s: %s; kept as sent", ae_title, note)
        except InvalidUID as exc:
            return self._refuse(ae_title, address, str(exc), CANNOT_UNDERSTAND)
        if data_sop_instance != sop_instance:
            return self._refuse(
                ae_title,
                address,
                f"the data set's SOP Instance UID {data_sop_instance[:64]!r} is not the"
                f" command's {sop_instance}",
                DATASET_MISMATCH,
            )
        if data_sop_class and data_sop_class != sop_class:
            return self._refuse(
                ae_title,
                address,
                f"the data set's SOP Class UID {data_sop_class[:64]!r} is not the"
                f" command's {sop_class}",
                DATASET_MISMATCH,
            )
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:
            return self._refuse(ae_title, address, f"not understood: {exc}", CANNOT_UNDERSTAND)
        try:
            with self.lock:
                self.outbox.add(
                    data,
                    sop_instance_uid=sop_instance,
                    sop_class_uid=sop_class,
                    transfer_syntax_uid=ts,
                    study_instance_uid=study,
                )
        except AlreadyQueued:
            return SUCCESS  # we hold it durably already: a resend is harmless
        except QueueFull as exc:
            log.error("inbound object from %s refused: %s", ae_title, exc)
            return OUT_OF_RESOURCES
        except QueueError as exc:
            log.error("inbound object from %s not stored: %s", ae_title, exc)
            return OUT_OF_RESOURCES
        log.info("inbound object %s from %s queued", sop_instance, ae_title)
        return SUCCESS

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        c = self.config.inbound
        ae = AE(ae_title=self.ae_title)
        syntaxes = transfer_syntaxes()
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), syntaxes)
        ae.add_supported_context(VERIFICATION, syntaxes)
        ae.network_timeout = c.limits.idle_timeout_s
        ae.acse_timeout = self.config.forwarding.acse_timeout_s
        ae.dimse_timeout = self.config.forwarding.dimse_timeout_s
        ae.maximum_pdu_size = OUR_MAX_PDU  # what a modality may send us in one PDU
        self.server = start_server(
            ae,
            parse_listen(c.listen),
            [(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_ECHO, self.on_echo)],
            admit=self.admit,
            limits=limits_from(c.limits, c.handshake_timeout_s),
            ssl_context=server_context(c.tls) if c.tls else None,
            refused=self.refused,
            heartbeat=self.heartbeat,
        )
        log.info(
            "inbound C-STORE SCP listening on %s (%s)",
            c.listen,
            "TLS, client certificates required" if c.tls else "plain TCP",
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
