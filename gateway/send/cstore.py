"""C-STORE of queued files on the lean upper layer: a file streamed from disk
as one C-STORE, and each response status sorted into delivered / try again
later / give up."""

from __future__ import annotations

import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.dicom.part10 import Part10, Part10Error, read_header
from gateway.dicom.transcode import DEFAULT_MEMORY_LIMIT, TranscodeError, reencode
from gateway.net.ul import (
    P_DATA_TF,
    ULConnection,
    ULError,
    c_store_rq,
    command_us,
)
from gateway.queue.model import QueuedObject
from gateway.send.destination import Outcome


def classify_status(status: int | None) -> Outcome:
    """PS3.4 B.2.3 / PS3.7 C: success and warnings mean stored; A7xx (out of
    resources) and no answer are transient; A9xx, Cxxx and 0x0122 (SOP class
    not supported) are permanent. An unknown status is treated as transient:
    guessing "stored" could lose an image, guessing "permanent" needs a human."""
    if status is None:
        return Outcome.TRANSIENT
    if status == 0x0000 or status in (0xB000, 0xB006, 0xB007) or (status & 0xF000) == 0xB000:
        return Outcome.STORED
    if (status & 0xFF00) == 0xA700:
        return Outcome.TRANSIENT
    if (status & 0xFF00) == 0xA900 or (status & 0xF000) == 0xC000 or status in (0x0122, 0x0124):
        return Outcome.PERMANENT
    return Outcome.TRANSIENT


def describe_status(status: int | None) -> str:
    if status is None:
        return "no response (association aborted or timed out)"
    names = {
        0x0122: "SOP class not supported",
        0x0124: "not authorised",
        0x0210: "duplicate invocation",
        0x0211: "unrecognised operation",
        0x0212: "mistyped argument",
    }
    if status in names:
        return f"0x{status:04X} {names[status]}"
    if (status & 0xFF00) == 0xA700:
        return f"0x{status:04X} out of resources"
    if (status & 0xFF00) == 0xA900:
        return f"0x{status:04X} data set does not match SOP class"
    if (status & 0xF000) == 0xC000:
        return f"0x{status:04X} cannot understand"
    return f"0x{status:04X}"


# -- streaming a Part 10 file as one C-STORE ----------------------------------------

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
# One write carries several PDUs: fewer syscalls and TLS records per byte.
WRITE_BYTES = 1 << 20


class FileProblem(Exception):
    """The queued file cannot be sent as it is (missing, truncated, not Part 10,
    not convertible)."""


def read_part10_header(path: Path) -> Part10:
    try:
        return read_header(path)
    except Part10Error as exc:
        raise FileProblem(str(exc)) from None


def check_queued_file(obj: QueuedObject) -> Part10:
    """Identity before data: the file is still the object that was queued."""
    sop = read_part10_header(obj.path)
    if sop.size != obj.size:
        raise FileProblem(
            f"{obj.path.name} is {sop.size} bytes, but {obj.size} were queued "
            "(changed behind the gateway's back)"
        )
    if sop.sop_instance != obj.sop_instance_uid:
        raise FileProblem(
            f"{obj.path.name} holds SOP Instance UID {sop.sop_instance}, "
            f"not the queued {obj.sop_instance_uid}"
        )
    return sop


# Room kept in front of each read-ahead buffer for the C-STORE-RQ command PDU,
# so the command and the first data PDUs leave in one write (one TLS flight).
HEADROOM = 512
_IOV_MAX = 1024
# A P-DATA-TF PDU with one PDV: type, reserved, PDU length, PDV length, context, control.
PDV_HEADER = ">BBIIBB"


class ReadAhead:
    """Reads queued files into PDU-framed buffers on its own thread, ahead of
    the sender: while the connection's thread encrypts and writes one buffer
    (the GIL released inside OpenSSL and the kernel), the next is read; and
    the next object's first buffers are read while the sender waits for the
    current object's C-STORE-RSP.

    Each buffer holds up to `per_write` P-DATA-TF PDUs of one data set, their
    headers `pack_into`-ed in place and their values filled by one `preadv`
    straight from the file (no copy in Python); the sender gives each buffer
    to one `sendall`. A few buffers of ~1 MiB circulate, so memory stays flat
    whatever the object's size (the forwarder's budget is 64 MiB)."""

    def __init__(self, fragment: int) -> None:
        self.fragment = fragment
        # One preadv per buffer: at most IOV_MAX slices (a peer with tiny PDUs).
        self.per_write = max(1, min(WRITE_BYTES // (fragment + 12), _IOV_MAX))
        size = HEADROOM + (fragment + 12) * self.per_write
        depth = 3 if size <= 2 * WRITE_BYTES else 2
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(depth):
            self._free.put(bytearray(size))
        self._jobs: queue.SimpleQueue[_ReadJob | None] = queue.SimpleQueue()
        self._open: list[_ReadJob] = []
        self._thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
        self._thread.start()

    def submit(self, path: Path, offset: int, length: int, context_id: int, name: str) -> _ReadJob:
        """Start reading `length` bytes of `path` from `offset` as data PDVs
        of presentation context `context_id`. OSError if it cannot be opened."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        job = _ReadJob(fd, offset, length, context_id, name)
        self._open.append(job)
        self._jobs.put(job)
        return job

    def chunks(self, job: _ReadJob, timeout: float) -> Iterator[tuple[bytearray, int]]:
        """The job's buffers in order: (buffer, bytes used after HEADROOM).
        Each buffer goes back to the pool when the caller asks for the next."""
        while True:
            try:
                item = job.out.get(timeout=timeout)
            except queue.Empty:
                raise FileProblem(f"{job.name}: reading the file stalled") from None
            if item is None:
                self._open.remove(job)
                return
            if isinstance(item, FileProblem):
                self.cancel(job)
                raise item
            try:
                yield item
            finally:
                self._free.put(item[0])

    def cancel(self, job: _ReadJob) -> None:
        """Stop a job and take its buffers back (it is drained to its end)."""
        if job not in self._open:
            return
        job.cancelled = True
        while (item := job.out.get()) is not None:
            if not isinstance(item, FileProblem):
                self._free.put(item[0])
        self._open.remove(job)

    def close(self) -> None:
        for job in list(self._open):
            self.cancel(job)
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._read(job)
            except FileProblem as exc:
                job.out.put(exc)
            except OSError as exc:
                job.out.put(FileProblem(f"{job.name}: {exc.strerror or exc}"))
            finally:
                os.close(job.fd)
                job.out.put(None)

    def _read(self, job: _ReadJob) -> None:
        fragment, pos, remaining = self.fragment, job.offset, job.length
        while remaining > 0 and not job.cancelled:
            buf = self._free.get()
            if job.cancelled:
                self._free.put(buf)
                return
            view = memoryview(buf)
            used, slots = 0, []
            for _ in range(self.per_write):
                if remaining <= 0:
                    break
                n = min(fragment, remaining)
                last = 2 if n == remaining else 0
                at = HEADROOM + used
                struct.pack_into(
                    ">BBIIBB", buf, at, P_DATA_TF, 0, 6 + n, 2 + n, job.context_id, last
                )
                slots.append(view[at + 12 : at + 12 + n])
                used += 12 + n
                remaining -= n
            want = sum(len(v) for v in slots)
            got = os.preadv(job.fd, slots, pos)
            while got < want:  # a short read: only at an end the file should not have
                rest = _after(slots, got)
                more = os.preadv(job.fd, rest, pos + got)
                if more <= 0:
                    self._free.put(buf)
                    raise FileProblem(f"{job.name} shrank while being sent")
                got += more
            pos += want
            job.out.put((buf, used))


def _after(slots: list[memoryview], skip: int) -> list[memoryview]:
    """The parts of `slots` after the first `skip` bytes."""
    out = []
    for v in slots:
        if skip >= len(v):
            skip -= len(v)
            continue
        out.append(v[skip:])
        skip = 0
    return out


@dataclass
class _ReadJob:
    fd: int
    offset: int
    length: int
    context_id: int
    name: str
    cancelled: bool = False
    out: queue.SimpleQueue[tuple[bytearray, int] | FileProblem | None] = field(
        default_factory=queue.SimpleQueue
    )


def write_store(
    conn: ULConnection,
    reader: ReadAhead,
    job: _ReadJob,
    sop: Part10,
    progress: Callable[[], None] = lambda: None,
) -> int:
    """The C-STORE-RQ and the data set `job` reads, in one `sendall` per
    buffer (the command rides in front of the first); returns the Message ID
    whose response `read_store_response` then waits for."""
    message_id = conn.next_message_id()
    command = c_store_rq(message_id, sop.sop_class, sop.sop_instance)
    size = len(command)
    head = struct.pack(PDV_HEADER, P_DATA_TF, 0, 6 + size, 2 + size, job.context_id, 3) + command
    if len(head) > HEADROOM:
        conn.sock.sendall(head)
        head = b""
    sock, first = conn.sock, True
    try:
        for buf, used in reader.chunks(job, conn.timeouts.network):
            start = HEADROOM
            if first and head:
                start -= len(head)
                buf[start:HEADROOM] = head
            first = False
            sock.sendall(memoryview(buf)[start : HEADROOM + used])
            progress()
    except FileProblem:
        conn.abort()  # half a data set was sent: only an abort ends it cleanly
        raise
    except BaseException:
        reader.cancel(job)
        raise
    return message_id


def read_store_response(conn: ULConnection, message_id: int) -> int | None:
    """The C-STORE-RSP's status (None when it carries none)."""
    response = conn.read_command(conn.timeouts.dimse)
    if command_us(response, 0x0100) != 0x8001 or command_us(response, 0x0120) != message_id:
        raise ULError("peer answered with a response that does not match our C-STORE")
    return command_us(response, 0x0900)


@dataclass
class Prepared:
    """An object checked and its data set already being read ahead: what
    `DimseSender` holds while the previous object's response is awaited."""

    sop: Part10
    context_id: int
    job: _ReadJob | None  # None: it must be converted first (not read ahead)
    transfer_syntax: str


def prepare_store(reader: ReadAhead, sop: Part10, context_id: int, ts: str) -> Prepared:
    """Start reading the object ahead when it goes as it is (its own syntax
    was accepted); a conversion waits until it is its turn."""
    if ts != sop.transfer_syntax:
        return Prepared(sop, context_id, None, ts)
    try:
        job = reader.submit(
            sop.path, sop.dataset_offset, sop.size - sop.dataset_offset, context_id, sop.path.name
        )
    except OSError as exc:
        raise FileProblem(f"cannot read {sop.path}: {exc.strerror}") from None
    return Prepared(sop, context_id, job, ts)


def store_prepared(
    conn: ULConnection,
    reader: ReadAhead,
    prepared: Prepared,
    workdir: Path,
    progress: Callable[[], None] = lambda: None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    converting: Callable[[bool], None] = lambda started: None,
) -> int:
    """Write the C-STORE of a prepared object; returns its Message ID. An
    object whose syntax was refused is re-encoded once (frame by frame,
    within `memory_limit`) to the accepted uncompressed syntax in a temporary
    file, checked to carry the command's UIDs, and sent from there.
    `converting(True/False)` brackets the conversion (the forwarder records
    it durably, so an object that kills the process is known after)."""
    sop = prepared.sop
    if prepared.job is not None:
        return write_store(conn, reader, prepared.job, sop, progress)
    converting(True)
    try:
        converted = reencode(
            sop.path,
            prepared.transfer_syntax,
            workdir,
            memory_limit,
            expect=(sop.sop_class, sop.sop_instance),
        )
    except TranscodeError as exc:
        raise FileProblem(str(exc)) from None
    finally:
        converting(False)
    try:
        conv = read_part10_header(converted)
        try:  # the open file stays readable after the unlink below
            job = reader.submit(
                converted,
                conv.dataset_offset,
                conv.size - conv.dataset_offset,
                prepared.context_id,
                sop.path.name,
            )
        except OSError as exc:
            raise FileProblem(f"cannot read the converted copy: {exc.strerror}") from None
        return write_store(conn, reader, job, sop, progress)
    finally:
        converted.unlink(missing_ok=True)
