"""`dicom-gateway import` of video files: an H.264/HEVC track that a DICOM
transfer syntax allows is wrapped byte for byte (compared with what `ffmpeg
-c copy -bsf:v …_mp4toannexb` extracts from the same file), anything else is
re-encoded to H.264; audio is left out and the import says so. Files are made
by the FFmpeg command-line tool (Debian's, with its own libx264/libx265)."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pydicom
import pytest

from gateway.dicom import video
from tests.integration.test_video_objects import dciodvfy
from tests.support.gateway import Gateway, write_config
from tests.support.process import require_tool

SECONDS = 2
FPS = 25


def make_video(path: Path, *args: str, audio: bool = True) -> Path:
    """testsrc2 (moving, detailed) with a sine tone, encoded as `args` say."""
    cmd = [
        require_tool("ffmpeg"),
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size=640x360:rate={FPS}:duration={SECONDS}",
    ]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={SECONDS}"]
    cmd += [*args, "-y", str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def ffmpeg_stream(path: Path, codec: str) -> bytes:
    """The reference: FFmpeg's own extraction of the elementary stream."""
    bsf = "h264_mp4toannexb" if codec == "h264" else "hevc_mp4toannexb"
    out = subprocess.run(
        [
            require_tool("ffmpeg"),
            "-loglevel",
            "error",
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-c:v",
            "copy",
            "-bsf:v",
            bsf,
            "-f",
            codec,
            "-",
        ],
        check=True,
        capture_output=True,
    )
    return out.stdout


def decoded(data: bytes | Path, fmt: str | None = None) -> list[Any]:
    source: Any = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(source, format=fmt) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def luma_psnr(a: Any, b: Any) -> float:
    weights = np.array([0.299, 0.587, 0.114])
    diff = a.astype(np.float64) @ weights - b.astype(np.float64) @ weights
    mse = float((diff**2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def dciodvfy_errors(path: Path) -> list[str]:
    errors, warnings = dciodvfy(path)
    return errors + warnings


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "gateway.toml",
        {
            "station": {
                "modality": "ES",
                "iod": "video-endoscopic",
                "anatomic_region": {"value": "69695003", "scheme": "SCT", "meaning": "Stomach"},
            },
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "localhost", "port": 1}],
            "queue": {"path": str(tmp_path / "queue"), "min_free_mb": 0},
        },
    )


def run_import(config: Path, path: Path) -> dict[str, Any]:
    result = Gateway(config)(
        "import",
        str(path),
        "--patient-id",
        "P-1",
        "--patient-name",
        "Doe^Jane",
        "--json",
        check=True,
    )
    (item,) = json.loads(result.stdout)["imported"]
    return item  # type: ignore[no-any-return]


PASSTHROUGH = [
    ("clip.mp4", "h264", ["-c:v", "libx264", "-profile:v", "high", "-pix_fmt", "yuv420p"]),
    ("clip.mov", "h264", ["-c:v", "libx264", "-profile:v", "main", "-pix_fmt", "yuv420p"]),
    ("clip.mkv", "h264", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "flac"]),
    ("clip.ts", "h264", ["-c:v", "libx264", "-pix_fmt", "yuv420p"]),
    (
        "clip-hevc.mp4",
        "hevc",
        [
            "-c:v",
            "libx265",
            "-pix_fmt",
            "yuv420p",
            "-tag:v",
            "hvc1",
            "-x265-params",
            "log-level=error",
        ],
    ),
]


@pytest.mark.parametrize(("name", "codec", "args"), PASSTHROUGH)
def test_fitting_stream_is_wrapped_byte_for_byte(
    config: Path, tmp_path: Path, name: str, codec: str, args: list[str]
) -> None:
    source = make_video(tmp_path / name, *args)
    item = run_import(config, source)
    assert "wrapped as it is" in item["note"]
    assert "1 audio track(s) left out" in item["note"]
    path = Path(item["path"])
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.1.1"  # Video Endoscopic
    assert ds.file_meta.TransferSyntaxUID == (
        video.H264_HP41 if codec == "h264" else video.HEVC_MAIN51
    )
    assert (ds.Columns, ds.Rows) == (640, 360)
    assert ds.NumberOfFrames == SECONDS * FPS
    assert float(ds.FrameTime) == 1000 / FPS
    assert ds.LossyImageCompressionMethod == video.METHODS[codec]  # type: ignore[index]

    ours = b"".join(video.stream_fragments(path))
    reference = ffmpeg_stream(source, codec)
    assert len(reference) > 1000
    # Byte for byte; a DICOM fragment has an even length, so an odd stream
    # ends in one pad byte (an Annex B trailing zero).
    assert ours == reference + b"\x00" * (len(reference) % 2)
    assert len(decoded(ours, codec)) == SECONDS * FPS
    if codec == "h264":
        assert dciodvfy_errors(path) == []


def test_other_codecs_are_reencoded_to_h264(config: Path, tmp_path: Path) -> None:
    """MPEG-4 Part 2 and High 4:4:4 H.264 fit no DICOM video syntax: decoded
    and encoded as H.264 High Profile, close to the file's own frames."""
    for name, args in (
        ("part2.mp4", ["-c:v", "mpeg4", "-q:v", "2"]),
        ("yuv444.mp4", ["-c:v", "libx264", "-pix_fmt", "yuv444p", "-qp", "0"]),
    ):
        source = make_video(tmp_path / name, *args, audio=False)
        item = run_import(config, source)
        assert "re-encoded by libx264" in item["note"], item
        assert "audio" not in item["note"]
        path = Path(item["path"])
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == video.H264_HP41
        assert ds.NumberOfFrames == SECONDS * FPS
        # The file's own lossy step is kept (ratio; MPEG-4 Part 2 has no
        # DICOM method term), then ours.
        methods = ds.LossyImageCompressionMethod
        methods = [methods] if isinstance(methods, str) else list(methods)
        assert methods[-1] == "ISO_14496_10"
        assert len(ds.LossyImageCompressionRatio) == 2
        ours = decoded(b"".join(video.stream_fragments(path)), "h264")
        theirs = decoded(source)
        assert len(ours) == len(theirs) == SECONDS * FPS
        worst = min(luma_psnr(a, b) for a, b in zip(ours, theirs, strict=True))
        assert worst >= 35, f"{name}: luma PSNR {worst:.1f} dB"
        assert dciodvfy_errors(path) == []
