"""SQLite faults: a COMMIT that fails on a full disk leaves the connection
usable and the write lock free; a damaged `outbox.sqlite` is moved aside and
rebuilt from the Part 10 files, with an alarm, and the service captures on."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.queues
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.queue.db import open_queue_db, transaction
from gateway.queue.model import DeliveryState
from gateway.queue.schema import DB_NAME
from tests.support.gateway import Gateway, gateway_config, write_config
from tests.support.peers import queue_objects
from tests.support.pki import PKI
from tests.support.process import GATEWAY, REPO, free_port, stop_process
from tests.support.queue import new_outbox
from tests.support.watchdog import NotifySocket


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Fill the file system from outside, as another writer would."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    return filler


def _open_at(root: Path, start: float, said: multiprocessing.queues.Queue[str]) -> None:
    while time.time() < start:
        pass
    try:
        open_queue_db(root, check=True).close()
        said.put("ok")
    except Exception as exc:  # what the service would have died of
        said.put(f"{type(exc).__name__}: {exc}")


def test_services_starting_at_once_on_a_new_queue_all_open_it(tmp_path: Path) -> None:
    """The first boot: the capture and forwarder services (and a `status`)
    open a queue that does not exist yet at the same moment. Every one gets
    it; the image test once saw the forwarder die of "database is locked"
    here. 20 rounds of 3 processes; without the retry about one round in four
    fails, so a pass by luck is well under 1 %."""
    fork = multiprocessing.get_context("fork")
    said: multiprocessing.queues.Queue[str] = fork.Queue()
    failed: list[str] = []
    for round_ in range(20):
        root = tmp_path / f"q{round_}"
        start = time.time() + 0.2
        openers = [fork.Process(target=_open_at, args=(root, start, said)) for _ in range(3)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(60)
        failed += [r for r in (said.get(timeout=5) for _ in openers) if r != "ok"]
    assert failed == []


def test_a_failed_commit_rolls_back_and_the_connection_is_usable_again(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        db = open_queue_db(disk)
        filler = _fill(disk)
        with pytest.raises(sqlite3.Error) as failed, transaction(db):
            # 400 KiB of row: written to the WAL at COMMIT, which fails.
            db.execute(
                "INSERT INTO alarms (kind, message, raised_at) VALUES ('x', ?, 0)",
                ("y" * 400_000,),
            )
        assert "full" in str(failed.value) or "disk" in str(failed.value), failed.value
        # Rolled back: no transaction open, so no write lock held.
        assert not db.in_transaction
        other = sqlite3.connect(disk / DB_NAME, timeout=0.5)
        other.execute("BEGIN IMMEDIATE")  # would be SQLITE_BUSY with the lock held
        other.execute("ROLLBACK")
        other.close()
        filler.unlink()
        with transaction(db):
            db.execute("INSERT INTO alarms (kind, message, raised_at) VALUES ('x', 'y', 0)")
        assert db.execute("SELECT COUNT(*) FROM alarms").fetchone()[0] == 1
        db.close()


def _damage(root: Path) -> None:
    """Checkpoint the WAL into the file, then overwrite pages in its middle."""
    db = sqlite3.connect(root / DB_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = (root / DB_NAME).stat().st_size
    with open(root / DB_NAME, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(size - 4096))


def test_a_damaged_database_is_moved_aside_and_rebuilt_from_the_files(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    with new_outbox(queue, ["pacs", "archive"]) as outbox:
        objects = queue_objects(outbox, 12)
        outbox.claim("pacs")
        outbox.mark_sent(objects[0].id, "pacs")
    _damage(queue)
    with new_outbox(queue, ["pacs", "archive"], check=True) as outbox:
        assert outbox.rebuilt is not None and outbox.rebuilt.objects == 12
        kept = outbox.rebuilt.kept_in
        assert (kept / DB_NAME).exists()  # the damaged file, kept for support
        uids = {o.sop_instance_uid for o in outbox.objects()}
        assert uids == {o.sop_instance_uid for o in objects}
        rows = outbox.deliveries()
        assert len(rows) == 24 and {d.state for d in rows} == {DeliveryState.PENDING}
        assert {d.object.study_instance_uid for d in rows} == {"1.2.3.4"}
        ((kind, message, _),) = outbox.alarms()
        assert kind == "queue-rebuilt" and "12 object(s) rebuilt" in message, message
    # A second opener finds the rebuilt database, and does not rebuild again.
    with new_outbox(queue, ["pacs", "archive"], check=True) as outbox:
        assert outbox.rebuilt is None and len(outbox.objects()) == 12


def test_the_service_starts_on_a_damaged_database_and_captures(tmp_path: Path, pki: PKI) -> None:
    data = gateway_config(tmp_path, pki, free_port())  # a PACS that is down
    data["queue"]["min_free_mb"] = 0
    gw = Gateway(write_config(tmp_path / "gateway.toml", data))
    gw("capture", "--patient-id", "R1", "--patient-name", "Rebuild^Test", check=True)
    _damage(tmp_path / "queue")
    # Without the rebuild, both services crash-looped on it: no capture at all.
    with NotifySocket(tmp_path / "notify.sock") as notify:
        proc = subprocess.Popen(
            [*GATEWAY, "--config", str(gw.config), "run"],
            env={**os.environ, **notify.env(30_000_000)},
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert notify.wait_for("READY=1", 60), notify.messages
            out = gw("capture", "--patient-id", "R1", "--patient-name", "Rebuild^Test", check=True)
            assert "captured" in out.stdout
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            stop_process(proc)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "moving it aside and rebuilding the queue" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    listed = json.loads(gw("queue", "list", "--json", check=True).stdout)
    assert len(listed) == 2 and {r["state"] for r in listed} == {"pending"}, listed
    assert list((tmp_path / "queue").glob("damaged-*/outbox.sqlite"))


def test_a_unit_that_gave_up_raises_an_alarm(tmp_path: Path, pki: PKI) -> None:
    """What dicom-gateway-alarm@.service runs (the units' OnFailure=): the
    alarm is logged, kept for `queue stats` and the metrics, and audited as
    a schema-valid Security Alert."""
    import socket

    from tests.support.audit import event_code, parse_frame

    data = gateway_config(tmp_path, pki, free_port())
    gw = Gateway(write_config(tmp_path / "gateway.toml", data))
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(str(tmp_path / "syslog"))
    syslog.settimeout(10)
    gw.env["DICOM_GATEWAY_AUDIT_SOCKET"] = str(tmp_path / "syslog")
    try:
        out = gw("alarm", "unit-failed", "dicom-gateway-forwarder.service", check=True)
        frame = syslog.recv(65536)
    finally:
        syslog.close()
    assert "dicom-gateway-forwarder.service failed" in out.stdout
    assert "systemd gave up restarting it" in out.stderr  # the log line
    _pri, xml = parse_frame(frame)
    assert event_code(xml) == ("110113", "110131")
    assert "gave up" in (xml.find("EventIdentification/EventOutcomeDescription").text or "")  # type: ignore[union-attr]
    stats = json.loads(gw("queue", "stats", "--json", check=True).stdout)
    assert stats["alarms"] == {"unit-failed": 1}
    from gateway.queue.alarms import open_alarms

    assert open_alarms(tmp_path / "queue") == {"unit-failed": 1}  # what /metrics reports
