"""What the status bar says: the queue, each PACS link, the disk and the
clock, reduced to sentences a technician can act on ("PACS unreachable — 12
images waiting, next try 10:42") rather than counters to interpret.

The link state comes from the forwarder when it runs in this process, else
from the queue rows themselves (last error, next attempt), so a UI running in
its own unit (`run --only ui`) still tells the truth. The RIS link is the
worklist service's own knowledge (it remembers a failed query), the MPPS
link what the MPPS message queue says (a message waiting with an error).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from drivers.stream import FrameStream
from gateway.config import GatewayConfig, mpps_peer
from gateway.queue.deliveries import PROBE_CAP_S
from gateway.queue.outbox import Outbox
from gateway.ris.worklist import LinkState
from gateway.send.forwarder import DestinationStatus

# A box without a real-time clock boots into 1970 or into its last shutdown:
# any time before this build cannot be right.
CLOCK_FLOOR = datetime(2025, 1, 1).timestamp()

ForwarderStatus = Callable[[], Mapping[str, DestinationStatus]]
RisStatus = Callable[[], LinkState]


def _images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M")


class StatusBoard:
    """Computes the status at most every `ttl` seconds, however many screens ask."""

    def __init__(
        self,
        config: GatewayConfig,
        outbox: Outbox,
        forwarder_status: ForwarderStatus | None = None,
        stream: FrameStream | None = None,
        ttl: float = 0.5,
        ris_status: RisStatus | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.forwarder_status = forwarder_status
        self.stream = stream
        self.ttl = ttl
        self.ris_status = ris_status
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        # When each PACS was first seen unreachable (cleared when it answers).
        self._down_since: dict[str, float] = {}

    def current(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < self.ttl:
                return self._cached[1]
            status = self._compute()
            self._cached = (now, status)
            return status

    def _link_from_queue(self, name: str) -> DestinationStatus:
        """Without a forwarder here, the queue rows carry the last error and
        the next attempt of each destination."""
        row = self.outbox._db.execute(
            "SELECT last_error, next_attempt_at, attempts FROM deliveries"
            " WHERE destination = ? AND state IN ('pending', 'in_flight')"
            " ORDER BY next_attempt_at LIMIT 1",
            (name,),
        ).fetchone()
        status = DestinationStatus(name)
        if row is not None and row["attempts"] > 0 and row["last_error"]:
            status.reachable, status.last_error = False, row["last_error"]
            # The forwarder tries the link at least every probe interval
            # after its last failed round, however long the rows' back-offs.
            (last_round,) = self.outbox._db.execute(
                "SELECT MAX(updated_at) FROM deliveries WHERE destination = ?"
                " AND state = 'pending' AND attempts > 0",
                (name,),
            ).fetchone()
            probe = min(PROBE_CAP_S, self.config.forwarding.retry_cap_s)
            status.next_try = min(row["next_attempt_at"], (last_round or 0.0) + probe)
        return status

    def _failures(self) -> list[dict[str, Any]]:
        """Why objects were refused, most recent first: one tap away on screen."""
        rows = self.outbox._db.execute(
            "SELECT destination, last_error, COUNT(*) AS n, MAX(updated_at) AS at"
            " FROM deliveries WHERE state = 'failed' GROUP BY destination, last_error"
            " ORDER BY at DESC LIMIT 5"
        ).fetchall()
        return [
            {
                "destination": r["destination"],
                "reason": r["last_error"] or "no reason recorded",
                "count": r["n"],
                "at": _clock(r["at"]),
            }
            for r in rows
        ]

    def _ris(self) -> dict[str, Any] | None:
        if self.config.worklist is None or self.ris_status is None:
            return None
        link = self.ris_status()
        out: dict[str, Any] = link.as_json()
        if link.state == "down":
            out["text"] = (
                f"RIS unreachable since {_clock(link.since or time.time())} — "
                "worklist from the cache"
            )
        elif link.state == "up":
            out["text"] = "RIS connected"
        else:
            out["text"] = "RIS not asked yet"
        return out

    def _mpps(self) -> dict[str, Any] | None:
        """The MPPS messages waiting and why the last try failed (the queue's rows)."""
        if mpps_peer(self.config) is None:
            return None
        row = self.outbox._db.execute(
            "SELECT COUNT(*) AS n, MIN(CASE WHEN attempts > 0 THEN updated_at END) AS since,"
            " MAX(CASE WHEN attempts > 0 THEN last_error END) AS error"
            " FROM mpps_messages WHERE state IN ('pending', 'in_flight')"
        ).fetchone()
        waiting, error = int(row["n"] or 0), row["error"]
        failed = self.outbox._db.execute(
            "SELECT COUNT(*) FROM mpps_messages WHERE state = 'failed'"
        ).fetchone()[0]
        if waiting and error:
            state = "down"
            text = f"MPPS not delivered — {waiting} message(s) waiting: {error}"
        else:
            state = "up" if not waiting else "sending"
            text = "MPPS up to date" if not waiting else f"MPPS sending {waiting} message(s)"
        return {
            "state": state,
            "waiting": waiting,
            "failed": int(failed),
            "last_error": error,
            "text": text,
        }

    def _compute(self) -> dict[str, Any]:
        stats = self.outbox.stats()
        totals = {"held": 0, "pending": 0, "sent": 0, "failed": 0}
        for counts in stats.values():
            totals["held"] += counts.get("held", 0)
            totals["pending"] += counts.get("pending", 0) + counts.get("in_flight", 0)
            totals["sent"] += counts.get("sent", 0) + counts.get("committed", 0)
            totals["failed"] += counts.get("failed", 0)
        live = dict(self.forwarder_status()) if self.forwarder_status else {}
        messages: list[dict[str, str]] = []
        links: list[dict[str, Any]] = []
        several = len(self.config.destinations) > 1
        for dest in self.config.destinations:
            state = live.get(dest.name) or self._link_from_queue(dest.name)
            waiting = stats.get(dest.name, {})
            n_wait = waiting.get("pending", 0) + waiting.get("in_flight", 0)
            label = f"PACS {dest.name}" if several else "PACS"
            since = None
            if state.reachable is False:
                since = self._down_since.setdefault(dest.name, time.time())
                text = f"{label} unreachable since {_clock(since)} — {_images(n_wait)} waiting"
                if state.next_try:
                    text += f", next try {_clock(state.next_try)}"
                link = "down"
                messages.append({"level": "error", "text": text})
            elif state.reachable is True:
                link, text = "up", f"{label} connected"
                if n_wait:
                    text += f" — sending {_images(n_wait)}"
            else:
                link, text = "unknown", f"{label} not contacted yet"
            if link != "down":
                self._down_since.pop(dest.name, None)
            links.append(
                {
                    "name": dest.name,
                    "state": link,
                    "text": text,
                    "waiting": n_wait,
                    "last_error": state.last_error,
                    "next_try": state.next_try,
                    "since": since,
                }
            )
        if not self.config.destinations:
            messages.append({"level": "warning", "text": "No PACS configured — open Settings"})
        failures = self._failures() if totals["failed"] else []
        if totals["failed"]:
            messages.append(
                {
                    "level": "error",
                    "text": f"{_images(totals['failed'])} refused by the PACS — ask IT "
                    "(dicom-gateway queue list)",
                }
            )
        ris = self._ris()
        if ris is not None and ris["state"] == "down":
            messages.append({"level": "warning", "text": ris["text"]})
        mpps = self._mpps()
        if mpps is not None and mpps["state"] == "down":
            messages.append({"level": "warning", "text": mpps["text"]})
        try:
            free_mb = shutil.disk_usage(self.outbox.root).free // (1024 * 1024)
        except OSError:
            free_mb = -1
        disk_low = 0 <= free_mb < self.config.queue.min_free_mb
        if disk_low:
            messages.append(
                {"level": "error", "text": f"Disk full — {free_mb} MB free; capture is refused"}
            )
        elif 0 <= free_mb < 2 * self.config.queue.min_free_mb:
            messages.append({"level": "warning", "text": f"Disk nearly full — {free_mb} MB free"})
        now = time.time()
        clock_ok = now >= CLOCK_FLOOR
        if not clock_ok:
            messages.append(
                {
                    "level": "warning",
                    "text": "Clock is wrong ("
                    + datetime.fromtimestamp(now).strftime("%Y-%m-%d")
                    + ") — image dates will be wrong; connect to the network or set the time",
                }
            )
        video: dict[str, Any] = {"connected": False, "error": "no capture in this process"}
        if self.stream is not None:
            s = self.stream.stats()
            video = {"connected": s.connected, "error": s.error, "dropped": s.dropped}
            if s.error:
                messages.append({"level": "error", "text": f"No video — {s.error}"})
        return {
            "queue": totals,
            "failures": failures,
            "links": links,
            "ris": ris,
            "mpps": mpps,
            "disk": {"free_mb": free_mb, "low": disk_low},
            "clock": {"now": now, "ok": clock_ok, "text": _clock(now)},
            "video": video,
            "messages": messages,
        }
