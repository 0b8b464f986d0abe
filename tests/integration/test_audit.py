"""Audit messages as a syslog collector receives them: RFC 5424 frames on
the local syslog socket and RFC 5425 octet-counted frames over mutual TLS,
each carrying XML that validates against the PS3.15 A.5 schema; remote
messages wait in SQLite while the collector is away, across a restart."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

from lxml import etree

from gateway.config import parse_config
from gateway.ops.audit import AuditTrail
from tests.support.audit import SCHEMA, event_code, parse_frame
from tests.support.pki import PKI
from tests.support.process import free_port


def test_every_event_validates_and_reaches_the_syslog_socket(
    tmp_path: Path, syslog: socket.socket
) -> None:
    config = parse_config({"station": {"ae_title": "EDGE1", "institution_name": "Clinic"}})
    trail = AuditTrail(config, tmp_path / "queue")
    trail.application(started=True)
    trail.instances_transferred(
        "PACS", "127.0.0.1", "1.2.3.4", {"1.2.840.10008.5.1.4.1.1.7": 3}, "PID-1"
    )
    trail.worklist_query("RIS", "ris.example", b"\x08\x00\x60\x00\x02\x00\x00\x00US")
    trail.settings_changed("technician", "destination pacs: port changed", "127.0.0.1")
    trail.pin_failure("127.0.0.1")
    trail.security_alert("PACS", "127.0.0.1", "peer certificate has expired")
    trail.application(started=False)
    trail.close()
    frames = [syslog.recv(65536) for _ in range(7)]
    parsed = [parse_frame(f) for f in frames]
    codes = [event_code(x) for _, x in parsed]
    assert codes == [
        ("110100", "110120"),
        ("110104", None),
        ("110112", None),
        ("110113", "110131"),
        ("110114", "110122"),
        ("110113", "110126"),
        ("110100", "110121"),
    ]
    # authpriv.notice for success, authpriv.warning for failures
    assert [p for p, _ in parsed] == [85, 85, 85, 85, 84, 84, 85]
    transfer = parsed[1][1]
    sop = transfer.find("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass")
    assert sop is not None and sop.get("NumberOfInstances") == "3"
    ids = [p.get("ParticipantObjectID") for p in transfer.iter("ParticipantObjectIdentification")]
    assert ids == ["1.2.3.4", "PID-1"]
    pin = parsed[4][1].find("EventIdentification")
    assert pin is not None and pin.get("EventOutcomeIndicator") == "4"


def test_schema_rejects_a_malformed_message() -> None:
    bad = etree.fromstring(
        b'<AuditMessage><EventIdentification EventActionCode="X" '
        b'EventDateTime="now" EventOutcomeIndicator="3"/></AuditMessage>'
    )
    assert not SCHEMA.validate(bad)


class Collector:
    """A syslog-over-TLS collector (RFC 5425) requiring our client certificate."""

    def __init__(self, pki: PKI, port: int) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki.server.cert), str(pki.server.key))
        ctx.load_verify_locations(str(pki.ca.cert))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(20)
        self.ctx = ctx
        self.frames: list[bytes] = []
        self.got = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        raw, _ = self.listener.accept()
        with self.ctx.wrap_socket(raw, server_side=True) as conn:
            conn.settimeout(20)
            buf = b""
            while True:
                try:
                    chunk = conn.recv(65536)
                except (OSError, ssl.SSLError):
                    return
                if not chunk:
                    return
                buf += chunk
                while b" " in buf:
                    length, _, rest = buf.partition(b" ")
                    assert length.isdigit(), buf[:40]
                    if len(rest) < int(length):
                        break
                    with self.got:
                        self.frames.append(rest[: int(length)])
                        self.got.notify_all()
                    buf = rest[int(length) :]

    def wait(self, count: int, timeout: float = 20) -> list[bytes]:
        with self.got:
            self.got.wait_for(lambda: len(self.frames) >= count, timeout)
            return list(self.frames)

    def close(self) -> None:
        self.listener.close()


def test_remote_collector_gets_queued_messages_after_an_outage_and_restart(
    tmp_path: Path, pki: PKI, syslog: socket.socket
) -> None:
    port = free_port()
    config = parse_config(
        {
            "station": {"ae_title": "EDGE1"},
            "audit": {
                "collector": {
                    "host": "localhost",
                    "port": port,
                    "tls": {
                        "ca": str(pki.ca.cert),
                        "cert": str(pki.client.cert),
                        "key": str(pki.client.key),
                    },
                }
            },
        }
    )
    queue = tmp_path / "queue"
    trail = AuditTrail(config, queue)
    trail.application(started=True)
    trail.pin_failure("127.0.0.1")
    assert trail.outbox is not None
    assert trail.outbox.count() == 2  # nobody listening: kept durably
    trail.close()  # the box reboots while the collector is away

    collector = Collector(pki, port)
    try:
        trail = AuditTrail(config, queue)
        trail.application(started=False)
        frames = collector.wait(3)
        assert trail.outbox is not None
        trail.close()
    finally:
        collector.close()
    assert len(frames) == 3
    codes = [event_code(parse_frame(f)[1]) for f in frames]
    assert codes == [("110100", "110120"), ("110114", "110122"), ("110100", "110121")]
    assert os.path.getsize(queue / "audit.sqlite") > 0


def test_two_processes_share_the_collector_queue_and_send_each_message_once(
    tmp_path: Path, pki: PKI, syslog: socket.socket
) -> None:
    """The capture and forwarder units both audit into one queue; only the
    lock holder sends, and it sends what the other one queued."""
    port = free_port()
    config = parse_config(
        {
            "audit": {
                "collector": {
                    "host": "localhost",
                    "port": port,
                    "tls": {
                        "ca": str(pki.ca.cert),
                        "cert": str(pki.client.cert),
                        "key": str(pki.client.key),
                    },
                }
            },
        }
    )
    collector = Collector(pki, port)
    first = AuditTrail(config, tmp_path / "queue")
    second = AuditTrail(config, tmp_path / "queue")
    try:
        assert first.sender is not None and first.sender.is_sender
        assert second.sender is not None and not second.sender.is_sender
        second.pin_failure("127.0.0.1")  # queued by the non-sender…
        first.application(started=True)  # …goes out with the sender's next drain
        frames = collector.wait(2)
    finally:
        first.close()
        second.close()
        collector.close()
    collector.thread.join(timeout=20)
    assert len(collector.frames) == 2 == len(frames)
    codes = sorted(event_code(parse_frame(f)[1]) for f in collector.frames)
    assert codes == [("110100", "110120"), ("110114", "110122")]
