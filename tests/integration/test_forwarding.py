"""End to end over real TLS: test pattern → queue → C-STORE → DCMTK storescp,
checked with dcmdump and dciodvfy; and the failures an operator meets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from drivers import create_driver
from gateway.acquire.capture import Capturer
from gateway.acquire.exam import ExamService
from gateway.config import load_config
from gateway.dicom.modules import Patient
from gateway.send.forwarder import Forwarder
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import Gateway, assert_one_line_error, gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import require_tool
from tests.support.queue import new_outbox


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return [
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")
    ]


def queue_rows(gateway: Gateway) -> list[dict[str, object]]:
    result = gateway("queue", "list", "--json", check=True)
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_captured_frames_arrive_intact_over_mutual_tls(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    storescp.start()
    path = write_config(tmp_path / "gateway.toml", gateway_config(tmp_path, pki, storescp.port))
    config = load_config(path)
    driver = create_driver(config.capture.driver, config.capture.options)
    frames = {}
    with new_outbox(config.queue.path, ["pacs"]) as outbox:
        exams = ExamService(config, outbox, Capturer(config, outbox, driver.source))
        exam = exams.start(Patient(name="Müller^Jürgen", id="PID-1"))
        with driver:
            for frame in driver.frames(3):
                frames[exams.capture(exam, frame).sop_instance_uid] = frame.pixels
        assert outbox.claim("pacs") == []  # held until the exam is finished
        assert exams.finish(exam) == 3
        report = Forwarder(outbox, list(config.destinations), "EDGE1").flush(timeout=60)
        assert report.sent == 3 and report.failed == 0
        assert {d.state.value for d in outbox.deliveries()} == {"sent"}

    received = storescp.received()
    assert len(received) == 3
    for file in received:
        dump = subprocess.run(
            [require_tool("dcmdump"), str(file)], capture_output=True, text=True, check=True
        ).stdout
        assert "Müller^Jürgen" in dump
        assert dciodvfy_errors(file) == []
        ds = dcmread(file)
        assert ds.StudyInstanceUID == exam.study.instance_uid
        assert np.array_equal(ds.pixel_array, frames[ds.SOPInstanceUID])
    # The test pattern's counter makes every frame different.
    assert len({f.tobytes() for f in frames.values()}) == 3


def test_cli_capture_then_flush(gateway: Gateway, storescp: StoreSCP) -> None:
    storescp.start()
    result = gateway(
        "capture", "--frames", "2", "--patient-id", "P2", "--patient-name", "Doe^Jane", check=True
    )
    assert result.stdout.count("captured") == 2
    rows = queue_rows(gateway)
    assert len(rows) == 2
    for row in rows:
        assert {
            "id",
            "sop_instance_uid",
            "sop_class_uid",
            "path",
            "destination",
            "state",
        } <= row.keys()
        assert row["state"] == "pending" and row["destination"] == "pacs"
        assert Path(str(row["path"])).is_file()
    flushed = gateway("queue", "flush", "--timeout", "60")
    assert flushed.returncode == 0, flushed.stderr
    assert {r["state"] for r in queue_rows(gateway)} == {"sent"}
    assert {dcmread(p).SOPInstanceUID for p in storescp.received()} == {
        r["sop_instance_uid"] for r in rows
    }
    stats = json.loads(gateway("queue", "stats", "--json", check=True).stdout)
    assert stats["pacs"]["sent"] == 2 and stats["pacs"]["pending"] == 0
    assert stats["pacs"]["last_success"] is not None


def test_pacs_down_then_up(gateway: Gateway, storescp: StoreSCP) -> None:
    gateway(
        "capture", "--frames", "2", "--patient-id", "P3", "--patient-name", "Down^Pacs", check=True
    )
    down = gateway("queue", "flush", "--timeout", "3")
    line = assert_one_line_error(down)
    assert "2 pending" in line and "connection refused" in line
    rows = queue_rows(gateway)
    assert {r["state"] for r in rows} == {"pending"}
    assert all("connection refused" in str(r["last_error"]) for r in rows)

    storescp.start()
    up = gateway("queue", "flush", "--timeout", "60")
    assert up.returncode == 0, up.stderr
    assert len(storescp.received()) == 2
    assert {r["state"] for r in queue_rows(gateway)} == {"sent"}


@pytest.mark.parametrize(
    ("server_cert", "reason"),
    [
        ("stranger", "not signed by our CA"),
        ("wrong_host", "does not match the host name"),
        ("expired", "peer certificate has expired"),
    ],
)
def test_untrusted_peer_is_refused_and_objects_stay_queued(
    tmp_path: Path, pki: PKI, server_cert: str, reason: str
) -> None:
    cert = getattr(pki, server_cert)
    ca = pki.other_ca.cert if server_cert == "stranger" else pki.ca.cert
    # The peer trusts our client certificate; only its own identity is wrong.
    scp = StoreSCP(tmp_path / "pacs", cert, pki.ca.cert, extra=("+cf", str(ca)))
    scp.start()
    try:
        path = write_config(tmp_path / "gateway.toml", gateway_config(tmp_path, pki, scp.port))
        gw = Gateway(path)
        gw("capture", "--patient-id", "P4", "--patient-name", "Tls^Test", check=True)
        line = assert_one_line_error(gw("queue", "flush", "--timeout", "3"))
        assert reason in line, line
        assert scp.received() == []
        rows = queue_rows(gw)
        assert [r["state"] for r in rows] == ["pending"]
        assert reason in str(rows[0]["last_error"])
    finally:
        scp.stop()


def test_peer_that_rejects_our_certificate(tmp_path: Path, pki: PKI) -> None:
    # storescp trusts only the other CA, so our client certificate is refused.
    scp = StoreSCP(tmp_path / "pacs", pki.server, pki.other_ca.cert)
    scp.start()
    try:
        path = write_config(tmp_path / "gateway.toml", gateway_config(tmp_path, pki, scp.port))
        gw = Gateway(path)
        gw("capture", "--patient-id", "P5", "--patient-name", "Tls^Test", check=True)
        line = assert_one_line_error(gw("queue", "flush", "--timeout", "3"))
        assert "certificate" in line, line
        assert [r["state"] for r in queue_rows(gw)] == ["pending"]
    finally:
        scp.stop()


def test_echo_reports_tls_version_and_cipher(gateway: Gateway, storescp: StoreSCP) -> None:
    storescp.start()
    result = gateway("echo", "--json", check=True)
    (entry,) = json.loads(result.stdout)
    assert entry["ok"] is True
    assert entry["detail"].startswith("TLSv1.3 ") or entry["detail"].startswith("TLSv1.2 ")


def test_echo_failure_is_one_line(gateway: Gateway) -> None:
    line = assert_one_line_error(gateway("echo"))
    assert "echo failed for pacs" in line
