"""Video clips (issue 20), 1920×1080 at 30 frames/s, camera-like frames
(a smooth scene, sensor noise, a moving box and a frame counter):

- encode: 300 frames to H.264 by the gateway's encoder (`gateway.dicom.video`,
  libx264 ultrafast, colour conversion pipelined) against libx264 through
  PyAV at the same preset and options, a frame at a time, alternating; frames
  per second, bytes, CPU;
- the same 300 frames as JPEG cine (the default quality, 4:2:2): bytes, time;
- import: an MP4 (300 frames, made by the ffmpeg tool with libx264) wrapped
  as it is (demux → Annex B → DICOM object written) against `ffmpeg -c copy
  -bsf:v h264_mp4toannexb` of the same file to an elementary stream,
  alternating. Ours runs in this (warm) process; the cold command
  `dicom-gateway import` is reported beside it;
- peak RSS of a 60 s 1080p recording (1800 frames through `ClipWriter`, the
  object built and written), in a child process of its own.

`BENCH_VIDEO_PAIRS` (default 5) and `BENCH_VIDEO_RECORD_SECONDS` (60) shorten it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tests.benchmarks.common import (
    Comparison,
    Run,
    machine,
    report,
    run_command,
    run_in_process,
    tool_version,
)

WIDTH, HEIGHT, FPS = 1920, 1080, 30
FRAMES = 300
DISTINCT = 30  # frames generated, then cycled (memory: 30 × 6 MB)


def camera_frames(count: int = DISTINCT) -> list[np.ndarray]:  # type: ignore[type-arg]
    rng = np.random.default_rng(1)
    x = np.linspace(0, 255, WIDTH, dtype=np.float32)
    y = np.linspace(0, 255, HEIGHT, dtype=np.float32)
    scene = np.stack(
        [np.add.outer(y, x) / 2, np.add.outer(y, 255 - x) / 2, np.add.outer(255 - y, x) / 2], -1
    ).astype(np.int16)
    out = []
    for i in range(count):
        noise = rng.integers(-4, 5, scene.shape, dtype=np.int16)
        frame = np.clip(scene + noise, 0, 255).astype(np.uint8)
        cx = (i * 13) % (WIDTH - 200)
        cv2.rectangle(frame, (cx, 400), (cx + 200, 600), (255, 140, 0), -1)
        cv2.putText(frame, f"#{i:05d}", (60, 120), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 6)
        out.append(frame)
    return out


def ours_encode(frames: list[Any]) -> tuple[Run, int, str]:
    from gateway.dicom import video

    result: dict[str, Any] = {}

    def go() -> None:
        result["v"] = video.encode((frames[i % len(frames)] for i in range(FRAMES)), FPS)

    run = run_in_process(go)
    return run, result["v"].size, result["v"].encoder


def reference_encode(frames: list[Any]) -> Run:
    """libx264 through PyAV, the same preset and options, one frame at a time."""
    import av

    def go() -> None:
        ctx: Any = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        ctx.time_base = Fraction(1, FPS)
        ctx.framerate = Fraction(FPS)
        ctx.options = {
            "preset": "ultrafast",
            "crf": "23",
            "profile": "high",
            "x264-params": "level=4.1:8x8dct=1:repeat-headers=1:keyint=60",
        }
        ctx.open()
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")
            frame.pts = i
            for _ in ctx.encode(frame):
                pass
        for _ in ctx.encode(None):
            pass

    return run_in_process(go)


def jpeg_cine(frames: list[Any]) -> tuple[Run, int]:
    from pydicom.dataset import Dataset

    from gateway.dicom.pixels import DEFAULT_JPEG_QUALITY, set_pixels

    ds = Dataset()

    def go() -> None:
        set_pixels(
            ds,
            (frames[i % len(frames)] for i in range(FRAMES)),
            "jpeg-baseline",
            multiframe=True,
            quality=DEFAULT_JPEG_QUALITY,
        )

    run = run_in_process(go)
    return run, len(ds.PixelData)


def make_mp4(path: Path) -> None:
    subprocess.run(
        [
            "ffmpeg", "-loglevel", "error", "-f", "lavfi",
            "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
            "-frames:v", str(FRAMES), "-c:v", "libx264", "-preset", "veryfast",
            "-pix_fmt", "yuv420p", "-y", str(path),
        ],
        check=True,
    )  # fmt: skip


def ours_import(mp4: Path, out: Path) -> Run:
    """demux → Annex B → object → file, as `import` wraps a fitting stream."""
    from drivers import demux
    from gateway.dicom import iods, part10, video
    from gateway.dicom.modules import Cine
    from tests.integration.test_video_objects import header

    def go() -> None:
        track = demux.probe(mp4)
        stream = video.wrap_stream(
            demux.annexb_packets(mp4), "h264", track.width, track.height, float(track.fps)
        )
        ds = iods.multiframe_true_color_sc(stream, Cine.from_fps(float(track.fps)), header("OT"))
        with open(out, "wb") as f:
            for part in part10.to_parts(ds):
                f.write(part)
        assert stream.frames == FRAMES, stream.frames

    return run_in_process(go)


def ffmpeg_copy(mp4: Path, out: Path) -> Run:
    return run_command(
        ["ffmpeg", "-loglevel", "error", "-i", str(mp4), "-map", "0:v:0", "-c:v", "copy",
         "-bsf:v", "h264_mp4toannexb", "-f", "h264", "-y", str(out)]
    )  # fmt: skip


def cold_import(mp4: Path, work: Path) -> Run:
    config = work / "gateway.toml"
    config.write_text(
        f'[queue]\npath = "{work / "queue"}"\nmin_free_mb = 0\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "localhost"\nport = 1\n'
    )
    cmd = [sys.executable, "-m", "gateway", "--config", str(config), "import", str(mp4),
           "--patient-id", "P1", "--patient-name", "Bench^Video"]  # fmt: skip
    return run_command(cmd)


def record(seconds: float) -> None:
    """Child: a recording of `seconds` at 1080p30 through ClipWriter, the
    object built and written; prints nothing (run_command reads the RSS)."""
    from drivers.base import Frame
    from gateway.acquire.capture import ClipWriter
    from gateway.dicom import iods, part10
    from gateway.dicom.modules import Cine
    from tests.integration.test_video_objects import header

    frames = camera_frames(8)
    writer = ClipWriter("h264", FPS)
    start = time.time()
    for i in range(int(seconds * FPS)):
        writer.add(Frame(frames[i % len(frames)], i, start + i / FPS))
    stream = writer.finish()
    ds = iods.multiframe_true_color_sc(
        stream, Cine.from_timestamps(writer.timestamps), header("OT")
    )
    with tempfile.TemporaryFile() as f:
        for part in part10.to_parts(ds):
            f.write(part)


def main() -> None:
    pairs = int(os.environ.get("BENCH_VIDEO_PAIRS", "5"))
    record_seconds = float(os.environ.get("BENCH_VIDEO_RECORD_SECONDS", "60"))
    import av

    frames = camera_frames()
    encode = Comparison(
        "video-encode",
        f"{FRAMES} frames {WIDTH}x{HEIGHT} camera-like, {FPS} fps",
        f"libx264 through PyAV {av.__version__}, same preset, frame by frame",
    )
    sizes, encoders = [], set()
    for _ in range(pairs):
        encode.theirs.append(reference_encode(frames))
        run, size, name = ours_encode(frames)
        encode.ours.append(run)
        sizes.append(size)
        encoders.add(name)
    jpeg_runs = [jpeg_cine(frames) for _ in range(2)]
    h264_bytes = int(statistics.median(sizes))
    jpeg_bytes = jpeg_runs[0][1]
    fps = [FRAMES / r.wall for r in encode.ours]
    encode.extra = {
        "encoder": ",".join(sorted(encoders)),
        "ours_fps_median": statistics.median(fps),
        "ours_fps_min": min(fps),
        "ours_fps_max": max(fps),
        "reference_fps_median": statistics.median(FRAMES / r.wall for r in encode.theirs),
        "h264_bytes": h264_bytes,
        "jpeg_cine_bytes": jpeg_bytes,
        "jpeg_over_h264": jpeg_bytes / max(1, h264_bytes),
        "jpeg_cine_fps_median": statistics.median(FRAMES / r.wall for r, _ in jpeg_runs),
        "jpeg_cine_peak_rss_mib": max(r.max_rss_mib for r, _ in jpeg_runs),
    }
    report(encode.summary())

    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        work = Path(tmp)
        mp4 = work / "clip.mp4"
        make_mp4(mp4)
        imp = Comparison(
            "video-import-passthrough",
            f"MP4, {FRAMES} frames H.264 {WIDTH}x{HEIGHT} ({mp4.stat().st_size} bytes)",
            f"{tool_version(['ffmpeg', '-version'])} -c copy -bsf:v h264_mp4toannexb",
        )
        imp.pair(
            lambda: ffmpeg_copy(mp4, work / "ref.h264"),
            lambda: ours_import(mp4, work / "ours.dcm"),
            pairs,
        )
        cold = [cold_import(mp4, work) for _ in range(3)]
        imp.extra = {
            "ours_warm_in_process": True,
            "cold_command_median_wall_s": statistics.median(r.wall for r in cold),
            "cold_command_peak_rss_mib": max(r.max_rss_mib for r in cold),
        }
        report(imp.summary())

    rec = run_command(
        [sys.executable, "-m", "tests.benchmarks.bench_video", "--record", str(record_seconds)],
        timeout=900,
    )
    report(
        {
            "name": "video-record-rss",
            "dataset": f"{record_seconds:g} s of {WIDTH}x{HEIGHT} at {FPS} fps through ClipWriter",
            "wall_s": rec.wall,
            "cpu_s": rec.cpu,
            "fps": record_seconds * FPS / rec.wall,
            "peak_rss_mib": rec.max_rss_mib,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--record"]:
        record(float(sys.argv[2]))
    else:
        main()
