"""Power cuts, proved the hard way: the queue on the power-cut file system
(tests/support/powercut_fs.py: writes live in memory until fsync'd, and a
cut drops every one that was not), every process killed at a random point,
the writes not made durable thrown away, a restart, and the promises
checked (tests/support/powercut.py: every acknowledged object present,
byte-identical, queued or delivered; no row pointing at a missing or
partial file; nothing delivered twice as two different objects).

A SIGKILL alone leaves the page cache intact, so the crash tests would pass
with every fsync removed; these do not (see the closing note of issue 14:
with the file's fsync removed from gateway/queue/files.py they fail).

Cuts here: capture with forwarding, import through the control socket and
in-process, inbound C-STORE from a modality with forwarding and Storage
Commitment — at least 100 in all, bounded in time (`make soak` runs 2,000).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.dcmtk import StoreSCP
from tests.support.gateway import gateway_config, write_config
from tests.support.pki import PKI
from tests.support.powercut import (
    Child,
    Ledger,
    PowerCutMount,
    Zygote,
    check_queue,
    received_datasets,
)
from tests.support.queue import new_outbox

CUTS = int(os.environ.get("POWER_CUTS", "26"))  # per scenario; `make soak` sets more
TIME_LIMIT_S = float(os.environ.get("POWER_CUT_TIME_LIMIT_S", "55"))


def _path_of(queue: Path, object_id: int) -> Path | None:
    db = sqlite3.connect(f"file:{queue / 'outbox.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT path FROM objects WHERE id = ?", (object_id,)).fetchone()
    finally:
        db.close()
    return None if row is None else queue / row[0]


def _captured(queue: Path, child: Child, ledger: Ledger) -> None:
    """A capture is acknowledged by its printed line (what the technician sees)."""
    for line in child.output().splitlines():
        if line.startswith("captured ") and "queue object" in line:
            object_id = int(line.split("queue object ")[1].split()[0])
            uid = line.rsplit("(", 1)[1].rstrip(")")
            if uid not in ledger.acknowledged:
                path = _path_of(queue, object_id)
                if path is None:
                    ledger.problems.append(f"{uid} acknowledged but it has no row")
                else:
                    ledger.acknowledge(uid, path)


def _imported(queue: Path, child: Child, ledger: Ledger) -> None:
    """An import is acknowledged by exit status 0 (and its JSON report)."""
    if child.exit_code() != 0:
        return
    out = child.output()
    report = json.loads(out[out.index("{") :])
    for item in report["imported"]:
        path = _path_of(queue, item["id"])
        if path is None:
            ledger.problems.append(f"import of {item['sop_instance_uid']} exited 0 without a row")
        else:
            ledger.acknowledge(item["sop_instance_uid"], path)


def _restart_and_check(queue: Path, ledger: Ledger, received: dict[str, set[str]] | None) -> None:
    """The box comes back: a process opens the queue and recovers it."""
    with new_outbox(queue, ["pacs"], check=True) as outbox:
        outbox.recover()
    check_queue(queue, ledger, received)


def _run_cuts(
    tmp_path: Path,
    config: Path,
    queue: Path,
    start: Callable[[Zygote, int, random.Random], list[Child]],
    acknowledged: Callable[[Child, Ledger], None],
    pacs: StoreSCP | None,
    seed: int,
) -> Ledger:
    rng = random.Random(seed)
    ledger = Ledger()
    cache: dict[str, tuple[str, str]] = {}
    stop_at = time.monotonic() + TIME_LIMIT_S
    with PowerCutMount(tmp_path / "mnt") as fs, Zygote(tmp_path / "procs") as zygote:
        for n in range(CUTS):
            if time.monotonic() > stop_at:
                ledger.problems.append(f"only {n} of {CUTS} cuts within {TIME_LIMIT_S} s")
                break
            children = start(zygote, n, rng)
            deadline = time.monotonic() + rng.uniform(0.05, 1.5)
            while time.monotonic() < deadline:
                for child in children:
                    acknowledged(child, ledger)
                time.sleep(0.01)
            zygote.kill_all()  # the power goes, for every process at once
            for child in children:
                acknowledged(child, ledger)  # what was shown before the lights went out
            fs.cut()
            ledger.cuts += 1
            received = received_datasets(pacs.directory, cache) if pacs else None
            _restart_and_check(queue, ledger, received)
            if ledger.problems:
                break
        stats = fs.stats()
    assert stats["cuts"] == ledger.cuts
    assert stats["fsync"] > 0 and stats["fsyncdir"] > 0
    return ledger


def _assert_promises(ledger: Ledger, minimum_acknowledged: int) -> None:
    summary = {"cuts": ledger.cuts, "acknowledged": len(ledger.acknowledged)}
    assert ledger.problems == [], (summary, ledger.problems[:10])
    assert ledger.cuts >= CUTS, summary
    assert len(ledger.acknowledged) >= minimum_acknowledged, summary


def _config(tmp_path: Path, pki: PKI, pacs_port: int, **overrides: Any) -> tuple[Path, Path]:
    queue = tmp_path / "mnt" / "queue"
    data = gateway_config(tmp_path, pki, pacs_port, **overrides)
    data["queue"] = {"path": str(queue), "min_free_mb": 0}
    return write_config(tmp_path / "gateway.toml", data), queue


@pytest.fixture
def pacs(tmp_path: Path, pki: PKI) -> StoreSCP:
    # Every copy kept under its own name: a duplicate that differs shows.
    scp = StoreSCP(tmp_path / "pacs", pki.server, pki.ca.cert, extra=("+uf",))
    scp.start()
    yield scp  # type: ignore[misc]
    scp.stop()


def test_power_cuts_during_capture_and_forwarding_lose_nothing(
    tmp_path: Path, pki: PKI, pacs: StoreSCP
) -> None:
    config, queue = _config(tmp_path, pki, pacs.port)

    def start(zygote: Zygote, n: int, rng: random.Random) -> list[Child]:
        children = [
            zygote.spawn(
                "--config",
                str(config),
                "capture",
                "--patient-id",
                f"CUT{n}",
                "--patient-name",
                "Power^Cut",
                "--frames",
                str(rng.randint(1, 4)),
            )
        ]
        if rng.random() < 0.7:
            children.append(
                zygote.spawn("--config", str(config), "queue", "flush", "--timeout", "20")
            )
        return children

    ledger = _run_cuts(
        tmp_path,
        config,
        queue,
        start,
        lambda child, ledger: _captured(queue, child, ledger),
        pacs,
        seed=14_001,
    )
    _assert_promises(ledger, minimum_acknowledged=10)
