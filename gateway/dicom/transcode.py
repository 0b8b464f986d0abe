"""Re-encoding a queued object for a PACS that refuses its transfer syntax.

Only the encoding changes: every UID and attribute stays as queued. pydicom's
`decompress` gave the data set a new SOP Instance UID (pydicom's own root),
while the C-STORE command carried the original: a PACS answered 0xA900
"data set does not match SOP class", or worse stored an instance the gateway
does not know (commitment never matches, a resend makes a duplicate). Here
the data set's header is copied as it is, the Pixel Data element is written
frame by frame in the new syntax, and the result is checked: the data set's
SOP Class and Instance UIDs (and the file's) must equal the command's.

What may change, because the encoding does: the transfer syntax, and for a
colour image that was YCbCr inside its JPEG, the Photometric Interpretation
(RGB now, Planar Configuration 0). The Lossy Image Compression history stays:
an image once JPEG-compressed is lossy for ever (PS3.3 C.7.6.1.1.5), so
(0028,2110) is "01" after decompressing too, with its ratio and method.

Memory is bounded before anything is decoded: one frame at a time (a long
cine never sits decoded in memory), and an object whose single frame would
need more than `memory_limit` bytes is refused with the reason (a poison
object set aside, never a forwarder killed by the kernel). `plan` says what
a conversion needs without doing it.

A video object (H.264/HEVC) goes to a PACS that does not take video as
multi-frame JPEG Baseline: the stream is decoded frame by frame (PyAV), each
frame JPEG-encoded and written at once, so memory holds one frame, the
decoder's reference frames and one JPEG, never the clip. The history says
both lossy steps (ISO_14496_10 then ISO_10918_1).

The API: `plan(path, ts)` → `Plan`, `reencode(path, ts, workdir,
memory_limit)` → the converted file's path; `TranscodeError` (cannot),
`TooLarge` (would exceed the bound). Frames come from `_frames` (pixel
codecs pydicom decodes) or `_video_frames` (a video stream).
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
UNCOMPRESSED = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
PIXEL_DATA = 0x7FE00010
DEFAULT_MEMORY_LIMIT = 128 << 20
# What decoding one frame costs beside the frame itself: the compressed
# fragment, the decoder's own image, the colour conversion (measured with
# Pillow and pylibjpeg-rle on 1080p RGB frames: under 3× the frame).
FRAME_COPIES = 3
OVERHEAD = 16 << 20  # pydicom, the header, the decoder's state
# Transfer syntaxes whose pixels went through a lossy codec.
LOSSY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)
_YBR = ("YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
VIDEO = frozenset(
    {
        "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
        "1.2.840.10008.1.2.4.104",  # … Level 4.2 for 2D video
        "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
    }
)
# An H.264/HEVC decoder keeps up to 16 reference frames (4:2:0: 1.5 bytes a
# pixel) beside the one it hands over.
DECODER_FRAMES = 16


class TranscodeError(ValueError):
    """The object cannot be converted to the asked transfer syntax."""


class TooLarge(TranscodeError):
    """Converting would need more memory than the bound allows."""


@dataclass(frozen=True)
class Plan:
    """What a conversion of one object would take, known before decoding."""

    source_ts: str
    target_ts: str
    frames: int
    frame_bytes: int  # one decoded frame, as written
    memory_needed: int  # the peak estimate checked against the bound
    sop_class: str
    sop_instance: str


def _header(path: Path) -> Dataset:
    from pydicom import dcmread

    try:
        return dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many kinds; all mean "not readable"
        raise TranscodeError(f"{path.name} cannot be read: {exc}") from None


def plan(path: Path, ts: str, header: Dataset | None = None) -> Plan:
    ds = header if header is not None else _header(path)
    source_ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    video = source_ts in VIDEO
    if video and ts not in (JPEG_BASELINE, *UNCOMPRESSED):
        raise TranscodeError(
            f"{path.name}: a video object is converted to JPEG Baseline or uncompressed, not {ts}"
        )
    if not video and ts not in UNCOMPRESSED:
        raise TranscodeError(f"{path.name}: converting to {ts} is not supported")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.SamplesPerPixel)
        bits = int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        source = str(ds.file_meta.TransferSyntaxUID)
        sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise TranscodeError(f"{path.name} has no usable image description: {exc}") from None
    if bits not in (8, 16) or rows <= 0 or cols <= 0 or samples not in (1, 3) or frames <= 0:
        raise TranscodeError(
            f"{path.name}: {cols}×{rows}, {samples} sample(s) of {bits} bits is not an image "
            "this gateway converts"
        )
    frame_bytes = rows * cols * samples * (bits // 8)
    fragment = path.stat().st_size // frames
    needed = FRAME_COPIES * frame_bytes + 2 * fragment + OVERHEAD
    if video:
        needed = FRAME_COPIES * frame_bytes + DECODER_FRAMES * rows * cols * 3 // 2 + OVERHEAD
    return Plan(source, ts, frames, frame_bytes, needed, sop_class, sop_instance)


def reencode(
    path: Path,
    ts: str,
    workdir: Path,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    expect: tuple[str, str] | None = None,
) -> Path:
    """Write `path` in transfer syntax `ts` (uncompressed) to a temporary file
    in `workdir` and return it. `expect` is the command's (SOP Class, SOP
    Instance) UIDs; the result must carry exactly those."""
    ds = _header(path)
    p = plan(path, ts, ds)
    if p.memory_needed > memory_limit:
        raise TooLarge(
            f"{path.name}: converting to {ts} needs about {p.memory_needed >> 20} MiB "
            f"({p.frames} frame(s) of {p.frame_bytes >> 20} MiB, one at a time), more than "
            f"the {memory_limit >> 20} MiB allowed (forwarding.convert_memory_mb)"
        )
    want = expect or (p.sop_class, p.sop_instance)
    if (p.sop_class, p.sop_instance) != want:
        raise TranscodeError(
            f"{path.name} holds SOP Class/Instance {p.sop_class} / {p.sop_instance}, "
            f"not the queued {want[0]} / {want[1]}"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{path.stem}.{ts}.tmp"
    try:
        if p.source_ts in VIDEO and p.target_ts == JPEG_BASELINE:
            _write_video_as_jpeg(path, ds, p, out)
        else:
            _write(path, ds, p, out)
        _check(out, ts, want)
    except TranscodeError:
        out.unlink(missing_ok=True)
        raise
    except Exception as exc:  # a decoder's error, a full disk: cannot convert now
        out.unlink(missing_ok=True)
        raise TranscodeError(f"{path.name} cannot be converted to {ts}: {exc}") from None
    return out


def _write(path: Path, ds: Dataset, p: Plan, out: Path) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    header = ds.copy()
    header.file_meta = FileMetaDataset(ds.file_meta)
    header.file_meta.TransferSyntaxUID = UID(p.target_ts)
    for late in [e.tag for e in header if int(e.tag) >= PIXEL_DATA]:
        del header[late]  # Pixel Data is written below; nothing may follow it
    compressed = UID(p.source_ts).is_compressed
    samples = int(header.SamplesPerPixel)
    if compressed and samples == 3 and str(header.PhotometricInterpretation) in _YBR:
        header.PhotometricInterpretation = "RGB"  # the decoder hands RGB over
    if samples == 3:
        header.PlanarConfiguration = 0
    if p.source_ts in LOSSY or p.source_ts in VIDEO:
        # Once lossy, always lossy: the history (ratio, method) stays as queued.
        header.LossyImageCompression = "01"
    bits = int(header.BitsAllocated)
    length = p.frames * p.frame_bytes
    pad = length % 2
    with open(out, "wb") as f:
        header.save_as(f, enforce_file_format=True)
        tag = struct.pack("<HH", 0x7FE0, 0x0010)
        if p.target_ts == IMPLICIT_VR_LE:
            f.write(tag + struct.pack("<I", length + pad))
        else:
            vr = b"OW" if bits > 8 else b"OB"
            f.write(tag + vr + b"\0\0" + struct.pack("<I", length + pad))
        written = 0
        frames = (
            (a.tobytes() for a in _video_frames(path))
            if p.source_ts in VIDEO
            else _frames(path, p, bits)
        )
        for frame in frames:
            if len(frame) != p.frame_bytes:
                raise TranscodeError(
                    f"{path.name}: a frame decoded to {len(frame)} bytes, not {p.frame_bytes}"
                )
            f.write(frame)
            written += 1
        if written != p.frames:
            raise TranscodeError(f"{path.name}: {written} frame(s) decoded of {p.frames}")
        if pad:
            f.write(b"\0")


def _write_video_as_jpeg(path: Path, ds: Dataset, p: Plan, out: Path) -> None:
    """Multi-frame JPEG Baseline from a video object, one frame at a time:
    decoded, encoded, written (an empty Basic Offset Table: offsets are not
    known before the frames are)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    from gateway.dicom.pixels import encode_jpeg

    before = (
        _values(ds.get("LossyImageCompressionRatio")),
        _values(ds.get("LossyImageCompressionMethod")),
    )
    header = copy.deepcopy(ds)  # a header alone (read without Pixel Data)
    header.file_meta = FileMetaDataset(ds.file_meta)
    header.file_meta.TransferSyntaxUID = UID(JPEG_BASELINE)
    for late in [e.tag for e in header if int(e.tag) >= PIXEL_DATA]:
        del header[late]
    header.PhotometricInterpretation = "YBR_FULL_422"
    header.PlanarConfiguration = 0
    item = struct.Struct("<HHI")
    written = 0
    total = 0
    with open(out, "wb") as f:
        # The history is written last (it needs the JPEG sizes): the header
        # is rewritten in place then, its length unchanged (see below).
        _lossy_history(header, before, 1.0)
        header.save_as(f, enforce_file_format=True)
        header_end = f.tell()
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        f.write(item.pack(0xFFFE, 0xE000, 0))
        for pixels in _video_frames(path):
            data = encode_jpeg(pixels)
            pad = len(data) % 2
            f.write(item.pack(0xFFFE, 0xE000, len(data) + pad))
            f.write(data)
            if pad:
                f.write(b"\0")
            written += 1
            total += len(data) + pad
        f.write(item.pack(0xFFFE, 0xE0DD, 0))
        if written != p.frames:
            raise TranscodeError(f"{path.name}: {written} frame(s) decoded of {p.frames}")
        ratio = p.frame_bytes * written / max(1, total)
        _lossy_history(header, before, ratio)
        f.seek(0)
        header.save_as(f, enforce_file_format=True)
        if f.tell() != header_end:  # pragma: no cover - fixed-width ratio below
            raise TranscodeError("the converted header changed length")


def _lossy_history(header: Dataset, before: tuple[list[Any], list[Any]], ratio: float) -> None:
    """The video's own lossy steps, then this JPEG one (PS3.3 C.7.6.1.1.5).
    The new ratio is written with a fixed width so the header's length does
    not change when it is filled in after the frames."""
    ratios, methods = before
    header.LossyImageCompression = "01"
    header.LossyImageCompressionRatio = [*(str(r) for r in ratios), f"{min(ratio, 9999999):010.2f}"]
    header.LossyImageCompressionMethod = [*methods, "ISO_10918_1"]


def _values(value: Any) -> list[Any]:
    """An attribute's values as a list, whether it holds one or several."""
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _video_frames(path: Path) -> Iterator[Any]:
    """A video object's frames as RGB, decoded from its fragments as they
    are read (the stream is never held whole)."""
    import av

    from gateway.dicom.video import codec_of, stream_fragments

    meta_ts = _header(path).file_meta.TransferSyntaxUID
    codec = codec_of(str(meta_ts))
    if codec is None:
        raise TranscodeError(f"{path.name}: {meta_ts} is not a video transfer syntax")
    decoder = av.CodecContext.create(codec, "r")
    try:
        for fragment in stream_fragments(path):
            for packet in decoder.parse(fragment):
                for frame in decoder.decode(packet):
                    yield frame.to_ndarray(format="rgb24")
        for packet in decoder.parse(None):
            for frame in decoder.decode(packet):
                yield frame.to_ndarray(format="rgb24")
        for frame in decoder.decode(None):
            yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise TranscodeError(f"{path.name}: the video stream does not decode ({exc})") from None


def _frames(path: Path, p: Plan, bits: int) -> Iterator[bytes]:
    """The frames, decoded one at a time, as little-endian bytes."""
    from pydicom.pixels.utils import iter_pixels

    dtype = "<u2" if bits == 16 else "u1"
    for array in iter_pixels(path, as_rgb=True):
        yield array.astype(dtype, copy=False).tobytes()


def _check(out: Path, ts: str, want: tuple[str, str]) -> None:
    """The converted file, read back: the File Meta group and the data set
    both name the command's SOP Class and Instance, in the asked syntax."""
    from gateway.dicom.part10 import Part10Error, read_header

    try:
        meta = read_header(out)
    except Part10Error as exc:
        raise TranscodeError(f"the converted file is not Part 10: {exc}") from None
    ds = _header(out)
    got = {
        "file meta": (meta.sop_class, meta.sop_instance),
        "data set": (str(ds.SOPClassUID), str(ds.SOPInstanceUID)),
    }
    for where, uids in got.items():
        if uids != want:
            raise TranscodeError(
                f"conversion changed the {where}'s SOP Class/Instance to {uids[0]} / "
                f"{uids[1]} (queued {want[0]} / {want[1]}): not sent"
            )
    if meta.transfer_syntax != ts:
        raise TranscodeError(f"conversion wrote {meta.transfer_syntax}, not {ts}")
