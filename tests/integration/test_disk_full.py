"""A full disk: captures are refused with a clear one-line reason, nothing
already queued is lost or evicted, and it all still reaches the PACS.

As root (as `make test` runs) the queue lives on a real 4 MiB tmpfs that
fills up; otherwise `queue.min_free_mb` is set above the free space."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.crash import acknowledged
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import Gateway, assert_one_line_error, gateway_config, write_config
from tests.support.pki import PKI


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[bool]:
    path.mkdir()
    if os.geteuid() != 0:
        yield False
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_refuses_captures_and_keeps_the_queue(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    disk = tmp_path / "disk"
    with small_disk(disk) as real:
        data = gateway_config(tmp_path, pki, storescp.port)
        data["queue"] = {"path": str(disk / "queue"), "min_free_mb": 0}
        gw = Gateway(write_config(tmp_path / "gateway.toml", data))
        first = gw("capture", "--patient-id", "D1", "--patient-name", "Disk^Full", "--frames", "2")
        assert first.returncode == 0, first.stderr
        acked = acknowledged(first.stdout)
        if real:  # keep capturing until the file system is really full
            result = gw(
                "capture", "--patient-id", "D1", "--patient-name", "Disk^Full", "--frames", "40"
            )
            acked |= acknowledged(result.stdout)
            line = assert_one_line_error(result)
            assert "No space left on device" in line or "disk nearly full" in line, line
        else:
            data["queue"]["min_free_mb"] = shutil.disk_usage(tmp_path).free // 2**20 + 1000
            write_config(gw.config, data)
            line = assert_one_line_error(
                gw("capture", "--patient-id", "D1", "--patient-name", "Disk^Full")
            )
            assert "disk nearly full" in line and "nothing queued was removed" in line, line
        # The guard: with min_free_mb above what is left, refused before writing.
        data["queue"]["min_free_mb"] = 10**6
        write_config(gw.config, data)
        line = assert_one_line_error(
            gw("capture", "--patient-id", "D1", "--patient-name", "Disk^Full")
        )
        assert "disk nearly full" in line and "capture refused" in line, line
        rows = json.loads(gw("queue", "list", "--json", check=True).stdout)
        assert {r["sop_instance_uid"] for r in rows} == acked
        for row in rows:
            assert Path(row["path"]).stat().st_size == row["size"]
        storescp.start()
        gw("queue", "flush", "--timeout", "60", check=True)
        received = {p.name.split(".", 1)[1] for p in storescp.received()}
        assert acked <= received


def test_disk_filled_from_outside_while_the_service_captures_and_imports(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    """The whole service (`run`, under a real notify socket) on an 8 MiB
    tmpfs that another writer fills while the technician captures through
    the UI and `import` hands files over the control socket: each refusal
    is a message, nothing half-written is queued, nothing unsent is
    evicted, the watchdog pings go on; once there is room again, all of it
    reaches the PACS."""
    import signal
    import threading
    import time

    import cv2
    import httpx
    import numpy as np

    from gateway.dicom.part10 import read_header
    from tests.support.process import GATEWAY, REPO, stop_process
    from tests.support.watchdog import NotifySocket, largest_gap

    assert os.geteuid() == 0, "make test runs as root: a real small file system is needed"
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        data = gateway_config(tmp_path, pki, storescp.port)
        data["queue"] = {"path": str(disk / "queue"), "min_free_mb": 0}
        data["watchdog"] = {"stale_after": 3.0}
        data["capture"]["options"]["fps"] = 10
        config = write_config(tmp_path / "gateway.toml", data)
        gw = Gateway(config)
        scans = tmp_path / "scans"
        scans.mkdir()
        rng = np.random.default_rng(3)
        with NotifySocket(tmp_path / "notify.sock") as notify:
            env = notify.service_env(1_000_000)
            log = tmp_path / "service.log"  # a file: read at a failure, the service still running
            proc = subprocess.Popen(
                [*GATEWAY, "--config", str(config), "run"],
                env=env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=log.open("w"),
                text=True,
            )
            stop = threading.Event()
            filler = disk / "filler"

            def fill() -> None:  # another program on the same disk
                fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    while not stop.is_set():
                        try:
                            os.write(fd, b"\0" * 16384)
                        except OSError:
                            time.sleep(0.05)
                        time.sleep(0.002)
                finally:
                    os.close(fd)

            acked: set[str] = set()
            shots: set[int] = set()  # the toasts shown (queue object IDs)
            refusals: list[str] = []
            try:
                assert notify.wait_for("READY=1", 60), notify.messages
                ui = httpx.Client(base_url=f"http://{data['ui']['listen']}", timeout=30)
                csrf = ui.get("/api/session").json()["csrf"]
                headers = {"X-CSRF-Token": csrf}
                exam = ui.post(
                    "/api/exams",
                    json={"patient": {"family_name": "Disk", "id": "D9"}},
                    headers=headers,
                ).json()["id"]
                t0 = time.monotonic()
                threading.Thread(target=fill, daemon=True).start()
                for n in range(24):
                    r = ui.post(f"/api/exams/{exam}/capture", headers=headers)
                    if r.status_code == 201:
                        shots.add(r.json()["id"])
                    else:
                        assert r.status_code in (422, 507), r.text
                        refusals.append(r.json()["error"])
                    png = scans / f"scan{n}.png"
                    cv2.imwrite(str(png), rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
                    result = gw(
                        "import",
                        "--json",
                        "--patient-id",
                        "D9",
                        "--patient-name",
                        "Disk^Full",
                        str(png),
                    )
                    if result.returncode == 0:
                        out = result.stdout
                        for item in json.loads(out[out.index("{") :])["imported"]:
                            acked.add(item["sop_instance_uid"])
                    else:
                        refusals.append(assert_one_line_error(result))
                t1 = time.monotonic()
                stop.set()
                assert refusals, "the disk never filled up: the test proved nothing"
                assert shots and acked, "nothing was captured before the disk filled up"
                for line in refusals:
                    assert any(
                        m in line
                        for m in ("No space left on device", "disk is full", "nearly full")
                    ), line
                # Still healthy all along: pings every half second, nothing stale.
                assert notify.unhealthy(t0) == [], notify.unhealthy(t0)[:3]
                assert largest_gap(notify.pings(t0), t0, t1) < 9, "watchdog pings stopped"
                rows = json.loads(gw("queue", "list", "--json", check=True).stdout)
                queued = {r["sop_instance_uid"] for r in rows}
                assert shots <= {r["id"] for r in rows}  # nothing acknowledged was evicted
                acked |= {r["sop_instance_uid"] for r in rows if r["id"] in shots}
                assert acked <= queued
                for row in rows:  # nothing half-written is queued
                    path = Path(row["path"])
                    assert path.stat().st_size == row["size"], row
                    assert read_header(path).sop_instance == row["sop_instance_uid"]
                filler.unlink()
                r = ui.post(f"/api/exams/{exam}/finish", headers=headers)
                assert r.status_code == 200, r.text
                storescp.start()
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    got = {p.name.split(".", 1)[1] for p in storescp.received()}
                    if acked <= got:
                        break
                    time.sleep(0.5)
                assert acked <= got, (sorted(acked - got)[:5], log.read_text()[-4000:])
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
            finally:
                stop.set()
                stop_process(proc)
            stderr = log.read_text()
            assert "Traceback" not in stderr, stderr[-3000:]

    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
