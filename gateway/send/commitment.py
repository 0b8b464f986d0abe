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
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from gateway.config import DestinationConfig, GatewayConfig, PeerAllowed
from gateway.dicom.part10 import encode_dataset
from gateway.dicom.uids import InvalidUID, check_uid, new_uid
from gateway.net.association import PeerError, connect, describe_link_failure, peer_label
from gateway.net.listener import Request, check_peer, limits_from, parse_listen, start_server
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

    # Hears of every refused or forged report and refused association:
    # (AE title, address, reason), the audit trail (wired by the app).
    on_refused: list[Callable[[str, str, str], None]] = field(default_factory=list)
    _peers: list[PeerAllowed] = field(default_factory=list)
    _peers_at: float = 0.0

    # -- answers --

    def on_event_report(self, event: Any) -> tuple[int, None]:
        """N-EVENT-REPORT handler of our listening port (a new association);
        pynetdicom wants (status, event reply)."""
        requestor = event.assoc.requestor
        peer = (str(requestor.ae_title).strip(), str(requestor.address))
        try:
            sop_class = str(event.request.AffectedSOPClassUID)
            ds = event.event_information
        except Exception as exc:  # a malformed report must not kill the thread
            return self._refuse(peer, f"malformed Storage Commitment report: {exc}", 0x0110), None
        return self.apply_report(sop_class, ds, peer), None

    def _refuse(self, peer: tuple[str, str], reason: str, status: int) -> int:
        log.warning("Storage Commitment report from %s at %s refused: %s", *peer, reason)
        for hook in self.on_refused:
            try:
                hook(peer[0], peer[1], reason)
            except Exception:
                log.exception("refused Storage Commitment report could not be reported")
        return status

    def apply_report(
        self, sop_class: str, ds: Dataset, peer: tuple[str, str], asked: str | None = None
    ) -> int:
        """A report, whichever way it came; returns the status to answer.

        `peer` is (calling AE title, address) of the association it came on;
        `asked` the destination whose association it is when it came on the
        one we opened. The report must name a Transaction UID we issued to
        that same destination (its AE title), carry at most
        `commitment.max_references` references, and UIDs only: otherwise
        nothing is written, the refusal is audited. The Transaction UID is a
        capability: it is never logged."""
        if sop_class != PUSH_MODEL:
            return self._refuse(
                peer, f"SOP Class {sop_class[:64]!r} is not Storage Commitment", 0x0112
            )
        try:
            tx, ok, failed = parse_event_report(ds)
        except Exception as exc:  # a malformed report must not kill the thread
            return self._refuse(peer, f"malformed Storage Commitment report: {exc}", 0x0110)
        limit = self.config.commitment.max_references
        if len(ok) + len(failed) > limit:
            return self._refuse(
                peer, f"{len(ok) + len(failed)} references (at most {limit})", 0x0213
            )
        try:
            check_uid(tx, "Transaction UID")
            for uid in [*ok, *(uid for uid, _ in failed)]:
                check_uid(uid, "Referenced SOP Instance UID")
        except InvalidUID as exc:
            return self._refuse(peer, str(exc), 0x0110)
        with self.lock:
            dest_name = self.outbox.commit_destination(tx)
        if dest_name is None:
            return self._refuse(peer, "unknown Transaction UID (not one we issued)", 0x0110)
        dest = next((d for d in self.config.destinations if d.name == dest_name), None)
        if asked is not None and asked != dest_name:
            return self._refuse(peer, f"transaction of {dest_name} reported on {asked}'s", 0x0110)
        if not isinstance(dest, DestinationConfig) or dest.ae_title != peer[0]:
            return self._refuse(
                peer, f"transaction of {dest_name} reported by another AE title", 0x0110
            )
        with self.lock:
            committed, requeued = self.outbox.apply_commitment(tx, ok, failed, dest_name)
        log.info(
            "Storage Commitment from %s: %d committed, %d failed and queued again",
            dest_name,
            committed,
            requeued,
        )
        self.answered.set()
        return 0x0000

    def allowed_peers(self) -> list[PeerAllowed]:
        """`commitment.allowed`, else each Storage Commitment destination's AE
        title from the addresses of its host (resolved again every 5 minutes,
        never on each connection: the gate must not wait on DNS)."""
        c = self.config.commitment
        if c.allowed:
            return list(c.allowed)
        now = time.monotonic()
        if self._peers and now - self._peers_at < 300:
            return self._peers
        peers: list[PeerAllowed] = []
        for dest in self.config.destinations:
            if not dest.storage_commitment or not isinstance(dest, DestinationConfig):
                continue
            try:
                infos = socket.getaddrinfo(dest.host, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("Storage Commitment peer %s not resolved: %s", dest.host, exc)
                continue
            for address in sorted({str(info[4][0]) for info in infos}):
                peers.append(PeerAllowed(ae_title=dest.ae_title, address=address))
        self._peers, self._peers_at = peers, now
        return peers

    def admit(self, request: Request) -> str | None:
        if request.called_ae != self.config.station.ae_title:
            return f"called AE title {request.called_ae!r} is not ours"
        return check_peer(self.allowed_peers(), request)

    def _refused_association(self, ae_title: str, address: str, reason: str) -> None:
        self._refuse((ae_title, address), reason, 0)

    def start_listener(self, heartbeat: Callable[[], None] | None = None) -> None:
        """Our SCP port for reports on new associations: mutual TLS, and only
        the allowed PACS get past the A-ASSOCIATE-RQ."""
        c = self.config.commitment
        if c.listen is None:
            return
        if c.tls is None:  # the configuration refuses this; belt and braces
            raise TLSSetupError("the Storage Commitment listener needs [commitment.tls]")
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.config.station.ae_title)
        ae.add_supported_context(PUSH_MODEL, scu_role=True, scp_role=True)
        ae.network_timeout = c.limits.idle_timeout_s
        ae.acse_timeout = self.timeouts.acse
        ae.dimse_timeout = self.timeouts.dimse
        ae.maximum_pdu_size = OUR_MAX_PDU
        self.allowed_peers()
        self.server = start_server(
            ae,
            parse_listen(c.listen),
            [(evt.EVT_N_EVENT_REPORT, self.on_event_report)],
            admit=self.admit,
            limits=limits_from(c.limits, c.handshake_timeout_s),
            ssl_context=server_context(c.tls),
            refused=self._refused_association,
            heartbeat=heartbeat,
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
                code = self._ask(conn, accepted.id, accepted.transfer_syntax, ds, dest)
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
            self._wait_for_report(conn, accepted.transfer_syntax, dest)
        finally:
            conn.release()
        log.info("Storage Commitment requested from %s for %d object(s)", dest.name, len(refs))
        return tx

    def _ask(
        self, conn: ULConnection, context_id: int, ts: str, ds: Dataset, dest: DestinationConfig
    ) -> int | None:
        """N-ACTION-RQ, then its response (a report arriving first is taken)."""
        message_id = conn.next_message_id()
        command = n_action_rq(message_id, PUSH_MODEL, PUSH_MODEL_INSTANCE, 1)
        conn.send_message(context_id, command, encode_dataset(ds, ts))
        while True:
            message = conn.read_message(self.timeouts.dimse)
            field = command_us(message.command, 0x0100)
            if field == N_EVENT_REPORT_RQ:
                self._answer_report(conn, message, ts, dest)
                continue
            if field != N_ACTION_RSP or command_us(message.command, 0x0120) != message_id:
                raise ULError("peer answered with a message that is not our N-ACTION-RSP")
            return command_us(message.command, 0x0900)

    def _wait_for_report(self, conn: ULConnection, ts: str, dest: DestinationConfig) -> None:
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
                self._answer_report(conn, message, ts, dest)

    def _answer_report(
        self, conn: ULConnection, message: Message, ts: str, dest: DestinationConfig
    ) -> None:
        try:
            ds = read_dataset(BytesIO(message.dataset or b""), ts == IMPLICIT_VR_LE, True)
            status = self.apply_report(
                command_text(message.command, 0x0002), ds, (dest.ae_title, dest.host), dest.name
            )
        except Exception as exc:  # the peer's bytes must not take the loop down
            log.warning("malformed Storage Commitment report: %s", exc)
            status = 0x0110
        conn.send_message(message.context_id, n_event_report_rsp(message.command, status))
