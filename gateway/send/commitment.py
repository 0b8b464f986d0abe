"""Storage Commitment Push Model SCU (PS3.4 Annex J): the PACS takes
responsibility for what we sent, and only then may the queue forget it.

Per finished study and destination: one N-ACTION with a fresh Transaction UID
listing the sent objects. The PACS answers with an N-EVENT-REPORT, either on
the same association (we wait a little for it) or later on a new association
to our own SCP port (`[commitment] listen`, TLS with mutual authentication).
Committed objects become purgeable; failed ones go back to the queue; a
request never answered is asked again after `ask_again_after_s`.

A destination whose protocol has no Storage Commitment (DICOMweb) has a
Confirmer instead (gateway.send.protocols): the archive is asked whether
each instance is there, under a transaction of the same ledger, answered at
once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from gateway.config import DestinationConfig, GatewayConfig
from gateway.dicom.part10 import encode_dataset
from gateway.dicom.uids import new_uid
from gateway.net.association import PeerError, connect, describe_link_failure, peer_label
from gateway.net.listener import parse_listen, start_server
from gateway.net.tls import TLSSetupError, server_context
from gateway.net.ul import (
    OUR_MAX_PDU,
    Message,
    Proposed,
    Role,
    Timeouts,
    ULConnection,
    ULError,
    command_text,
    command_us,
    n_action_rq,
    n_event_report_rsp,
)
from gateway.queue.outbox import Outbox
from gateway.send.destination import Confirmer, LinkDown, Ref
from gateway.send.protocols import confirmer_for

log = logging.getLogger(__name__)

PUSH_MODEL = "1.2.840.10008.1.20.1"
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
_CONTEXT = Proposed(1, PUSH_MODEL, ("1.2.840.10008.1.2.1", IMPLICIT_VR_LE))
# We ask (SCU) and the PACS answers with an N-EVENT-REPORT on the same
# association as SCU of the event: both roles are proposed (PS3.4 J.3.3).
_ROLES = [Role(PUSH_MODEL, scu=True, scp=True)]
N_ACTION_RSP = 0x8130
N_EVENT_REPORT_RQ = 0x0100
_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class/instance conflict",
    0x0131: "duplicate transaction UID",
}


def _references(ds: Dataset, keyword: str) -> list[Any]:
    return list(getattr(ds, keyword, None) or [])


def parse_event_report(ds: Dataset) -> tuple[str, list[str], list[tuple[str, str]]]:
    """(Transaction UID, committed instance UIDs, [(failed UID, reason)])."""
    tx = str(getattr(ds, "TransactionUID", "") or "")
    ok = [str(item.ReferencedSOPInstanceUID) for item in _references(ds, "ReferencedSOPSequence")]
    failed = []
    for item in _references(ds, "FailedSOPSequence"):
        code = int(getattr(item, "FailureReason", 0x0110) or 0x0110)
        reason = _FAILURE_REASONS.get(code, f"failure reason 0x{code:04X}")
        failed.append((str(item.ReferencedSOPInstanceUID), reason))
    return tx, ok, failed


@dataclass
class CommitmentService:
    """Asks for commitment and applies the answers, whichever way they come."""

    outbox: Outbox
    config: GatewayConfig
    timeouts: Timeouts = field(default_factory=Timeouts)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: threading.Event = field(default_factory=threading.Event)
    server: Any = None

    # -- answers --

    def on_event_report(self, event: Any) -> int:
        """N-EVENT-REPORT handler of our listening port (a new association)."""
        try:
            sop_class = str(event.request.AffectedSOPClassUID)
            ds = event.event_information
        except Exception as exc:  # a malformed report must not kill the thread
            log.warning("malformed Storage Commitment report: %s", exc)
            return 0x0110
        return self.apply_report(sop_class, ds)

    def apply_report(self, sop_class: str, ds: Dataset) -> int:
        """A report, whichever way it came; returns the status to answer."""
        if sop_class != PUSH_MODEL:
            return 0x0112
        try:
            tx, ok, failed = parse_event_report(ds)
        except Exception as exc:  # a malformed report must not kill the thread
            log.warning("malformed Storage Commitment report: %s", exc)
            return 0x0110
        if not tx:
            log.warning("Storage Commitment report without a Transaction UID ignored")
            return 0x0110
        with self.lock:
            committed, requeued = self.outbox.apply_commitment(tx, ok, failed)
        log.info(
            "Storage Commitment %s: %d committed, %d failed and queued again",
            tx,
            committed,
            requeued,
        )
        self.answered.set()
        return 0x0000

    def start_listener(self, heartbeat: Callable[[], None] | None = None) -> None:
        """Our SCP port for reports on new associations (mutual TLS when set)."""
        c = self.config.commitment
        if c.listen is None:
            return
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.config.station.ae_title)
        ae.add_supported_context(PUSH_MODEL, scu_role=True, scp_role=True)
        ae.network_timeout = self.timeouts.network
        ae.acse_timeout = self.timeouts.acse
        ae.dimse_timeout = self.timeouts.dimse
        ae.maximum_pdu_size = OUR_MAX_PDU
        ctx = server_context(c.tls) if c.tls else None
        self.server = start_server(
            ae,
            parse_listen(c.listen),
            [(evt.EVT_N_EVENT_REPORT, self.on_event_report)],
            ctx,
            c.handshake_timeout_s,
            heartbeat,
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # -- requests --

    def request_due(self, progress: Callable[[], None] | None = None) -> int:
        """One N-ACTION (or archive check) per finished study and destination;
        returns how many transactions were requested. `progress` is called
        after each (the service's heartbeat: a long list of studies is not a
        stuck loop)."""
        requested = 0
        for dest in self.config.destinations:
            if not dest.storage_commitment:
                continue
            with self.lock:
                due = self.outbox.commitment_due(
                    dest.name, self.config.commitment.ask_again_after_s
                )
            if not due:
                continue
            confirmer = confirmer_for(dest)
            if confirmer is not None:
                requested += self.confirm(dest.name, confirmer, due)
                if progress is not None:
                    progress()
                continue
            if not isinstance(dest, DestinationConfig):
                continue
            for refs in due.values():
                try:
                    self.request(dest, refs)
                    requested += 1
                    if progress is not None:
                        progress()
                except (PeerError, TLSSetupError, OSError) as exc:
                    log.warning("Storage Commitment to %s not requested: %s", dest.name, exc)
                    break
        return requested

    def confirm(self, name: str, confirmer: Confirmer, due: dict[str, list[Ref]]) -> int:
        """The archive asked, study by study, whether each instance is there;
        its answer applied like an N-EVENT-REPORT. Returns the studies asked."""
        asked = 0
        try:
            for study, refs in due.items():
                tx = new_uid()
                with self.lock:
                    self.outbox.mark_commit_requested(name, tx, [r[0] for r in refs])
                try:
                    answer = confirmer.confirm(study, refs)
                except LinkDown as exc:
                    with self.lock:
                        self.outbox.forget_commit_request(tx)
                    log.warning("archive check for %s not done: %s", name, exc)
                    break
                with self.lock:
                    committed, requeued = self.outbox.apply_commitment(
                        tx, answer.committed, answer.failed
                    )
                asked += 1
                log.info(
                    "%s confirmed %d object(s) of study %s; %d not there, queued again",
                    name,
                    committed,
                    study,
                    requeued,
                )
        finally:
            confirmer.close()
        return asked

    def request(self, dest: DestinationConfig, refs: Sequence[tuple[int, str, str]]) -> str:
        """One N-ACTION on the lean upper layer; the report is taken on the
        same association when the PACS sends it within
        `commitment.wait_on_association_s`, else later on our port."""
        tx = new_uid()
        ds = Dataset()
        ds.TransactionUID = tx
        items = []
        for _, sop_class, sop_instance in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        ds.ReferencedSOPSequence = items
        self.answered.clear()
        conn = connect(self.config.station.ae_title, dest, [_CONTEXT], self.timeouts, roles=_ROLES)
        try:
            accepted = conn.accepted.get(_CONTEXT.id)
            if accepted is None:
                raise PeerError(f"{peer_label(dest)}: does not accept Storage Commitment")
            # Recorded before asking: an answer may arrive before N-ACTION-RSP.
            with self.lock:
                self.outbox.mark_commit_requested(dest.name, tx, [r[0] for r in refs])
            try:
                code = self._ask(conn, accepted.id, accepted.transfer_syntax, ds)
            except (ULError, OSError) as exc:
                conn.abort()
                with self.lock:
                    self.outbox.forget_commit_request(tx)
                raise PeerError(f"{peer_label(dest)}: {describe_link_failure(exc)}") from None
            if code != 0x0000:
                with self.lock:
                    self.outbox.forget_commit_request(tx)
                raise PeerError(
                    f"{peer_label(dest)}: N-ACTION answered "
                    + ("nothing" if code is None else f"0x{code:04X}")
                )
            self._wait_for_report(conn, accepted.transfer_syntax)
        finally:
            conn.release()
        log.info("Storage Commitment requested from %s for %d object(s)", dest.name, len(refs))
        return tx

    def _ask(self, conn: ULConnection, context_id: int, ts: str, ds: Dataset) -> int | None:
        """N-ACTION-RQ, then its response (a report arriving first is taken)."""
        message_id = conn.next_message_id()
        command = n_action_rq(message_id, PUSH_MODEL, PUSH_MODEL_INSTANCE, 1)
        conn.send_message(context_id, command, encode_dataset(ds, ts))
        while True:
            message = conn.read_message(self.timeouts.dimse)
            field = command_us(message.command, 0x0100)
            if field == N_EVENT_REPORT_RQ:
                self._answer_report(conn, message, ts)
                continue
            if field != N_ACTION_RSP or command_us(message.command, 0x0120) != message_id:
                raise ULError("peer answered with a message that is not our N-ACTION-RSP")
            return command_us(message.command, 0x0900)

    def _wait_for_report(self, conn: ULConnection, ts: str) -> None:
        wait = self.config.commitment.wait_on_association_s
        deadline = time.monotonic() + wait
        while not self.answered.is_set() and conn.open:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                message = conn.read_message(left)
            except TimeoutError:
                return
            except (ULError, OSError) as exc:
                log.info("Storage Commitment association ended: %s", describe_link_failure(exc))
                return
            if command_us(message.command, 0x0100) == N_EVENT_REPORT_RQ:
                self._answer_report(conn, message, ts)

    def _answer_report(self, conn: ULConnection, message: Message, ts: str) -> None:
        try:
            ds = read_dataset(BytesIO(message.dataset or b""), ts == IMPLICIT_VR_LE, True)
            status = self.apply_report(command_text(message.command, 0x0002), ds)
        except Exception as exc:  # the peer's bytes must not take the loop down
            log.warning("malformed Storage Commitment report: %s", exc)
            status = 0x0110
        conn.send_message(message.context_id, n_event_report_rsp(message.command, status))
