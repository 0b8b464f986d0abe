"""C-STORE of queued files over one association, with each response status
sorted into delivered / try again later / give up."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import Enum
from io import FileIO
from pathlib import Path

from gateway.net.ul import (
    P_DATA_TF,
    ULConnection,
    ULError,
    c_store_rq,
    command_us,
)


class Outcome(Enum):
    STORED = "stored"
    TRANSIENT = "transient"  # try again later: the PACS may accept it then
    PERMANENT = "permanent"  # the PACS will never accept this object as it is


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
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
# One write carries several PDUs: fewer syscalls and TLS records per byte.
WRITE_BYTES = 1 << 20


class FileProblem(Exception):
    """The queued file cannot be sent as it is (missing, truncated, not Part 10)."""


@dataclass(frozen=True)
class Part10:
    """Where the data set starts in the file, and how it is encoded."""

    path: Path
    dataset_offset: int
    size: int
    transfer_syntax: str
    sop_class: str
    sop_instance: str


def read_part10_header(path: Path) -> Part10:
    """Walk the File Meta group (Explicit VR LE) without loading the data set:
    a 110 MB cine costs a 4 KiB read here."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            size = os.fstat(f.fileno()).st_size
            if len(head) < 132 or head[128:132] != b"DICM":
                raise FileProblem(f"{path.name} is not a DICOM Part 10 file")
            meta: dict[int, bytes] = {}
            offset = 132
            while True:
                tag = f.read(6)
                if len(tag) < 6:
                    break
                group, elem = struct.unpack("<HH", tag[:4])
                if group != 0x0002:
                    break
                vr = tag[4:6]
                if vr in _LONG_VRS:
                    length = struct.unpack("<I", f.read(6)[2:])[0]
                    header = 12
                else:
                    length = struct.unpack("<H", f.read(2))[0]
                    header = 8
                if length > 1 << 16:
                    raise FileProblem(f"{path.name} has a corrupt File Meta group")
                meta[elem] = f.read(length)
                offset += header + length
    except OSError as exc:
        raise FileProblem(f"cannot read {path}: {exc.strerror}") from None
    except struct.error:
        raise FileProblem(f"{path.name} has a truncated File Meta group") from None

    def text(elem: int) -> str:
        return meta.get(elem, b"").decode("ascii", "replace").rstrip("\0 ")

    ts, sop_class, sop_instance = text(0x0010), text(0x0002), text(0x0003)
    if not ts or not sop_class or not sop_instance:
        raise FileProblem(f"{path.name} lacks transfer syntax or SOP UIDs in its File Meta")
    if offset >= size:
        raise FileProblem(f"{path.name} holds no data set")
    return Part10(path, offset, size, ts, sop_class, sop_instance)


def send_dataset(
    conn: ULConnection, context_id: int, source: FileIO, length: int, sop: Part10
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
        _send_data(conn, context_id, source, length, sop, fragment, per_write)
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


def store_file(
    conn: ULConnection, sop: Part10, context_id: int, ts: str, workdir: Path
) -> int | None:
    """Send as it is when its own transfer syntax was accepted; else re-encode
    once to Explicit VR Little Endian (decompressing) in a temporary file."""
    if ts == sop.transfer_syntax:
        with open(sop.path, "rb", buffering=0) as f:
            f.seek(sop.dataset_offset)
            return send_dataset(conn, context_id, f, sop.size - sop.dataset_offset, sop)
    converted = reencode(sop, ts, workdir)
    try:
        conv = read_part10_header(converted)
        with open(converted, "rb", buffering=0) as f:
            f.seek(conv.dataset_offset)
            return send_dataset(conn, context_id, f, conv.size - conv.dataset_offset, sop)
    finally:
        converted.unlink(missing_ok=True)


def reencode(sop: Part10, ts: str, workdir: Path) -> Path:
    """The fallback path (rare, and allowed to be slow): pydicom loads, decodes
    compressed pixels, and writes the requested uncompressed syntax."""
    from pydicom import dcmread
    from pydicom.uid import UID

    try:
        ds = dcmread(sop.path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.file_meta.TransferSyntaxUID = UID(ts)
        workdir.mkdir(parents=True, exist_ok=True)
        out = workdir / f"{sop.sop_instance}.{ts}.tmp"
        ds.save_as(out, enforce_file_format=True)
    except Exception as exc:  # pydicom raises many kinds; all mean "cannot convert"
        raise FileProblem(
            f"{sop.path.name} cannot be converted from {sop.transfer_syntax} to {ts}: {exc}"
        ) from None
    return out
