"""Capture path at 1920×1080, 30 fps, from the file driver (the `video` data
set of BENCHMARKS.md, generated here): frames delivered and dropped, CPU
seconds per frame, and the latency from a frame's arrival to its still being
durable in the queue (p50/p95), JPEG Baseline vs uncompressed alternating.

There is no DCMTK reference for a frame grabber; the figures are absolute.
`BENCH_CAPTURE_SECONDS` shortens the run (default 60)."""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivers import create_driver
from drivers.stream import FrameStream
from gateway.acquire.capture import Capturer
from gateway.acquire.exam import ExamService
from gateway.config import GatewayConfig
from gateway.dicom.modules import Patient
from gateway.queue.outbox import outbox_for
from tests.benchmarks.common import machine, report

WIDTH, HEIGHT, FPS = 1920, 1080, 30


def make_video(path: Path, seconds: float) -> None:
    """Camera-like: a smooth scene, per-frame sensor noise, a moving box."""
    rng = np.random.default_rng(1)
    x = np.linspace(0, 255, WIDTH, dtype=np.float32)
    y = np.linspace(0, 255, HEIGHT, dtype=np.float32)
    scene = np.stack(
        [np.add.outer(y, x) / 2, np.add.outer(y, 255 - x) / 2, np.add.outer(255 - y, x) / 2], -1
    ).astype(np.int16)
    noise = [rng.integers(-6, 7, scene.shape, dtype=np.int16) for _ in range(8)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 90)
    for i in range(int(seconds * FPS)):
        frame = np.clip(scene + noise[i % len(noise)], 0, 255).astype(np.uint8)
        cx = (i * 13) % (WIDTH - 200)
        cv2.rectangle(frame, (cx, 400), (cx + 200, 600), (0, 140, 255), -1)
        cv2.putText(frame, f"#{i:05d}", (60, 120), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 6)
        writer.write(frame)
    writer.release()


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stream_only(video: Path, seconds: float) -> dict[str, Any]:
    stream = FrameStream(create_driver("file", {"path": str(video), "loop": True}))
    c0, t0 = cpu(), time.perf_counter()
    stream.start()
    time.sleep(seconds)
    stats = stream.stats()
    wall, used = time.perf_counter() - t0, cpu() - c0
    stream.stop()
    return {
        "stream_seconds": wall,
        "frames_delivered": stats.frames,
        "frames_dropped": stats.dropped,
        "frames_expected": round(wall * FPS),
        "cpu_s_per_frame": used / max(1, stats.frames),
        "cpu_share_of_one_core": used / wall,
    }


# Still modes, alternated A B C A B C …: the grabber's JPEG re-encoded (its
# bytes dropped, as when a crop is asked for), passed through as the device
# sent it, and stored uncompressed.
MODES = {
    "jpeg": "jpeg-baseline",
    "passthrough": "jpeg-baseline",
    "uncompressed": "none",
}


def stills(video: Path, root: Path, count: int) -> dict[str, Any]:
    services = {}
    for mode, compression in MODES.items():
        config = GatewayConfig.model_validate(
            {"capture": {"driver": "file", "compression": compression},
             "queue": {"path": str(root / mode), "min_free_mb": 0}}
        )  # fmt: skip
        outbox = outbox_for(config)
        service = ExamService(config, outbox, Capturer(config, outbox, "file"))
        services[mode] = (service, service.start(Patient("BENCH^STILL", "B1")), outbox)
    latencies: dict[str, list[float]] = {k: [] for k in services}
    stream = FrameStream(create_driver("file", {"path": str(video), "loop": True})).start()
    last = -1
    modes = list(MODES)
    try:
        for i in range(count * len(modes)):
            mode = modes[i % len(modes)]
            time.sleep(0.25)
            frame = stream.wait_frame(after_index=last, timeout=5)
            assert frame is not None and frame.jpeg is not None
            last = frame.index
            if mode != "passthrough":
                frame = dataclasses.replace(frame, jpeg=None)
            service, exam, _ = services[mode]
            service.capture(exam, frame)
            latencies[mode].append(time.time() - frame.timestamp)
        stats = stream.stats()
    finally:
        stream.stop()
        for _, _, outbox in services.values():
            outbox.close()
    out: dict[str, Any] = {"stills_per_mode": count, "dropped_during_stills": stats.dropped}
    for mode, values in latencies.items():
        ms = [v * 1000 for v in values]
        out[f"still_{mode}_p50_ms"] = statistics.median(ms)
        out[f"still_{mode}_p95_ms"] = pct(ms, 0.95)
        out[f"still_{mode}_min_ms"] = min(ms)
        out[f"still_{mode}_max_ms"] = max(ms)
    return out


def main() -> None:
    seconds = float(os.environ.get("BENCH_CAPTURE_SECONDS", "60"))
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        root = Path(tmp)
        video = root / "video.avi"
        t0 = time.perf_counter()
        make_video(video, min(seconds, 60))
        generated = time.perf_counter() - t0
        result: dict[str, Any] = {
            "name": "capture",
            "dataset": f"video: {WIDTH}×{HEIGHT} {FPS} fps MJPEG AVI, {min(seconds, 60):g} s "
            f"({video.stat().st_size / 1e6:.0f} MB, generated in {generated:.0f} s)",
            "reference": "none (absolute figures; no DCMTK equivalent for a frame source)",
            "driver": "file, realtime, passthrough (MJPEG bytes kept, decoded once to RGB)",
        }
        result.update(stream_only(video, seconds))
        result.update(stills(video, root, 20))
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["machine"] = machine()
        result["threads"] = threading.active_count()
    report(result)


if __name__ == "__main__":
    main()
