"""The installed appliance as `make install-system DESTDIR=...` stages it:
users, modes and owners as sysusers.d / tmpfiles.d leave them, and the
service run from the staged venv as systemd would run it (the unit's user and
group, UMask=, $STATE_DIRECTORY, $CREDENTIALS_DIRECTORY with the PIN and the
key), checking that the provisioned PIN unlocks the settings, that a change
saved on the screen lands in the state directory (not the read-only /etc) and
that the forwarder's user sees it. The QEMU boot of the real image is
issue-16's test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tomli_w

from tests.support.pki import make_pki
from tests.support.process import REPO, free_port, require_tool, stop_process, wait_for_port

PIN = "482913"


def _ids(root: Path) -> dict[str, tuple[int, int]]:
    users = {}
    for line in (root / "etc/passwd").read_text().splitlines():
        name, _, uid, gid, *_ = line.split(":")
        users[name] = (int(uid), int(gid))
    return users


def _groups(root: Path) -> dict[str, tuple[int, set[str]]]:
    out = {}
    for line in (root / "etc/group").read_text().splitlines():
        name, _, gid, members = line.split(":")
        out[name] = (int(gid), set(filter(None, members.split(","))))
    return out


def _mode(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return oct(st.st_mode & 0o7777), st.st_uid, st.st_gid


@dataclass
class Staged:
    root: Path
    work: Path
    capture: tuple[int, int]
    forwarder: tuple[int, int]
    gid: int

    @property
    def etc(self) -> Path:
        return self.root / "etc/dicom-gateway"

    @property
    def ui_state(self) -> Path:
        return self.root / "var/lib/dicom-gateway-ui"

    @property
    def gateway(self) -> Path:
        return self.root / "opt/dicom-gateway/venv/bin/dicom-gateway"

    def env(self, creds: Path | None, state: bool) -> dict[str, str]:
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "DICOM_GATEWAY_CONFIG": str(self.etc / "gateway.toml"),
            "DICOM_GATEWAY_SETTINGS": str(self.ui_state / "settings.toml"),
        }
        if state:
            env["STATE_DIRECTORY"] = str(self.ui_state)
        if creds is not None:
            env["CREDENTIALS_DIRECTORY"] = str(creds)
        return env

    def as_user(self, ids: tuple[int, int], *cmd: str) -> list[str]:
        setpriv = require_tool("setpriv")
        return [setpriv, f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups", "--", *cmd]

    def credentials(self, name: str, owner: tuple[int, int], files: dict[str, Path]) -> Path:
        """A private credentials directory as LoadCredential= makes it: 0500,
        each file 0400, owned by the service's user."""
        creds = self.work / "credentials" / name
        shutil.rmtree(creds, ignore_errors=True)
        creds.mkdir(parents=True)
        for cred, src in files.items():
            shutil.copy(src, creds / cred)
            os.chown(creds / cred, *owner)
            os.chmod(creds / cred, 0o400)
        os.chown(creds, *owner)
        os.chmod(creds, 0o500)
        return creds


@pytest.fixture(scope="module")
def staged() -> Iterator[Staged]:
    if os.geteuid() != 0:
        pytest.fail("staging an installed layout needs root (make install-system): run as root")
    for tool in ("systemd-sysusers", "systemd-tmpfiles", "setpriv", "make"):
        require_tool(tool)
    # Outside pytest's 0700 tmp tree: the service users must reach their files.
    work = Path(tempfile.mkdtemp(prefix="installed-layout-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    root = work / "root"
    etc = root / "etc/dicom-gateway"
    (etc / "tls").mkdir(parents=True)
    # What a careless provisioning leaves (umask 022, a group-readable key):
    # the staged tmpfiles.d must tighten it.
    pki = make_pki(work / "pki")
    shutil.copy(pki.ca.cert, etc / "tls/ca.pem")
    shutil.copy(pki.client.cert, etc / "tls/gateway.pem")
    shutil.copy(pki.client.key, etc / "tls/gateway.key")
    os.chmod(etc / "tls/gateway.key", 0o640)
    (etc / "pin").write_text(PIN + "\n")
    os.chmod(etc / "pin", 0o644)
    try:
        result = subprocess.run(
            ["make", "-s", "install-system", f"DESTDIR={root}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        users = _ids(root)
        gid = _groups(root)["dicom-gateway"][0]
        yield Staged(root, work, users["dicom-capture"], users["dicom-forwarder"], gid)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_two_service_users_share_only_the_queue_group(staged: Staged) -> None:
    groups = _groups(staged.root)
    assert staged.capture[0] != staged.forwarder[0]
    assert staged.capture[1] == staged.forwarder[1] == staged.gid
    member_of = {name for name, (_, members) in groups.items() if "dicom-forwarder" in members}
    assert member_of == set(), member_of  # nothing beyond its primary group
    assert {"video", "dialout"} <= {n for n, (_, m) in groups.items() if "dicom-capture" in m}
    assert "dicom-gateway" not in {n for n, (_, m) in groups.items() if "dicom-kiosk" in m}


def test_modes_and_owners(staged: Staged) -> None:
    gid = staged.gid
    assert _mode(staged.etc) == ("0o750", 0, gid)
    assert _mode(staged.etc / "tls") == ("0o750", 0, gid)
    assert _mode(staged.etc / "pin") == ("0o600", 0, 0)
    assert _mode(staged.etc / "tls/gateway.key") == ("0o600", 0, 0)
    queue = staged.root / "var/lib/dicom-gateway"
    assert _mode(queue) == ("0o2770", 0, gid)
    assert _mode(queue / "objects") == ("0o2770", 0, gid)
    assert _mode(staged.ui_state) == ("0o750", staged.capture[0], gid)
    units = staged.root / "etc/systemd/system"
    for unit in ("dicom-gateway.service", "dicom-gateway-forwarder.service"):
        text = (units / unit).read_text()
        assert "LoadCredential=gateway.key:/etc/dicom-gateway/tls/gateway.key" in text
        assert "UMask=0007" in text and "Group=dicom-gateway" in text
    capture = (units / "dicom-gateway.service").read_text()
    assert "LoadCredential=pin:/etc/dicom-gateway/pin" in capture
    assert "StateDirectory=dicom-gateway-ui" in capture
    assert "LoadCredential=pin" not in (units / "dicom-gateway-forwarder.service").read_text()


def _write_config(staged: Staged, port: int) -> bytes:
    etc = staged.etc
    data = {
        "station": {"ae_title": "EDGE1"},
        "capture": {
            "driver": "testpattern",
            "options": {"width": 320, "height": 240, "fps": 10, "realtime": True},
        },
        "destinations": [
            {
                "name": "pacs",
                "ae_title": "PACS",
                "host": "localhost",
                "port": 11112,
                "tls": {
                    "ca": str(etc / "tls/ca.pem"),
                    "cert": str(etc / "tls/gateway.pem"),
                    "key": "${CREDENTIALS_DIRECTORY}/gateway.key",
                },
            }
        ],
        "queue": {"path": str(staged.root / "var/lib/dicom-gateway"), "min_free_mb": 10},
        "ui": {"listen": f"127.0.0.1:{port}"},
    }
    path = etc / "gateway.toml"
    path.write_text(tomli_w.dumps(data))
    os.chmod(path, 0o644)  # as a careless editor leaves it; tmpfiles.d fixes it
    tmpfiles = require_tool("systemd-tmpfiles")
    subprocess.run(
        [tmpfiles, f"--root={staged.root}", "--create", "dicom-gateway.conf"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path.read_bytes()


class Service:
    def __init__(self, staged: Staged, port: int, creds: Path) -> None:
        self.staged, self.port, self.creds = staged, port, creds
        self.log = staged.work / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.staged.as_user(
                    self.staged.capture, str(self.staged.gateway), "run", "--only", "capture,ui"
                ),
                env=self.staged.env(self.creds, state=True),
                cwd="/",
                stdout=subprocess.DEVNULL,
                stderr=log,
                umask=0o007,
            )
        wait_for_port(self.port, self.proc, timeout=60)
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)
        self.proc = None


def _client(port: int) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    csrf = client.get("/api/session").json()["csrf"]
    return client, csrf


def test_pin_and_settings_work_on_the_installed_layout(staged: Staged) -> None:
    port = free_port()
    config_bytes = _write_config(staged, port)
    assert _mode(staged.etc / "gateway.toml") == ("0o640", 0, staged.gid)
    creds = staged.credentials(
        "capture",
        staged.capture,
        {"pin": staged.etc / "pin", "gateway.key": staged.etc / "tls/gateway.key"},
    )
    service = Service(staged, port, creds).start()
    try:
        client, csrf = _client(port)
        headers = {"x-csrf-token": csrf}
        assert client.get("/api/session").json()["pin_set"] is True
        assert (
            client.post("/api/pin/unlock", json={"pin": "000000"}, headers=headers).status_code
            == 403
        )
        unlocked = client.post("/api/pin/unlock", json={"pin": PIN}, headers=headers)
        assert unlocked.status_code == 200, unlocked.text
        view = client.get("/api/settings").json()
        dest = dict(view["destinations"][0], ae_title="PACS2", port=11113)
        saved = client.put("/api/settings", json={"destinations": [dest]}, headers=headers)
        assert saved.status_code == 200, saved.text
        # A new PIN chosen on the screen outlives a restart (the credential,
        # unchanged, is not taken again).
        new_pin = "771204"
        changed = client.post("/api/pin/setup", json={"pin": new_pin}, headers=headers)
        assert changed.status_code == 200, changed.text
        client.close()
    finally:
        service.stop()
    settings = staged.ui_state / "settings.toml"
    assert _mode(settings) == ("0o640", staged.capture[0], staged.gid)
    pin_hash = staged.ui_state / "pin-hash"
    assert _mode(pin_hash) == ("0o600", staged.capture[0], staged.gid)
    assert PIN not in pin_hash.read_text() and new_pin not in pin_hash.read_text()
    assert (staged.etc / "gateway.toml").read_bytes() == config_bytes  # /etc untouched
    assert tomllib.loads(settings.read_text())["destinations"][0]["ae_title"] == "PACS2"
    queue_db = staged.root / "var/lib/dicom-gateway/outbox.sqlite"
    for made in queue_db.parent.iterdir():  # the database, its WAL, the locks
        if made.is_file():
            assert _mode(made)[0] == "0o660" and _mode(made)[2] == staged.gid, made

    # The forwarder's user reads the screen's settings, not the PIN's hash,
    # and opens the shared queue.
    fcreds = staged.credentials(
        "forwarder", staged.forwarder, {"gateway.key": staged.etc / "tls/gateway.key"}
    )
    env = staged.env(fcreds, state=False)

    def as_forwarder(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = staged.as_user(staged.forwarder, str(staged.gateway), *args)
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd="/")

    shown = as_forwarder("config", "show")
    assert shown.returncode == 0, shown.stderr
    dest = json.loads(shown.stdout)["destinations"][0]
    assert (dest["ae_title"], dest["port"]) == ("PACS2", 11113)
    peek = subprocess.run(
        staged.as_user(staged.forwarder, "/bin/cat", str(pin_hash)), capture_output=True, timeout=10
    )
    assert peek.returncode != 0 and b"scrypt" not in peek.stdout
    retried = as_forwarder("queue", "retry", "--all")  # a write to the shared database
    assert retried.returncode == 0, retried.stderr

    service = Service(staged, port, creds).start()
    try:
        client, csrf = _client(port)
        headers = {"x-csrf-token": csrf}
        old = client.post("/api/pin/unlock", json={"pin": PIN}, headers=headers)
        assert old.status_code == 403, old.text
        new = client.post("/api/pin/unlock", json={"pin": new_pin}, headers=headers)
        assert new.status_code == 200, new.text
        client.close()
    finally:
        service.stop()
    assert "Traceback" not in service.log.read_text(errors="replace")
