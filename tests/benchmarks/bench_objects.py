"""Objects: `dicom-gateway import` against DCMTK img2dcm on the same 1920×1080
q90 noisy JPEG files, and cine building (re-encoded and passed through).

Figures (see ../shared/BENCHMARKS.md):
- objects_stills: 50 JPEG files → DICOM. img2dcm is one process per file
  (that is how it is used: it takes one input), run from one shell; ours is
  one `import` for all files while the service (`run`) is up, as on the
  appliance: the command hands the files to it (gateway/control.py), and the
  CPU and memory figures include the service's share. Queued durably (fsync,
  SQLite synchronous=FULL), which img2dcm does not do.
- objects_stills_no_service: the same with no service running: the command
  loads the DICOM stack itself (~0.5 s of Python imports).
- objects_stills_tmpfs: as the previous, output and queue on tmpfs.
- objects_stills_per_process: one in-process `import` per file, the way
  img2dcm is run (like-for-like process model).
- cine_reencode: a 300-frame 1080p clip JPEG-encoded into one Ultrasound
  Multi-frame object; reference dcmcjpeg on a 30-frame uncompressed object of
  the same frames (300 uncompressed 1080p frames would be 1.9 GB), compared
  per frame.
- cine_passthrough: the same 300 frames delivered as JPEG (an MJPEG grabber),
  wrapped without decoding. DCMTK has no tool for this; absolute figures only.
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    tool_version,
)
from tests.support.process import free_port

JPEG_FILES = 50
PER_PROCESS_FILES = 10
CINE_FRAMES = 300
REFERENCE_CINE_FRAMES = 30
PAIRS = 5
WIDTH, HEIGHT = 1920, 1080


def noisy_frame(seed: int) -> np.ndarray:  # type: ignore[type-arg]
    """A smooth scene with camera-like sensor noise (what makes JPEG work)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = np.stack(
        [
            128 + 90 * np.sin(x / (140 + seed) + seed),
            128 + 90 * np.cos(y / (110 + seed)),
            128 + 60 * np.sin((x + y) / 300),
        ],
        axis=2,
    )
    noise = rng.normal(0, 6, (HEIGHT, WIDTH, 3)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_jpegs(directory: Path) -> list[Path]:
    paths = []
    for i in range(JPEG_FILES):
        path = directory / f"img{i:03d}.jpg"
        ok, buf = cv2.imencode(".jpg", noisy_frame(i % 10), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        path.write_bytes(buf.tobytes())
        paths.append(path)
    return paths


def run_each(commands: list[list[str]]) -> Run:
    """Several processes in a row from one shell, measured as one: total wall
    and CPU (the shell reaps each, so their usage adds up), the largest peak
    RSS. One shell rather than one measuring launcher per process: the
    launcher's own ~15 ms start-up would otherwise be charged to every file
    of a one-process-per-file tool."""
    script = " && ".join(shlex.join(c) for c in commands)
    return run_command(["sh", "-c", script])


def gateway_cmd(config: Path, files: list[Path]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(config),
        "import",
        *map(str, files),
        "--patient-id",
        "BENCH",
        "--patient-name",
        "Bench^Mark",
    ]


def _config(work: Path, name: str, queue_root: Path | None = None) -> Path:
    queue = (queue_root or work) / f"queue-{name}"
    shutil.rmtree(queue, ignore_errors=True)
    path = work / f"{name}.toml"
    path.write_text(
        f'[station]\nmodality = "US"\n[capture]\ncompression = "jpeg-baseline"\n'
        f'[queue]\npath = "{queue}"\nmin_free_mb = 0\n'
    )
    return path


def _cpu_seconds(pid: int) -> float:
    """user + sys of a running process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RunningService:
    """`dicom-gateway run --only ui` on its own queue, as on the appliance,
    so `import` hands its files over (gateway/control.py)."""

    def __init__(self, work: Path) -> None:
        config = _config(work, "service")
        with config.open("a") as f:
            f.write(f'[ui]\nlisten = "127.0.0.1:{free_port()}"\n')
        self.config = config
        self.log = (work / "service.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config), "run", "--only", "ui"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        sock = work / "queue-service" / "control.sock"
        deadline = time.monotonic() + 60
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start; see {work / 'service.log'}")
            time.sleep(0.1)

    def run(self, files: list[Path]) -> Run:
        """The command's own figures plus the CPU the service spent for it."""
        before = _cpu_seconds(self.proc.pid)
        run = run_command(gateway_cmd(self.config, files))
        spent = _cpu_seconds(self.proc.pid) - before
        return Run(run.wall, run.cpu + spent, max(run.max_rss_mib, self.peak_rss_mib))

    @property
    def peak_rss_mib(self) -> float:
        return _peak_rss_mib(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def bench_stills(work: Path, files: list[Path], shm: Path) -> list[dict[str, Any]]:
    img2dcm = shutil.which("img2dcm")
    assert img2dcm, "img2dcm (dcmtk) is not installed"
    out = work / "img2dcm"
    out.mkdir(exist_ok=True)
    out_shm = shm / "img2dcm"
    out_shm.mkdir(exist_ok=True)

    def reference(subset: list[Path], where: Path = out) -> Run:
        return run_each(
            [[img2dcm, "-i", "JPEG", str(f), str(where / f"{f.stem}.dcm")] for f in subset]
        )

    service = RunningService(work)
    try:
        service.run(files[:2])  # the service's first import loads the import code
        handed = Comparison(
            "objects_stills",
            f"{len(files)} JPEG 1920×1080 q90 noisy, "
            f"{sum(f.stat().st_size for f in files) >> 20} MiB",
            tool_version([img2dcm, "--version"]),
            extra={
                "ours": "one `dicom-gateway import` for all files, handed to the running "
                "service (`run`), queued durably; CPU and peak RSS include the service's",
                "reference_mode": "one img2dcm process per file",
            },
        )
        handed.pair(lambda: reference(files), lambda: service.run(files), PAIRS)
        service_rss = service.peak_rss_mib
    finally:
        service.stop()
    all_in_one = Comparison(
        "objects_stills_no_service",
        f"{len(files)} JPEG 1920×1080 q90 noisy, {sum(f.stat().st_size for f in files) >> 20} MiB",
        tool_version([img2dcm, "--version"]),
        extra={
            "ours": "one `dicom-gateway import` process for all files, no service "
            "running (it loads the DICOM stack itself), queued durably",
            "reference_mode": "one img2dcm process per file",
        },
    )
    all_in_one.pair(
        lambda: reference(files),
        lambda: run_command(gateway_cmd(_config(work, "all"), files)),
        PAIRS,
    )
    # Both writing to tmpfs: fsync costs nothing there, so this isolates the
    # tools' own work from the durability img2dcm does not provide.
    in_memory = Comparison(
        "objects_stills_tmpfs",
        f"the same {len(files)} JPEG files, output and queue on tmpfs",
        tool_version([img2dcm, "--version"]),
        extra={
            "ours": "one `dicom-gateway import` process, queue on tmpfs (fsync free)",
            "reference_mode": "one img2dcm process per file, output on tmpfs",
        },
    )
    in_memory.pair(
        lambda: reference(files, out_shm),
        lambda: run_command(gateway_cmd(_config(work, "shm", shm), files)),
        PAIRS,
    )
    per_process = Comparison(
        "objects_stills_per_process",
        f"{PER_PROCESS_FILES} of the same JPEG files",
        tool_version([img2dcm, "--version"]),
        extra={
            "ours": "one `dicom-gateway import` process per file (like-for-like)",
            "reference_mode": "one img2dcm process per file",
        },
    )
    subset = files[:PER_PROCESS_FILES]
    per_process.pair(
        lambda: reference(subset),
        lambda: run_each(
            [gateway_cmd(_config(work, f"one{i}"), [f]) for i, f in enumerate(subset)]
        ),
        PAIRS,
    )
    results = []
    for comp, count in (
        (handed, len(files)),
        (all_in_one, len(files)),
        (in_memory, len(files)),
        (per_process, len(subset)),
    ):
        summary = comp.summary()
        summary["ours_objects_per_s"] = count / summary["ours_median_wall_s"]
        summary["reference_objects_per_s"] = count / summary["reference_median_wall_s"]
        summary["rate_ratio_ours_over_reference"] = 1 / summary["median_ratio"]
        results.append(summary)
    # What one more file costs once the process is running (start-up is
    # ~0.5 s of Python imports for us, ~20 ms of process start for img2dcm).
    results[0]["service_peak_rss_mib"] = service_rss
    one_process = results[3]["ours_median_wall_s"] / len(subset)
    per_extra = (results[1]["ours_median_wall_s"] - one_process) / (len(files) - 1)
    results[1]["ours_start_up_and_one_file_s"] = one_process
    results[1]["ours_each_further_file_ms"] = per_extra * 1000
    results[1]["reference_each_file_ms"] = 1000 * results[1]["reference_median_wall_s"] / len(files)
    return results


# -- cine ------------------------------------------------------------------------


def _frames(n: int) -> Iterator[np.ndarray]:  # type: ignore[type-arg]
    pool = [noisy_frame(i) for i in range(6)]
    for i in range(n):
        yield pool[i % len(pool)]


def cine_worker(mode: str, out: Path) -> None:
    """Runs in its own process (clean peak RSS): build and write one cine."""
    from gateway.dicom.iods import Coding, Header, ultrasound_multiframe
    from gateway.dicom.modules import Cine, Equipment, ImageInfo, Patient, Series, Study
    from gateway.dicom.part10 import to_parts
    from gateway.dicom.pixels import EncodedJpeg, encode_jpeg

    source: Any
    if mode == "passthrough":
        encoded = [encode_jpeg(f, 90) for f in _frames(6)]
        t0 = time.perf_counter()
        source = (EncodedJpeg.from_bytes(encoded[i % 6]) for i in range(CINE_FRAMES))
    else:
        frames = list(_frames(6))
        t0 = time.perf_counter()
        source = (frames[i % 6] for i in range(CINE_FRAMES))
    ds = ultrasound_multiframe(
        source,
        Cine.from_fps(30),
        Header(
            patient=Patient("Bench^Mark", "BENCH"),
            study=Study(study_id="1"),
            series=Series("US"),
            equipment=Equipment("bench", "bench", "0"),
            image=ImageInfo(1, "DV"),
        ),
        Coding("jpeg-baseline"),
    )
    with out.open("wb") as f:  # in pieces, as the queue writes it (never joined)
        for part in to_parts(ds):
            f.write(part)
    # Only the building is timed: the frames exist before (a grabber's ring buffer).
    print(f"elapsed {time.perf_counter() - t0:.6f}")


def _worker_run(mode: str, out: Path) -> tuple[Run, float]:
    import subprocess

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [
                "/usr/bin/time",
                "-f",
                "%M",
                "-o",
                rss.name,
                sys.executable,
                "-m",
                "tests.benchmarks.bench_objects",
                "--cine",
                mode,
                str(out),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        text = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"cine worker {mode} failed")
        rss_kib = int(rss.read().strip().splitlines()[-1])
    elapsed = float(text.split("elapsed")[1])
    return Run(wall, usage.ru_utime + usage.ru_stime, rss_kib / 1024), elapsed


def _uncompressed_reference(path: Path) -> None:
    from gateway.dicom.iods import Coding, Header, ultrasound_multiframe
    from gateway.dicom.modules import Cine, Equipment, ImageInfo, Patient, Series, Study
    from gateway.dicom.part10 import to_bytes

    ds = ultrasound_multiframe(
        _frames(REFERENCE_CINE_FRAMES),
        Cine.from_fps(30),
        Header(
            patient=Patient("Bench^Mark", "BENCH"),
            study=Study(study_id="1"),
            series=Series("US"),
            equipment=Equipment("bench", "bench", "0"),
            image=ImageInfo(1, "DV"),
        ),
        Coding("none"),
    )
    path.write_bytes(to_bytes(ds))


def bench_cine(work: Path) -> list[dict[str, Any]]:
    dcmcjpeg = shutil.which("dcmcjpeg")
    assert dcmcjpeg, "dcmcjpeg (dcmtk) is not installed"
    raw = work / "raw30.dcm"
    _uncompressed_reference(raw)
    reencode = Comparison(
        "cine_reencode",
        f"{CINE_FRAMES} frames 1920×1080 → one US Multi-frame, JPEG q90 4:2:2",
        tool_version([dcmcjpeg, "--version"]) + f" on {REFERENCE_CINE_FRAMES} frames",
        direction="time-per-frame ratio ours/reference: < 1 means we are faster",
        extra={"workers": min(4, os.cpu_count() or 1)},
    )
    fps_ours: list[float] = []
    fps_ref: list[float] = []
    for _ in range(PAIRS):
        ref = run_command([dcmcjpeg, "+ee", "+q", "90", str(raw), str(work / "ref.dcm")])
        fps_ref.append(REFERENCE_CINE_FRAMES / ref.wall)
        run, elapsed = _worker_run("reencode", work / "cine.dcm")
        fps_ours.append(CINE_FRAMES / elapsed)
        # Compare per frame, since the two runs encode different frame counts.
        reencode.theirs.append(Run(ref.wall / REFERENCE_CINE_FRAMES, ref.cpu, ref.max_rss_mib))
        reencode.ours.append(Run(elapsed / CINE_FRAMES, run.cpu, run.max_rss_mib))
    summary = reencode.summary()
    summary.update(
        ours_fps_median=statistics.median(fps_ours),
        ours_fps_min=min(fps_ours),
        ours_fps_max=max(fps_ours),
        reference_fps_median=statistics.median(fps_ref),
        note="wall/cpu figures are per frame for wall, per run for cpu",
    )
    passes = []
    for _ in range(PAIRS):
        run, elapsed = _worker_run("passthrough", work / "pass.dcm")
        passes.append((CINE_FRAMES / elapsed, run))
    fps = [p[0] for p in passes]
    passthrough = {
        "name": "cine_passthrough",
        "dataset": f"{CINE_FRAMES} JPEG frames 1920×1080 q90 (as from an MJPEG grabber)",
        "reference": "none (DCMTK has no multi-frame JPEG wrapper)",
        "runs": len(fps),
        "ours_fps_median": statistics.median(fps),
        "ours_fps_min": min(fps),
        "ours_fps_max": max(fps),
        "ours_peak_rss_mib": max(p[1].max_rss_mib for p in passes),
        "machine": machine(),
    }
    return [summary, passthrough]


def main() -> None:
    shm_base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with (
        tempfile.TemporaryDirectory(prefix="bench-objects-") as tmp,
        tempfile.TemporaryDirectory(prefix="bench-objects-", dir=shm_base) as shm,
    ):
        work = Path(tmp)
        files = make_jpegs(work)
        for result in bench_stills(work, files, Path(shm)):
            report(result)
        for result in bench_cine(work):
            report(result)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--cine":
        cine_worker(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
