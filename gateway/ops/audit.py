"""Audit trail: DICOM audit messages (PS3.15 A.5, IHE ATNA) as RFC 5424
syslog, to the local syslog socket (journald reads it) and optionally to a
remote collector over TLS (RFC 5425).

A privacy officer must be able to answer "who sent which study where, who
failed the PIN, when was the box reconfigured" months later, even for a box
that was offline when it happened: remote messages go through a durable
SQLite table first and leave it only once written to the collector.
Patient names never appear; the standard's Patient ID participant does.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import GatewayConfig
from gateway.ops.audit_collector import AUDIT_DB, CollectorOutbox, CollectorSender
from gateway.ops.audit_messages import (
    APPLICATION_ACTIVITY,
    APPLICATION_START,
    APPLICATION_STOP,
    INSTANCES_TRANSFERRED,
    LOGIN,
    MINOR_FAILURE,
    MODALITY_WORKLIST_FIND,
    NODE_AUTHENTICATION,
    PATIENT_NUMBER,
    QUERY,
    ROLE_APPLICATION,
    ROLE_APPLICATION_LAUNCHER,
    ROLE_DESTINATION,
    ROLE_SOURCE,
    SECURITY_ALERT,
    SERIOUS_FAILURE,
    SOFTWARE_CONFIGURATION,
    SOP_CLASS_UID,
    STUDY_INSTANCE_UID,
    SUCCESS,
    USER_AUTHENTICATION,
    USER_SECURITY_ATTRIBUTES_CHANGED,
    AuditEvent,
    Code,
    Participant,
    ParticipantObject,
    syslog_frame,
)

if TYPE_CHECKING:
    from gateway.queue.report import SendReport
    from gateway.send.forwarder import Forwarder

log = logging.getLogger(__name__)

SYSLOG_SOCKET = "/dev/log"
JOURNAL_SOCKET = "/run/systemd/journal/dev-log"
SYSLOG_ENV = "DICOM_GATEWAY_AUDIT_SOCKET"


class AuditTrail:
    """Builds and ships audit events; one per process."""

    def __init__(self, config: GatewayConfig, queue_root: Path | None = None) -> None:
        self.source_id = config.station.ae_title
        self.site = config.station.institution_name
        self.host = socket.gethostname()
        self.socket_path = os.environ.get(SYSLOG_ENV, SYSLOG_SOCKET)
        self._local_failed = False
        self.sender: CollectorSender | None = None
        self.outbox: CollectorOutbox | None = None
        if config.audit.collector is not None:
            self.outbox = CollectorOutbox(Path(queue_root or config.queue.path))
            root = Path(queue_root or config.queue.path)
            self.sender = CollectorSender(
                self.outbox, config.audit.collector, root / f"{AUDIT_DB}.sender"
            )
            self.sender.start()

    def close(self) -> None:
        if self.sender:
            self.sender.stop()
        if self.outbox:
            self.outbox.close()

    def record(self, event: AuditEvent) -> bytes:
        xml = event.to_xml(self.source_id, self.site)
        severity = 5 if event.outcome == SUCCESS else 4
        message = syslog_frame(xml, self.host, severity, event.when)
        if self.outbox is not None:
            self.outbox.add(message)
            assert self.sender is not None
            self.sender.wake.set()
        self._to_local(message)
        return message

    def _to_local(self, message: bytes) -> None:
        """journald listens on /dev/log; without it (a container) the event
        still reaches the remote collector and the log says it was missed."""
        path = self.socket_path
        if path == SYSLOG_SOCKET and not os.path.exists(path) and os.path.exists(JOURNAL_SOCKET):
            path = JOURNAL_SOCKET
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, path)
        except OSError as exc:
            if not self._local_failed:  # once: a missing syslog socket stays missing
                log.warning("audit messages not written to %s: %s", path, exc.strerror)
            self._local_failed = True
            return
        self._local_failed = False

    # -- the events ----------------------------------------------------------

    def _me(self, requestor: bool, role: Code | None = None) -> Participant:
        return Participant(
            self.source_id, requestor, role, str(os.getpid()), network_access_point=self.host
        )

    def application(self, started: bool) -> bytes:
        user = os.environ.get("USER") or str(os.getuid())
        return self.record(
            AuditEvent(
                APPLICATION_ACTIVITY,
                "E",
                SUCCESS,
                [
                    self._me(False, ROLE_APPLICATION),
                    Participant(user, True, ROLE_APPLICATION_LAUNCHER),
                ],
                event_type=APPLICATION_START if started else APPLICATION_STOP,
            )
        )

    def instances_transferred(
        self,
        peer_ae: str,
        peer_host: str,
        study_uid: str,
        sop_classes: dict[str, int],
        patient_id: str | None,
        outcome: int = SUCCESS,
        description: str | None = None,
    ) -> bytes:
        objects = [ParticipantObject(study_uid, 2, 3, STUDY_INSTANCE_UID, sop_classes)]
        if patient_id:
            objects.append(ParticipantObject(patient_id, 1, 1, PATIENT_NUMBER))
        return self.record(
            AuditEvent(
                INSTANCES_TRANSFERRED,
                "R",
                outcome,
                [
                    self._me(True, ROLE_SOURCE),
                    Participant(peer_ae, False, ROLE_DESTINATION, network_access_point=peer_host),
                ],
                objects,
                outcome_description=description,
            )
        )

    def worklist_query(
        self, peer_ae: str, peer_host: str, query: bytes, outcome: int = SUCCESS
    ) -> bytes:
        """`query` is the encoded identifier; callers pass it without patient names."""
        return self.record(
            AuditEvent(
                QUERY,
                "E",
                outcome,
                [
                    self._me(True, ROLE_SOURCE),
                    Participant(peer_ae, False, ROLE_DESTINATION, network_access_point=peer_host),
                ],
                [ParticipantObject(MODALITY_WORKLIST_FIND, 2, 3, SOP_CLASS_UID, query=query)],
            )
        )

    def settings_changed(self, who: str, what: str, source: str | None = None) -> bytes:
        return self.record(
            AuditEvent(
                SECURITY_ALERT,
                "E",
                SUCCESS,
                [Participant(who, True, network_access_point=source), self._me(False)],
                [ParticipantObject(self.source_id, 2, 13, SOFTWARE_CONFIGURATION)],
                event_type=SOFTWARE_CONFIGURATION,
                outcome_description=what,
            )
        )

    def pin_failure(self, source: str | None = None) -> bytes:
        return self.record(
            AuditEvent(
                USER_AUTHENTICATION,
                "E",
                MINOR_FAILURE,
                [Participant("settings-pin", True, network_access_point=source), self._me(False)],
                event_type=LOGIN,
                outcome_description="wrong settings PIN",
            )
        )

    def pin_lockout(self, seconds: int, failures: int, source: str | None = None) -> bytes:
        """A client's wrong PINs reached the back-off: a Security Alert (User
        Security Attributes Changed) naming the client's address and the wait."""
        return self.record(
            AuditEvent(
                SECURITY_ALERT,
                "E",
                MINOR_FAILURE,
                [Participant("settings-pin", True, network_access_point=source), self._me(False)],
                event_type=USER_SECURITY_ATTRIBUTES_CHANGED,
                outcome_description=(
                    f"settings PIN locked for {seconds} s after {failures} wrong tries"
                ),
            )
        )

    def security_alert(self, peer: str, peer_host: str, reason: str) -> bytes:
        return self.record(
            AuditEvent(
                SECURITY_ALERT,
                "E",
                MINOR_FAILURE,
                [self._me(True), Participant(peer, False, network_access_point=peer_host)],
                event_type=NODE_AUTHENTICATION,
                outcome_description=reason,
            )
        )

    def alarm(self, reason: str) -> bytes:
        """Something an operator must look at happened to the box itself (a
        unit gave up, the queue database was rebuilt): a Security Alert of
        type Software Configuration, serious failure, with the reason."""
        return self.record(
            AuditEvent(
                SECURITY_ALERT,
                "E",
                SERIOUS_FAILURE,
                [self._me(True, ROLE_APPLICATION)],
                event_type=SOFTWARE_CONFIGURATION,
                outcome_description=reason,
            )
        )


# -- one trail per process, reachable from any module -------------------------

_current: AuditTrail | None = None


def install(trail: AuditTrail | None) -> None:
    global _current
    _current = trail


def current() -> AuditTrail | None:
    """The service's trail, or None outside the service (CLI one-offs)."""
    return _current


def emit(call: Callable[[AuditTrail], Any]) -> None:
    """`audit.emit(lambda t: t.pin_failure(ip))`: a no-op without a trail, and
    an audit failure never breaks the action being audited."""
    trail = _current
    if trail is None:
        return
    try:
        call(trail)
    except Exception:
        log.exception("audit event could not be recorded")


TLS_WORDS = ("certificate", "TLS", "handshake")


def watch_forwarder(forwarder: Forwarder) -> None:
    """Audit what the forwarder does, through its listener hooks: objects it
    records as sent become one Instances Transferred event per study, and a
    TLS failure reaching a peer becomes a Node Authentication security alert."""
    outbox = forwarder.outbox

    def _sent(dest: Any, object_ids: list[int]) -> None:
        studies: dict[str, tuple[dict[str, int], str | None]] = {}
        for object_id in object_ids:
            obj = outbox.get(object_id)
            if obj is None:
                continue
            if obj.study_instance_uid not in studies:
                studies[obj.study_instance_uid] = ({}, _patient_id(obj.path))
            classes = studies[obj.study_instance_uid][0]
            classes[obj.sop_class_uid] = classes.get(obj.sop_class_uid, 0) + 1
        for study, (classes, patient) in studies.items():
            who, host = dest.peer  # AE title, or the URL of a DICOMweb service
            _emit_transfer(who, host, study, classes, patient)

    def _batch(dest: Any, report: SendReport) -> None:
        error = report.error or ""
        if report.retried and any(w in error for w in TLS_WORDS):
            who, host = dest.peer
            emit(lambda t: t.security_alert(who, host, error))

    forwarder.on_sent.append(_sent)
    forwarder.on_batch.append(_batch)


def _emit_transfer(
    ae: str, host: str, study: str, classes: dict[str, int], patient: str | None
) -> None:
    emit(lambda t: t.instances_transferred(ae, host, study, classes, patient))


def _patient_id(path: Path) -> str | None:
    """Read by walking the file's first elements (the forwarder's process
    loads no pydicom, and no numpy with it); pydicom only for a file that
    walk cannot read (an undefined-length sequence before Patient ID)."""
    from gateway.dicom.part10 import Part10Error, read_header, read_top_level_value

    try:
        value = read_top_level_value(read_header(path), 0x00100020)
        text = value.decode("ascii", "replace").strip("\0 ") if value else ""
        return text or None
    except Part10Error:
        pass
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        return str(ds.get("PatientID", "")) or None
    except Exception:
        return None
