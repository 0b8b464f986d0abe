"""DICOM Part 10 files: writing the ones we build (in pieces, Pixel Data
never copied) and reading back where a queued file's data set starts and
what it is, without loading it (a 110 MB cine costs a 4 KiB read).

The File Meta group is read by the one element walker (gateway.dicom.rawdata);
pydicom is imported only to write (it costs a sending process ~0.2 s to load).
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.dicom.rawdata import RawDataError, RawItem, read_dataset

if TYPE_CHECKING:  # reading a header needs no pydicom: `queue flush` starts without it
    from pydicom.dataset import Dataset

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
PREAMBLE = 128
# The File Meta group of any file we queue is small; a larger one is damage.
MAX_META = 1 << 16
# The first read: preamble, DICM and a File Meta group of usual size (a few
# hundred bytes); a longer group is read again at its length.
_FIRST_READ = 4096


class Part10Error(ValueError):
    """The file is not a Part 10 file we can send as it is."""


@dataclass(frozen=True)
class Part10:
    """Where the data set starts in the file, and how it is encoded."""

    path: Path
    dataset_offset: int
    size: int
    transfer_syntax: str
    sop_class: str
    sop_instance: str


def _text(meta: RawItem, tag: int) -> str:
    value = meta.get(tag)
    return value.decode("ascii", "replace").rstrip("\0 ") if isinstance(value, bytes) else ""


def read_header(path: Path) -> Part10:
    """Preamble, DICM, then the File Meta group (its length first, as every
    conformant writer puts it), walked with bounds: a truncated or corrupt
    file is a Part10Error, never a guess."""
    # os-level calls: open, fstat, one pread (the preamble and a File Meta
    # group of usual size), close; the forwarder does this for every object.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, _FIRST_READ, 0)
            if len(head) < PREAMBLE + 4 or head[PREAMBLE : PREAMBLE + 4] != b"DICM":
                raise Part10Error(f"{path.name} is not a DICOM Part 10 file")
            first = head[PREAMBLE + 4 : PREAMBLE + 4 + 12]
            if len(first) < 12 or first[:6] != b"\x02\x00\x00\x00UL":
                raise Part10Error(f"{path.name} has no File Meta group length")
            (meta_len,) = struct.unpack_from("<I", first, 8)
            if meta_len > MAX_META:
                raise Part10Error(f"{path.name} has a corrupt File Meta group")
            start = PREAMBLE + 4 + 12
            meta_bytes = head[start : start + meta_len]
            if len(meta_bytes) < meta_len and len(head) == _FIRST_READ:
                meta_bytes = os.pread(fd, meta_len, start)
        finally:
            os.close(fd)
    except OSError as exc:
        raise Part10Error(f"cannot read {path}: {exc.strerror}") from None
    if len(meta_bytes) < meta_len:
        raise Part10Error(f"{path.name} has a truncated File Meta group")
    try:
        meta = read_dataset(meta_bytes, explicit_vr=True)
    except RawDataError as exc:
        raise Part10Error(f"{path.name} has a corrupt File Meta group ({exc})") from None
    offset = PREAMBLE + 4 + 12 + meta_len
    ts, sop_class, sop_instance = (
        _text(meta, 0x00020010),
        _text(meta, 0x00020002),
        _text(meta, 0x00020003),
    )
    if not ts or not sop_class or not sop_instance:
        raise Part10Error(f"{path.name} lacks transfer syntax or SOP UIDs in its File Meta")
    if offset >= size:
        raise Part10Error(f"{path.name} holds no data set")
    return Part10(path, offset, size, ts, sop_class, sop_instance)


_EXPLICIT_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_UNDEFINED = 0xFFFFFFFF
# What the walk for one early element reads at most: the elements before
# Pixel Data of any object we queue are a few KiB.
_WALK_BYTES = 1 << 20


class _Cut(Exception):
    """The walk ran past the bytes read, or met damage."""


def _element_end(buf: bytes, pos: int, explicit: bool, depth: int = 0) -> tuple[int, int, int]:
    """(tag, value start, end) of the element at `pos`; undefined-length
    sequences and items are walked to their delimiters."""
    if pos + 8 > len(buf) or depth > 16:
        raise _Cut
    group, elem = struct.unpack_from("<HH", buf, pos)
    tag = group << 16 | elem
    if group == 0xFFFE:  # item / delimiters: never a VR
        (length,), start = struct.unpack_from("<I", buf, pos + 4), pos + 8
        vr = b"SQ" if tag == 0xFFFEE000 else b""
    elif explicit and buf[pos + 4 : pos + 6] in _EXPLICIT_LONG_VRS:
        if pos + 12 > len(buf):
            raise _Cut
        vr = buf[pos + 4 : pos + 6]
        (length,), start = struct.unpack_from("<I", buf, pos + 8), pos + 12
    elif explicit:
        vr = buf[pos + 4 : pos + 6]
        (length,), start = struct.unpack_from("<H", buf, pos + 6), pos + 8
    else:
        vr = b""
        (length,), start = struct.unpack_from("<I", buf, pos + 4), pos + 8
    if length != _UNDEFINED:
        return tag, start, start + length
    if vr not in (b"SQ", b"UN", b""):
        raise _Cut
    # An undefined length: a sequence (or an item) up to its delimiter.
    closer = 0xFFFEE00D if tag == 0xFFFEE000 else 0xFFFEE0DD
    inner = explicit and (vr != b"UN")
    at = start
    while True:
        sub, _, at_end = _element_end(buf, at, inner if tag == 0xFFFEE000 else explicit, depth + 1)
        if sub == closer:
            return tag, start, at_end
        at = at_end


def read_top_level_value(header: Part10, wanted: int) -> bytes | None:
    """The value of one top-level element before Pixel Data (say Patient ID),
    read by walking element headers from the data set's start: no pydicom,
    no reading of the pixels. None when the element is absent. Part10Error
    when the walk meets what it cannot read (a deflated or big endian data
    set, damage, more than 1 MiB of elements before it): the caller then
    reads the file the thorough way."""
    if header.transfer_syntax in ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"):
        raise Part10Error(f"{header.path.name}: not a Little Endian data set to walk")
    explicit = header.transfer_syntax != IMPLICIT_VR_LE
    try:
        with open(header.path, "rb") as f:
            f.seek(header.dataset_offset)
            buf = f.read(_WALK_BYTES)
    except OSError as exc:
        raise Part10Error(f"cannot read {header.path}: {exc.strerror}") from None
    pos = 0
    try:
        while pos < len(buf):
            tag, start, end = _element_end(buf, pos, explicit)
            if tag == wanted:
                if end > len(buf):
                    raise _Cut
                return buf[start:end]
            if tag > wanted:
                return None
            pos = end
    except (_Cut, struct.error):
        raise Part10Error(f"{header.path.name}: its first elements cannot be walked") from None
    if header.dataset_offset + len(buf) < header.size:
        raise Part10Error(f"{header.path.name}: its first elements cannot be walked")
    return None


def to_bytes(ds: Dataset) -> bytes:
    """The Part 10 file for a dataset built here, in one piece."""
    return b"".join(to_parts(ds))


def to_parts(ds: Dataset) -> list[bytes]:
    """The Part 10 file for a dataset built here, as pieces to write one after
    the other.

    Pixel Data (always the last element here) is appended by hand and never
    copied: pydicom would copy a 150 MB cine through a growing buffer several
    times, which costs more than building it (and, on a 1 GB box, the memory).
    """
    from pydicom import dcmwrite

    if "PixelData" not in ds or not ds.file_meta.TransferSyntaxUID.is_little_endian:
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        return [buf.getvalue()]
    elem = ds["PixelData"]
    value: bytes = elem.value
    del ds["PixelData"]
    try:
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
    finally:
        ds["PixelData"] = elem
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        head = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
        tail = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        return [buf.getvalue() + head, value, tail]
    head = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, len(value))
    return [buf.getvalue() + head, value]


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """A data set without File Meta, as it travels in a DIMSE message
    (Explicit or Implicit VR Little Endian)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LE
    write_dataset(out, ds)
    return out.getvalue()
