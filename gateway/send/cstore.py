"""C-STORE of queued files on the lean upper layer: a file streamed from disk
as one C-STORE, and each response status sorted into delivered / try again
later / give up."""

from __future__ import annotations

import struct
from collections.abc import Callable
from io import FileIO
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


def send_dataset(
    conn: ULConnection,
    context_id: int,
    source: FileIO,
    length: int,
    sop: Part10,
    progress: Callable[[], None] = lambda: None,
) -> int | None:
    """One C-STORE: the command, then `length` bytes from `source` as data
    PDVs, then the response's status (None if the answer made no sense).

    PDUs are filled in place in one reused buffer: header `pack_into`, file
    `readinto` straight behind it, one `sendall` per ~1 MiB."""
    message_id = conn.next_message_id()
    fragment = conn.max_fragment
    per_write = max(1, WRITE_BYTES // (fragment + 12))
    conn.send_message(context_id, c_store_rq(message_id, sop.sop_class, sop.sop_instance))
    try:
        _send_data(conn, context_id, source, length, sop, fragment, per_write, progress)
    except FileProblem:
        conn.abort()  # half a data set was sent: only an abort ends it cleanly
        raise
    response = conn.read_command(conn.timeouts.dimse)
    if command_us(response, 0x0100) != 0x8001 or command_us(response, 0x0120) != message_id:
        raise ULError("peer answered with a response that does not match our C-STORE")
    return command_us(response, 0x0900)


def _send_data(
    conn: ULConnection,
    context_id: int,
    source: FileIO,
    length: int,
    sop: Part10,
    fragment: int,
    per_write: int,
    progress: Callable[[], None],
) -> None:
    size = (fragment + 12) * per_write
    if len(conn.buffer) != size:
        conn.buffer = bytearray(size)
    buf = conn.buffer
    view = memoryview(buf)
    sock = conn.sock
    remaining = length
    while remaining > 0:
        used = 0
        for _ in range(per_write):
            if remaining <= 0:
                break
            n = min(fragment, remaining)
            last = n == remaining
            struct.pack_into(
                ">BBIIBB", buf, used, P_DATA_TF, 0, 6 + n, 2 + n, context_id, 2 if last else 0
            )
            start = used + 12
            got = 0
            while got < n:
                r = source.readinto(view[start + got : start + n])
                if not r:
                    raise FileProblem(f"{sop.path.name} shrank while being sent")
                got += r
            used = start + n
            remaining -= n
        sock.sendall(view[:used])
        progress()


def store_file(
    conn: ULConnection,
    sop: Part10,
    context_id: int,
    ts: str,
    workdir: Path,
    progress: Callable[[], None] = lambda: None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    converting: Callable[[bool], None] = lambda started: None,
) -> int | None:
    """Send as it is when its own transfer syntax was accepted; else re-encode
    once (frame by frame, within `memory_limit`) to the accepted uncompressed
    syntax in a temporary file, checked to carry the command's UIDs.
    `converting(True/False)` brackets the conversion (the forwarder records
    it durably, so an object that kills the process is known after)."""
    if ts == sop.transfer_syntax:
        with open(sop.path, "rb", buffering=0) as f:
            f.seek(sop.dataset_offset)
            return send_dataset(conn, context_id, f, sop.size - sop.dataset_offset, sop, progress)
    converting(True)
    try:
        converted = reencode(
            sop.path, ts, workdir, memory_limit, expect=(sop.sop_class, sop.sop_instance)
        )
    except TranscodeError as exc:
        raise FileProblem(str(exc)) from None
    finally:
        converting(False)
    try:
        conv = read_part10_header(converted)
        with open(converted, "rb", buffering=0) as f:
            f.seek(conv.dataset_offset)
            return send_dataset(conn, context_id, f, conv.size - conv.dataset_offset, sop, progress)
    finally:
        converted.unlink(missing_ok=True)
