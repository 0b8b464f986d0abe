"""Inbound C-STORE SCP (off by default) for modalities on the local network:
plain TCP for legacy devices that speak DICOM but not TLS, or TLS with client
certificates (`[inbound.tls]`) for those that can. Only AE titles and
addresses on the allow-list may send; each object is made durable in the
outbox (fsync of file and row) before we answer success, and is then
forwarded over TLS like our own captures."""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import GatewayConfig, InboundConfig
from gateway.net.listener import parse_listen, start_server
from gateway.net.tls import server_context
from gateway.net.ul import OUR_MAX_PDU
from gateway.queue.db import QueueError
from gateway.queue.model import AlreadyQueued, QueueFull
from gateway.queue.outbox import Outbox

log = logging.getLogger(__name__)

SUCCESS = 0x0000
NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


def allowed(config: InboundConfig, ae_title: str, address: str) -> bool:
    """An entry's address is an IP address or a network (CIDR)."""
    for peer in config.allowed:
        if peer.ae_title != ae_title.strip():
            continue
        try:
            if ipaddress.ip_address(address) in ipaddress.ip_network(peer.address, strict=False):
                return True
        except ValueError:
            if peer.address == address:
                return True
    return False


@dataclass
class InboundService:
    outbox: Outbox
    config: GatewayConfig
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None
    heartbeat: Callable[[], None] | None = None  # the service's health (accept loop)

    def on_store(self, event: Any) -> int:
        requestor = event.assoc.requestor
        ae_title, address = str(requestor.ae_title), str(requestor.address)
        if not allowed(self.config.inbound, ae_title, address):
            log.warning(
                "inbound C-STORE from %s at %s refused: not on the allow-list", ae_title, address
            )
            return NOT_AUTHORISED
        try:
            data = event.encoded_dataset(include_meta=True)
            ds = event.dataset
            sop_class = str(event.request.AffectedSOPClassUID)
            sop_instance = str(event.request.AffectedSOPInstanceUID)
            ts = str(event.context.transfer_syntax)
            study = str(ds.get("StudyInstanceUID", "") or "")
        except Exception as exc:  # whatever the peer sent, the SCP lives on
            log.warning("inbound C-STORE from %s not understood: %s", ae_title, exc)
            return CANNOT_UNDERSTAND
        if not study:
            log.warning(
                "inbound object %s from %s has no Study Instance UID", sop_instance, ae_title
            )
            return CANNOT_UNDERSTAND
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
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        c = self.config.inbound
        ae = AE(ae_title=c.ae_title or self.config.station.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.require_calling_aet = [p.ae_title for p in c.allowed] or ["\\"]  # none: refuse all
        ae.network_timeout = self.config.forwarding.network_timeout_s
        ae.acse_timeout = self.config.forwarding.acse_timeout_s
        ae.dimse_timeout = self.config.forwarding.dimse_timeout_s
        ae.maximum_pdu_size = OUR_MAX_PDU  # what a modality may send us in one PDU
        self.server = start_server(
            ae,
            parse_listen(c.listen),
            [(evt.EVT_C_STORE, self.on_store)],
            ssl_context=server_context(c.tls) if c.tls else None,
            handshake_timeout=c.handshake_timeout_s,
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
