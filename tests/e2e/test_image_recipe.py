"""The parts of the image recipe that run in seconds, without building or
booting an image (`make image-test` does that, tests/image): script syntax
(bash -n, shellcheck), the staged root tree with its units enabled and
verified by systemd, the first-boot identity step on real files, the
build's refusal to use an unpinned base image, and the initramfs builder."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

from gateway.ui.security import verify_pin
from tests.support.process import REPO, require_tool

IMAGE = REPO / "image"
SCRIPTS = sorted(
    [
        IMAGE / "build.sh",
        IMAGE / "build-debian.sh",
        IMAGE / "mkinitramfs.sh",
        IMAGE / "stage-root.sh",
        IMAGE / "debian/system.sh",
        IMAGE / "files/dicom-gateway-firstboot",
        IMAGE / "files/dicom-gateway-service-access",
        *(IMAGE / "stages").glob("[0-9][0-9]-*.sh"),
    ]
)


def test_scripts_parse_and_pass_shellcheck() -> None:
    assert len(SCRIPTS) >= 11
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
    identity.write_text('ae_title = "EDGE7"\nstation_name = "TRUCK-2"\npin = "47110808"\n')
    conf = tmp_path / "config"
    env = {
        **os.environ,
        "DICOM_GATEWAY_CONF_DIR": str(conf),
        "DICOM_GATEWAY_TEMPLATE": str(IMAGE / "files/gateway.toml.template"),
        "DICOM_GATEWAY_OWNER": f"{os.getuid()}:{os.getgid()}",
        "DICOM_GATEWAY_PYTHON": str(REPO / ".venv/bin/python"),
    }
    script = str(IMAGE / "files/dicom-gateway-firstboot")
    subprocess.run([script, str(identity)], check=True, env=env, timeout=60)
    assert not identity.exists()
    assert (conf / "pin").read_text() == "471108\n"
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
    # The UI verifies the PIN against its scrypt hash; the digits are not in the file.
    text = (conf / "gateway.toml").read_text()
    assert "pin_hash = " in text and "47110808" not in text
    pin_hash = tomllib.loads(text)["ui"]["pin_hash"]
    assert verify_pin("47110808", pin_hash) and not verify_pin("471109", pin_hash)
    # The PACS, when the identity file names it: mutual TLS with the supplied
    # certificates, the key handed over by systemd (LoadCredential=).
    identity.write_text('ae_title = "EDGE7"\npin = "47110808"\npacs_host = "10.0.2.100"\n')
    subprocess.run([script, str(identity)], check=True, env=env, timeout=60)
    (dest,) = tomllib.loads((conf / "gateway.toml").read_text())["destinations"]
    assert dest["host"] == "10.0.2.100" and dest["port"] == 2762 and dest["ae_title"] == "PACS"
    assert dest["tls"]["key"] == "${CREDENTIALS_DIRECTORY}/gateway.key"
    identity.write_text('ae_title = "EDGE7"\npin = "47110808"\npacs_host = "h"\npacs_port = "x"\n')
    bad = subprocess.run([script, str(identity)], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "pacs_port must be a port number" in bad.stderr
    identity.write_text('ae_title = "EDGE7"\npin = "12"\n')
    bad = subprocess.run([script, str(identity)], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "pin must be 6 to 12 digits" in bad.stderr


def test_base_image_is_pinned_by_sha256() -> None:
    env = dict(
        line.split("=", 1)
        for line in (IMAGE / "base.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert env["BASE_URL"].endswith("/2024-11-19-raspios-bookworm-arm64-lite.img.xz")
    assert env["BASE_SHA256"] == (
        "6ac3a10a1f144c7e9d1f8e568d75ca809288280a593eb6ca053e49b539f465a4"
    )


def test_build_refuses_an_unpinned_base(tmp_path: Path) -> None:
    unpinned = tmp_path / "base.env"
    unpinned.write_text(
        (IMAGE / "base.env").read_text().replace("BASE_SHA256=6ac3", "BASE_SHA256=#6ac3")
    )
    result = subprocess.run(
        ["bash", str(IMAGE / "build.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "IMAGE_BASE_ENV": str(unpinned)},
    )
    assert result.returncode != 0
    assert result.stderr.strip().startswith("image: ")
    assert "is not pinned" in result.stderr
    assert "\n" not in result.stderr.strip()


def test_build_names_an_unknown_base() -> None:
    result = subprocess.run(
        ["bash", str(IMAGE / "build.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "BASE": "ubuntu"},
    )
    assert result.returncode != 0
    assert result.stderr.strip() == "image: BASE must be raspios or debian, not 'ubuntu'"


def test_initramfs_takes_the_modules_and_their_dependencies(tmp_path: Path) -> None:
    """mkinitramfs.sh on a fake root: every listed module that exists, after
    the modules it depends on, each once; busybox and /init inside."""
    root = tmp_path / "root"
    mods = root / "lib/modules/6.1.0-test"
    for rel in (
        "kernel/fs/ext4/ext4.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/lib/crc16.ko",
        "kernel/fs/mbcache.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/fs/overlayfs/overlay.ko",
    ):
        (mods / rel).parent.mkdir(parents=True, exist_ok=True)
        (mods / rel).write_bytes(b"\x7fELF module")
    (mods / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"
        "kernel/fs/jbd2/jbd2.ko:\nkernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\n"
        "kernel/drivers/block/virtio_blk.ko:\nkernel/fs/overlayfs/overlay.ko:\n"
    )
    (root / "bin").mkdir()
    shutil.copy("/bin/true", root / "bin/busybox")
    out = tmp_path / "initrd.img"
    subprocess.run([str(IMAGE / "mkinitramfs.sh"), str(root), str(out)], check=True, timeout=60)
    listing = subprocess.run(
        f"gzip -dc {out} | cpio -t --quiet", shell=True, capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"init", "bin/busybox", "lib/modules/order"} <= set(listing), listing
    extract = tmp_path / "x"
    extract.mkdir()
    subprocess.run(
        f"gzip -dc {out} | cpio -id --quiet", shell=True, cwd=extract, check=True, timeout=60
    )
    order = (extract / "lib/modules/order").read_text().split()
    assert order == [
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/lib/crc16.ko",
        "kernel/fs/mbcache.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/ext4/ext4.ko",
        "kernel/fs/overlayfs/overlay.ko",
    ]
    missing = subprocess.run(
        [str(IMAGE / "mkinitramfs.sh"), str(tmp_path / "nothing"), str(out)],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and missing.stderr.startswith("mkinitramfs: ")
