"""The service's side of the control sockets (see gateway/app/control.py):
takes an import from `dicom-gateway import`, stages the files it is sent in
the queue directory, and runs the same import the command would run itself;
in the forwarder's process, takes `dicom-gateway queue flush` and has the
running forwarder do it.

One connection at a time, every read bounded: a client that stalls or
vanishes mid-upload costs a time-out and leaves nothing queued; the staged
copies are removed whatever happens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.app.control import (
    MAX_FILES,
    MAX_SOCKET_PATH,
    SOCKET_NAME,
    LineReader,
    ProtocolError,
    send_message,
    socket_path,
)
from gateway.config import GatewayConfig

if TYPE_CHECKING:
    from gateway.queue.outbox import Outbox

log = logging.getLogger(__name__)

STAGING_DIR = "staging"
READ_TIMEOUT = 60.0
HEADER_TIMEOUT = 10.0
MIN_UPLOAD_RATE = 1 << 20  # bytes per second, on average, over the whole upload
_SUBJECT_KEYS = ("accession", "patient_id", "patient_name", "birth_date", "sex")


class RequestError(Exception):
    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


class ControlServer:
    def __init__(
        self,
        config: GatewayConfig,
        stop: threading.Event,
        heartbeat: Callable[[], None] = lambda: None,
        every: float = 1.0,
        *,
        name: str = SOCKET_NAME,
        imports: bool = True,
        flush: Callable[[float, Callable[[], None]], dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        # What this socket takes: imports (the capture/UI process), flushes
        # (the forwarder's process: `flush(timeout, heartbeat)` -> summary).
        self.imports = imports
        self.flush = flush
        self.every = every
        self.stop = stop
        # The service's health: beaten by the accept loop (every second) and
        # while an import makes progress (each chunk read, each file queued).
        self.heartbeat = heartbeat
        self.path = socket_path(config.queue.path, name)
        self.staging = config.queue.path / STAGING_DIR
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def start(self) -> ControlServer | None:
        """Listening, or None (logged) when the socket cannot be made: the
        command then imports in-process, so nothing is lost but speed."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            log.warning("control socket not started: %s is too long a path", self.path)
            return None
        if self.imports:
            shutil.rmtree(self.staging, ignore_errors=True)  # copies of an import cut short
            # Loaded now, not on the first import's clock, and on this thread:
            # imported on the server's own thread while `run` imports
            # pynetdicom on the main one, pydicom's circular imports failed
            # half-way ("partially initialized module") and `run --only
            # capture,forwarder` with the inbound port died at start.
            import gateway.acquire.importer  # noqa: F401
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # left by a service that did not stop cleanly
            sock.bind(os.fspath(self.path))
            os.chmod(self.path, 0o660)
            sock.listen(4)
        except OSError as exc:
            sock.close()
            log.warning("control socket not started: %s: %s", self.path, exc.strerror)
            return None
        sock.settimeout(min(1.0, self.every))
        self.sock = sock
        self.thread.start()
        log.info("control socket listening at %s", self.path)
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(OSError):
                self.path.unlink()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def _serve(self) -> None:
        outbox = None
        if self.imports:
            from gateway.queue.outbox import outbox_for

            outbox = outbox_for(self.config)
        try:
            while not self.stop.is_set() and self.sock is not None:
                self.heartbeat()
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break  # closed
                with conn:
                    self._handle(conn, outbox)
        finally:
            if outbox is not None:
                outbox.close()

    def _handle(self, conn: socket.socket, outbox: Outbox | None) -> None:
        uid, pid = _peer(conn)
        reply = _Replier(conn)
        reader = LineReader(conn)
        what = "request"
        try:
            conn.settimeout(HEADER_TIMEOUT)  # a request line is small: no trickling it
            header = reader.line()
            if header is None:
                raise ProtocolError("the client sent nothing")
            conn.settimeout(READ_TIMEOUT)
            op = header.get("op")
            what = "flush" if op == "flush" else "import"
            if op == "import" and self.imports and outbox is not None:
                reply.send({"ok": self._import(reader, header, outbox, uid, pid, reply)})
            elif op == "flush" and self.flush is not None:
                reply.send({"ok": self._flush(header, uid, pid)})
            else:
                raise RequestError(f"unknown request {op!r}")
        except RequestError as exc:
            reply.send({"error": str(exc), "usage": exc.usage})
        except (ProtocolError, OSError) as exc:  # the client broke off: nothing was queued
            log.warning("%s from uid %s pid %s abandoned: %s", what, uid, pid, exc)
        except Exception:  # never let one request take the service down
            log.exception("%s from uid %s pid %s failed", what, uid, pid)
            reply.send({"error": f"the service failed to {what} (see its log)"})

    def _flush(self, header: dict[str, Any], uid: int, pid: int) -> dict[str, Any]:
        from gateway.send.forwarder import ForwarderStopped

        assert self.flush is not None
        timeout = header.get("timeout")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise RequestError("malformed flush request (timeout)", usage=True)
        log.info("queue flush handed over by uid %d (pid %d)", uid, pid)
        try:
            return self.flush(float(timeout), self.heartbeat)
        except ForwarderStopped as exc:
            raise RequestError(str(exc)) from None

    def _import(
        self,
        reader: LineReader,
        header: dict[str, Any],
        outbox: Outbox,
        uid: int,
        pid: int,
        reply: _Replier,
    ) -> dict[str, Any]:
        from gateway.acquire.importer import ImportFileError, import_exam
        from gateway.acquire.subject import SubjectError, exam_subject
        from gateway.queue.db import QueueError

        files, subject_args = _parse_header(header)
        try:
            subject = exam_subject(self.config, "import", **subject_args)
        except SubjectError as exc:
            raise RequestError(str(exc), exc.usage) from None
        total = sum(size for _, size, _ in files)
        try:
            outbox.check_space(total)
        except QueueError as exc:
            raise RequestError(str(exc)) from None
        log.info(
            "import of %d file(s), %d bytes, handed over by uid %d (pid %d)",
            len(files),
            total,
            uid,
            pid,
        )
        self.staging.mkdir(mode=0o700, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="import-", dir=self.staging))
        try:
            paths: list[Path] = []
            labels: dict[Path, str] = {}
            # However slowly a local client sends, the upload has an end.
            deadline = time.monotonic() + READ_TIMEOUT + total / MIN_UPLOAD_RATE
            for index, (name, size, mtime) in enumerate(files):
                path = work / _staged_name(index, name)
                try:
                    # Unbuffered: a full disk shows at the write, not at a close.
                    out = open(path, "wb", buffering=0)  # noqa: SIM115 (closed below)
                except OSError as exc:
                    raise RequestError(f"cannot take the import: {exc.strerror}") from None
                with out:
                    for chunk in reader.take(size):
                        try:
                            view = memoryview(chunk)
                            while view:
                                view = view[out.write(view) or 0 :]
                        except OSError as exc:  # our disk, not the client: say so
                            raise RequestError(
                                f"cannot take the import: {exc.strerror}; nothing was queued"
                            ) from None
                        self.heartbeat()
                        if time.monotonic() > deadline:
                            raise ProtocolError("the client sent its files too slowly")
                os.utime(path, (mtime, mtime))  # the content time is the file's
                paths.append(path)
                labels[path] = name
            if subject.note:
                reply.send({"note": subject.note})
            try:
                return import_exam(
                    self.config,
                    outbox,
                    subject,
                    paths,
                    lambda done, n, name: self._progress(reply, done, n, name),
                    labels,
                )
            except (ImportFileError, QueueError) as exc:
                raise RequestError(str(exc)) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _progress(self, reply: _Replier, done: int, n: int, name: str) -> None:
        self.heartbeat()
        reply.send({"progress": [done, n, name]})


class _Replier:
    """Replies to the client; once it is gone, the import still completes
    (what is queued stays queued) and further replies are dropped."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.gone = False

    def send(self, message: dict[str, Any]) -> None:
        if self.gone:
            return
        try:
            send_message(self.conn, message)
        except OSError:
            self.gone = True


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v")


def _staged_name(index: int, name: str) -> str:
    """A staged file's name is ours: its index, and the suffix only when it
    is one of the formats we know (video decoders look at it); the client's
    name is kept apart, for the messages."""
    from drivers.imagecodec import IMAGE_SUFFIXES  # OpenCV: only where imports run

    suffix = Path(name).suffix.lower()
    return f"{index:05d}{suffix if suffix in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES) else ''}"


def _parse_header(header: dict[str, Any]) -> tuple[list[tuple[str, int, float]], dict[str, Any]]:
    subject = header.get("subject")
    if not isinstance(subject, dict) or not set(subject) <= set(_SUBJECT_KEYS):
        raise RequestError("malformed import request (subject)")
    if not all(v is None or isinstance(v, str) for v in subject.values()):
        raise RequestError("malformed import request (subject values)")
    raw = header.get("files")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_FILES:
        raise RequestError(f"an import takes 1 to {MAX_FILES} files")
    files = []
    for item in raw:
        if not isinstance(item, dict):
            raise RequestError("malformed import request (files)")
        name, size, mtime = item.get("name"), item.get("size"), item.get("mtime")
        if (
            not isinstance(name, str)
            or not isinstance(size, int)
            or size < 0
            or not isinstance(mtime, int | float)
        ):
            raise RequestError("malformed import request (file entry)")
        files.append((name, size, float(mtime)))
    return files, subject


def _peer(conn: socket.socket) -> tuple[int, int]:
    """Who is asking (for the log): uid and pid from the kernel, not the client."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        return uid, pid
    except OSError:
        return -1, -1
