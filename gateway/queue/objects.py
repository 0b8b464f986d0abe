"""Adding objects: the file made durable first, then its row committed;
only then is the capture acknowledged. Deleting a held object, releasing an
exam's objects for sending."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway.queue.base import OutboxBase
from gateway.queue.db import QueueError
from gateway.queue.files import fsync_dir, remove_durably, write_atomic
from gateway.queue.model import (
    LOCK_NAME,
    OBJECTS_DIR,
    AlreadyQueued,
    NewObject,
    QueuedObject,
    object_file_name,
)


class ObjectsMixin(OutboxBase):
    def add(
        self,
        data: bytes,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        study_instance_uid: str,
        exam_id: str | None = None,
        hold: bool = False,
    ) -> QueuedObject:
        """Store one Part 10 file durably and queue it for every destination.
        When this returns, the object survives a power cut. With `hold`, it
        waits (state `held`) until `release_exam` — the technician may still
        delete it before finishing the exam."""
        item = NewObject(
            data,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            study_instance_uid=study_instance_uid,
            exam_id=exam_id,
            hold=hold,
        )
        return self.add_many([item])[0]

    def add_many(self, items: Sequence[NewObject]) -> list[QueuedObject]:
        """Several objects, all or none: each file written and fsynced, the
        directory fsynced once for every rename, the rows committed in one
        transaction. When this returns they all survive a power cut; when it
        raises, none is queued (files already written are removed)."""
        if not items:
            return []
        self.check_space(sum(i.size for i in items))
        with self._adding():
            return self._add(items)

    @contextlib.contextmanager
    def _adding(self) -> Iterator[None]:
        """Shared lock held from file write to row commit: while anyone holds
        it, `recover` must not take a row-less file for an orphan."""
        fd = os.open(
            self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o660
        )  # both service users lock it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _add(self, items: Sequence[NewObject]) -> list[QueuedObject]:
        uids = [i.sop_instance_uid for i in items]
        if len(set(uids)) != len(uids):
            raise AlreadyQueued("the same SOP Instance UID twice in one batch")
        for uid in uids:
            if (self.objects_dir / object_file_name(uid)).exists() and self._has_row(uid):
                raise AlreadyQueued(f"SOP Instance UID {uid} is already queued")
        written: list[Path] = []
        uid_of: dict[Path, str] = {}
        try:
            for item in items:
                path = self.objects_dir / object_file_name(item.sop_instance_uid)
                write_atomic(path, item.data, sync_dir=False)
                written.append(path)
                uid_of[path] = item.sop_instance_uid
            fsync_dir(self.objects_dir)
        except OSError as exc:
            self._discard(written)
            raise QueueError(f"cannot write to {self.objects_dir}: {exc.strerror}") from None
        now = time.time()
        queued: list[QueuedObject] = []
        committing = False
        try:
            with self._tx() as db:
                for item in items:
                    name = object_file_name(item.sop_instance_uid)
                    cur = db.execute(
                        "INSERT INTO objects (sop_instance_uid, sop_class_uid,"
                        " transfer_syntax_uid, study_instance_uid, path, size, created_at,"
                        " exam_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            item.sop_instance_uid,
                            item.sop_class_uid,
                            item.transfer_syntax_uid,
                            item.study_instance_uid,
                            f"{OBJECTS_DIR}/{name}",
                            item.size,
                            now,
                            item.exam_id,
                        ),
                    )
                    object_id = cur.lastrowid
                    assert object_id is not None
                    db.executemany(
                        "INSERT INTO deliveries (object_id, destination, state, updated_at)"
                        " VALUES (?, ?, ?, ?)",
                        [
                            (object_id, dest, "held" if item.hold else "pending", now)
                            for dest in self.destinations
                        ],
                    )
                    queued.append(
                        QueuedObject(
                            object_id,
                            item.sop_instance_uid,
                            item.sop_class_uid,
                            item.transfer_syntax_uid,
                            item.study_instance_uid,
                            self.objects_dir / name,
                            item.size,
                            now,
                            item.exam_id,
                        )
                    )
                committing = True  # leaving the block commits
        except sqlite3.IntegrityError:
            # Another process queued one of these meanwhile: its file (same
            # name) belongs to that row now and stays; the others go.
            self._discard([p for p in written if not self._has_row(uid_of[p])])
            raise AlreadyQueued("a SOP Instance UID of this batch is already queued") from None
        except sqlite3.Error as exc:
            # A COMMIT that failed (EIO on the WAL's fsync) may still be on
            # disk after a restart: its files stay, so no row can ever point
            # at a removed file (start-up removes them if the rows are not
            # there). Nothing is acknowledged either way.
            if not committing:
                self._discard(written)
            raise QueueError(f"cannot record objects in the queue: {exc}") from None
        return queued

    def _has_row(self, sop_instance_uid: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM objects WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return row is not None

    def _discard(self, paths: Sequence[Path]) -> None:
        """Files of a batch that will not be queued (best effort; start-up
        removes any row-less file that survives)."""
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            fsync_dir(self.objects_dir)

    def release_exam(self, exam_id: str) -> int:
        """The exam is finished: its held objects become due for sending."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = 0, updated_at = ?"
                " WHERE state = 'held'"
                " AND object_id IN (SELECT id FROM objects WHERE exam_id = ?)",
                (time.time(), exam_id),
            )
        return cur.rowcount

    def discard_held(self, object_id: int) -> None:
        """Delete an object the technician rejected before finishing; refused
        once any destination may have it."""
        obj = self.get(object_id)
        if obj is None:
            raise QueueError(f"no queued object with ID {object_id}")
        with self._tx() as db:
            states = {
                r[0]
                for r in db.execute(
                    "SELECT state FROM deliveries WHERE object_id = ?", (object_id,)
                )
            }
            if states - {"held"}:
                raise QueueError(f"object {object_id} is already released for sending")
            db.execute("DELETE FROM deliveries WHERE object_id = ?", (object_id,))
            db.execute("DELETE FROM objects WHERE id = ?", (object_id,))
        remove_durably(obj.path)
