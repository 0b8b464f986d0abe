"""Processes the tests start: where the code is, the real tools (a missing
one fails the test: `make test` installs them), ports on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
GATEWAY = [sys.executable, "-m", "gateway"]
# Screenshots and other evidence a person looks at after the run.
ARTIFACTS = REPO / "test-artifacts"


# Peak RSS from wait4 carries over the forking parent's high-water mark on
# Linux (a test or benchmark process holding data would be counted as the
# child's size), so a measured command is started by this tiny launcher that
# forks and execs it and writes the child's own peak RSS (KiB) and CPU seconds
# to the file named by its first argument. Its ~10 MiB is the figure's floor.
RSS_LAUNCHER = (
    "import os,sys\n"
    "pid=os.fork()\n"
    "if pid==0:\n"
    "    os.execvp(sys.argv[2],sys.argv[2:])\n"
    "_,st,ru=os.wait4(pid,0)\n"
    "open(sys.argv[1],'w').write(f'{ru.ru_maxrss} {ru.ru_utime+ru.ru_stime}')\n"
    "sys.exit(os.waitstatus_to_exitcode(st))\n"
)


def launched(rusage_file: Path, cmd: list[str]) -> list[str]:
    """`cmd` behind RSS_LAUNCHER, reporting to `rusage_file`."""
    return [sys.executable, "-S", "-c", RSS_LAUNCHER, str(rusage_file), *cmd]


def require_tool(name: str) -> str:
    """Tests use real tools; `make test` installs them. A missing one is a
    broken set-up, so fail loudly instead of skipping."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run the tests through `make test`")
    return path


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it has not gone after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def imported_modules(importtime_stderr: str) -> set[str]:
    """Top-level modules a process imported, read from what `python -X
    importtime` wrote to its stderr (the process's own account, lazy imports
    included)."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names
