"""`make soak`: the whole service for a long time, as systemd runs it.

`dicom-gateway run` (every loop on: capture at 30 fps from the test pattern,
UI, forwarder with Storage Commitment and its listener, MPPS, inbound
C-STORE, control socket, metrics) under a real NOTIFY_SOCKET with the unit's
WATCHDOG_USEC (30 s) and the default deadline (`[watchdog] stale_after` =
120 s), for SOAK_MINUTES (default 30):

- a PACS (DCMTK storescp, TLS) that goes down for a minute every few minutes;
- a capture every few seconds and a "save last N s" clip every half minute,
  through the UI's JSON API, each exam finished after a few;
- the watchdog pings checked throughout (never a gap the watchdog would bite
  on, never "unhealthy"), RSS and open files sampled every 30 s: after a
  warm-up, no growth beyond RSS_BOUND_MB and FDS_BOUND.

At the same time, in its own process, the power-cut tests run with
POWER_CUTS per scenario (500: 2,000 cuts in all).

The figures are printed at the end (and in test-artifacts/soak.json); the
exit status is 0 only when every check held.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.dcmtk import StoreSCP
from tests.support.gateway import write_config
from tests.support.pki import make_pki
from tests.support.process import ARTIFACTS, REPO, stop_process
from tests.support.watchdog import NotifySocket, largest_gap, whole_service_config

MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
POWER_CUTS = int(os.environ.get("SOAK_POWER_CUTS", "500"))  # per scenario (4 scenarios)
WATCHDOG_USEC = 30_000_000  # as the unit sets it
RSS_BOUND_MB = 64.0  # growth after warm-up, median of the last samples vs the first
FDS_BOUND = 16
WARM_UP_S = min(300.0, MINUTES * 60 / 4)
SAMPLE_EVERY_S = 30.0
PACS_UP_S, PACS_DOWN_S = 180.0, 60.0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Desk:
    """The technician, through the UI's JSON API."""

    def __init__(self, url: str) -> None:
        # A new connection per request: uvicorn closes idle keep-alive
        # connections after 5 s, and a request racing that close is reset.
        self.client = httpx.Client(
            base_url=url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)
        )
        self.csrf = self.client.get("/api/session").json()["csrf"]
        self.exam: str | None = None
        self.shots = 0
        self.errors: list[str] = []
        self.n = 0

    def post(self, path: str, body: Any = None) -> httpx.Response:
        try:
            return self.client.post(path, json=body, headers={"X-CSRF-Token": self.csrf})
        except httpx.TransportError as exc:
            return httpx.Response(599, text=f"transport error: {exc}")

    def act(self, clip: bool) -> None:
        if self.exam is None:
            self.n += 1
            r = self.post("/api/exams", {"patient": {"family_name": "Soak", "id": f"SOAK{self.n}"}})
            if r.status_code != 201:
                self.errors.append(f"start exam: {r.status_code} {r.text[:200]}")
                return
            self.exam = r.json()["id"]
        path = f"/api/exams/{self.exam}/{'save-last' if clip else 'capture'}"
        r = self.post(path)
        if r.status_code != 201:
            self.errors.append(f"{path}: {r.status_code} {r.text[:200]}")
            return
        self.shots += 1
        if self.shots % 6 == 0:
            r = self.post(f"/api/exams/{self.exam}/finish")
            if r.status_code != 200:
                self.errors.append(f"finish: {r.status_code} {r.text[:200]}")
            self.exam = None


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    pki = make_pki(work / "pki")
    pacs = StoreSCP(work / "pacs", pki.server, pki.ca.cert)
    pacs.start()
    data = whole_service_config(work, pki, pacs.port, 120.0)
    data["capture"]["options"] = {"width": 640, "height": 480, "fps": 30, "realtime": True}
    data["capture"]["buffer_seconds"] = 5
    data["queue"]["min_free_mb"] = 0
    data["forwarding"] = {"retry_base_s": 2, "retry_cap_s": 30}
    config = write_config(work / "gateway.toml", data)
    cuts = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--timeout=0",  # a scenario of 500 cuts runs for minutes
            f"--basetemp={work / 'power-cuts'}",  # never cleaned by another pytest
            "tests/integration/test_power_cut.py",
        ],
        cwd=REPO,
        env={
            **os.environ,
            "POWER_CUTS": str(POWER_CUTS),
            "POWER_CUT_TIME_LIMIT_S": "3000",
            "PYTHONPATH": str(REPO),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    figures: dict[str, Any] = {"minutes": MINUTES}
    problems: list[str] = []
    with NotifySocket(work / "notify.sock") as notify:
        env = {**notify.service_env(WATCHDOG_USEC, work / "no-syslog"), "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config), "run"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "service.log", "w"),  # noqa: SIM115
        )
        try:
            if not notify.wait_for("READY=1", 120):
                raise SystemExit("the service never became ready")
            t0 = time.monotonic()
            desk = Desk(f"http://{data['ui']['listen']}")
            rng = random.Random(14)
            samples: list[tuple[float, int, int]] = []
            next_sample = t0
            next_clip = t0 + 30
            pacs_flips = 0
            pacs_up, pacs_next = True, t0 + PACS_UP_S
            end = t0 + MINUTES * 60
            while time.monotonic() < end:
                now = time.monotonic()
                if proc.poll() is not None:
                    problems.append(f"the service exited with {proc.returncode}")
                    break
                if now >= next_sample:
                    samples.append((now - t0, _rss_kib(proc.pid), _fds(proc.pid)))
                    next_sample += SAMPLE_EVERY_S
                if now >= pacs_next:
                    if pacs_up:
                        pacs.stop()
                    else:
                        pacs.start()
                    pacs_up = not pacs_up
                    pacs_flips += 1
                    pacs_next = now + (PACS_UP_S if pacs_up else PACS_DOWN_S)
                clip = now >= next_clip
                if clip:
                    next_clip = now + 30
                desk.act(clip)
                time.sleep(rng.uniform(2.0, 5.0))
            t1 = time.monotonic()
            if not pacs_up:
                pacs.start()
            pings = notify.pings(t0)
            gap = largest_gap(pings, t0, t1)
            unhealthy = notify.unhealthy(t0)
            figures.update(
                pings=len(pings),
                largest_ping_gap_s=round(gap, 2),
                unhealthy_reports=len(unhealthy),
                captures_and_clips=desk.shots,
                desk_errors=desk.errors[:10],
                pacs_down_up=pacs_flips,
            )
            if gap >= WATCHDOG_USEC / 1e6:
                problems.append(f"no watchdog ping for {gap:.1f} s")
            if unhealthy:
                problems.append(f"reported unhealthy: {unhealthy[:3]}")
            if desk.errors:
                problems.append(f"{len(desk.errors)} UI action(s) failed: {desk.errors[:3]}")
            warm = [s for s in samples if s[0] >= WARM_UP_S]
            if len(warm) >= 6:
                first = statistics.median(s[1] for s in warm[:3]) / 1024
                last = statistics.median(s[1] for s in warm[-3:]) / 1024
                fds_first = statistics.median(s[2] for s in warm[:3])
                fds_last = statistics.median(s[2] for s in warm[-3:])
                figures.update(
                    rss_mb_after_warm_up=round(first, 1),
                    rss_mb_at_end=round(last, 1),
                    rss_mb_max=round(max(s[1] for s in samples) / 1024, 1),
                    fds_after_warm_up=fds_first,
                    fds_at_end=fds_last,
                    fds_max=max(s[2] for s in samples),
                    samples=len(samples),
                    # Every sample, for the shape of the curve (plateau or leak).
                    series=[(round(t), round(kib / 1024, 1), n) for t, kib, n in samples],
                )
                if last - first > RSS_BOUND_MB:
                    problems.append(f"RSS grew {last - first:.0f} MiB (bound {RSS_BOUND_MB})")
                if fds_last - fds_first > FDS_BOUND:
                    problems.append(f"open files grew by {fds_last - fds_first} ({FDS_BOUND})")
            else:
                problems.append("too few samples after the warm-up for a growth figure")
            # Everything captured reaches the PACS once it stays up.
            flush = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "--config",
                    str(config),
                    "queue",
                    "stats",
                    "--json",
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            figures["queue_stats"] = json.loads(flush.stdout or "{}")
            proc.send_signal(signal.SIGTERM)
            if proc.wait(timeout=60) != 0:
                problems.append(f"the service stopped with {proc.returncode}")
        finally:
            stop_process(proc, timeout=30)
            pacs.stop()
    try:
        out, _ = cuts.communicate(timeout=3600)
    except subprocess.TimeoutExpired:
        cuts.kill()
        out, _ = cuts.communicate()
    figures["power_cuts"] = {
        "scenarios": 4,
        "cuts_per_scenario": POWER_CUTS,
        "result": (out or "").strip().splitlines()[-1:] if out else [],
    }
    if cuts.returncode != 0:
        problems.append(f"power-cut tests failed: {(out or '')[-3000:]}")
    figures["problems"] = problems
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "soak.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    print(f"service log: {work / 'service.log'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
