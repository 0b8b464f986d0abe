"""`dicom-gateway run` under a real NOTIFY_SOCKET: readiness, status and
watchdog pings through systemd-python; journald logging when systemd's
stream is stderr."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.gateway import gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import REPO


def _collect(sock: socket.socket, until: str, timeout: float) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(until in m for m in messages):
            break
    return messages


def test_run_notifies_ready_status_and_watchdog(tmp_path: Path, pki: PKI) -> None:
    config = write_config(tmp_path / "gateway.toml", gateway_config(tmp_path, pki, None))
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "run"],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _collect(sock, "READY=1", 30)
        assert any("READY=1" in m for m in ready), ready
        later = _collect(sock, "WATCHDOG=1", 10)
        assert any("WATCHDOG=1" in m for m in later), later
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in ready + later)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert any("STOPPING=1" in m for m in _collect(sock, "STOPPING=1", 5))
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


def test_journald_handler_when_stderr_is_the_journal(tmp_path: Path) -> None:
    code = (
        "import logging, os, sys\n"
        "st = os.fstat(2)\n"
        "os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
        "from gateway.ops.logs import setup_logging\n"
        "setup_logging()\n"
        "print(type(logging.getLogger().handlers[0]).__name__)\n"
    )
    with open(tmp_path / "stderr", "w") as err:
        out = subprocess.run(
            [sys.executable, "-c", code],
            stderr=err,
            capture_output=False,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            cwd=REPO,
        )
    assert out.stdout.strip() == "JournalHandler"
    plain = subprocess.run(
        [
            sys.executable,
            "-c",
            code.replace(
                "os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'",
                "os.environ['JOURNAL_STREAM'] = '1:2'",
            ),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert plain.stdout.strip() == "StreamHandler"
