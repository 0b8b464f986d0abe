"""The appliance image, built from Debian's archive and booted under QEMU with
real systemd as PID 1, checked from outside in the order an installer meets
it: first boot from the identity file, every unit up, the hardening in
force, the read-only root, a capture from the command line and an exam
through the UI reaching the PACS over mutual TLS, the watchdog holding for
ten minutes, settings surviving a reboot, power cuts during captures and
forwarding, and a boot with the PACS gone and the clock a year behind.

Run by `make image-test` (never by `make test`): the tests share one VM and
run in file order."""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pydicom

from tests.image.conftest import AE_TITLE, PIN, POWER_CUTS, WATCHDOG_MINUTES, Appliance
from tests.image.vm import VM

SERVICES = ["dicom-gateway.service", "dicom-gateway-forwarder.service"]
KIOSK = "dicom-gateway-kiosk.service"
EXE = "/opt/dicom-gateway/venv/bin/dicom-gateway"
# The command line as an operator runs it on the box: as the capture
# service's user, with the key handed over as the service gets it.
CLI = (
    "systemd-run --quiet --wait --pipe --collect"
    ' -p User="$(systemctl show -p User --value dicom-gateway.service)"'
    " -p Group=dicom-gateway -p UMask=0007"
    " -p LoadCredential=gateway.key:/etc/dicom-gateway/tls/gateway.key"
    " -E DICOM_GATEWAY_CONFIG=/etc/dicom-gateway/gateway.toml"
    " -p ReadWritePaths=/var/lib/dicom-gateway -p ProtectSystem=strict"
    f" {EXE}"
)
MAX_EXPOSURE = 2.0  # as tests/e2e/test_systemd_units.py, on the running system


def received_uids(pacs_dir: Path) -> set[str]:
    uids = set()
    for f in pacs_dir.iterdir():
        if f.is_file():
            try:
                uids.add(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID))
            except Exception:  # storescp may still be writing it
                continue
    return uids


def wait_received(pacs_dir: Path, uids: set[str], timeout: float = 300) -> set[str]:
    deadline = time.monotonic() + timeout
    got: set[str] = set()
    while time.monotonic() < deadline:
        got = received_uids(pacs_dir)
        if uids <= got:
            return got
        time.sleep(3)
    raise AssertionError(f"not at the PACS after {timeout} s: {sorted(uids - got)}")


def cli_capture(vm: VM, frames: int, patient: str) -> list[str]:
    """`dicom-gateway capture` as the service's user; the SOP Instance UIDs
    it acknowledged."""
    out = vm.out(
        f"{CLI} capture --patient-id {patient} --patient-name 'Image^Test' --frames {frames}",
        timeout=600,
    )
    return re.findall(r"^captured \d+/\d+: queue object \d+ \(([\d.]+)\)$", out, re.M)


class UI:
    """The touchscreen's API through an SSH tunnel to the guest's loopback,
    with the session cookie and CSRF token a browser would keep."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.csrf = str(self.call("GET", "/api/session")["csrf"])

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("content-type", "application/json")
        if getattr(self, "csrf", None):
            req.add_header("x-csrf-token", self.csrf)
        try:
            with self.opener.open(req, timeout=120) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read().decode()}") from None
        return json.loads(text) if text else None


def open_ui(vm: VM) -> tuple[UI, subprocess.Popen[bytes]]:
    port, tunnel = vm.forward(8080)
    return UI(port), tunnel


def test_first_boot_provisions_the_station_and_removes_the_identity_file(
    appliance: Appliance,
) -> None:
    vm = appliance.vm
    journal = vm.out("journalctl -b -u dicom-gateway-firstboot --no-pager -o cat")
    print("\nfirst-boot transcript:\n" + journal)
    assert f"station {AE_TITLE} configured" in journal
    files = vm.out("ls /boot/firmware").split()
    assert "gateway-identity.toml" not in files and "gateway.key" not in files, files
    assert "authorized_keys" not in files, files  # moved to /data/ssh
    conf = vm.out("cat /etc/dicom-gateway/gateway.toml")
    assert f'ae_title = "{AE_TITLE}"' in conf and PIN not in conf
    modes = vm.out(
        "stat -c '%n %a %U:%G' /etc/dicom-gateway/pin /etc/dicom-gateway/tls/gateway.key"
        " /etc/dicom-gateway/tls/gateway.pem /etc/dicom-gateway/tls/ca.pem"
    )
    assert re.search(r"/pin 600 root:root", modes), modes
    assert re.search(r"/gateway.key 600 root:", modes), modes
    shown = vm.out(f"{CLI} config show")
    assert f'"ae_title": "{AE_TITLE}"' in shown and '"station_name": "TRUCK-2"' in shown


def test_both_services_and_the_kiosk_are_up_and_nothing_failed(appliance: Appliance) -> None:
    vm = appliance.vm
    for unit in SERVICES:
        props = vm.out(f"systemctl show {unit} -p ActiveState -p SubState -p StatusText -p Type")
        assert "ActiveState=active" in props and "Type=notify" in props, props
        assert "StatusText=running" in props, props  # READY=1 and the STATUS= after it
    assert vm.out("systemctl is-active graphical.target") == "active"
    kiosk = vm.wait_active([KIOSK], timeout=120)
    assert kiosk == {KIOSK: "active"}
    assert vm.out("systemctl --failed --no-legend --plain") == ""
    assert vm.out("readlink /proc/1/exe") == "/usr/lib/systemd/systemd"
    print(f"\nboot: {vm.out('systemd-analyze')}")


def test_units_keep_their_hardening_on_the_running_system(appliance: Appliance) -> None:
    for unit in SERVICES:
        report = appliance.vm.run(f"systemd-analyze security --no-pager {unit}", check=False).stdout
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
        assert match, report
        assert float(match.group(1)) <= MAX_EXPOSURE, (unit, report[-2000:])


def test_root_is_read_only_and_the_queue_partition_writable(appliance: Appliance) -> None:
    vm = appliance.vm
    assert "ro" in vm.out("findmnt -no OPTIONS /media/root-ro").split(",")
    assert vm.run("touch /media/root-ro/x", check=False).returncode != 0
    assert vm.out("findmnt -no FSTYPE /") == "overlay"
    assert vm.out("findmnt -no SOURCE,FSTYPE /data") == "/dev/vda3 ext4"
    assert "rw" in vm.out("findmnt -no OPTIONS /data").split(",")
    assert vm.out("findmnt -no SOURCE /var/lib/dicom-gateway").endswith("[/queue]")
    user = vm.out("systemctl show -p User --value dicom-gateway.service")
    vm.out(f"runuser -u {user} -- touch /var/lib/dicom-gateway/.probe")
    vm.out("rm /var/lib/dicom-gateway/.probe")
    # The service itself cannot write outside its directories.
    denied = vm.run(
        "systemd-run --wait --pipe -q -p User=dicom-gateway -p ProtectSystem=strict "
        "touch /opt/dicom-gateway/x",
        check=False,
    )
    assert denied.returncode != 0


def test_cli_capture_reaches_the_pacs_over_mutual_tls(appliance: Appliance) -> None:
    uids = cli_capture(appliance.vm, 2, "CLI1")
    assert len(uids) == 2
    wait_received(appliance.pacs.directory, set(uids))
    state = json.loads(appliance.vm.out(f"{CLI} queue list --json"))
    sent = {o["sop_instance_uid"]: o["state"] for o in state}
    assert all(sent.get(u) in ("sent", "committed") for u in uids), sent


def test_ui_exam_reaches_the_pacs(appliance: Appliance) -> None:
    ui, tunnel = open_ui(appliance.vm)
    try:
        exam = ui.call(
            "POST",
            "/api/exams",
            {"patient": {"family_name": "Exam", "given_name": "Ui", "id": "UI1", "sex": "F"}},
        )
        shot = ui.call("POST", f"/api/exams/{exam['id']}/capture")
        ui.call("POST", f"/api/exams/{exam['id']}/finish")
        status = ui.call("GET", "/api/status")
    finally:
        tunnel.kill()
    queued = json.loads(appliance.vm.out(f"{CLI} queue list --json"))
    (uid,) = [o["sop_instance_uid"] for o in queued if o["id"] == shot["id"]]
    wait_received(appliance.pacs.directory, {uid})
    assert status["queue"] is not None


def test_watchdog_holds_with_every_loop_running(appliance: Appliance) -> None:
    """Guest uptime of WATCHDOG_MINUTES (10) on the first boot, everything
    above done in it: no restart, no watchdog timeout, every loop healthy."""
    vm = appliance.vm
    want = WATCHDOG_MINUTES * 60
    while (up := float(vm.out("cut -d' ' -f1 /proc/uptime"))) < want:
        time.sleep(min(30.0, want - up + 1))
    for unit in SERVICES:
        restarts = vm.out(f"systemctl show {unit} -p NRestarts --value")
        # Why it restarted, said in the failure: the guest's journal is gone with it.
        assert restarts == "0", vm.out(f"journalctl -b -u {unit} --no-pager | tail -80")
    journal = vm.out("journalctl -b --no-pager -o cat | grep -ci 'watchdog timeout' || true")
    assert journal == "0", vm.out("journalctl -b --no-pager | grep -i watchdog")
    loops: dict[str, bool] = {}
    for remote in (9108, 9109):  # metrics.listen (capture, UI), metrics.forwarder_listen
        port, tunnel = vm.forward(remote)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60) as resp:
                loops.update(json.loads(resp.read())["loops"])
        finally:
            tunnel.kill()
    assert {"ui", "control", "forwarder"} <= set(loops) and all(loops.values()), loops
    print(f"\nwatchdog: {up / 60:.1f} min of guest uptime, no restart; /health {loops}")


def test_a_killed_loop_thread_gets_the_service_restarted_by_the_watchdog(
    appliance: Appliance,
) -> None:
    """The test hook (gateway.ops.health, enabled by a drop-in in /run that
    no reboot keeps) ends the control loop's thread: its heartbeat stops,
    the pings stop, systemd's watchdog kills and restarts the service."""
    vm = appliance.vm
    unit = SERVICES[0]
    vm.out(
        "mkdir -p /run/systemd/system/dicom-gateway.service.d /run/dicom-gateway-test && "
        "printf '[Service]\\nEnvironment=DICOM_GATEWAY_TEST_KILL_DIR=/run/dicom-gateway-test\\n' "
        "> /run/systemd/system/dicom-gateway.service.d/test-hook.conf && "
        f"systemctl daemon-reload && systemctl restart {unit}"
    )
    vm.wait_active([unit])
    before = int(vm.out(f"systemctl show {unit} -p NRestarts --value"))
    pid = vm.out(f"systemctl show {unit} -p MainPID --value")
    vm.out(f"echo {pid} > /run/dicom-gateway-test/kill-control")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if vm.out(f"systemctl show {unit} -p MainPID --value") not in (pid, "0"):
            break
        time.sleep(5)
    journal = vm.out(f"journalctl -b -u {unit} --no-pager -o cat | tail -60")
    assert "test hook: loop control killed" in journal, journal
    assert "Watchdog timeout" in journal, journal
    vm.out(
        "rm -rf /run/dicom-gateway-test /run/systemd/system/dicom-gateway.service.d && "
        "systemctl daemon-reload"
    )
    vm.wait_active([unit])
    assert int(vm.out(f"systemctl show {unit} -p NRestarts --value")) == before + 1


def test_settings_saved_in_the_ui_survive_a_reboot(appliance: Appliance) -> None:
    vm = appliance.vm
    ui, tunnel = open_ui(vm)
    try:
        ui.call("POST", "/api/pin/unlock", {"pin": PIN})
        view = ui.call("GET", "/api/settings")
        capture = dict(view["capture"])
        capture["compression"] = "rle" if capture.get("compression") != "rle" else "none"
        ui.call("PUT", "/api/settings", {"capture": capture})
    finally:
        tunnel.kill()
    vm.poweroff()
    wall = vm.start()
    vm.wait_active(SERVICES)
    print(f"\nreboot: SSH after {wall:.0f} s")
    ui, tunnel = open_ui(vm)
    try:
        ui.call("POST", "/api/pin/unlock", {"pin": PIN})
        after = ui.call("GET", "/api/settings")
    finally:
        tunnel.kill()
    assert after["capture"]["compression"] == capture["compression"], after["capture"]


def _capture_until_cut(vm: VM, patient: str, acked: list[str], cut_after: int) -> None:
    """Capture in the guest, collecting each acknowledged UID as it is printed,
    and pull the plug once `cut_after` more were acknowledged."""
    ssh = subprocess.Popen(
        [
            *vm.ssh_base(),
            "root@127.0.0.1",
            f"{CLI} capture --patient-id {patient} --patient-name 'Power^Cut' --frames 200",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert ssh.stdout is not None
    start = len(acked)
    pattern = re.compile(r"^captured \d+/\d+: queue object \d+ \(([\d.]+)\)$")
    cut = threading.Event()

    def read() -> None:
        assert ssh.stdout is not None
        for line in ssh.stdout:
            m = pattern.match(line.strip())
            if m and not cut.is_set():
                acked.append(m.group(1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 600
    while len(acked) - start < cut_after and time.monotonic() < deadline:
        assert ssh.poll() is None, "capture ended before the cut"
        time.sleep(0.2)
    # An acknowledgement printed after this instant may not be counted: a UID
    # in `acked` was printed (so durable) before the plug was pulled.
    cut.set()
    vm.power_cut()
    ssh.kill()
    reader.join(timeout=10)
    assert len(acked) - start >= cut_after


def test_power_cuts_lose_no_acknowledged_object(appliance: Appliance) -> None:
    vm = appliance.vm
    acked: list[str] = []
    for n in range(POWER_CUTS):
        _capture_until_cut(vm, f"CUT{n}", acked, cut_after=3 + n)
        wall = vm.start()
        vm.wait_active(SERVICES)
        fsck = vm.out("journalctl -b --no-pager -o cat -u 'systemd-fsck*' || true")
        print(f"\npower cut {n + 1}: {len(acked)} acknowledged so far; SSH after {wall:.0f} s")
        print(fsck)
        assert vm.out("systemctl --failed --no-legend --plain") == ""
        assert "rw" in vm.out("findmnt -no OPTIONS /data").split(",")
        wait_received(appliance.pacs.directory, set(acked), timeout=600)
    vm.poweroff()
    # The data partition, checked from outside after the last clean shutdown.
    data = appliance.workdir / "data.part"
    start_mb, size_mb = _partition(vm.disk, 3)
    subprocess.run(
        [
            "dd",
            f"if={vm.disk}",
            f"of={data}",
            "bs=1M",
            f"skip={start_mb}",
            f"count={size_mb}",
            "conv=sparse",
            "status=none",
        ],
        check=True,
    )
    check = subprocess.run(["e2fsck", "-fn", str(data)], capture_output=True, text=True)
    data.unlink()
    assert check.returncode == 0, check.stdout + check.stderr
    vm.start()
    vm.wait_active(SERVICES)


def _partition(disk: Path, number: int) -> tuple[int, int]:
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    part = table["partitions"][number - 1]
    return part["start"] * 512 // 2**20, part["size"] * 512 // 2**20


def test_a_boot_without_pacs_and_a_year_behind_still_captures_flagged(
    appliance: Appliance,
) -> None:
    """The RTC a year behind (a Pi has none) and no PACS. systemd moves the
    clock forward to its own floor (timesyncd's clock file in the image),
    which is still before this software's build: captures work, /health
    warns that the clock is before the build, every object is flagged."""
    vm = appliance.vm
    vm.poweroff()
    appliance.pacs.stop()
    year_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 365 * 86400))
    vm.rtc_base = year_ago
    vm.start()
    vm.wait_active(SERVICES)
    rtc = vm.out("cat /sys/class/rtc/rtc0/since_epoch")
    assert abs(int(rtc) - (time.time() - 365 * 86400)) < 3 * 86400, rtc
    now = float(vm.out("date +%s"))
    floor = float(vm.out("stat -c %Y /var/lib/systemd/timesync/clock"))
    assert now >= floor, (now, floor)
    uids = cli_capture(vm, 1, "CLOCK1")
    assert len(uids) == 1
    port, tunnel = vm.forward(9108)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60) as resp:
            health = json.loads(resp.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as resp:
            metrics = resp.read().decode()
    finally:
        tunnel.kill()
    assert health["clock"]["trusted"] is False, health["clock"]
    assert health["clock"]["before_build"] is True, health["clock"]
    assert "earlier than this software's build" in health["clock"]["reason"], health["clock"]
    assert health["clock"]["reason"] in health["warnings"], health
    flagged = re.search(r"^dicom_gateway_queue_unverified_time_objects (\d+)", metrics, re.M)
    assert flagged and int(flagged.group(1)) >= 1, metrics
    journal = vm.out("journalctl -b --no-pager -o cat | grep 'flagged as unverified time'")
    assert journal, "no clock warning in the journal"
    state = json.loads(vm.out(f"{CLI} queue list --json"))
    (mine,) = [o for o in state if o["sop_instance_uid"] == uids[0]]
    assert mine["state"] not in ("sent", "committed"), mine  # queued: the PACS is down
