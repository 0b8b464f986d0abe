"""Claims survive reboots and recycled PIDs, and recovery never guesses.

A claim names its holder by boot id, PID and process start time, with a
lease; the old `hostname:pid` claim named a live, unrelated process after a
power cut (PIDs repeat on an embedded boot), so a batch stayed in flight
forever. Recovery used to remove row-less files older than 60 s while
another process held the add lock, though that process might still commit
their rows (a large cine on a slow SD card)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

from gateway.queue import db as queue_db
from gateway.queue.files import write_atomic
from gateway.queue.model import LOCK_NAME, DeliveryState
from gateway.queue.schema import DB_NAME
from tests.support.queue import add_object, new_outbox


def _set_claims(root: Path, claimed_by: str, claim_until: float | None) -> None:
    db = sqlite3.connect(root / DB_NAME)
    with db:
        db.execute(
            "UPDATE deliveries SET claimed_by = ?, claim_until = ? WHERE state = 'in_flight'",
            (claimed_by, claim_until),
        )
    db.close()


def test_a_claim_is_boot_pid_and_start_time_with_a_lease(tmp_path: Path) -> None:
    me = queue_db.this_process()
    boot, pid, start = me.split(":")
    assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert int(pid) == os.getpid() and start == queue_db.process_start(os.getpid())
    with new_outbox(tmp_path, ["a"]) as outbox:
        add_object(outbox, "1.2.3.1")
        outbox.claim("a")
        row = (
            sqlite3.connect(tmp_path / DB_NAME)
            .execute("SELECT claimed_by, claim_until FROM deliveries")
            .fetchone()
        )
        assert row[0] == me
        assert row[1] > time.time() + queue_db.CLAIM_LEASE_S - 60
        # Held by a live instance of its holder (us): left alone.
        assert outbox.reset_stale_claims() == 0


def test_claims_of_another_boot_are_reset_though_the_pid_is_alive(tmp_path: Path) -> None:
    """The "reboot that keeps the PIDs": the claim names our own PID and
    start time (the new forwarder got the same PID), but another boot."""
    with new_outbox(tmp_path, ["a"]) as outbox:
        oid = add_object(outbox, "1.2.3.1")
        outbox.claim("a")
        _, pid, start = queue_db.this_process().split(":")
        _set_claims(tmp_path, f"0d1e2f30-old-boot:{pid}:{start}", time.time() + 600)
        assert outbox.reset_stale_claims() == 1
        assert outbox.delivery(oid, "a").state is DeliveryState.PENDING  # type: ignore[union-attr]


def test_a_recycled_pid_or_an_expired_lease_or_an_old_claim_is_reset(tmp_path: Path) -> None:
    boot, pid, start = queue_db.this_process().split(":")
    cases = [
        (f"{boot}:{pid}:{int(start) + 1}", time.time() + 600),  # same PID, other process
        (f"{boot}:{pid}:{start}", time.time() - 1),  # lease run out (a stuck holder)
        (f"{boot}:{pid}:{start}", None),  # no lease at all
        (f"gateway-host:{pid}", time.time() + 600),  # the old hostname:pid form
    ]
    for n, (claimed_by, until) in enumerate(cases):
        root = tmp_path / str(n)
        with new_outbox(root, ["a"]) as outbox:
            oid = add_object(outbox, "1.2.3.1")
            outbox.claim("a")
            _set_claims(root, claimed_by, until)
            assert outbox.recover().claims_reset == 1, claimed_by
            delivery = outbox.delivery(oid, "a")
            assert delivery is not None and delivery.state is DeliveryState.PENDING
            assert len(outbox.claim("a")) == 1  # and it goes out again


def test_sending_renews_the_lease_of_the_rest_of_the_batch(tmp_path: Path) -> None:
    with new_outbox(tmp_path, ["a"]) as outbox:
        first, second = add_object(outbox, "1.2.3.1"), add_object(outbox, "1.2.3.2")
        outbox.claim("a")
        _set_claims(tmp_path, queue_db.this_process(), time.time() + 5)
        outbox.mark_sent(first, "a")
        until = (
            sqlite3.connect(tmp_path / DB_NAME)
            .execute("SELECT claim_until FROM deliveries WHERE object_id = ?", (second,))
            .fetchone()[0]
        )
        assert until > time.time() + queue_db.CLAIM_LEASE_S - 60


def test_recovery_leaves_files_alone_while_another_process_is_adding(tmp_path: Path) -> None:
    """A writer between its file and its row holds the add lock (shared):
    recovery must not take that file for an orphan, however old it looks."""
    with new_outbox(tmp_path, ["a"]) as outbox:
        in_progress = outbox.objects_dir / "1.2.3.9.dcm"
        lock = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
        fcntl.flock(lock, fcntl.LOCK_SH)  # as ObjectsMixin._adding does
        try:
            write_atomic(in_progress, b"a large cine, not committed yet")
            old = time.time() - 3600  # the old 60 s mtime grace would have removed it
            os.utime(in_progress, (old, old))
            report = outbox.recover(lock_wait=0.3)
            assert report.files_skipped and report.orphan_files_removed == 0
            assert in_progress.exists()
        finally:
            os.close(lock)
        # Once nobody adds, a row-less file was never acknowledged: it goes.
        report = outbox.recover()
        assert not report.files_skipped and report.orphan_files_removed == 1
        assert not in_progress.exists()


def test_recovery_waits_for_an_add_that_finishes(tmp_path: Path) -> None:
    with new_outbox(tmp_path, ["a"]) as outbox, new_outbox(tmp_path, ["a"]) as other:
        lock = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
        fcntl.flock(lock, fcntl.LOCK_SH)

        def finish_adding() -> None:
            time.sleep(0.3)
            os.close(lock)  # the writer's row committed; it lets go

        write_atomic(outbox.objects_dir / "1.2.3.7.dcm", b"a row-less leftover")
        threading.Thread(target=finish_adding).start()
        report = other.recover(lock_wait=10)
        assert not report.files_skipped and report.orphan_files_removed == 1
