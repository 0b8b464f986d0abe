"""Power cuts for the queue: the power-cut file system (powercut_fs) mounted
where the queue lives, a fork server that starts the gateway's processes on
it quickly, and the checks after each cut.

A cut is what a power loss does: every process on the box dies at once
(SIGKILL), and every write not made durable is lost (the file system drops
it). The test then "restarts": a new process opens the queue (recovery
runs) and every promise is checked:

- every object that was acknowledged (a capture's printed line, an import's
  exit 0, a C-STORE success status) is in the queue, queued or delivered,
  and its file is byte-identical to the one acknowledged;
- no row points at a missing or partial file;
- nothing is delivered twice as two different objects (every copy the PACS
  received of a SOP Instance UID is the same data set, and it is one the
  queue holds).

The fork server (`Zygote`) has the gateway imported once; each process is a
fork of it running the real CLI (`gateway.app.cli.main`), so a cycle costs
milliseconds instead of a second of imports. Output goes to files on the
real disk, so what a process printed survives its death.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.process import REPO, require_tool

ZYGOTE = r"""
import json, os, signal, sys
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reaped by the kernel
import gateway.app.cli as cli
import gateway.acquire.capture, gateway.acquire.importer, gateway.app.service  # noqa
import gateway.send.forwarder, gateway.dicom.iods, pydicom, numpy, cv2  # noqa
cv2.setNumThreads(1)
print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        out = os.open(cmd["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = sys.stdout
        for key, value in cmd.get("env", {}).items():
            os.environ[key] = value
        try:
            rc = cli.main(cmd["argv"])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            rc = 99
        sys.stdout.flush()
        with open(cmd["out"] + ".rc", "w") as f:
            f.write(str(rc or 0))
        os._exit(0)
    print(pid, flush=True)
"""


class PowerCutMount:
    """The power-cut file system at `mountpoint`, run by its own process."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> PowerCutMount:
        require_tool("fusermount3")  # the fuse3 package: /dev/fuse and its helper
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.powercut_fs", str(self.mountpoint)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self._say("mount", "mounted")
        return self

    def __exit__(self, *exc: object) -> None:
        self._unmount()
        if self.proc is not None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _say(self, command: str, expect: str) -> str:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._expect(expect)

    def _expect(self, expect: str) -> str:
        assert self.proc is not None and self.proc.stdout
        line = self.proc.stdout.readline().strip()
        if not line.startswith(expect):
            raise RuntimeError(f"power-cut file system: expected {expect!r}, got {line!r}")
        return line

    def _unmount(self) -> None:
        if not os.path.ismount(self.mountpoint):
            return
        for _ in range(100):
            done = subprocess.run(
                ["umount", str(self.mountpoint)], capture_output=True, text=True, check=False
            )
            if done.returncode == 0:
                self._expect("unmounted")
                return
            time.sleep(0.05)  # a killed process not yet reaped still holds a file
        raise RuntimeError(f"cannot unmount {self.mountpoint}: {done.stderr.strip()}")

    def cut(self) -> None:
        """The power comes back: unmount (every process on it must be dead),
        drop everything not durable, mount again."""
        self._unmount()
        self._say("cut", "cut")
        self._say("mount", "mounted")

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = json.loads(self._say("stats", "{"))
        return counts


@dataclass
class Child:
    pid: int
    out: Path
    argv: tuple[str, ...] = ()

    def output(self) -> str:
        try:
            return self.out.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def exit_code(self) -> int | None:
        """None while it runs, or when it was killed before it finished."""
        try:
            return int(Path(str(self.out) + ".rc").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie (exited, not yet reaped by the zygote) is not alive
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exit_code() is not None or not self.alive():
                return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class Zygote:
    """A fork server with the gateway imported: `spawn` runs the CLI with
    the given arguments in a new process in milliseconds."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[str] | None = None
        self.children: list[Child] = []
        self._n = 0

    def __enter__(self) -> Zygote:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"fork server did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def spawn(self, *argv: str, env: dict[str, str] | None = None) -> Child:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self._n += 1
        out = self.workdir / f"child-{self._n}.out"
        self.proc.stdin.write(json.dumps({"argv": list(argv), "out": str(out), "env": env or {}}))
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        child = Child(int(self.proc.stdout.readline()), out, tuple(argv))
        self.children.append(child)
        return child

    def kill_all(self) -> None:
        """The power goes: every process dies at once."""
        for child in self.children:
            child.kill()
        for child in self.children:
            child.wait(10)
        self.children = []


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Ledger:
    """What was acknowledged (SOP Instance UID → hash of the file at the
    moment it was acknowledged) and what the PACS received."""

    acknowledged: dict[str, str] = field(default_factory=dict)
    cuts: int = 0
    problems: list[str] = field(default_factory=list)

    def acknowledge(self, uid: str, file: Path) -> None:
        """Called the moment an acknowledgement is seen: the queued file is
        durable by then (the promise), so hash it now."""
        if uid in self.acknowledged:
            return
        try:
            self.acknowledged[uid] = sha256(file)
        except FileNotFoundError:
            self.problems.append(f"acknowledged {uid} but its queue file is not there")


def check_queue(queue: Path, ledger: Ledger, received: dict[str, set[str]] | None = None) -> None:
    """After a cut and a restart's recovery: the queue's promises."""
    db = sqlite3.connect(f"file:{queue / 'outbox.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT o.sop_instance_uid, o.path, o.size, d.state FROM objects o"
            " LEFT JOIN deliveries d ON d.object_id = o.id"
        ).fetchall()
    finally:
        db.close()
    states: dict[str, set[str]] = {}
    for uid, rel, size, state in rows:
        states.setdefault(uid, set()).add(state)
        path = queue / rel
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            ledger.problems.append(f"cut {ledger.cuts}: row {uid} points at a missing file")
            continue
        if actual != size:
            ledger.problems.append(
                f"cut {ledger.cuts}: row {uid} points at a partial file ({actual} of {size} bytes)"
            )
        elif uid in ledger.acknowledged and sha256(path) != ledger.acknowledged[uid]:
            ledger.problems.append(f"cut {ledger.cuts}: {uid} is not the file acknowledged")
    for uid in ledger.acknowledged:
        got = states.get(uid)
        if not got:
            ledger.problems.append(f"cut {ledger.cuts}: acknowledged {uid} is not in the queue")
        elif not got <= {"pending", "in_flight", "sent", "committed", "held"}:
            ledger.problems.append(f"cut {ledger.cuts}: acknowledged {uid} is {sorted(got)}")
    if received is not None:
        for uid, copies in received.items():
            if len(copies) > 1:
                ledger.problems.append(f"{uid} delivered as {len(copies)} different objects")
            if uid not in states:
                ledger.problems.append(f"the PACS holds {uid}, an instance the queue never had")


def received_datasets(directory: Path, cache: dict[str, tuple[str, str]]) -> dict[str, set[str]]:
    """SOP Instance UID → hashes of the data sets the PACS received (without
    the File Meta group, which the PACS writes itself)."""
    from pydicom import dcmread

    for path in directory.iterdir():
        if path.name in cache or not path.is_file():
            continue
        try:
            ds = dcmread(path)
            body = ds.PixelData if "PixelData" in ds else b""
            key = hashlib.sha256(
                str(sorted((str(e.tag), str(e.value)) for e in ds if e.tag != 0x7FE00010)).encode()
                + body
            ).hexdigest()
            cache[path.name] = (str(ds.SOPInstanceUID), key)
        except Exception:  # storescp still writing it: read it next time
            continue
    out: dict[str, set[str]] = {}
    for uid, key in cache.values():
        out.setdefault(uid, set()).add(key)
    return out
