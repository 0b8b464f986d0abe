"""The units as systemd itself reads them: `systemd-analyze verify` on a
staged root (so ExecStart= resolves) and the offline security review, which
must stay at an exposure of 2.0 or less for every service."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.support.process import REPO, require_tool

UNITS = sorted(
    p for p in (REPO / "systemd").iterdir() if p.suffix in (".service", ".socket", ".timer")
)
SERVICES = [p for p in UNITS if p.suffix == ".service"]
MAX_EXPOSURE = 2.0


def _stage(root: Path) -> None:
    """A root tree with the host's system units, ours, and an executable at
    every Exec*= path (a wrapper around the development install); a command
    the host lacks stays missing, so verify names it."""
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, unit_dir / unit.name)
        for exe in re.findall(r"^Exec\w+=[-@:+!]*(\S+)", unit.read_text(), re.M):
            target = root / exe.lstrip("/")
            name = Path(exe).name
            real = shutil.which(name) or str(REPO / ".venv/bin" / name)
            if not Path(real).exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
            target.chmod(0o755)


def test_units_exist() -> None:
    names = {p.name for p in UNITS}
    assert {"dicom-gateway.service", "dicom-gateway-forwarder.service"} <= names


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    _stage(tmp_path)
    result = subprocess.run(
        [tool, "verify", f"--root={tmp_path}", *(u.name for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ours = [line for line in result.stderr.splitlines() if any(u.name in line for u in UNITS)]
    assert not ours, "\n".join(ours)


def test_security_exposure_at_most_2() -> None:
    tool = require_tool("systemd-analyze")
    for unit in SERVICES:
        result = subprocess.run(
            [
                tool,
                "security",
                "--offline=true",
                f"--threshold={int(MAX_EXPOSURE * 10)}",
                str(unit),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert match, result.stdout + result.stderr
        assert float(match.group(1)) <= MAX_EXPOSURE, (unit.name, result.stdout)
        assert result.returncode == 0, result.stdout


def test_units_run_the_split_parts_and_hand_keys_as_credentials() -> None:
    capture = (REPO / "systemd/dicom-gateway.service").read_text()
    forwarder = (REPO / "systemd/dicom-gateway-forwarder.service").read_text()
    assert re.search(r"^ExecStart=\S+ run --only capture,ui$", capture, re.M)
    assert re.search(r"^ExecStart=\S+ run --only forwarder$", forwarder, re.M)
    for text in (capture, forwarder):
        for key in (
            "Type=notify",
            "WatchdogSec=",
            "Restart=on-failure",
            "LoadCredential=",
            "SystemCallFilter=@system-service",
            "ProtectSystem=strict",
        ):
            assert key in text
    assert "DeviceAllow=char-video4linux" in capture
    assert "DeviceAllow" not in forwarder and "PrivateDevices=yes" in forwarder


def test_capture_and_forwarder_are_separate_users_sharing_only_the_queue_group() -> None:
    units = {p.name: p.read_text() for p in SERVICES}
    capture, forwarder = units["dicom-gateway.service"], units["dicom-gateway-forwarder.service"]
    assert "User=dicom-capture" in capture and "User=dicom-forwarder" in forwarder
    for text in (capture, forwarder):
        assert "Group=dicom-gateway" in text and "UMask=0007" in text
        assert "ReadWritePaths=/var/lib/dicom-gateway\n" in text
        # The shared queue is no StateDirectory= (systemd would chown it to
        # whichever unit started last); only the capture unit has one, its own.
        assert not re.search(r"^StateDirectory=dicom-gateway$", text, re.M)
        assert "DICOM_GATEWAY_SETTINGS=/var/lib/dicom-gateway-ui/settings.toml" in text
    assert re.search(r"^StateDirectory=dicom-gateway-ui$", capture, re.M)
    assert "SupplementaryGroups=video dialout" in capture
    assert "SupplementaryGroups" not in forwarder
    assert "LoadCredential=pin:" in capture and "LoadCredential=pin:" not in forwarder


def test_sysusers_and_tmpfiles_are_accepted(tmp_path: Path) -> None:
    """systemd-sysusers and systemd-tmpfiles apply our entries to a scratch root."""
    sysusers = require_tool("systemd-sysusers")
    tmpfiles = require_tool("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy(f"/etc/{name}", tmp_path / "etc" / name)
    conf = REPO / "systemd/sysusers.d/dicom-gateway.conf"
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    groups = (tmp_path / "etc/group").read_text()
    shared = re.search(r"^dicom-gateway:x:(\d+):$", groups, re.M)
    assert shared, groups
    for user in ("dicom-capture", "dicom-forwarder"):  # primary group: the shared one
        assert re.search(rf"^{user}:x:\d+:{shared.group(1)}:.*:/usr/sbin/nologin$", passwd, re.M)
    for group in ("video", "dialout"):
        assert re.search(rf"^{group}:x:\d+:.*\bdicom-capture\b", groups, re.M), group
        assert not re.search(rf"^{group}:x:\d+:.*\bdicom-forwarder\b", groups, re.M), group
    assert re.search(r"^dicom-kiosk:x:\d+:\d+:.*:/usr/sbin/nologin$", passwd, re.M)
    for group in ("video", "render", "input"):
        assert re.search(rf"^{group}:x:\d+:.*\bdicom-kiosk\b", groups, re.M), group
    assert not re.search(r"^dicom-gateway:x:\d+:.*\bdicom-kiosk\b", groups, re.M)
    result = subprocess.run(
        [
            tmpfiles,
            f"--root={tmp_path}",
            "--create",
            str(REPO / "systemd/tmpfiles.d/dicom-gateway.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "var/lib/dicom-gateway/objects").is_dir()
    assert oct((tmp_path / "etc/dicom-gateway").stat().st_mode & 0o777) == "0o750"
    assert oct((tmp_path / "var/lib/dicom-gateway").stat().st_mode & 0o7777) == "0o2770"
