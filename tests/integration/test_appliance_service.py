"""The running service as an appliance: the watchdog is fed only while the
loops are healthy (real NOTIFY_SOCKET, a capture loop that really sticks),
and a fleet monitor's view of it (Prometheus text, /health JSON) plus the
audit trail it leaves while forwarding to a real TLS storescp."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.audit import event_code, parse_frame
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import Gateway, assert_one_line_error, gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import REPO, free_port, wait_for_port
from tests.support.queue import new_outbox
from tests.support.stuck_driver import register


def _recv_until(sock: socket.socket, needle: str, timeout: float) -> list[str]:
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if needle and needle in out[-1]:
            break
    return out


def test_stuck_capture_loop_withholds_watchdog_pings(tmp_path: Path, pki: PKI) -> None:
    stick = tmp_path / "stick"
    metrics_port = free_port()
    data = gateway_config(
        tmp_path,
        pki,
        None,
        capture={
            "driver": "stuck",
            "options": {"width": 64, "height": 48, "fps": 20.0, "stick_file": str(stick)},
        },
        watchdog={"stale_after": 1.0},
        metrics={"listen": f"127.0.0.1:{metrics_port}"},
    )
    config = write_config(tmp_path / "gateway.toml", data)
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "400000",
        "PYTHONPATH": f"{register(tmp_path / 'plugins')}:{REPO}",
        "DICOM_GATEWAY_AUDIT_SOCKET": str(tmp_path / "no-syslog"),
    }
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "run", "--only", "capture"],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert any("READY=1" in m for m in _recv_until(sock, "READY=1", 30))
        assert any(m == "WATCHDOG=1" for m in _recv_until(sock, "WATCHDOG=1", 10))
        stick.touch()  # the grabber wedges inside read()
        before = _recv_until(sock, "STATUS=unhealthy: capture", 20)
        assert "STATUS=unhealthy: capture" in before[-1], before
        # While it stays stuck, not one more ping: systemd would kill us.
        during = _recv_until(sock, "", 3)
        assert during, "the service went silent instead of reporting"
        assert all(m != "WATCHDOG=1" for m in during), during
        assert all("unhealthy: capture" in m for m in during), during
        status, body = _get(f"http://127.0.0.1:{metrics_port}/health")
        assert status == 503, body
        assert json.loads(body)["loops"] == {"capture": False, "control": True}, body
        stick.unlink()  # the device recovers: pings resume
        assert any(m == "WATCHDOG=1" for m in _recv_until(sock, "WATCHDOG=1", 20))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr
    assert "not healthy: ['capture']" in stderr


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_health_and_audit_of_a_forwarding_service(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    storescp.start()
    metrics_port = free_port()
    flag = tmp_path / "timesync-synchronized"
    flag.touch()
    data = gateway_config(
        tmp_path,
        pki,
        storescp.port,
        metrics={"listen": f"127.0.0.1:{metrics_port}"},
        certificates={"peer_probe_delay": 0},
    )
    config = write_config(tmp_path / "gateway.toml", data)
    syslog_path = tmp_path / "dev-log"
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(str(syslog_path))
    env = {"DICOM_GATEWAY_AUDIT_SOCKET": str(syslog_path), "DICOM_GATEWAY_TIMESYNC_FLAG": str(flag)}
    gw = Gateway(config, env)
    gw(
        "capture",
        "--patient-id",
        "PID-7",
        "--patient-name",
        "Doe^Jane",
        "--frames",
        "2",
        check=True,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "run"],
        env={**os.environ, **env},
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(metrics_port, proc)
        sent_key = ("dicom_gateway_queue_objects", (("destination", "pacs"), ("state", "sent")))
        deadline = time.monotonic() + 60
        values = _metrics(metrics_port)
        while values.get(sent_key) != 2 and time.monotonic() < deadline:
            time.sleep(0.3)
            values = _metrics(metrics_port)
        assert values[sent_key] == 2
        pending = ("dicom_gateway_queue_objects", (("destination", "pacs"), ("state", "pending")))
        assert values[pending] == 0
        age = ("dicom_gateway_queue_oldest_waiting_age_seconds", (("destination", "pacs"),))
        assert values[age] == 0
        last = ("dicom_gateway_last_successful_send_timestamp_seconds", (("destination", "pacs"),))
        assert values[last] > time.time() - 3600
        assert values[("dicom_gateway_device_connected", ())] == 1
        assert ("dicom_gateway_frames_dropped_total", ()) in values
        assert values[("dicom_gateway_clock_synchronized", ())] == 1
        assert values[("dicom_gateway_loop_healthy", (("loop", "capture"),))] == 1
        # certificates are checked on a background thread: wait for the peer probe
        while time.monotonic() < deadline:
            certs = {
                dict(k[1])["certificate"]: v
                for k, v in values.items()
                if k[0] == "dicom_gateway_certificate_expiry_days"
            }
            if "pacs/peer" in certs:
                break
            time.sleep(0.3)
            values = _metrics(metrics_port)
        assert {"pacs/own", "pacs/ca", "pacs/peer"} <= set(certs), certs
        # The throwaway PKI issues 30-day leaf certificates: inside the warning window.
        assert 29 < certs["pacs/own"] <= 30 and 29 < certs["pacs/peer"] <= 30, certs
        assert certs["pacs/ca"] > 300, certs
        status, body = _get(f"http://127.0.0.1:{metrics_port}/health")
        health = json.loads(body)
        assert status == 200 and health["status"] == "degraded", health
        assert any("certificate pacs/own expires in" in w for w in health["warnings"]), health
        assert health["loops"] == {
            "capture": True,
            "forwarder": True,
            "ui": True,
            "control": True,
            "flush": True,
        }
        assert health["queue"]["pacs"]["sent"] == 2
        assert health["clock"]["trusted"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(storescp.received()) == 2
    syslog.settimeout(5)
    events = []
    while not events or event_code(events[-1]) != ("110100", "110121"):
        try:
            events.append(parse_frame(syslog.recv(65536))[1])
        except TimeoutError:
            break
    syslog.close()
    codes = [event_code(x) for x in events]
    assert codes[0] == ("110100", "110120") and codes[-1] == ("110100", "110121"), codes
    transfers = [x for x in events if event_code(x)[0] == "110104"]
    assert transfers, codes
    counts = [int(s.get("NumberOfInstances")) for x in transfers for s in x.iter("SOPClass")]
    assert sum(counts) == 2
    patients = {
        p.get("ParticipantObjectID")
        for x in transfers
        for p in x.iter("ParticipantObjectIdentification")
        if p.get("ParticipantObjectTypeCode") == "1"
    }
    assert patients == {"PID-7"}
    assert all(b"Doe" not in __import__("lxml.etree").etree.tostring(x) for x in events)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr
    assert "certificate pacs/own" in stderr and "renew it" in stderr


def test_only_takes_a_comma_separated_list_and_names_a_bad_part(tmp_path: Path, pki: PKI) -> None:
    config = write_config(tmp_path / "gateway.toml", gateway_config(tmp_path, pki, None))
    result = Gateway(config)("run", "--only", "capture,bogus")
    assert result.returncode == 2
    assert "invalid choice: 'capture,bogus'" in assert_one_line_error(result)


def test_queue_write_check_fails_while_the_database_is_locked(tmp_path: Path) -> None:
    from gateway.ops.appliance import queue_writable
    from gateway.queue.schema import DB_NAME

    with new_outbox(tmp_path / "queue", ["pacs"]) as outbox:
        assert queue_writable(outbox) is None
        holder = sqlite3.connect(tmp_path / "queue" / DB_NAME)
        holder.execute("BEGIN EXCLUSIVE")  # a wedged writer
        try:
            problem = queue_writable(outbox, timeout=0.2)
        finally:
            holder.rollback()
            holder.close()
        assert problem is not None and "database is locked" in problem
        assert queue_writable(outbox) is None


def test_tls_failure_to_a_peer_is_audited_as_a_security_alert(tmp_path: Path, pki: PKI) -> None:
    # A "PACS" whose certificate comes from a CA we do not trust.
    impostor = StoreSCP(tmp_path / "pacs", pki.stranger, pki.other_ca.cert).start()
    try:
        config = write_config(
            tmp_path / "gateway.toml", gateway_config(tmp_path, pki, impostor.port)
        )
        syslog_path = tmp_path / "dev-log"
        syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        syslog.bind(str(syslog_path))
        syslog.settimeout(30)
        env = {"DICOM_GATEWAY_AUDIT_SOCKET": str(syslog_path)}
        Gateway(config, env)("capture", "--patient-id", "P1", "--patient-name", "Doe^A", check=True)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--config",
                str(config),
                "run",
                "--only",
                "forwarder",
            ],
            env={**os.environ, **env},
            cwd=REPO,
            stderr=subprocess.DEVNULL,
        )
        try:
            alert = None
            for _ in range(10):
                xml = parse_frame(syslog.recv(65536))[1]
                if event_code(xml) == ("110113", "110126"):
                    alert = xml
                    break
            assert alert is not None
            text = alert.findtext("EventIdentification/EventOutcomeDescription") or ""
            assert "not signed by our CA" in text, text
            assert alert.find("EventIdentification").get("EventOutcomeIndicator") == "4"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            syslog.close()
    finally:
        impostor.stop()
    assert impostor.received() == []


def _fixed_port() -> int:
    """A free port outside the kernel's ephemeral range, as an appliance's are."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def test_the_two_services_each_serve_their_own_metrics_port(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    """The units run capture+UI and the forwarder as two processes from one
    configuration: each serves its own port, neither logs a bind error."""
    storescp.start()
    # Below the ephemeral range: the forwarder's outgoing connections,
    # made while the other process starts, cannot take one of these first.
    ports = {"capture,ui": _fixed_port(), "forwarder": _fixed_port()}
    data = gateway_config(
        tmp_path,
        pki,
        storescp.port,
        ui={"listen": f"127.0.0.1:{_fixed_port()}"},
        metrics={
            "listen": f"127.0.0.1:{ports['capture,ui']}",
            "forwarder_listen": f"127.0.0.1:{ports['forwarder']}",
        },
    )
    config = write_config(tmp_path / "gateway.toml", data)
    procs = {
        only: subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config), "run", "--only", only],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for only in ports
    }
    try:
        loops = {}
        for only, port in ports.items():
            try:
                wait_for_port(port, procs[only], timeout=60)
            except RuntimeError:
                err = procs[only].communicate(timeout=30)[1]
                raise AssertionError(f"run --only {only} exited: {err[-3000:]}") from None
            deadline = time.monotonic() + 30
            while True:
                _, body = _get(f"http://127.0.0.1:{port}/health")
                loops[only] = set(json.loads(body)["loops"])
                if "forwarder" in loops[only] or "capture" in loops[only]:
                    break
                assert time.monotonic() < deadline, loops
                time.sleep(0.2)
        assert "capture" in loops["capture,ui"] and "forwarder" not in loops["capture,ui"]
        assert "forwarder" in loops["forwarder"] and "capture" not in loops["forwarder"]
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        errs = {only: proc.communicate(timeout=30)[1] for only, proc in procs.items()}
    for only, err in errs.items():
        assert "not started" not in err and "Traceback" not in err, (only, err[-2000:])
