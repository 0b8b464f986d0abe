"""The outbox on real SQLite and real files: durable mode asserted, crash
leftovers cleaned, claims of dead processes reset, vanished files isolated."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.queue.db import QueueError
from gateway.queue.files import write_atomic
from gateway.queue.model import DeliveryState, QueueFull
from gateway.queue.schema import DB_NAME
from tests.support.queue import add_object, new_outbox


def test_durable_mode_is_in_force(tmp_path: Path) -> None:
    with new_outbox(tmp_path, ["a"]):
        pass
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_add_writes_file_and_one_delivery_per_destination(tmp_path: Path) -> None:
    with new_outbox(tmp_path, ["a", "b"]) as outbox:
        oid = add_object(outbox, "1.2.3.4.5")
        deliveries = outbox.deliveries(object_id=oid)
        assert [(d.destination, d.state) for d in deliveries] == [
            ("a", DeliveryState.PENDING),
            ("b", DeliveryState.PENDING),
        ]
        assert deliveries[0].object.path.read_bytes() == b"DICM" * 10
        assert not list(tmp_path.glob("objects/*.tmp"))


def test_duplicate_uid_is_refused(tmp_path: Path) -> None:
    with new_outbox(tmp_path, ["a"]) as outbox:
        add_object(outbox, "1.2.3")
        with pytest.raises(QueueError, match="already queued"):
            add_object(outbox, "1.2.3")


def test_read_only_database_refuses_to_start(tmp_path: Path) -> None:
    with new_outbox(tmp_path, ["a"]):
        pass
    (tmp_path / DB_NAME).unlink()
    (tmp_path / f"{DB_NAME}-wal").unlink(missing_ok=True)
    (tmp_path / f"{DB_NAME}-shm").unlink(missing_ok=True)
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() == 0:  # root ignores permissions; a file in the way does the job
            os.chmod(tmp_path, 0o700)
            (tmp_path / DB_NAME).mkdir()
        with pytest.raises(QueueError, match=r"cannot open queue database|durable mode"):
            new_outbox(tmp_path, ["a"])
    finally:
        os.chmod(tmp_path, 0o700)


def test_full_disk_refuses_new_captures(tmp_path: Path) -> None:
    with new_outbox(tmp_path, ["a"], min_free_mb=10**9) as outbox:
        with pytest.raises(QueueFull, match="capture refused, nothing queued was removed"):
            add_object(outbox, "1.2.3")
        assert outbox.objects() == []


def test_recover_cleans_leftovers_of_a_crash(tmp_path: Path) -> None:
    with new_outbox(tmp_path, ["a"]) as outbox:
        keep = add_object(outbox, "1.2.3.1")
        gone = add_object(outbox, "1.2.3.2")
        (outbox.objects_dir / "1.2.9.dcm.tmp").write_bytes(b"half")
        orphan = outbox.objects_dir / "1.2.8.dcm"
        write_atomic(orphan, b"never acknowledged")
        old = time.time() - 3600
        os.utime(orphan, (old, old))
        outbox.get(gone).path.unlink()  # type: ignore[union-attr]
    # A forwarder process claims the work and dies without finishing it.
    claimer = (
        "import sys; from tests.support.queue import add_object, new_outbox;"
        "o = new_outbox(sys.argv[1], ['a']); o.claim('a'); print('claimed')"
    )
    subprocess.run([sys.executable, "-c", claimer, str(tmp_path)], check=True)
    with new_outbox(tmp_path, ["a"]) as outbox:
        report = outbox.recover()
        assert report.temp_files_removed == 1
        assert report.orphan_files_removed == 1
        assert report.missing_files == 1
        assert report.claims_reset == 2
        assert not orphan.exists()
        assert outbox.delivery(keep, "a").state is DeliveryState.PENDING  # type: ignore[union-attr]
        lost = outbox.delivery(gone, "a")
        assert lost is not None and lost.state is DeliveryState.FAILED
        assert "missing" in (lost.last_error or "")


def test_a_round_lost_to_the_link_goes_back_in_one_commit_each_with_its_own_backoff(
    tmp_path: Path,
) -> None:
    with new_outbox(tmp_path, ["a"]) as outbox:
        ids = [add_object(outbox, f"1.2.{n}") for n in range(3)]
        outbox.mark_retry(ids[0], "a", "link down", delay=0)  # one attempt already
        claimed = outbox.claim("a")
        assert [d.state for d in claimed] == [DeliveryState.IN_FLIGHT] * 3
        before = time.time()
        first = outbox.mark_retry_many(ids, "a", "link down", base=100, cap=1000)
        rows = [outbox.delivery(i, "a") for i in ids]
        assert all(r is not None and r.state is DeliveryState.PENDING for r in rows)
        assert [r.attempts for r in rows if r] == [2, 1, 1]
        assert rows[0] and rows[0].next_attempt_at >= before + 100  # 2nd attempt: 100–200 s
        assert all(r and before + 50 <= r.next_attempt_at for r in rows)
        assert first == min(r.next_attempt_at for r in rows if r)
        assert outbox.claim("a") == []
        assert outbox.mark_retry_many([], "a", "nothing") <= time.time()


def test_retry_backoff_and_operator_retry(tmp_path: Path) -> None:
    with new_outbox(tmp_path, ["a"]) as outbox:
        oid = add_object(outbox, "1.2.3")
        (claimed,) = outbox.claim("a")
        due = outbox.mark_retry(oid, "a", "link down")
        assert due > time.time()
        assert outbox.claim("a") == []  # backing off
        outbox.mark_failed(oid, "a", "rejected")
        assert outbox.retry(oid) == 1
        (again,) = outbox.claim("a")
        assert again.attempts == 2 and again.object.id == claimed.object.id
