"""Deliveries: a row per (object, destination). The forwarder claims due
rows, and records each outcome: sent, retry later (with back-off), failed."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from gateway.queue.base import OutboxBase
from gateway.queue.db import claim_lease, claimer_alive, this_process
from gateway.queue.model import Delivery, DeliveryState

# The forwarder dying this many times while converting one object sets it aside.
POISON_CRASHES = 2


# While a destination is down, the forwarder tries its link at least this
# often (or every `retry_cap_s`, if lower), whatever the objects' own
# back-offs (gateway.send.forwarder); a status shown from the queue rows alone
# (the UI in its own process) bounds its "next try" by it.
PROBE_CAP_S = 30.0


def backoff_delay(attempts: int, base: float = 5.0, cap: float = 300.0) -> float:
    """Exponential back-off with full jitter (so a fleet does not retry in step)."""
    ceiling = min(cap, base * 2 ** max(0, attempts - 1))
    return random.uniform(ceiling / 2, ceiling)


class DeliveriesMixin(OutboxBase):
    def claim(self, destination: str, limit: int = 100, now: float | None = None) -> list[Delivery]:
        """Take due pending deliveries for one destination, oldest first; one
        that just failed goes behind the rest, so it cannot block the line."""
        now = time.time() if now is None else now
        with self._tx() as db:
            rows = db.execute(
                f"{self._JOIN} WHERE d.destination = ? AND d.state = 'pending'"
                " AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at, d.object_id LIMIT ?",
                (destination, now, limit),
            ).fetchall()
            me, lease = this_process(), claim_lease(now)
            db.executemany(
                "UPDATE deliveries SET state = 'in_flight', claimed_by = ?, updated_at = ?,"
                " claim_until = ? WHERE object_id = ? AND destination = ?",
                [(me, now, lease, r["object_id"], destination) for r in rows],
            )
        return [replace(self._delivery(r), state=DeliveryState.IN_FLIGHT) for r in rows]

    def mark_sent(self, object_id: int, destination: str) -> None:
        self.mark_sent_many([object_id], destination)

    def mark_sent_many(self, object_ids: Sequence[int], destination: str) -> None:
        """One durable commit for many successes: an fsync per object would
        cost more than sending a 1 MB object. Delaying the mark is safe: after
        a crash the object is sent again, and a resend is harmless."""
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "UPDATE deliveries SET state = 'sent', sent_at = ?, updated_at = ?,"
                " attempts = attempts + 1, last_error = NULL, claimed_by = NULL,"
                " converting_since = NULL, crashes = 0"
                " WHERE object_id = ? AND destination = ? AND state = 'in_flight'",
                [(now, now, i, destination) for i in object_ids],
            )
            # The rest of the batch is still being worked on: renew its lease.
            db.execute(
                "UPDATE deliveries SET claim_until = ? WHERE destination = ?"
                " AND state = 'in_flight' AND claimed_by = ?",
                (claim_lease(now), destination, this_process()),
            )

    def mark_retry(
        self,
        object_id: int,
        destination: str,
        error: str,
        delay: float | None = None,
        *,
        base: float = 5.0,
        cap: float = 300.0,
    ) -> float:
        """Back to pending with a back-off; returns when it is due again."""
        return self.mark_retry_many([object_id], destination, error, delay, base=base, cap=cap)

    def mark_retry_many(
        self,
        object_ids: Sequence[int],
        destination: str,
        error: str,
        delay: float | None = None,
        *,
        base: float = 5.0,
        cap: float = 300.0,
    ) -> float:
        """Each back to pending with its own back-off, in one durable commit
        (a round of 200 lost to a broken link was 200 fsyncs: seconds on an
        SD card). Returns when the first is due again."""
        now = time.time()
        updates = []
        with self._tx() as db:
            for object_id in object_ids:
                row = db.execute(
                    "SELECT attempts FROM deliveries WHERE object_id = ? AND destination = ?",
                    (object_id, destination),
                ).fetchone()
                attempts = (row[0] if row else 0) + 1
                due = now + (backoff_delay(attempts, base, cap) if delay is None else delay)
                updates.append((attempts, due, error, now, object_id, destination))
            db.executemany(
                "UPDATE deliveries SET state = 'pending', attempts = ?, next_attempt_at = ?,"
                " last_error = ?, claimed_by = NULL, claim_until = NULL,"
                " converting_since = NULL, updated_at = ?"
                " WHERE object_id = ? AND destination = ?",
                updates,
            )
        return min((u[1] for u in updates), default=now)

    def reset_stale_claims(self) -> int:
        """Every claim not held by a live instance of its holder (another
        boot, a dead or recycled PID, a lease run out) goes back to pending.
        A claim the holder died on while converting counts as a crash of that
        object; the second one sets it aside (a poison object: converting it
        killed the forwarder twice, so the rest of the queue must move on)."""
        now = time.time()
        reset = 0
        with self._tx() as db:
            rows = db.execute(
                "SELECT object_id, destination, claimed_by, claim_until, converting_since,"
                " crashes FROM deliveries WHERE state = 'in_flight'"
            ).fetchall()
            for r in rows:
                if claimer_alive(r["claimed_by"], r["claim_until"], now):
                    continue
                key = (r["object_id"], r["destination"])
                reset += 1
                if r["converting_since"] is None:
                    db.execute(
                        "UPDATE deliveries SET state = 'pending', claimed_by = NULL,"
                        " claim_until = NULL WHERE object_id = ? AND destination = ?",
                        key,
                    )
                    continue
                crashes = r["crashes"] + 1
                poisoned = crashes >= POISON_CRASHES
                db.execute(
                    "UPDATE deliveries SET state = ?, claimed_by = NULL, claim_until = NULL,"
                    " converting_since = NULL, crashes = ?, last_error = ?, updated_at = ?"
                    " WHERE object_id = ? AND destination = ?",
                    (
                        "failed" if poisoned else "pending",
                        crashes,
                        f"the forwarder stopped {crashes} time(s) while converting this object"
                        " (out of memory?)"
                        + ("; set aside so the queue moves on" if poisoned else ""),
                        now,
                        *key,
                    ),
                )
        return reset

    def converting(self, object_id: int, destination: str, started: bool) -> None:
        """Durably note that a conversion of this object starts (or ended):
        if the forwarder dies meanwhile, its next start knows which object
        it died on (`reset_stale_claims`)."""
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET converting_since = ?"
                " WHERE object_id = ? AND destination = ?",
                (time.time() if started else None, object_id, destination),
            )

    def release(self, object_id: int, destination: str) -> None:
        """Return an unattempted claim (the forwarder stopped before sending it)."""
        self.release_many([object_id], destination)

    def release_many(self, object_ids: Sequence[int], destination: str) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE deliveries SET state = 'pending', claimed_by = NULL, claim_until = NULL"
                " WHERE object_id = ? AND destination = ? AND state = 'in_flight'",
                [(i, destination) for i in object_ids],
            )

    def mark_failed(self, object_id: int, destination: str, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = 'failed', attempts = attempts + 1,"
                " last_error = ?, claimed_by = NULL, claim_until = NULL,"
                " converting_since = NULL, updated_at = ?"
                " WHERE object_id = ? AND destination = ?",
                (error, time.time(), object_id, destination),
            )

    def retry(self, object_id: int | None = None) -> int:
        """Operator's retry: failed (or waiting) deliveries become due now."""
        where = "state IN ('failed', 'pending')"
        args: tuple[Any, ...] = ()
        if object_id is not None:
            where += " AND object_id = ?"
            args = (object_id,)
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE deliveries SET state = 'pending', next_attempt_at = 0,"
                f" updated_at = ? WHERE {where}",
                (time.time(), *args),
            )
        return cur.rowcount

    def due_now(self, destination: str, waiting_since: float) -> int:
        """Every delivery to `destination` waiting out a back-off it was given
        before `waiting_since` becomes due now (the link to it is back: those
        waits were the link's). One refused just now keeps its back-off, and
        attempts are kept, so an object that fails by itself is still set
        aside after failing the same way twice."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE deliveries SET next_attempt_at = 0, updated_at = ?"
                " WHERE destination = ? AND state = 'pending' AND next_attempt_at > ?"
                " AND updated_at < ?",
                (now, destination, now, waiting_since),
            )
        return cur.rowcount

    def next_due(self, destination: str) -> float | None:
        row = self._db.execute(
            "SELECT MIN(next_attempt_at) FROM deliveries"
            " WHERE destination = ? AND state = 'pending'",
            (destination,),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    # -- reading --------------------------------------------------------------
