"""The parts of the image recipe that run without an arm64 chroot: script
syntax (bash -n, shellcheck), the staged root tree with its units enabled
and verified by systemd, the first-boot identity step on real files, and
the build's refusal to use an unpinned base image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.process import REPO, require_tool

IMAGE = REPO / "image"
SCRIPTS = sorted(
    [
        IMAGE / "build.sh",
        IMAGE / "stage-root.sh",
        IMAGE / "files/dicom-gateway-firstboot",
        *(IMAGE / "stages").glob("[0-9][0-9]-*.sh"),
    ]
)


def test_scripts_parse_and_pass_shellcheck() -> None:
    assert len(SCRIPTS) >= 7
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), script
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)
    result = subprocess.run(
        [require_tool("shellcheck"), "-x", "-S", "warning", *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout


def test_staged_root_enables_and_verifies_the_units(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    subprocess.run([str(IMAGE / "stage-root.sh"), str(root), str(REPO)], check=True, timeout=60)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in (
        "dicom-gateway.service",
        "dicom-gateway-forwarder.service",
        "dicom-gateway-firstboot.service",
    ):
        assert (wants / unit).is_symlink(), unit
    fstab = (root / "etc/fstab").read_text()
    assert "LABEL=GWDATA" in fstab and "/var/lib/dicom-gateway" in fstab
    assert (root / "usr/lib/sysusers.d/dicom-gateway.conf").is_file()
    exe = root / "opt/dicom-gateway/venv/bin/dicom-gateway"
    exe.parent.mkdir(parents=True)
    exe.write_text(f'#!/bin/sh\nexec {REPO}/.venv/bin/dicom-gateway "$@"\n')
    exe.chmod(0o755)
    result = subprocess.run(
        [
            require_tool("systemd-analyze"),
            "verify",
            f"--root={root}",
            "dicom-gateway.service",
            "dicom-gateway-forwarder.service",
            "dicom-gateway-firstboot.service",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "dicom-gateway" not in result.stderr, result.stderr
    # Staging twice (a rebuild) changes nothing: no duplicate fstab lines.
    subprocess.run([str(IMAGE / "stage-root.sh"), str(root), str(REPO)], check=True, timeout=60)
    assert (root / "etc/fstab").read_text() == fstab
    # No secrets in the staged tree.
    for name in ("pin", "gateway.key", "gateway.toml"):
        assert not list(root.rglob(name)), name


def test_first_boot_creates_identity_and_wipes_the_boot_file(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    identity = boot / "gateway-identity.toml"
    identity.write_text('ae_title = "EDGE7"\nstation_name = "TRUCK-2"\npin = "4711"\n')
    conf = tmp_path / "config"
    env = {
        **os.environ,
        "DICOM_GATEWAY_CONF_DIR": str(conf),
        "DICOM_GATEWAY_TEMPLATE": str(IMAGE / "files/gateway.toml.template"),
        "DICOM_GATEWAY_OWNER": f"{os.getuid()}:{os.getgid()}",
    }
    script = str(IMAGE / "files/dicom-gateway-firstboot")
    subprocess.run([script, str(identity)], check=True, env=env, timeout=60)
    assert not identity.exists()
    assert (conf / "pin").read_text() == "4711\n"
    assert oct((conf / "pin").stat().st_mode & 0o777) == "0o600"
    assert (conf / "tls/gateway.key").is_file() and (boot / "EDGE7.csr").is_file()
    check = subprocess.run(
        [
            str(REPO / ".venv/bin/dicom-gateway"),
            "--config",
            str(conf / "gateway.toml"),
            "config",
            "show",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert '"ae_title": "EDGE7"' in check.stdout and '"station_name": "TRUCK-2"' in check.stdout
    identity.write_text('ae_title = "EDGE7"\npin = "12"\n')
    bad = subprocess.run([script, str(identity)], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "pin must be 4 to 12 digits" in bad.stderr


def test_build_refuses_an_unpinned_base() -> None:
    result = subprocess.run(
        ["bash", str(IMAGE / "build.sh")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert result.stderr.strip().startswith("image: ")
    assert "\n" not in result.stderr.strip()
