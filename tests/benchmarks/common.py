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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench-results"


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float  # user + sys of the measured process(es)
    max_rss_mib: float


def run_command(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600) -> Run:
    """Run a child to completion; CPU and peak RSS from wait4's rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            raise TimeoutError(f"{cmd[0]} exceeded {timeout} s")
        time.sleep(0.002)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {err[-2000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


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
