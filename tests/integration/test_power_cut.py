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
TIME_LIMIT_S = float(os.environ.get("POWER_CUT_TIME_LIMIT_S", "150"))  # ~20 s here


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
    if "import" not in child.argv or child.exit_code() != 0:
        return
    out = child.output()
    report = json.loads(out[out.index("{") :])
    for item in report["imported"]:
        path = _path_of(queue, item["id"])
        if path is None:
            ledger.problems.append(f"import of {item['sop_instance_uid']} exited 0 without a row")
        else:
            ledger.acknowledge(item["sop_instance_uid"], path)


def _importer(queue: Path) -> Callable[[Child, Ledger], None]:
    return lambda child, ledger: _imported(queue, child, ledger)


def _restart_and_check(queue: Path, ledger: Ledger, received: dict[str, set[str]] | None) -> None:
    """The box comes back: a process opens the queue and recovers it."""
    with new_outbox(queue, ["pacs"], check=True) as outbox:
        outbox.recover()
    check_queue(queue, ledger, received)


def _run_cuts(
    tmp_path: Path,
    queue: Path,
    start: Callable[[Zygote, int, random.Random], list[Child]],
    acknowledged: Callable[[Child, Ledger], None],
    pacs: StoreSCP | Callable[[], dict[str, set[str]]] | None,
    seed: int,
) -> Ledger:
    rng = random.Random(seed)
    ledger = Ledger()
    cache: dict[str, tuple[str, str]] = {}

    def delivered() -> dict[str, set[str]] | None:
        if isinstance(pacs, StoreSCP):
            return received_datasets(pacs.directory, cache)
        return pacs() if pacs is not None else None

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
            _restart_and_check(queue, ledger, delivered())
            if ledger.problems:
                break
        stats = fs.stats()
    assert stats["cuts"] == ledger.cuts
    assert stats["fsync"] > 0 and stats["fsyncdir"] > 0
    return ledger


def _maybe_flush(zygote: Zygote, config: Path, rng: random.Random, chance: float) -> list[Child]:
    """The forwarder (`queue flush`) running beside the writer, most cycles."""
    if rng.random() >= chance:
        return []
    return [zygote.spawn("--config", str(config), "queue", "flush", "--timeout", "20")]


def _assert_promises(
    ledger: Ledger, minimum_acknowledged: int = min(10, max(1, CUTS // 2))
) -> None:
    """The promises held, and the run proved something (enough objects were
    acknowledged before their cuts)."""
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
        return children + _maybe_flush(zygote, config, rng, 0.7)

    _assert_promises(
        _run_cuts(
            tmp_path,
            queue,
            start,
            lambda child, ledger: _captured(queue, child, ledger),
            pacs,
            seed=14_001,
        )
    )


def _images(directory: Path, count: int, seed: int) -> list[Path]:
    """Small PNG scans, each different (an import of the same file twice is
    the same object)."""
    import cv2
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for n in range(count):
        path = directory / f"scan-{seed}-{n}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def _import_args(config: Path, n: int, files: list[Path]) -> list[str]:
    return [
        "--config",
        str(config),
        "import",
        "--json",
        "--patient-id",
        f"IMP{n}",
        "--patient-name",
        "Power^Cut",
        *map(str, files),
    ]


def test_power_cuts_during_in_process_imports_lose_nothing(
    tmp_path: Path, pki: PKI, pacs: StoreSCP
) -> None:
    config, queue = _config(tmp_path, pki, pacs.port)

    def start(zygote: Zygote, n: int, rng: random.Random) -> list[Child]:
        files = _images(tmp_path / "scans", rng.randint(1, 3), seed=n)
        children = [zygote.spawn(*_import_args(config, n, files))]
        return children + _maybe_flush(zygote, config, rng, 0.5)

    _assert_promises(_run_cuts(tmp_path, queue, start, _importer(queue), pacs, seed=14_002))


def test_power_cuts_during_imports_through_the_control_socket_lose_nothing(
    tmp_path: Path, pki: PKI
) -> None:
    """The service (`run --only capture`) takes the imports over its control
    socket (on the cut file system, like the queue) and queues them."""
    from tests.support.process import free_port

    config, queue = _config(tmp_path, pki, free_port())  # its PACS is down: all stays queued
    handed = [0]

    def start(zygote: Zygote, n: int, rng: random.Random) -> list[Child]:
        service = zygote.spawn("--config", str(config), "run", "--only", "capture")
        sock = queue / "control.sock"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not sock.is_socket():
            time.sleep(0.01)
        assert sock.is_socket(), service.output()[-2000:]
        handed[0] += 1
        files = _images(tmp_path / "scans", rng.randint(1, 3), seed=n)
        client = zygote.spawn(*_import_args(config, n, files))
        return [service, client]

    _assert_promises(_run_cuts(tmp_path, queue, start, _importer(queue), None, seed=14_003))
    assert handed[0] >= CUTS


def test_power_cuts_during_inbound_c_store_and_forwarding_with_commitment_lose_nothing(
    tmp_path: Path, pki: PKI
) -> None:
    """A modality sends to the inbound C-STORE SCP of the forwarder service,
    which forwards to a PACS and asks for Storage Commitment; a success
    status returned to the modality is the acknowledgement."""
    from pynetdicom import AE

    from tests.support.commitment_pacs import CommitmentPACS
    from tests.support.peers import SC, small_object
    from tests.support.process import free_port, wait_for_port

    commitment_pacs = CommitmentPACS(pki, "same", set())
    inbound_port = free_port()
    config, queue = _config(
        tmp_path,
        pki,
        commitment_pacs.port,
        inbound={
            "enabled": True,
            "listen": f"127.0.0.1:{inbound_port}",
            "allowed": [{"ae_title": "MODALITY", "address": "127.0.0.1"}],
        },
        commitment={"interval_s": 0.3, "wait_on_association_s": 2},
        forwarding={"retry_base_s": 0.2, "retry_cap_s": 1.0},
    )
    data = __import__("tomllib").loads(config.read_text())
    data["destinations"][0]["storage_commitment"] = True
    write_config(config, data)
    acked: list[tuple[str, float]] = []

    def modality(stop_at: float) -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(SC, "1.2.840.10008.1.2.1")
        # The power cut takes the SCP mid-answer: give up on it soon.
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 3
        assoc = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and time.monotonic() < stop_at:
            assoc = ae.associate("127.0.0.1", inbound_port, ae_title="EDGE1")
            if assoc.is_established:
                break
            time.sleep(0.05)
        if assoc is None or not assoc.is_established:
            return
        from io import BytesIO

        from pydicom import dcmread

        while time.monotonic() < stop_at and assoc.is_established:
            uid, raw = small_object(study=f"1.2.826.0.1.{int(stop_at * 1000)}")
            try:
                status = assoc.send_c_store(dcmread(BytesIO(raw)))
            except RuntimeError:  # the association went with the power
                break
            if status and status.Status == 0x0000:
                acked.append((uid, time.monotonic()))
        if assoc.is_established:
            assoc.abort()

    import threading

    threads: list[threading.Thread] = []

    def start(zygote: Zygote, n: int, rng: random.Random) -> list[Child]:
        service = zygote.spawn("--config", str(config), "run", "--only", "forwarder")
        # The cut's random point is counted from when the SCP listens.
        wait_for_port(inbound_port, timeout=60)
        thread = threading.Thread(
            target=modality, args=(time.monotonic() + rng.uniform(0.3, 2.0),), daemon=True
        )
        thread.start()
        threads.append(thread)
        return [service]

    def acknowledged(child: Child, ledger: Ledger) -> None:
        for uid, _ in list(acked):
            if uid not in ledger.acknowledged:
                path = _path_of_uid(queue, uid)
                if path is None:
                    ledger.problems.append(f"C-STORE of {uid} answered success without a row")
                else:
                    ledger.acknowledge(uid, path)

    try:
        ledger = _run_cuts(
            tmp_path,
            queue,
            start,
            acknowledged,
            lambda: dict(commitment_pacs.received),
            seed=14_004,
        )
        for thread in threads:
            thread.join(timeout=5)
    finally:
        commitment_pacs.stop()
    _assert_promises(ledger)
    assert commitment_pacs.stored and commitment_pacs.transactions


def _path_of_uid(queue: Path, uid: str) -> Path | None:
    db = sqlite3.connect(f"file:{queue / 'outbox.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT path FROM objects WHERE sop_instance_uid = ?", (uid,)).fetchone()
    finally:
        db.close()
    return None if row is None else queue / row[0]
