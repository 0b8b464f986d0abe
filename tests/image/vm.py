"""The appliance image booted under QEMU with real systemd, driven from
outside as an installer or a service technician would: files put on the
boot partition before the first boot (the identity file, an SSH key made for
this test run, never in the image), user-mode networking with host forwards
(SSH in; the PACS reached by the guest at 10.0.2.100, a storescp on the
host's loopback), commands over SSH, a power cut as SIGKILL of QEMU.

`restrict=on` keeps the guest off every network but those forwards: its time
server requests and anything else go nowhere."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.process import REPO, free_port, require_tool

ARCH = os.environ.get("IMAGE_ARCH", "amd64")
OUT = REPO / "image/out"
PACS_GUEST_ADDR = "10.0.2.100"
PACS_GUEST_PORT = 2762
BOOT_OFFSET = "1M"  # the FAT boot partition starts at 1 MiB (build-debian.sh)


def image_files(arch: str = ARCH) -> tuple[Path, Path, Path]:
    """The image, kernel and initramfs `make image BASE=debian` wrote."""
    base = OUT / f"dicom-gateway-debian-{arch}"
    files = (base.with_suffix(".img"), base.with_suffix(".vmlinuz"), base.with_suffix(".initrd"))
    missing = [str(p) for p in files if not p.is_file()]
    assert not missing, f"no image built: {missing}; run make image-test ARCH={arch}"
    return files


def kvm_works() -> bool:
    """KVM only when the host has it for us; nested KVM here does not boot
    a guest, so IMAGE_ACCEL=kvm is an explicit choice, TCG the default."""
    return os.environ.get("IMAGE_ACCEL") == "kvm" and os.access("/dev/kvm", os.R_OK | os.W_OK)


@dataclass
class VM:
    """One appliance disk and the QEMU that boots it (again and again)."""

    workdir: Path
    arch: str = ARCH
    memory_mb: int = 2048
    pacs_port: int = 0  # the host's storescp the guest's 10.0.2.100:2762 reaches
    ssh_port: int = field(default_factory=free_port)
    disk: Path = field(init=False)
    key: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = None
    boots: int = 0
    rtc_base: str = "utc"
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        image, self.kernel, self.initrd = image_files(self.arch)
        self.disk = self.workdir / "disk.img"
        subprocess.run(["cp", "--sparse=always", str(image), str(self.disk)], check=True)
        self.key = self.workdir / "id_ed25519"
        subprocess.run(
            [require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
            check=True,
        )
        self.log_path = self.workdir / "serial.log"

    # The boot partition, as a Pi user writes it on a card reader.
    def put_boot_file(self, src: Path, name: str | None = None) -> None:
        image = f"{self.disk}@@{BOOT_OFFSET}"
        subprocess.run(
            [require_tool("mcopy"), "-o", "-i", image, str(src), f"::/{name or src.name}"],
            check=True,
        )

    def boot_files(self) -> list[str]:
        image = f"{self.disk}@@{BOOT_OFFSET}"
        out = subprocess.run(
            [require_tool("mdir"), "-b", "-i", image, "::/"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return [line.rsplit("/", 1)[-1] for line in out.split()]

    def command(self) -> list[str]:
        net = f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22" + (
            f",guestfwd=tcp:{PACS_GUEST_ADDR}:{PACS_GUEST_PORT}-tcp:127.0.0.1:{self.pacs_port}"
            if self.pacs_port
            else ""
        )
        accel = "kvm" if kvm_works() else "tcg"
        if self.arch == "amd64":
            qemu = [require_tool("qemu-system-x86_64"), "-M", "q35", "-accel", accel]
            # numpy's wheels need x86-64-v2 (SSE4.2, POPCNT): TCG's default CPU lacks it.
            qemu += ["-cpu", "host" if accel == "kvm" else "max"]
            console = "ttyS0"
        else:
            qemu = [require_tool("qemu-system-aarch64"), "-M", "virt", "-cpu", "cortex-a72"]
            qemu += ["-accel", "tcg"]
            console = "ttyAMA0"
        return [
            *qemu,
            "-smp",
            "2",
            "-m",
            str(self.memory_mb),
            "-nographic",
            "-rtc",
            f"base={self.rtc_base},clock=vm",
            "-kernel",
            str(self.kernel),
            "-initrd",
            str(self.initrd),
            "-append",
            f"root=LABEL=GWROOT console={console},115200",
            "-drive",
            f"file={self.disk},format=raw,if=virtio,cache=writeback",
            "-netdev",
            net,
            "-device",
            "virtio-net-pci,netdev=n0",
            "-device",
            "virtio-gpu-pci",
        ]

    def start(self) -> float:
        """Power on; returns the wall time it took until SSH answered."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.boots += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - QEMU holds it until it exits
        log.write(f"\n===== boot {self.boots} =====\n".encode())
        log.flush()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.wait_ssh()
        return time.monotonic() - t0

    def wait_ssh(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.serial_tail()
            if self.run("true", timeout=20, check=False).returncode == 0:
                return
            time.sleep(2)
        raise AssertionError(f"no SSH after {timeout} s\n{self.serial_tail()}")

    def serial_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def ssh_base(self) -> list[str]:
        return [
            require_tool("ssh"),
            "-i",
            str(self.key),
            "-p",
            str(self.ssh_port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "BatchMode=yes",
        ]

    def run(
        self, script: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """A shell command in the guest, as root over SSH."""
        result = subprocess.run(
            [*self.ssh_base(), "root@127.0.0.1", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check:
            assert result.returncode == 0, (script, result.returncode, result.stdout, result.stderr)
        return result

    def out(self, script: str, timeout: float = 120) -> str:
        return self.run(script, timeout=timeout).stdout.strip()

    def forward(self, remote_port: int) -> tuple[int, subprocess.Popen[bytes]]:
        """A host port tunnelled (ssh -L) to the guest's loopback: the UI and
        the metrics listen on 127.0.0.1 only, as they should."""
        local = free_port()
        proc = subprocess.Popen(
            [
                *self.ssh_base(),
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                f"127.0.0.1:{local}:127.0.0.1:{remote_port}",
                "root@127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", local), timeout=2).close()
                return local, proc
            except OSError:
                time.sleep(0.3)
        proc.kill()
        raise AssertionError(f"ssh -L {local}:{remote_port} did not come up")

    def wait_active(self, units: list[str], timeout: float = 300) -> dict[str, str]:
        """Until every unit is active (Type=notify: READY=1 came), or fail
        with their states and the journal's last lines."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {u: self.out(f"systemctl is-active {u} || true") for u in units}
            if all(s == "active" for s in states.values()):
                return states
            time.sleep(3)
        journal = self.run("journalctl -b --no-pager | tail -80", check=False).stdout
        raise AssertionError(f"not active after {timeout} s: {states}\n{journal}")

    def poweroff(self, timeout: float = 300) -> None:
        """A clean shutdown (systemctl poweroff), QEMU exits."""
        assert self.proc is not None
        self.run("systemctl poweroff", check=False, timeout=30)
        self.proc.wait(timeout=timeout)
        self.proc = None

    def power_cut(self) -> None:
        """The plug pulled: QEMU killed with SIGKILL, nothing flushed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.power_cut()


def quoted(*args: str) -> str:
    return shlex.join(args)


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
