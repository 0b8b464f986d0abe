"""`dicom-gateway import`: files in, valid objects queued; bad files get one
line naming them, and nothing is queued."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from gateway.app.cli import main
from tests.support.gateway import Gateway, assert_one_line_error, queue_rows, write_config
from tests.support.process import GATEWAY, REPO, require_tool


def _image(seed: int = 1) -> np.ndarray:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    image = np.zeros((96, 128, 3), np.uint8)
    image[:, :64] = (200, 30, 30)
    image[20:70, 30:100] = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    return image


def _video(path: Path, fourcc: str, sizes: list[tuple[int, int]] | None = None) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (128, 96))
    for i in range(8):
        writer.write(np.full((96, 128, 3), i * 25, np.uint8))
    writer.release()
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    image = _image()
    out = {}
    for name in ("photo.jpg", "scan.png", "old.bmp", "page.tif"):
        cv2.imwrite(str(d / name), image if name != "old.bmp" else image[:, :, 1])
        out[name] = d / name
    out["loop.avi"] = _video(d / "loop.avi", "MJPG")
    out["loop.mp4"] = _video(d / "loop.mp4", "mp4v")
    return out


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "gateway.toml",
        {
            "station": {"modality": "US"},
            "capture": {"compression": "rle", "clip_compression": "rle"},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "localhost", "port": 1}],
            "queue": {"path": str(tmp_path / "queue"), "min_free_mb": 0},
        },
    )


def test_import_wraps_every_supported_file(
    files: dict[str, Path], config: Path, tmp_path: Path
) -> None:
    gateway = Gateway(config)
    names = list(files)
    result = gateway(
        "import",
        *[str(files[n]) for n in names],
        "--patient-id",
        "P-1",
        "--patient-name",
        "Nguyễn^Văn",
        "--json",
        check=True,
    )
    imported = json.loads(result.stdout)["imported"]
    assert [Path(i["source"]).name for i in imported] == names
    assert "\r" not in result.stderr  # no progress bar when not on a terminal
    for item in imported:
        path = Path(item["path"])
        ds = pydicom.dcmread(path)
        assert ds.PatientName == "Nguyễn^Văn"
        assert "ConversionType" not in ds  # Ultrasound: no SC Equipment module
        is_video = item["source"].endswith((".avi", ".mp4"))
        assert ds.SOPClassUID == (
            "1.2.840.10008.5.1.4.1.1.3.1" if is_video else "1.2.840.10008.5.1.4.1.1.6.1"
        )
        if is_video:
            assert ds.NumberOfFrames == 8 and float(ds.FrameTime) == 40.0
            # MJPEG frames are wrapped as they are; MPEG-4 is decoded and stored as configured.
            assert ds.file_meta.TransferSyntaxUID == (
                "1.2.840.10008.1.2.4.50"
                if item["source"].endswith(".avi")
                else "1.2.840.10008.1.2.5"
            )
            assert [round(float(v)) for v in ds.pixel_array[:, 50, 10, 0]] == pytest.approx(
                [i * 25 for i in range(8)], abs=6
            )
        pixels = ds.pixel_array
        if item["source"].endswith((".png", ".tif")):
            # Lossless in, lossless out (the file holds BGR as OpenCV wrote it).
            assert np.array_equal(pixels, _image()[..., ::-1])
        check = subprocess.run(
            [require_tool("dciodvfy"), str(path)], capture_output=True, text=True
        )
        assert "Error" not in check.stderr, (item["source"], check.stderr)
    # The JPEG file is wrapped byte for byte, not re-encoded.
    jpeg_obj = pydicom.dcmread(imported[0]["path"])
    assert jpeg_obj.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert files["photo.jpg"].read_bytes() in jpeg_obj.PixelData
    assert len(queue_rows(config)) == len(names)
    # Decoded from a lossy video, stored losslessly: still says it was lossy.
    mp4 = pydicom.dcmread(imported[names.index("loop.mp4")]["path"])
    assert mp4.LossyImageCompression == "01"
    png = pydicom.dcmread(imported[names.index("scan.png")]["path"])
    assert png.LossyImageCompression == "00"


@pytest.mark.parametrize(
    "params",
    [
        [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
        [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
    ],
    ids=["4:4:4", "progressive"],
)
def test_jpeg_that_cannot_be_wrapped_is_decoded_and_marked_lossy(
    params: list[int], config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "odd.jpg"
    cv2.imwrite(str(path), _image(), [cv2.IMWRITE_JPEG_QUALITY, 95, *params])
    status = main(
        [
            "--config",
            str(config),
            "import",
            str(path),
            "--patient-id",
            "1",
            "--patient-name",
            "A^B",
            "--json",
        ]
    )
    assert status == 0
    (item,) = json.loads(capsys.readouterr().out)["imported"]
    ds = pydicom.dcmread(item["path"])
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"  # RLE, as configured
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    check = subprocess.run([require_tool("dciodvfy"), item["path"]], capture_output=True, text=True)
    assert "Error" not in check.stderr, check.stderr


def test_progress_bar_on_a_terminal(files: dict[str, Path], config: Path) -> None:
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [
                *GATEWAY,
                "--config",
                str(config),
                "import",
                str(files["photo.jpg"]),
                str(files["scan.png"]),
                "--patient-id",
                "1",
                "--patient-name",
                "A^B",
            ],
            stdout=subprocess.DEVNULL,
            stderr=slave,
            cwd=REPO,
            timeout=60,
        )
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"\rimport [" in seen and b"2/2" in seen


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "empty": ("photo.jpg", lambda p: p.write_bytes(b""), "empty file"),
    "truncated-jpeg": ("photo.jpg", _truncate, "truncated JPEG"),
    "truncated-png": ("scan.png", _truncate, "damaged or truncated"),
    "corrupt-jpeg": (
        "photo.jpg",
        lambda p: p.write_bytes(b"\xff\xd8\xff" + b"\x00" * 999),
        "corrupt",
    ),
    "corrupt-video": ("loop.avi", lambda p: p.write_bytes(p.read_bytes()[:200]), "video"),
    "unsupported": (
        "photo.jpg",
        lambda p: p.write_bytes(b"GIF89a" + b"\x00" * 100),
        "unsupported file type",
    ),
    "missing": ("photo.jpg", lambda p: p.unlink(), "no such file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_is_named_and_nothing_is_queued(
    case: str,
    files: dict[str, Path],
    config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, damage, message = BAD[case]
    damage(files[name])
    # A good file first: the bad one must stop the import before anything is queued.
    status = main(
        [
            "--config",
            str(config),
            "import",
            str(files["old.bmp"]),
            str(files[name]),
            "--patient-id",
            "1",
            "--patient-name",
            "A^B",
        ]
    )
    err = capsys.readouterr().err
    result = subprocess.CompletedProcess([], status, "", err)
    line = assert_one_line_error(result)
    assert str(files[name]) in line and message in line, line
    queue = tmp_queue(config)
    assert list(queue.glob("*.dcm")) == [] and list(queue.glob("*.tmp")) == []


def tmp_queue(config: Path) -> Path:
    return config.parent / "queue" / "objects"


def test_import_needs_a_patient(
    files: dict[str, Path], config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--config", str(config), "import", str(files["photo.jpg"])])
    assert status == 2
    assert "--patient-id and --patient-name" in capsys.readouterr().err
