"""What every benchmark shares (see ../shared/BENCHMARKS.md): alternate the
reference tool and ours (A B A B …), report the median ratio with min and max,
CPU seconds beside wall time, peak memory, and the machine."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.process import launched

RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench-results"


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float  # user + sys of the measured process(es)
    max_rss_mib: float


def run_command(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600) -> Run:
    """Run a child to completion: wall clock (launcher included, ~20 ms for
    both sides alike), and the command's own CPU (user + sys) and peak RSS."""
    with tempfile.NamedTemporaryFile("r", suffix=".rusage") as rss_file:
        launcher = launched(Path(rss_file.name), list(cmd))
        start = time.perf_counter()
        proc = subprocess.Popen(
            launcher,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise TimeoutError(f"{cmd[0]} exceeded {timeout} s") from None
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            text = err.decode(errors="replace")
            raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {text[-2000:]}")
        rss_kib, cpu = rss_file.read().split()
    return Run(wall, float(cpu), int(rss_kib) / 1024)


def run_in_process(fn: Callable[[], Any]) -> Run:
    """For code measured inside this process: CPU of this process only."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, cpu, after.ru_maxrss / 1024)


@dataclass
class Comparison:
    name: str
    dataset: str
    reference: str  # tool and version
    direction: str = "time ratio ours/reference: < 1 means we are faster"
    ours: list[Run] = field(default_factory=list)
    theirs: list[Run] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def pair(self, reference: Callable[[], Run], ours: Callable[[], Run], pairs: int = 5) -> None:
        for _ in range(pairs):
            self.theirs.append(reference())
            self.ours.append(ours())

    def summary(self) -> dict[str, Any]:
        ratios = [o.wall / t.wall for o, t in zip(self.ours, self.theirs, strict=True)]
        return {
            "name": self.name,
            "dataset": self.dataset,
            "reference": self.reference,
            "direction": self.direction,
            "pairs": len(ratios),
            "median_ratio": statistics.median(ratios),
            "min_ratio": min(ratios),
            "max_ratio": max(ratios),
            "ours_median_wall_s": statistics.median(r.wall for r in self.ours),
            "ours_median_cpu_s": statistics.median(r.cpu for r in self.ours),
            "ours_peak_rss_mib": max(r.max_rss_mib for r in self.ours),
            "reference_median_wall_s": statistics.median(r.wall for r in self.theirs),
            "reference_median_cpu_s": statistics.median(r.cpu for r in self.theirs),
            "reference_peak_rss_mib": max(r.max_rss_mib for r in self.theirs),
            # Every run, in the order they ran: a median is only as good as its spread.
            "ours_walls_s": [round(r.wall, 3) for r in self.ours],
            "reference_walls_s": [round(r.wall, 3) for r in self.theirs],
            **self.extra,
            "machine": machine(),
        }


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version()}


def tool_version(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def report(result: dict[str, Any]) -> None:
    """One line per figure, then the JSON, also saved under bench-results/."""
    for key, value in result.items():
        if key != "machine":
            shown = f"{value:.3f}" if isinstance(value, float) else value
            print(f"{result.get('name', '?')}: {key} = {shown}")
    print(json.dumps(result, indent=2, default=str))
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{result.get('name', 'bench')}.json"
    out.write_text(json.dumps(result, indent=2, default=str))


def as_dict(run: Run) -> dict[str, float]:
    return asdict(run)
