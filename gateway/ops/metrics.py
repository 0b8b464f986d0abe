"""Fleet metrics: a Prometheus `/metrics` endpoint and a JSON `/health`.

A monitor watching a hundred boxes needs the few numbers that predict
trouble: objects piling up per destination, how old the oldest waiting one
is, when a send last worked, whether the device delivers frames, whether the
clock and certificates can be trusted. Queue figures are read from the
queue's database on each scrape (read-only connection, own thread), so the
numbers are right even when the forwarder runs in another unit.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.ops.certalarm import CertStatus
from gateway.ops.clock import ClockStatus, clock_status, flagged_objects
from gateway.queue.alarms import open_alarms
from gateway.queue.stats import read_queue_stats

if TYPE_CHECKING:
    # Capture's types only: the forwarder's process never loads OpenCV or numpy.
    from drivers.stream import StreamStats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Sources:
    """Where each figure comes from; the service fills in what it runs."""

    queue_root: Path
    destinations: list[str]
    station: str = ""
    stream: Callable[[], StreamStats | None] = lambda: None
    loops: Callable[[], dict[str, bool]] = dict
    certificates: Callable[[], list[CertStatus]] = list
    clock: Callable[[], ClockStatus] = clock_status
    extra_health: dict[str, Callable[[], Any]] = field(default_factory=dict)


class GatewayCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        now = time.time()
        info = GaugeMetricFamily(
            "dicom_gateway_info", "Software version and station", labels=["version", "station"]
        )
        info.add_metric([__version__, src.station], 1)
        yield info
        figures = read_queue_stats(src.queue_root, src.destinations)
        depth = GaugeMetricFamily(
            "dicom_gateway_queue_objects",
            "Queued objects per destination and delivery state",
            labels=["destination", "state"],
        )
        for dest, dest_stats in figures.items():
            for state, count in sorted(dest_stats.counts.items()):
                depth.add_metric([dest, state], count)
        yield depth
        oldest = GaugeMetricFamily(
            "dicom_gateway_queue_oldest_waiting_age_seconds",
            "Age of the oldest object not yet delivered (0 when none waits)",
            labels=["destination"],
        )
        last = GaugeMetricFamily(
            "dicom_gateway_last_successful_send_timestamp_seconds",
            "Unix time of the last object the destination accepted (0: never)",
            labels=["destination"],
        )
        for dest in src.destinations:
            created = figures[dest].oldest_waiting
            oldest.add_metric([dest], max(0.0, now - created) if created else 0.0)
            last.add_metric([dest], figures[dest].last_success or 0.0)
        yield oldest
        yield last
        unverified = GaugeMetricFamily(
            "dicom_gateway_queue_unverified_time_objects",
            "Queued objects captured while the clock was not trusted",
        )
        unverified.add_metric([], len(flagged_objects(src.queue_root)))
        yield unverified
        alarms = GaugeMetricFamily(
            "dicom_gateway_alarms",
            "Alarms not cleared (queue-rebuilt, unit-failed), by kind",
            labels=["kind"],
        )
        for kind, count in sorted(open_alarms(src.queue_root).items()):
            alarms.add_metric([kind], count)
        yield alarms
        stats = src.stream()
        if stats is not None:
            captured = CounterMetricFamily(
                "dicom_gateway_frames_captured", "Frames delivered by the capture device"
            )
            captured.add_metric([], stats.frames)
            yield captured
            dropped = CounterMetricFamily(
                "dicom_gateway_frames_dropped", "Frames lost by the device or not taken in time"
            )
            dropped.add_metric([], stats.dropped)
            yield dropped
            connected = GaugeMetricFamily(
                "dicom_gateway_device_connected", "1 while the capture device delivers frames"
            )
            connected.add_metric([], 1 if stats.connected else 0)
            yield connected
        encoded = CounterMetricFamily(
            "dicom_gateway_video_clips_encoded",
            "Clips encoded as H.264/HEVC by this process, by encoder (h264_v4l2m2m: hardware)",
            labels=["encoder"],
        )
        # Read only where the video encoder was loaded: a process that never
        # encoded a clip (the forwarder's) keeps pydicom and numpy out.
        video = sys.modules.get("gateway.dicom.video")
        for encoder, count in sorted((video.clips_encoded() if video else {}).items()):
            encoded.add_metric([encoder], count)
        yield encoded
        certs = GaugeMetricFamily(
            "dicom_gateway_certificate_expiry_days",
            "Days until a certificate expires (negative: expired)",
            labels=["certificate", "subject"],
        )
        for cert in src.certificates():
            certs.add_metric([cert.name, cert.subject], round(cert.days_left, 3))
        yield certs
        clock = src.clock()
        synced = GaugeMetricFamily(
            "dicom_gateway_clock_synchronized",
            "1 when the wall clock is synchronised and not before the build",
        )
        synced.add_metric([], 1 if clock.trusted else 0)
        yield synced
        loops = GaugeMetricFamily(
            "dicom_gateway_loop_healthy", "1 while a service loop reports in time", labels=["loop"]
        )
        for name, ok in sorted(src.loops().items()):
            loops.add_metric([name], 1 if ok else 0)
        yield loops


def health_report(sources: Sources) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 503 when a loop is stuck, else 200 with
    `degraded` when the clock or a certificate needs attention."""
    loops = sources.loops()
    clock = sources.clock()
    certs = sources.certificates()
    stats = sources.stream()
    figures = read_queue_stats(sources.queue_root, sources.destinations)
    queue = {dest: dict(s.counts) for dest, s in figures.items()}
    warnings = [] if clock.trusted else [clock.reason]
    warnings += [f"certificate {c.name} expires in {c.days_left:.0f} days" for c in certs if c.warn]
    if stats is not None and not stats.connected:
        warnings.append(f"capture device not connected: {stats.error or 'no frames'}")
    stuck = [name for name, ok in loops.items() if not ok]
    status = "unhealthy" if stuck else ("degraded" if warnings else "ok")
    body: dict[str, Any] = {
        "status": status,
        "version": __version__,
        "station": sources.station,
        "loops": loops,
        "queue": queue,
        "clock": clock.as_json(),
        "certificates": [c.as_json() for c in certs],
        "device": None
        if stats is None
        else {"connected": stats.connected, "frames": stats.frames, "dropped": stats.dropped},
        "warnings": warnings,
    }
    for name, fn in sources.extra_health.items():
        body[name] = fn()
    return (503 if stuck else 200), body


class MetricsServer:
    """`/metrics` and `/health` on their own thread; a scrape never touches
    the capture or forwarder loops."""

    def __init__(self, listen: str, sources: Sources) -> None:
        host, _, port = listen.rpartition(":")
        self.sources = sources
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(GatewayCollector(sources))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    if self.path == "/metrics":
                        self._reply(200, CONTENT_TYPE, generate_latest(server.registry))
                    elif self.path == "/health":
                        code, body = health_report(server.sources)
                        self._reply(code, "application/json", json.dumps(body).encode())
                    else:
                        self._reply(404, "text/plain", b"not found: try /metrics or /health\n")
                except Exception as exc:  # a scrape must never kill the server
                    log.exception("metrics request %s failed", self.path)
                    self._reply(500, "text/plain", f"error: {exc}\n".encode())

            def _reply(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every 15 s would drown the journal

        self.httpd = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        log.info("metrics on http://%s:%d/metrics and /health", *self.httpd.server_address[:2])
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
