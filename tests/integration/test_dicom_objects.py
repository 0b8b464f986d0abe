"""Every object kind × every encoding, checked by the tools a PACS vendor
would use: dciodvfy (zero errors), dcmdump, pydicom, dcmdjpeg / dcmdrle."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from gateway.config import CaptureConfig
from gateway.dicom import jpeg, part10
from gateway.dicom.pixels import EncodedJpeg, PixelError, encode_jpeg
from tests.support.dicom_objects import ENCODINGS, KINDS, build, pattern
from tests.support.process import require_tool

# The only warning left, and why it cannot go: Laterality (0020,0060) is type
# 2C, required for paired body parts. The gateway cannot know the body part;
# dciodvfy reports an *error* when it is absent and a warning when it is empty.
ALLOWED_WARNINGS = ("Laterality",)


def psnr(a: np.ndarray, b: np.ndarray) -> float:  # type: ignore[type-arg]
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def luma(x: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    """Y of ITU-R BT.601, as JPEG's colour transform computes it."""
    return x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("objects")
    frames = pattern(3)
    made = {}
    for kind in KINDS:
        for encoding in ENCODINGS:
            path = out / f"{kind}-{encoding}.dcm"
            path.write_bytes(part10.to_bytes(build(kind, encoding, frames)))
            made[(kind, encoding)] = path
    return made


CASES = [(k, e) for k in KINDS for e in ENCODINGS]


@pytest.mark.parametrize(("kind", "encoding"), CASES)
def test_object_is_valid_and_decodes(
    objects: dict[tuple[str, str], Path], kind: str, encoding: str, tmp_path: Path
) -> None:
    path = objects[(kind, encoding)]
    result = subprocess.run(
        [require_tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True
    )
    report = (result.stdout + result.stderr).splitlines()
    errors = [line for line in report if line.startswith("Error")]
    warnings = [
        line
        for line in report
        if line.startswith("Warning") and not any(a in line for a in ALLOWED_WARNINGS)
    ]
    assert errors == [] and warnings == [], "\n".join(report)

    dump = subprocess.run(
        [require_tool("dcmdump"), "+U8", str(path)], capture_output=True, text=True
    )
    assert dump.returncode == 0, dump.stderr
    assert "Doe^Jane" in dump.stdout

    frames = pattern(3)
    multi = KINDS[kind][1]
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    expected = np.stack(frames) if multi else frames[0]
    assert pixels.shape == expected.shape
    if encoding in ("none", "rle"):
        assert np.array_equal(pixels, expected)  # lossless means exact
        assert ds.LossyImageCompression == "00"
    else:
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_10918_1"
        assert ds.PhotometricInterpretation == "YBR_FULL_422"
        assert (
            psnr(luma(pixels), luma(expected)) >= 35
        )  # tiny frames; the 40 dB bar is tested below

    if encoding != "none":
        tool = "dcmdrle" if encoding == "rle" else "dcmdjpeg"
        out = tmp_path / "decompressed.dcm"
        run = subprocess.run(
            [require_tool(tool), str(path), str(out)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        plain = pydicom.dcmread(out)
        assert not plain.file_meta.TransferSyntaxUID.is_compressed
        if encoding == "rle":
            assert np.array_equal(plain.pixel_array, expected)
        else:
            assert psnr(plain.pixel_array, pixels) > 30  # DCMTK's decoder agrees with ours


def test_multiframe_has_cine_timing(objects: dict[tuple[str, str], Path]) -> None:
    for kind in ("mf-true-colour-sc", "us-multiframe"):
        ds = pydicom.dcmread(objects[(kind, "jpeg-baseline")])
        assert ds.NumberOfFrames == 3
        assert float(ds.FrameTime) == 40.0
        assert ds.CineRate == 25
        assert ds.FrameIncrementPointer == 0x00181063


def test_jpeg_meets_40_db_at_default_quality() -> None:
    """At the default quality: luminance of the colour test pattern and a
    monochrome frame reach 40 dB after a full DICOM round trip. (Colour as a
    whole does not: DICOM requires 4:2:2 chroma for JPEG Baseline colour,
    which costs the saturated bars ~33 dB at any quality; hence the lossless
    default compression.)"""
    quality = CaptureConfig().jpeg_quality
    colour = pattern(1, 640, 480)[0]
    grey = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)
    for frame in (colour, grey):
        ds = build("sc", "jpeg-baseline", [frame], quality=quality)
        back = pydicom.dcmread(_roundtrip(ds)).pixel_array
        if frame.ndim == 3:
            back, frame = luma(back), luma(frame)
        assert psnr(back, frame) >= 40


def _roundtrip(ds: Dataset) -> Any:
    import io

    return io.BytesIO(part10.to_bytes(ds))


def test_monochrome_clip_becomes_true_colour() -> None:
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in pattern(2)]
    ds = pydicom.dcmread(_roundtrip(build("mf-true-colour-sc", "none", grey)))
    assert ds.SamplesPerPixel == 3
    assert np.array_equal(ds.pixel_array[..., 0], np.stack(grey))


def test_frame_of_wrong_size_is_refused() -> None:
    frames = pattern(2) + pattern(1, 80, 64)
    with pytest.raises(PixelError, match=r"frame 2: size 80×64 differs from frame 0's 96×64"):
        build("us-multiframe", "jpeg-baseline", frames)
    jpegs = [encode_jpeg(f) for f in frames]
    with pytest.raises(PixelError, match="frame 2"):
        build("us-multiframe", "none", [EncodedJpeg.from_bytes(j) for j in jpegs][:3])


# -- JPEG passthrough ------------------------------------------------------------


def _strip_dht(data: bytes) -> bytes:
    out, pos = bytearray(data[:2]), 2
    while True:
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker != 0xC4:
            out += data[pos : pos + 2 + length]
        if marker == 0xDA:
            return bytes(out + data[pos + 2 + length :])
        pos += 2 + length


def test_standard_huffman_tables_make_mjpeg_frames_decodable(tmp_path: Path) -> None:
    """MJPEG frames without DHT: DCMTK's decoder (IJG) refuses them as they
    are, and decodes them once the standard tables are inserted."""
    frame = pattern(1)[0]
    full = encode_jpeg(frame)
    bare = _strip_dht(full)
    assert not jpeg.parse(bare).has_huffman_tables
    fixed = EncodedJpeg.from_bytes(bare)
    assert jpeg.parse(fixed.data).has_huffman_tables
    as_sent = EncodedJpeg(bare, jpeg.parse(bare))  # what wrapping blindly would store
    results = {}
    for name, data in (("as_sent", as_sent), ("fixed", fixed)):
        src = tmp_path / f"{name}.dcm"
        src.write_bytes(part10.to_bytes(build("us", "none", [data])))
        out = tmp_path / f"{name}-plain.dcm"
        run = subprocess.run([require_tool("dcmdjpeg"), str(src), str(out)], capture_output=True)
        results[name] = run.returncode
        if run.returncode == 0:
            plain = pydicom.dcmread(out).pixel_array
            reference = cv2.cvtColor(
                cv2.imdecode(np.frombuffer(full, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
            )
            assert psnr(plain, reference) > 35
    assert results["as_sent"] != 0 and results["fixed"] == 0


def test_passthrough_wraps_bytes_unchanged(objects: dict[tuple[str, str], Path]) -> None:
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(objects[("us-multiframe", "jpeg-passthrough")])
    wrapped = list(generate_frames(ds.PixelData, number_of_frames=3))
    originals = [encode_jpeg(f) for f in pattern(3)]
    assert [w[: len(o)] for w, o in zip(wrapped, originals, strict=True)] == originals


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b"", "not a JPEG"),
        (lambda b: b[:2] + b"\x00" * 50, "corrupt"),
        (lambda b: b + b"trailing junk", "after the end-of-image"),
    ],
)
def test_bad_jpeg_streams_are_refused(mangle: Callable[[bytes], bytes], message: str) -> None:
    with pytest.raises(jpeg.JpegError, match=message):
        EncodedJpeg.from_bytes(mangle(encode_jpeg(pattern(1)[0])))


def test_progressive_jpeg_is_not_passed_through() -> None:
    ok, buf = cv2.imencode(".jpg", pattern(1)[0], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    assert not jpeg.parse(buf.tobytes()).baseline
    with pytest.raises(jpeg.JpegError, match="not 8-bit baseline"):
        EncodedJpeg.from_bytes(buf.tobytes())
