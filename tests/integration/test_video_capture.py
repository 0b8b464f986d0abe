"""`dicom-gateway capture --clip SECONDS`: a clip recorded headless from the
configured driver, encoded as `capture.clip_compression` says."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import av
import pydicom
import pytest

from gateway.dicom import video
from tests.integration.test_video_objects import dciodvfy
from tests.support.gateway import Gateway, assert_one_line_error, write_config
from tests.support.process import require_tool


def config(tmp_path: Path, **capture: Any) -> Path:
    return write_config(
        tmp_path / "gateway.toml",
        {
            "station": {"modality": "US"},
            "capture": {
                "driver": "testpattern",
                "options": {"width": 640, "height": 480, "fps": 25, "realtime": True},
                **capture,
            },
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "localhost", "port": 1}],
            "queue": {"path": str(tmp_path / "queue"), "min_free_mb": 0},
        },
    )


def capture_clip(cfg: Path, seconds: str) -> dict[str, Any]:
    result = Gateway(cfg)(
        "capture",
        "--patient-id",
        "P-1",
        "--patient-name",
        "Doe^Jane",
        "--clip",
        seconds,
        "--json",
        check=True,
    )
    (item,) = json.loads(result.stdout)["captured"]
    return item  # type: ignore[no-any-return]


def test_clip_is_h264_by_default(tmp_path: Path) -> None:
    item = capture_clip(config(tmp_path), "2")
    assert item["encoder"] in ("libx264", video.HARDWARE_H264)
    path = Path(item["path"])
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame
    assert ds.file_meta.TransferSyntaxUID == video.H264_HP41
    # Two seconds at 25 frames/s, give or take the pacing of a loaded box.
    assert 40 <= ds.NumberOfFrames <= 56 and ds.NumberOfFrames == item["frames"]
    assert 35 <= float(ds.FrameTime) <= 45
    stream = b"".join(video.stream_fragments(path))
    with av.open(io.BytesIO(stream), format="h264") as container:
        assert sum(1 for _ in container.decode(video=0)) == ds.NumberOfFrames
    errors, warnings = dciodvfy(path)
    assert errors == [] and warnings == [], errors + warnings


def test_clip_as_jpeg_cine_when_configured(tmp_path: Path) -> None:
    item = capture_clip(config(tmp_path, clip_compression="jpeg-baseline"), "1")
    assert item["encoder"] == "jpeg-baseline"
    ds = pydicom.dcmread(item["path"], stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.NumberOfFrames == item["frames"] >= 20


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--clip", "0"], "--clip must be more than 0"),
        (["--clip", "1", "--frames", "2"], "not allowed with argument"),
    ],
)
def test_bad_clip_arguments_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    result = Gateway(config(tmp_path))(
        "capture", "--patient-id", "P-1", "--patient-name", "Doe^Jane", *args
    )
    assert expected in assert_one_line_error(result)


def test_a_video_clip_goes_onto_the_usb_stick(tmp_path: Path) -> None:
    """`export` carries video objects like any other: in the DICOMDIR
    (dcmdump, dciodvfy), the file itself the queued stream."""
    cfg = config(tmp_path)
    item = capture_clip(cfg, "1")
    stick = tmp_path / "usb"
    stick.mkdir()
    result = Gateway(cfg)("export", "--to", str(stick), "--pending", check=True)
    assert "exported 1 object(s)" in result.stdout
    dicomdir = stick / "DICOMDIR"
    verify = subprocess.run(
        [require_tool("dciodvfy"), str(dicomdir)], capture_output=True, text=True, timeout=60
    )
    assert "Error" not in verify.stdout + verify.stderr, verify.stdout + verify.stderr
    dump = subprocess.run([require_tool("dcmdump"), str(dicomdir)], capture_output=True, text=True)
    assert item["sop_instance_uid"] in dump.stdout
    (record,) = [
        r
        for r in pydicom.dcmread(dicomdir).DirectoryRecordSequence
        if r.DirectoryRecordType == "IMAGE"
    ]
    assert record.ReferencedTransferSyntaxUIDInFile == video.H264_HP41
    exported = pydicom.dcmread(stick.joinpath(*record.ReferencedFileID))
    assert exported.PixelData == pydicom.dcmread(item["path"]).PixelData
