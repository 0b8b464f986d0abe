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

import base64
import contextlib
import fcntl
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

from gateway.config import AuditCollectorConfig, GatewayConfig

if TYPE_CHECKING:
    from gateway.forwarder import BatchReport, Forwarder
from gateway.queue.db import open_durable, transaction
from gateway.tls import client_context

log = logging.getLogger(__name__)

SYSLOG_SOCKET = "/dev/log"
JOURNAL_SOCKET = "/run/systemd/journal/dev-log"
SYSLOG_ENV = "DICOM_GATEWAY_AUDIT_SOCKET"
AUDIT_DB = "audit.sqlite"
APP_NAME = "dicom-gateway"
MSGID = "IHE+RFC-3881"  # what ATNA repositories expect (IHE ITI TF-2 3.20.6)
FACILITY_AUTHPRIV = 10

# Event outcome indicator (PS3.15 A.5.1)
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12

Code = tuple[str, str, str]  # (csd-code, codeSystemName, originalText)


def dcm(code: str, text: str) -> Code:
    return (code, "DCM", text)


APPLICATION_ACTIVITY = dcm("110100", "Application Activity")
APPLICATION_START = dcm("110120", "Application Start")
APPLICATION_STOP = dcm("110121", "Application Stop")
INSTANCES_TRANSFERRED = dcm("110104", "DICOM Instances Transferred")
QUERY = dcm("110112", "Query")
USER_AUTHENTICATION = dcm("110114", "User Authentication")
LOGIN = dcm("110122", "Login")
SECURITY_ALERT = dcm("110113", "Security Alert")
NODE_AUTHENTICATION = dcm("110126", "Node Authentication")
SOFTWARE_CONFIGURATION = dcm("110131", "Software Configuration")
ROLE_APPLICATION = dcm("110150", "Application")
ROLE_APPLICATION_LAUNCHER = dcm("110151", "Application Launcher")
ROLE_DESTINATION = dcm("110152", "Destination Role ID")
ROLE_SOURCE = dcm("110153", "Source Role ID")
STUDY_INSTANCE_UID = dcm("110180", "Study Instance UID")
SOP_CLASS_UID = dcm("110181", "SOP Class UID")
PATIENT_NUMBER = ("2", "RFC-3881", "Patient Number")
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"


@dataclass(frozen=True)
class Participant:
    user_id: str
    requestor: bool
    role: Code | None = None
    alternative_id: str | None = None
    network_access_point: str | None = None  # host name or IP

    def element(self) -> ET.Element:
        el = ET.Element("ActiveParticipant", UserID=self.user_id)
        if self.alternative_id:
            el.set("AlternativeUserID", self.alternative_id)
        el.set("UserIsRequestor", "true" if self.requestor else "false")
        if self.network_access_point:
            nap = self.network_access_point
            is_ip = nap.replace(".", "").isdigit() or ":" in nap
            el.set("NetworkAccessPointID", nap)
            el.set("NetworkAccessPointTypeCode", "2" if is_ip else "1")
        if self.role:
            _code(el, "RoleIDCode", self.role)
        return el


@dataclass(frozen=True)
class ParticipantObject:
    object_id: str
    type_code: int  # 1 person, 2 system object
    role: int  # 1 patient, 3 report, 24 query
    id_type: Code
    sop_classes: dict[str, int] = field(default_factory=dict)  # UID → number of instances
    query: bytes | None = None
    details: dict[str, str] = field(default_factory=dict)

    def element(self) -> ET.Element:
        el = ET.Element(
            "ParticipantObjectIdentification",
            ParticipantObjectID=self.object_id,
            ParticipantObjectTypeCode=str(self.type_code),
            ParticipantObjectTypeCodeRole=str(self.role),
        )
        _code(el, "ParticipantObjectIDTypeCode", self.id_type)
        if self.query is not None:
            ET.SubElement(el, "ParticipantObjectQuery").text = base64.b64encode(self.query).decode()
        for key, value in self.details.items():
            ET.SubElement(
                el,
                "ParticipantObjectDetail",
                type=key,
                value=base64.b64encode(value.encode()).decode(),
            )
        if self.sop_classes:
            desc = ET.SubElement(el, "ParticipantObjectDescription")
            for uid, count in sorted(self.sop_classes.items()):
                ET.SubElement(desc, "SOPClass", UID=uid, NumberOfInstances=str(count))
        return el


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": code[2]}
    )


@dataclass(frozen=True)
class AuditEvent:
    event_id: Code
    action: str  # C R U D E
    outcome: int
    participants: list[Participant]
    objects: list[ParticipantObject] = field(default_factory=list)
    event_type: Code | None = None
    outcome_description: str | None = None
    when: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_xml(self, source_id: str, site: str = "") -> str:
        root = ET.Element("AuditMessage")
        ev = ET.SubElement(
            root,
            "EventIdentification",
            EventActionCode=self.action,
            EventDateTime=self.when.isoformat(timespec="milliseconds"),
            EventOutcomeIndicator=str(self.outcome),
        )
        _code(ev, "EventID", self.event_id)
        if self.event_type:
            _code(ev, "EventTypeCode", self.event_type)
        if self.outcome_description:
            ET.SubElement(ev, "EventOutcomeDescription").text = self.outcome_description
        for p in self.participants:
            root.append(p.element())
        src = ET.SubElement(root, "AuditSourceIdentification", AuditSourceID=source_id)
        if site:
            src.set("AuditEnterpriseSiteID", site)
        # 4: Application Server process tier (PS3.15 A.5.1 AuditSourceTypeCode)
        ET.SubElement(src, "AuditSourceTypeCode", {"csd-code": "4", "codeSystemName": "DCM"})
        for obj in self.objects:
            root.append(obj.element())
        return ET.tostring(root, encoding="unicode")


def syslog_frame(xml: str, host: str, severity: int, when: datetime | None = None) -> bytes:
    """One RFC 5424 message: header, no structured data, BOM + UTF-8 XML."""
    when = when or datetime.now(UTC)
    pri = FACILITY_AUTHPRIV * 8 + severity
    stamp = when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    header = f"<{pri}>1 {stamp} {host or '-'} {APP_NAME} {os.getpid()} {MSGID} - "
    return header.encode() + b"\xef\xbb\xbf" + xml.encode()


def octet_count(message: bytes) -> bytes:
    """RFC 5425 (RFC 6587 3.4.1) framing: MSG-LEN SP SYSLOG-MSG."""
    return str(len(message)).encode() + b" " + message


class CollectorOutbox:
    """Messages for the remote collector, durable until written to it."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.db = open_durable(root / AUDIT_DB)
        self.lock = threading.Lock()
        with transaction(self.db) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS audit_outbox ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT, message BLOB NOT NULL,"
                " created_at REAL NOT NULL)"
            )

    def add(self, message: bytes) -> None:
        with self.lock, transaction(self.db) as db:
            db.execute(
                "INSERT INTO audit_outbox (message, created_at) VALUES (?, ?)",
                (message, time.time()),
            )

    def oldest(self, limit: int = 100) -> list[tuple[int, bytes]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT id, message FROM audit_outbox ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def remove(self, ids: Iterable[int]) -> None:
        with self.lock, transaction(self.db) as db:
            db.executemany("DELETE FROM audit_outbox WHERE id = ?", [(i,) for i in ids])

    def count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT COUNT(*) FROM audit_outbox").fetchone()[0])

    def close(self) -> None:
        self.db.close()


class CollectorSender:
    """Drains the collector outbox over one TLS connection, reconnecting
    with back-off while the collector is away. The split units share one
    outbox; a lock file makes exactly one of them the sender, so nothing is
    sent twice, and the other takes over if that one stops."""

    POLL = 5.0  # how soon messages queued by the other process go out

    def __init__(
        self, outbox: CollectorOutbox, collector: AuditCollectorConfig, lock_path: Path
    ) -> None:
        self.outbox = outbox
        self.collector = collector
        self.lock_path = lock_path
        self._lock_fd: int | None = None
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="audit-sender", daemon=True)
        self._conn: ssl.SSLSocket | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self.try_lock()  # now, so the first process started is the sender
        self.thread.start()

    def try_lock(self) -> bool:
        if self._lock_fd is None:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._lock_fd = fd
        return True

    @property
    def is_sender(self) -> bool:
        return self._lock_fd is not None

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        self.thread.join(timeout=10)
        self._close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock for the other unit
            self._lock_fd = None

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None

    def _connect(self) -> ssl.SSLSocket:
        if self._conn is None:
            ctx = client_context(self.collector.tls)
            raw = socket.create_connection((self.collector.host, self.collector.port), timeout=10)
            try:
                self._conn = ctx.wrap_socket(raw, server_hostname=self.collector.host)
            except BaseException:
                raw.close()
                raise
        return self._conn

    def drain_once(self) -> int:
        sent = 0
        while True:
            rows = self.outbox.oldest()
            if not rows:
                return sent
            conn = self._connect()
            conn.sendall(b"".join(octet_count(m) for _, m in rows))
            self.outbox.remove(i for i, _ in rows)
            sent += len(rows)

    def _run(self) -> None:
        delay = 1.0
        while not self.stop_event.is_set():
            if not self.try_lock():
                self.wake.wait(self.POLL)
                self.wake.clear()
                continue
            try:
                self.drain_once()
                if self.last_error:
                    log.info("audit collector reachable again")
                self.last_error, delay = None, 1.0
                self.wake.wait(self.POLL)
            except (OSError, ssl.SSLError) as exc:
                self._close()
                reason = f"audit collector {self.collector.host}:{self.collector.port}: {exc}"
                if reason != self.last_error:
                    log.warning("%s; audit messages stay queued", reason)
                self.last_error = reason
                self.wake.wait(delay)
                delay = min(delay * 2, 60.0)
            self.wake.clear()


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
    """Audit what the forwarder does without touching its code: objects it
    marks sent become one Instances Transferred event per study, and a TLS
    failure reaching a peer becomes a Node Authentication security alert."""
    outbox = forwarder.outbox
    mark_sent = outbox.mark_sent
    send_batch = forwarder.send_batch
    sent: list[int] = []

    def _mark_sent(object_id: int, destination: str) -> None:
        mark_sent(object_id, destination)
        sent.append(object_id)

    def _send_batch(dest: Any, now: float | None = None) -> BatchReport:
        sent.clear()
        report = send_batch(dest, now=now)
        studies: dict[str, tuple[dict[str, int], str | None]] = {}
        for object_id in sent:
            obj = outbox.get(object_id)
            if obj is None:
                continue
            if obj.study_instance_uid not in studies:
                studies[obj.study_instance_uid] = ({}, _patient_id(obj.path))
            classes = studies[obj.study_instance_uid][0]
            classes[obj.sop_class_uid] = classes.get(obj.sop_class_uid, 0) + 1
        for study, (classes, patient) in studies.items():
            _emit_transfer(dest.ae_title, dest.host, study, classes, patient)
        error = report.error or ""
        if report.retried and any(w in error for w in TLS_WORDS):
            emit(lambda t: t.security_alert(dest.ae_title, dest.host, error))
        return report

    outbox.mark_sent = _mark_sent  # type: ignore[method-assign]
    forwarder.send_batch = _send_batch  # type: ignore[method-assign]


def _emit_transfer(
    ae: str, host: str, study: str, classes: dict[str, int], patient: str | None
) -> None:
    emit(lambda t: t.instances_transferred(ae, host, study, classes, patient))


def _patient_id(path: Path) -> str | None:
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        return str(ds.get("PatientID", "")) or None
    except Exception:
        return None
