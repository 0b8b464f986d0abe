"""A damaged `outbox.sqlite` (a power cut on a bad SD card, a corrupt page)
must not stop the box: the file is moved aside, kept for support, and a new
database is rebuilt from the Part 10 files in the queue.

The files are the truth of what was acknowledged (each was durable before
its row committed), so every one of them becomes an object again, pending
for every destination: what the old database knew (sent, committed, held,
the exam it belonged to) is gone with it, and sending again is harmless (a
PACS keeps one instance per SOP Instance UID). A file whose row had never
committed (a capture cut short) comes back too: an extra copy, never a loss.
A file that cannot be read as Part 10 is moved aside with the database.
An alarm row records the rebuild (the service logs and audits it).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.dicom.part10 import Part10Error, read_header
from gateway.queue.alarms import ALARM_REBUILT
from gateway.queue.db import DamagedDatabase, open_queue_db, transaction
from gateway.queue.files import TMP_SUFFIX, fsync_dir
from gateway.queue.model import LOCK_NAME, OBJECTS_DIR, object_file_name
from gateway.queue.schema import DB_NAME

log = logging.getLogger(__name__)

REPAIR_LOCK = "repair.lock"


@dataclass(frozen=True)
class RebuildReport:
    reason: str
    kept_in: Path  # the damaged database (and unreadable files), for support
    objects: int  # rebuilt from their files, pending for every destination
    unreadable: int  # files moved aside with the database


def open_or_rebuild(
    root: Path, destinations: Sequence[str], check: bool
) -> tuple[sqlite3.Connection, RebuildReport | None]:
    """The queue database, rebuilt first when it is damaged. Processes that
    start together (capture and forwarder) take turns: the second finds the
    database rebuilt by the first."""
    try:
        return open_queue_db(root, check=check), None
    except DamagedDatabase:
        pass
    fd = os.open(root / REPAIR_LOCK, os.O_RDWR | os.O_CREAT, 0o660)  # both service users lock it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            return open_queue_db(root, check=True), None
        except DamagedDatabase as exc:
            return _rebuild(root, destinations, str(exc))
    finally:
        os.close(fd)


def _rebuild(
    root: Path, destinations: Sequence[str], reason: str
) -> tuple[sqlite3.Connection, RebuildReport]:
    log.error("%s; moving it aside and rebuilding the queue from its files", reason)
    aside = root / f"damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    aside.mkdir(mode=0o750)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(root / (DB_NAME + suffix), aside / (DB_NAME + suffix))
    fsync_dir(aside)
    fsync_dir(root)
    db = open_queue_db(root)
    objects_dir = root / OBJECTS_DIR
    objects_dir.mkdir(exist_ok=True, mode=0o750)
    rows: list[tuple[str, str, str, str, str, int, float]] = []
    unreadable = 0
    # Nobody adds while we read the directory (adders hold the lock shared).
    lock = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o660)  # both service users lock it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for entry in sorted(os.scandir(objects_dir), key=lambda e: e.name):
            if entry.name.endswith(TMP_SUFFIX) or not entry.name.endswith(".dcm"):
                continue
            path = Path(entry.path)
            try:
                row = _row(path)
            except (Part10Error, OSError, ValueError) as exc:
                log.error("queue file %s cannot be read (%s); kept in %s", path.name, exc, aside)
                os.rename(path, aside / path.name)
                unreadable += 1
                continue
            rows.append(row)
        if unreadable:
            fsync_dir(objects_dir)
            fsync_dir(aside)
        now = time.time()
        with transaction(db):
            for sop_instance, sop_class, ts, study, rel, size, created in rows:
                cur = db.execute(
                    "INSERT INTO objects (sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
                    " study_instance_uid, path, size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (sop_instance, sop_class, ts, study, rel, size, created),
                )
                db.executemany(
                    "INSERT INTO deliveries (object_id, destination, state, updated_at)"
                    " VALUES (?, ?, 'pending', ?)",
                    [(cur.lastrowid, dest, now) for dest in destinations],
                )
            message = (
                f"{reason}; kept in {aside.name}; {len(rows)} object(s) rebuilt from their "
                f"files and pending again for every destination"
                + (f"; {unreadable} unreadable file(s) moved aside" if unreadable else "")
            )
            db.execute(
                "INSERT INTO alarms (kind, message, raised_at) VALUES (?, ?, ?)",
                (ALARM_REBUILT, message, now),
            )
    finally:
        os.close(lock)
    log.error("queue rebuilt: %s", message)
    return db, RebuildReport(reason, aside, len(rows), unreadable)


def _row(path: Path) -> tuple[str, str, str, str, str, int, float]:
    """What the objects table needs, from the file: UIDs from its header
    (cheap), the Study Instance UID from the data set (pydicom, stopping
    before the pixels)."""
    from pydicom import dcmread

    sop = read_header(path)
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
    study = str(ds.get("StudyInstanceUID", "") or "")
    if not sop.sop_instance or not sop.sop_class or not study:
        raise ValueError("no SOP Instance, SOP Class or Study Instance UID")
    # Queues written before names were hashed hold `<UID>.dcm` files.
    if path.name not in (object_file_name(sop.sop_instance), f"{sop.sop_instance}.dcm"):
        raise ValueError(f"holds SOP Instance UID {sop.sop_instance}")
    st = path.stat()
    return (
        sop.sop_instance,
        sop.sop_class,
        sop.transfer_syntax,
        study,
        f"{OBJECTS_DIR}/{path.name}",
        st.st_size,
        st.st_mtime,
    )
