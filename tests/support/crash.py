"""Kill the capture and forwarder processes with SIGKILL at random points and
check the queue's promise afterwards (used by test_crash and bench_crash).

Per cycle: `dicom-gateway capture` and `dicom-gateway queue flush` run at the
same time as real subprocesses; after a random delay one or both are
SIGKILLed. A capture counts as acknowledged when the CLI printed its line
(that is what a technician sees). At every cycle, nothing marked sent may be
missing at the receiving DCMTK storescp; at the end, after one last flush,
every acknowledged SOP Instance UID is there and the queue holds no orphans.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from tests.support.process import GATEWAY, REPO

CAPTURED_RE = re.compile(r"^captured \d+/\d+: queue object \d+ \(([0-9.]+)\)$")


@dataclass
class CrashReport:
    cycles: int = 0
    kills: int = 0
    acknowledged: set[str] = field(default_factory=set)
    received: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def received_uids(directory: Path, cache: dict[str, str]) -> set[str]:
    """SOP Instance UIDs of complete files storescp wrote (parsed once each)."""
    for path in directory.iterdir():
        if path.name not in cache and path.is_file():
            try:
                cache[path.name] = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            except Exception:  # a file storescp is still writing: read it next time
                continue
    return set(cache.values())


def sent_uids(queue: Path) -> set[str]:
    if not (queue / "outbox.sqlite").exists():
        return set()
    db = sqlite3.connect(f"file:{queue / 'outbox.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT o.sop_instance_uid FROM objects o JOIN deliveries d ON d.object_id = o.id"
            " WHERE d.state IN ('sent', 'committed')"
        ).fetchall()
    finally:
        db.close()
    return {r[0] for r in rows}


def _spawn(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*GATEWAY, "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env={**os.environ},
    )


def acknowledged(output: str) -> set[str]:
    out = set()
    for line in output.splitlines():
        m = CAPTURED_RE.match(line.strip())
        if m:
            out.add(m.group(1))
    return out


def run_cycles(
    config: Path, queue: Path, received_dir: Path, cycles: int, seed: int, deadline_s: float
) -> CrashReport:
    rng = random.Random(seed)
    report = CrashReport()
    cache: dict[str, str] = {}
    stop_at = time.monotonic() + deadline_s
    for n in range(cycles):
        if time.monotonic() > stop_at:
            report.problems.append(f"only {n} of {cycles} cycles within {deadline_s} s")
            break
        capture = _spawn(
            config,
            "capture",
            "--patient-id",
            f"CRASH{n}",
            "--patient-name",
            "Crash^Test",
            "--frames",
            str(rng.randint(1, 4)),
        )
        flush = _spawn(config, "queue", "flush", "--timeout", "20")
        # A capture lives ~0.4 s here: kill points spread over its whole life.
        time.sleep(rng.uniform(0.05, 0.5))
        victims = rng.choice([[capture], [flush], [capture, flush]])
        for proc in victims:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                report.kills += 1
        for proc in (capture, flush):
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            if proc is capture:
                report.acknowledged |= acknowledged(out or "")
        report.cycles += 1
        # Nothing marked sent that storescp does not have.
        got = received_uids(received_dir, cache)
        wrong = sent_uids(queue) - got
        if wrong:
            report.problems.append(f"cycle {n}: marked sent but not received: {sorted(wrong)}")
    final = subprocess.run(
        [*GATEWAY, "--config", str(config), "queue", "flush", "--timeout", "60", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    if final.returncode != 0:
        report.problems.append(f"final flush failed: {final.stdout} {final.stderr}")
    report.received = received_uids(received_dir, cache)
    missing = report.acknowledged - report.received
    if missing:
        report.problems.append(f"acknowledged but never received: {sorted(missing)}")
    report.problems += queue_problems(queue, report.received)
    return report


def queue_problems(queue: Path, received: set[str]) -> list[str]:
    """Files without rows, rows without files, temp files, rows not sent."""
    problems: list[str] = []
    db = sqlite3.connect(f"file:{queue / 'outbox.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT o.sop_instance_uid, o.path, d.state FROM objects o"
            " JOIN deliveries d ON d.object_id = o.id"
        ).fetchall()
        loose = db.execute(
            "SELECT COUNT(*) FROM objects WHERE id NOT IN (SELECT object_id FROM deliveries)"
        ).fetchone()[0]
    finally:
        db.close()
    paths = {r[1] for r in rows}
    for entry in (queue / "objects").iterdir():
        if f"objects/{entry.name}" not in paths:
            problems.append(f"orphan file in the queue: {entry.name}")
    for uid, path, state in rows:
        if not (queue / path).is_file():
            problems.append(f"row without file: {uid}")
        if state != "sent":
            problems.append(f"{uid} is {state} after the final flush")
        if uid not in received:
            problems.append(f"{uid} marked {state} but not received")
    if loose:
        problems.append(f"{loose} object row(s) without deliveries")
    return problems


def summary(report: CrashReport) -> str:
    return json.dumps(
        {
            "cycles": report.cycles,
            "kills": report.kills,
            "acknowledged": len(report.acknowledged),
            "received": len(report.received),
            "problems": report.problems[:20],
        }
    )
