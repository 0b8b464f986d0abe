"""`dicom-gateway run` whole, as systemd runs it (every loop on: capture, UI,
forwarder with Storage Commitment, MPPS, inbound C-STORE, control socket)
under a real NOTIFY_SOCKET with WATCHDOG_USEC set: the pings keep coming
while it sits idle for many times the loops' deadline. Before the fix, the
UI and the other idle loops went stale after `stale_after` and the service
withheld the pings ("unhealthy: ui"), so systemd restarted it every few
minutes; here the deadline is scaled down to 3 s so the same thing shows
in seconds (`make soak` does it for 30 minutes at the real deadline)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.dcmtk import StoreSCP
from tests.support.gateway import write_config
from tests.support.pki import PKI
from tests.support.process import REPO, stop_process
from tests.support.watchdog import NotifySocket, largest_gap, whole_service_config

STALE_AFTER = 3.0  # ×30 the UI's tick, ×3 the slowest loop's beat: slack for a loaded box
IDLE_FOR = 30.0  # 10× the deadline


def test_whole_service_keeps_feeding_the_watchdog_while_idle(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    storescp.start()
    data = whole_service_config(tmp_path, pki, storescp.port, STALE_AFTER)
    config = write_config(tmp_path / "gateway.toml", data)
    with NotifySocket(tmp_path / "notify.sock") as notify:
        env = notify.service_env(2_000_000, tmp_path / "no-syslog")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config), "run"],
            env=env,
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            if not notify.wait_for("READY=1", 60):
                stop_process(proc)
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"no READY=1 in 60 s: {notify.messages}\n{err[-3000:]}")
            t0 = time.monotonic()
            time.sleep(IDLE_FOR)
            t1 = time.monotonic()
            pings = notify.pings(t0)
            with urllib.request.urlopen(
                f"http://{data['metrics']['listen']}/health", timeout=10
            ) as resp:
                loops = json.loads(resp.read())["loops"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            stop_process(proc)
        stderr = proc.stderr.read() if proc.stderr else ""
    assert notify.unhealthy() == [], (notify.unhealthy()[:5], stderr[-3000:])
    # Every loop of the whole service is watched, and every one is healthy.
    assert set(loops) == {
        "capture",
        "ui",
        "forwarder",
        "mpps",
        "commitment",
        "commitment-listener",
        "inbound",
        "control",
        "flush",  # the forwarder's socket for `queue flush`
    }, loops
    assert all(loops.values()), loops
    # A ping every 0.75 s (a quarter of the deadline, under half of the 2 s
    # watchdog); never a gap near the deadline.
    assert len(pings) >= IDLE_FOR / 3, len(pings)
    assert largest_gap(pings, t0, t1) < 3 * STALE_AFTER, largest_gap(pings, t0, t1)
    assert "Traceback" not in stderr, stderr[-3000:]
