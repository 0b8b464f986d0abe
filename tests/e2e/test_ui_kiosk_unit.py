"""The kiosk unit: systemd accepts it, it shows the UI full screen in
Chromium under cage, comes back whenever it dies, waits for the UI through
the gateway's readiness (READY=1 only once the UI listens), and keeps the
sandbox a browser can live with."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import UIGateway, gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import REPO, require_tool

UNIT = REPO / "systemd" / "dicom-gateway-kiosk.service"


NOBODY = 65534


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in re.findall(r"^(\w+)=(.*)$", text, re.M):
        out.setdefault(key, []).append(value)
    return out


def test_kiosk_unit_verifies_and_restarts_forever() -> None:
    require_tool("cage")
    result = subprocess.run(
        [require_tool("systemd-analyze"), "verify", str(UNIT)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert UNIT.name not in result.stderr, result.stderr
    text = UNIT.read_text()
    assert "Restart=always" in text and "StartLimitIntervalSec=0" in text
    start = text[text.index("ExecStart=") :]
    assert start.startswith("ExecStart=/usr/bin/cage ")
    assert "/usr/bin/chromium --kiosk" in start
    assert "http://${KIOSK_HOST}:${KIOSK_PORT}/" in start


def test_kiosk_waits_for_the_ui_by_ordering_and_keeps_a_browser_sandbox() -> None:
    s = _settings(UNIT.read_text())
    # No polling shell: the capture+UI service's readiness is the wait.
    assert not any(k.startswith("ExecStart") and k != "ExecStart" for k in s)
    assert "dicom-gateway.service" in s["After"][0].split()
    assert "dicom-gateway.service" in s["Wants"][0].split()
    assert s["DevicePolicy"] == ["closed"]
    assert set(s["DeviceAllow"]) == {"char-drm rw", "char-input rw", "/dev/tty1 rw"}
    assert s["IPAddressDeny"] == ["any"] and s["IPAddressAllow"] == ["localhost"]
    assert s["CapabilityBoundingSet"] == [""] and s["NoNewPrivileges"] == ["yes"]
    # Chromium's own sandbox needs these namespaces and nothing more.
    assert s["RestrictNamespaces"] == ["user pid net"]
    text = UNIT.read_text()
    command = text[text.index("ExecStart=") : text.index("Restart=")]
    assert "/usr/bin/chromium" in command and "sandbox" not in command


def test_ready_is_sent_only_once_the_ui_accepts_connections(tmp_path: Path, pki: PKI) -> None:
    """The kiosk is ordered after dicom-gateway.service (Type=notify): at
    READY=1 the UI's port must already accept a connection."""
    data = gateway_config(tmp_path, pki, None)
    host, _, port = data["ui"]["listen"].rpartition(":")
    config = write_config(tmp_path / "gateway.toml", data)
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    env.pop("WATCHDOG_USEC", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "run", "--only", "ui"],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        messages: list[str] = []
        while not any("READY=1" in m for m in messages) and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            messages.append(sock.recv(4096).decode())
        assert any("READY=1" in m for m in messages), messages
        with socket.create_connection((host, int(port)), timeout=5):
            pass  # refused here would be the kiosk's error page
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


class _Relay:
    """A TCP relay in front of the UI that notes each request line, so the
    test sees what the kiosk's browser asked for (the UI keeps no access log)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.paths: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            except OSError:
                return  # the listener was closed
            server.settimeout(None)
            for src, dst, note in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, note), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, note: bool) -> None:
        try:
            while data := src.recv(65536):
                if note:
                    found = re.findall(rb"^[A-Z]+ (\S+) HTTP/1\.[01]\r$", data, re.M)
                    self.paths += [p.decode() for p in found]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def _kiosk_command(port: int, data_dir: Path) -> list[str]:
    """The unit's own ExecStart=, with its variables filled in as systemd would."""
    text = UNIT.read_text().replace("\\\n", " ")
    line = re.search(r"^ExecStart=(.*)$", text, re.M)
    assert line
    command = line.group(1).replace("${KIOSK_HOST}", "127.0.0.1")
    command = command.replace("${KIOSK_PORT}", str(port))
    command = command.replace("/run/dicom-kiosk", str(data_dir))
    return shlex.split(command)


@pytest.fixture
def kiosk_dir() -> Iterator[Path]:
    """Scratch HOME and XDG_RUNTIME_DIR the unprivileged kiosk user can reach
    (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="kiosk-"))
    (path / "runtime").mkdir(mode=0o700)
    if os.geteuid() == 0:
        for p in (path, path / "runtime"):
            os.chown(p, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _namespaces(pid: int) -> dict[str, str]:
    return {ns.name: os.readlink(ns) for ns in Path(f"/proc/{pid}/ns").iterdir()}


def _session_pids(leader: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == leader:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_kiosk_command_shows_the_ui_with_chromiums_sandbox_on(
    tmp_path: Path, pki: PKI, kiosk_dir: Path
) -> None:
    """The unit's cage + Chromium command, on cage's headless backend, as an
    unprivileged user in its own user namespace with no capabilities and
    no_new_privs (what User=, PrivateUsers=, CapabilityBoundingSet= and
    NoNewPrivileges= give it): the page's script opens the live status
    stream, and every renderer runs in Chromium's sandbox (own PID namespace,
    seccomp filter), which is why the unit allows user/pid/net namespaces."""
    for tool in ("cage", "chromium", "Xwayland"):
        require_tool(tool)
    data = gateway_config(tmp_path, pki, None)
    port = int(data["ui"]["listen"].rpartition(":")[2])
    gateway = UIGateway(write_config(tmp_path / "gateway.toml", data), port).start()
    relay = _Relay(port)
    drop = ["--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
    uid = NOBODY if os.geteuid() == 0 else os.geteuid()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(kiosk_dir),
        "XDG_RUNTIME_DIR": str(kiosk_dir / "runtime"),
        "WLR_BACKENDS": "headless",
        "WLR_LIBINPUT_NO_DEVICES": "1",
        "WLR_RENDERER": "pixman",
    }
    command = [
        require_tool("setpriv"),
        *(drop if os.geteuid() == 0 else []),
        "--no-new-privs",
        "--bounding-set=-all",
        "--inh-caps=-all",
        require_tool("unshare"),
        "--user",
        f"--map-user={uid}",
        f"--map-group={uid}",
        "--",
        *_kiosk_command(relay.port, kiosk_dir),
    ]
    kiosk = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while "/api/events" not in relay.paths and kiosk.poll() is None:
            assert time.monotonic() < deadline, relay.paths
            time.sleep(0.2)
        assert kiosk.poll() is None, kiosk.stderr.read() if kiosk.stderr else ""
        assert "/" in relay.paths, relay.paths
        renderers: list[tuple[str, dict[str, str]]] = []
        for pid in _session_pids(kiosk.pid):
            try:
                if b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    renderers.append((Path(f"/proc/{pid}/status").read_text(), _namespaces(pid)))
            except OSError:
                pass
        assert renderers
        # The namespaces Chromium makes are the ones RestrictNamespaces= allows.
        allowed = set(_settings(UNIT.read_text())["RestrictNamespaces"][0].split())
        outer = _namespaces(kiosk.pid)
        for status, inner in renderers:
            made = {n.removesuffix("_for_children") for n in inner if inner[n] != outer[n]}
            assert made and made <= allowed, (made, allowed)
            assert re.search(r"^Seccomp:\s+2$", status, re.M), status
            nspid = re.search(r"^NSpid:(.*)$", status, re.M)
            assert nspid and len(nspid.group(1).split()) >= 2, status
            assert re.search(r"^CapEff:\s+0+$", status, re.M), status
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(kiosk.pid, signal.SIGTERM)
        try:
            kiosk.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(kiosk.pid, signal.SIGKILL)
            kiosk.wait()
        for pid in _session_pids(kiosk.pid):  # stragglers that left the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        relay.close()
        gateway.stop()
