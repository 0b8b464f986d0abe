"""The Storage Commitment ledger: which sent objects were asked about, in
which transaction, and the PACS's answer (committed, or sent again)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.queue.base import OutboxBase


class LedgerMixin(OutboxBase):
    def commitment_due(
        self, destination: str, ask_again_after: float, now: float | None = None
    ) -> dict[str, list[tuple[int, str, str]]]:
        """Per finished study (nothing of it held, pending or in flight for
        `destination`): the sent objects not yet asked for, or asked for so
        long ago that the answer is presumed lost. Values: (id, class, instance)."""
        now = time.time() if now is None else now
        rows = self._db.execute(
            "SELECT o.id, o.sop_class_uid, o.sop_instance_uid, o.study_instance_uid"
            " FROM objects o JOIN deliveries d ON d.object_id = o.id"
            " WHERE d.destination = ?1 AND d.state = 'sent'"
            " AND (d.commit_tx IS NULL OR d.commit_requested_at < ?2)"
            " AND o.study_instance_uid NOT IN ("
            "   SELECT o2.study_instance_uid FROM objects o2 JOIN deliveries d2"
            "   ON d2.object_id = o2.id WHERE d2.destination = ?1"
            "   AND d2.state IN ('held', 'pending', 'in_flight'))"
            " ORDER BY o.id",
            (destination, now - ask_again_after),
        ).fetchall()
        out: dict[str, list[tuple[int, str, str]]] = {}
        for r in rows:
            out.setdefault(r[3], []).append((r[0], r[1], r[2]))
        return out

    def mark_commit_requested(
        self, destination: str, transaction_uid: str, object_ids: Sequence[int]
    ) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "UPDATE deliveries SET commit_tx = ?, commit_requested_at = ?, updated_at = ?"
                " WHERE object_id = ? AND destination = ? AND state = 'sent'",
                [(transaction_uid, now, now, i, destination) for i in object_ids],
            )

    def forget_commit_request(self, transaction_uid: str) -> None:
        """The request never reached the PACS: ask again at the next round."""
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET commit_tx = NULL, commit_requested_at = NULL"
                " WHERE commit_tx = ? AND state = 'sent'",
                (transaction_uid,),
            )

    def commit_destination(self, transaction_uid: str) -> str | None:
        """The destination we asked under this Transaction UID, while any of
        its objects still waits for the answer; None for a transaction we
        never issued (or one fully answered)."""
        row = self._db.execute(
            "SELECT destination FROM deliveries WHERE commit_tx = ? AND state = 'sent' LIMIT 1",
            (transaction_uid,),
        ).fetchone()
        return None if row is None else str(row[0])

    def apply_commitment(
        self,
        transaction_uid: str,
        committed: Sequence[str],
        failed: Sequence[tuple[str, str]],
        destination: str | None = None,
    ) -> tuple[int, int]:
        """The PACS's answer: committed objects may be purged later; failed
        ones go back to pending to be sent again. With `destination`, only
        that destination's deliveries are touched (the one asked under this
        transaction). Returns (committed, requeued)."""
        now = time.time()
        where = "" if destination is None else " AND destination = ?"
        tail = () if destination is None else (destination,)
        with self._tx() as db:
            ok = db.executemany(
                "UPDATE deliveries SET state = 'committed', updated_at = ?"
                " WHERE commit_tx = ? AND state = 'sent' AND object_id ="
                " (SELECT id FROM objects WHERE sop_instance_uid = ?)" + where,
                [(now, transaction_uid, uid, *tail) for uid in committed],
            ).rowcount
            bad = db.executemany(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = 0, commit_tx = NULL,"
                " commit_requested_at = NULL, last_error = ?, updated_at = ?"
                " WHERE commit_tx = ? AND state = 'sent' AND object_id ="
                " (SELECT id FROM objects WHERE sop_instance_uid = ?)" + where,
                [
                    (f"Storage Commitment failed: {reason}", now, transaction_uid, uid, *tail)
                    for uid, reason in failed
                ],
            ).rowcount
        return ok, bad
