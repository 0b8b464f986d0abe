"""A serial line for tests: two pty pairs joined by a relay thread.

The sender (a real lrzsz `sx`/`sb`) runs on one pty, the driver under test
opens the other by path, exactly as it would /dev/ttyUSB0. The relay is the
cable: it can corrupt bytes (line noise), stop forwarding (a stalled sender)
or trickle (so a transfer is still running when the sender is killed).
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import termios
import threading
import time
import tty
from pathlib import Path
from types import TracebackType


class SerialLine:
    def __init__(self) -> None:
        self._a_master, self._a_slave = os.openpty()  # the sender's side
        self._b_master, self._b_slave = os.openpty()  # the receiver's side
        for fd in (self._a_slave, self._b_slave):
            tty.setraw(fd)
        self.sender_tty = os.ttyname(self._a_slave)
        self.receiver_tty = os.ttyname(self._b_slave)
        self.corrupt_offsets: set[int] = set()  # sender→receiver byte offsets to damage
        self.stall_after: int | None = None  # stop forwarding the sender after this many bytes
        self.trickle: float = 0.0  # seconds to wait per 256-byte chunk
        self.sender_attached = threading.Event()  # receiver→sender bytes flow only then
        self.forwarded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serial-line", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._a_master, self._b_master], [], [], 0.05)
            if self._a_master in ready:
                try:
                    data = bytearray(os.read(self._a_master, 256))
                except OSError:
                    data = bytearray()
                for i in range(len(data)):
                    if self.forwarded + i in self.corrupt_offsets:
                        data[i] ^= 0x5A
                if self.stall_after is not None:
                    data = data[: max(0, self.stall_after - self.forwarded)]
                if data:
                    os.write(self._b_master, bytes(data))
                    self.forwarded += len(data)
                if self.trickle:
                    time.sleep(self.trickle)
            if self._b_master in ready:
                try:
                    back = os.read(self._b_master, 4096)
                except OSError:
                    back = b""
                if back and self.sender_attached.is_set():
                    os.write(self._a_master, back)

    def send(self, args: list[str], *files: Path) -> subprocess.Popen[bytes]:
        """Start a real lrzsz sender on the sender's side of the line."""
        line = os.open(self.sender_tty, os.O_RDWR | os.O_NOCTTY)
        # A new sender starts with a clean input: the pokes and CANs meant
        # for a previous (dead) sender are not its business.
        termios.tcflush(line, termios.TCIFLUSH)
        try:
            proc = subprocess.Popen(
                [*args, *(str(f) for f in files)],
                stdin=line,
                stdout=line,
                stderr=subprocess.PIPE,
            )
        finally:
            os.close(line)
        self.sender_attached.set()
        return proc

    def send_raw(self, data: bytes) -> None:
        """Bytes from a hand-made sender, straight onto the line."""
        os.write(self._a_slave, data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in (self._a_master, self._a_slave, self._b_master, self._b_slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> SerialLine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def finish(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> tuple[int, str]:
    """Wait for a sender (killing it if it outlives `timeout`): exit status, stderr."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err.decode(errors="replace")
