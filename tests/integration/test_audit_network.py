"""The listeners' refusals in the audit trail (PS3.15 A.5.3.11 Security
Alert, Node Authentication): a peer not on the allow-list and a path-like
UID at the inbound port, through `start_network_services` as `run` starts
it, reach the syslog socket as schema-valid messages; a flood from one
address is summarised, not written once per connection."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app.network_services import audit_refusals, start_network_services
from gateway.config import parse_config
from gateway.ops import audit
from gateway.ops.audit import AuditTrail
from tests.support.audit import event_code, parse_frame
from tests.support.commitment_pacs import associate_as_pacs
from tests.support.hostile import associate_rq, inbound_config, read_pdu
from tests.support.process import free_port, require_tool, wait_for_port


@contextlib.contextmanager
def services(config: Any, tmp_path: Path) -> Iterator[None]:
    """`run`'s network services with the audit trail installed."""
    trail = AuditTrail(config, tmp_path / "q")
    audit.install(trail)
    stop = threading.Event()
    stoppers = start_network_services(config, stop)
    try:
        yield
    finally:
        stop.set()
        for s in stoppers:
            s()
        audit.install(None)
        trail.close()


def _alert(frame: bytes) -> str:
    _, xml = parse_frame(frame)
    assert event_code(xml) == ("110113", "110126")
    outcome = xml.find("EventIdentification/EventOutcomeDescription")
    assert outcome is not None and outcome.text
    return str(outcome.text)


def test_refused_association_reaches_the_audit_trail(tmp_path: Path, syslog: socket.socket) -> None:
    port = free_port()
    config = inbound_config(tmp_path, port)
    with services(config, tmp_path):
        wait_for_port(port)
        echo = subprocess.run(
            [require_tool("echoscu"), "-aet", "STRANGER", "-aec", "EDGE1", "127.0.0.1", str(port)],
            capture_output=True,
            timeout=30,
        )
        assert echo.returncode != 0
        text = _alert(syslog.recv(65536))
        assert "inbound: calling AE title 'STRANGER' is not on the allow-list" in text
        # The same address again within the minute: counted, not written.
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(associate_rq("OTHER", "EDGE1"))
                assert read_pdu(sock) is not None
        syslog.settimeout(1)
        with pytest.raises(TimeoutError):
            syslog.recv(65536)


def test_a_flood_is_summarised() -> None:
    seen: list[tuple[str, str, str]] = []

    class Trail:
        def security_alert(self, peer: str, host: str, reason: str) -> bytes:
            seen.append((peer, host, reason))
            return b""

    audit.install(Trail())  # type: ignore[arg-type]
    try:
        record = audit_refusals("inbound")
        for i in range(300):
            record("X", "10.0.0.1", "refused")
            record("X", f"10.1.{i // 250}.{i % 250}", "refused")
    finally:
        audit.install(None)
    from_one = [s for s in seen if s[1] == "10.0.0.1"]
    assert len(from_one) == 1  # one per address and minute
    assert len(seen) == 120  # and 120 a minute in all


def test_forged_commitment_report_reaches_the_audit_trail(
    tmp_path: Path, syslog: socket.socket, pki: Any
) -> None:
    """Through `start_network_services`: a report naming a Transaction UID
    we never issued, from the allowed PACS over mutual TLS, is refused and
    becomes a Security Alert; nothing is committed."""
    from pydicom.dataset import Dataset

    from gateway.dicom.uids import new_uid
    from gateway.send.commitment import PUSH_MODEL, PUSH_MODEL_INSTANCE

    listen = free_port()
    tls = {"ca": str(pki.ca.cert), "cert": str(pki.client.cert), "key": str(pki.client.key)}
    config = parse_config(
        {
            "station": {"ae_title": "EDGE1"},
            "destinations": [
                {
                    "name": "pacs",
                    "ae_title": "PACS",
                    "host": "localhost",
                    "port": free_port(),
                    "storage_commitment": True,
                    "tls": tls,
                }
            ],
            "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0},
            "commitment": {"listen": f"127.0.0.1:{listen}", "tls": tls, "interval_s": 3600},
        }
    )
    with services(config, tmp_path):
        wait_for_port(listen)
        ds = Dataset()
        ds.TransactionUID = new_uid()
        assoc = associate_as_pacs(pki, listen)
        assert assoc.is_established
        status, _ = assoc.send_n_event_report(ds, 1, PUSH_MODEL, PUSH_MODEL_INSTANCE)
        assoc.release()
        assert int(status.Status) != 0
        text = ""
        while "Transaction" not in text:  # the service's own events may come first
            _, xml = parse_frame(syslog.recv(65536))
            outcome = xml.find("EventIdentification/EventOutcomeDescription")
            text = str(outcome.text) if outcome is not None else ""
        assert event_code(xml) == ("110113", "110126")
        assert text == "Storage Commitment: unknown Transaction UID (not one we issued)"
        assert ds.TransactionUID not in text
