"""`dicom-gateway import` handing its files to the running service.

Why: the service already has the DICOM stack loaded and the queue open. A
separate process spends ~0.5 s importing pydicom, numpy and pydantic before
its first file; handing the files over a local socket costs the command only
Python's own start-up. It also keeps the queue's files owned by the service's
user (an import run as root would otherwise leave files the service cannot
purge) and reads the files with the rights of whoever typed the command.

The rendezvous is `control.sock` in the queue directory (mode 0660; the
directory itself is the service's, 0750). No socket, or nobody answering it:
the command imports in-process exactly as before. This module is the client
side and the wire format; it imports nothing heavy.

Wire format: one JSON line from the client ({"op": "import", "subject": …,
"files": [{"name", "size", "mtime"}…]}), then the files' bytes back to back;
the service answers with JSON lines: {"progress": [done, total, name]},
{"note": text}, and finally {"ok": result} or {"error": text, "usage": bool}.

`dicom-gateway queue flush` uses the same wire format on the forwarder's own
socket, `forwarder.sock` (under systemd the forwarder is its own process,
dicom-gateway-forwarder.service): {"op": "flush", "timeout": seconds}, then
{"ok": {"sent", "pending", "failed", "error"}} once the service's forwarder
has sent what it could. The command then loads no DICOM stack at all.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

SOCKET_NAME = "control.sock"
# Served by the process that runs the forwarder (`run`, `run --only forwarder`).
FORWARDER_SOCKET_NAME = "forwarder.sock"
MAX_HEADER = 1 << 20
MAX_FILES = 10_000
# The longest a Unix socket path may be (sun_path), with its terminating NUL.
MAX_SOCKET_PATH = 107
# How long the command waits for the service's next word (one file may be a
# long video to re-encode).
REPLY_TIMEOUT = 600.0


class ProtocolError(Exception):
    """The peer on the control socket sent something that is not the protocol."""


def socket_path(queue_root: Path, name: str = SOCKET_NAME) -> Path:
    return queue_root / name


def connect_service(queue_root: Path | None, name: str = SOCKET_NAME) -> socket.socket | None:
    """A connection to the running service's socket `name`, or None when no
    service is there to take it (no socket, a path too long for one, or a
    socket left behind by a service that is gone)."""
    if queue_root is None:
        return None
    path = socket_path(queue_root, name)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return None
    try:
        if not stat.S_ISSOCK(path.stat().st_mode):
            return None
    except OSError:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    try:
        sock.connect(os.fspath(path))
    except OSError:
        sock.close()
        return None
    return sock


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message, ensure_ascii=False).encode() + b"\n")


class LineReader:
    """JSON lines from a socket, each bounded in size."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self) -> dict[str, Any] | None:
        """The next message, or None at end of stream."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_HEADER:
                raise ProtocolError("a message longer than 1 MiB")
            chunk = self.sock.recv(65536)
            if not chunk:
                if self.buffer:
                    raise ProtocolError("the connection ended inside a message")
                return None
            self.buffer += chunk
        raw, _, self.buffer = self.buffer.partition(b"\n")
        try:
            message = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError("a message that is not JSON") from None
        if not isinstance(message, dict):
            raise ProtocolError("a message that is not a JSON object")
        return message

    def take(self, size: int) -> Iterator[bytes]:
        """Exactly `size` raw bytes (what follows the header), in pieces."""
        if self.buffer:
            head, self.buffer = self.buffer[:size], self.buffer[size:]
            size -= len(head)
            yield head
        while size > 0:
            chunk = self.sock.recv(min(size, 1 << 20))
            if not chunk:
                raise ProtocolError("the connection ended inside a file")
            size -= len(chunk)
            yield chunk


# -- what the command shows, whichever process did the import ---------------------


def show_progress(done: int, total: int, name: str) -> None:
    bar = "#" * (30 * done // total) + "." * (30 - 30 * done // total)
    end = "\n" if done == total else ""
    print(f"\rimport [{bar}] {done}/{total} {Path(name).name[:40]:<40}", end=end, file=sys.stderr)
    sys.stderr.flush()


def print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(
            "\n".join(
                f"{r['source']}: queue object {r['id']}"
                + (f" ({r['note']})" if r.get("note") else "")
                for r in result["imported"]
            )
        )


# -- the client ----------------------------------------------------------------------


def import_via_service(
    queue_root: Path | None,
    paths: list[str],
    subject: dict[str, str | None],
    as_json: bool,
) -> tuple[int, str | None] | None:
    """Hand the import to the running service. None when there is none to
    take it (or a file cannot be opened here: the in-process import then says
    why in its own words); else the exit status and the error line, if any."""
    with ExitStack() as stack:
        files: list[tuple[BinaryIO, dict[str, Any]]] = []
        for name in paths:
            try:
                f = stack.enter_context(open(name, "rb"))
                st = os.fstat(f.fileno())
            except OSError:
                return None
            if not stat.S_ISREG(st.st_mode):
                return None
            files.append((f, {"name": name, "size": st.st_size, "mtime": st.st_mtime}))
        connected = connect_service(queue_root)
        if connected is None:
            return None
        sock = stack.enter_context(connected)
        # From here on the service has the import: never fall back (that
        # could queue the files twice).
        sock.settimeout(REPLY_TIMEOUT)
        try:
            send_message(sock, {"op": "import", "subject": subject, "files": [m for _, m in files]})
            for source, meta in files:
                sent = sock.sendfile(source, 0, meta["size"])
                if sent != meta["size"]:
                    return 1, f"{meta['name']}: changed while being read; nothing was imported"
        except OSError:
            pass  # the service stopped listening; its reply (if any) says why
        return _replies(LineReader(sock), as_json)


def _replies(reader: LineReader, as_json: bool) -> tuple[int, str | None]:
    show = not as_json and sys.stderr.isatty()
    try:
        while (message := reader.line()) is not None:
            if "progress" in message and show:
                done, total, name = message["progress"]
                show_progress(int(done), int(total), str(name))
            elif "note" in message:
                print(f"dicom-gateway: {message['note']}", file=sys.stderr)
            elif "ok" in message:
                print_result(message["ok"], as_json)
                return 0, None
            elif "error" in message:
                if show:
                    print(file=sys.stderr)
                return (2 if message.get("usage") else 1), str(message["error"])
    except (OSError, ProtocolError) as exc:
        return 1, f"lost the running service during the import ({exc}); see `dicom-gateway queue`"
    return 1, "the running service stopped during the import; see `dicom-gateway queue`"


# -- queue flush ---------------------------------------------------------------------

# Beyond the flush's own time-out, how long the command waits for the
# service's answer (a batch in flight finishes first).
FLUSH_GRACE = 120.0
SEE_QUEUE = "see `dicom-gateway queue`"


def flush_outcome(summary: dict[str, Any], as_json: bool) -> tuple[int, str | None]:
    """What `queue flush` prints and exits with, whichever process sent:
    0 when everything was delivered, else 1 and the counts on stderr."""
    sent, pending, failed = summary["sent"], summary["pending"], summary["failed"]
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"sent {sent}, pending {pending}, failed {failed}")
    if pending or failed:
        error = summary.get("error")
        reason = f"; last error: {error}" if error else ""
        return 1, f"not all delivered: {pending} pending, {failed} failed{reason}"
    return 0, None


def flush_via_service(
    queue_root: Path | None, timeout: float, as_json: bool
) -> tuple[int, str | None] | None:
    """Ask the running service's forwarder to send everything now and wait
    for its word. None when no forwarder is running (the command then sends
    in-process); else the exit status and the error line, if any."""
    sock = connect_service(queue_root, FORWARDER_SOCKET_NAME)
    if sock is None:
        return None
    with sock:
        sock.settimeout(timeout + FLUSH_GRACE)
        try:
            send_message(sock, {"op": "flush", "timeout": timeout})
            reader = LineReader(sock)
            while (message := reader.line()) is not None:
                if "ok" in message and isinstance(message["ok"], dict):
                    return flush_outcome(message["ok"], as_json)
                if "error" in message:
                    return (2 if message.get("usage") else 1), str(message["error"])
        except TimeoutError:
            return 1, f"the running service did not finish the flush in time; {SEE_QUEUE}"
        except (OSError, ProtocolError, KeyError) as exc:
            return 1, f"lost the running service during the flush ({exc}); {SEE_QUEUE}"
    return 1, f"the running service stopped during the flush; {SEE_QUEUE}"
