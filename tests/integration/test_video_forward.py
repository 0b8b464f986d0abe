"""The forwarder and video objects (DCMTK storescp over mutual TLS as the
PACS): the video transfer syntax is offered first and sent as it is where
accepted; a PACS without it gets multi-frame JPEG Baseline converted frame
by frame within the memory bound, same UIDs; configured not to convert, or
with no JPEG either, the object fails with the reason."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from gateway.dicom import iods, part10, video
from gateway.dicom.modules import Cine
from gateway.dicom.transcode import JPEG_BASELINE, TooLarge, plan, reencode
from gateway.queue.model import DeliveryState
from gateway.queue.outbox import Outbox
from gateway.send.forwarder import Forwarder
from tests.integration.test_video_objects import header
from tests.support.dcmtk import StoreSCP
from tests.support.dicom_objects import pattern
from tests.support.peers import destination
from tests.support.pki import PKI
from tests.support.queue import new_outbox

FRAMES = 30


@pytest.fixture(scope="module")
def clip() -> Dataset:
    stream = video.encode(pattern(FRAMES, 320, 240), 25)
    return iods.ultrasound_multiframe(stream, Cine.from_fps(25), header("US"))


def _queue(outbox: Outbox, ds: Dataset) -> int:
    return outbox.add(
        part10.to_parts(ds),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        study_instance_uid=str(ds.StudyInstanceUID),
    ).id


def _decode(ds: Dataset) -> list[np.ndarray]:  # type: ignore[type-arg]
    fragments = list(pydicom.encaps.generate_fragments(io.BytesIO(ds.PixelData)))[1:]
    with av.open(io.BytesIO(b"".join(fragments)), format="h264") as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _luma_psnr(a: np.ndarray, b: np.ndarray) -> float:  # type: ignore[type-arg]
    w = np.array([0.299, 0.587, 0.114])
    mse = float(((a.astype(float) @ w - b.astype(float) @ w) ** 2).mean())
    return 10 * float(np.log10(255**2 / mse)) if mse else float("inf")


def test_a_pacs_that_takes_h264_gets_the_stream_as_it_is(
    tmp_path: Path, pki: PKI, storescp: StoreSCP, clip: Dataset
) -> None:
    storescp.extra = ("+xn",)  # H.264 High Profile / Level 4.1 accepted
    storescp.start()
    with new_outbox(tmp_path / "queue", ["pacs"]) as outbox:
        _queue(outbox, clip)
        report = Forwarder(outbox, [destination(pki, storescp.port)], "EDGE1").flush(timeout=60)
        assert report.sent == 1 and report.failed == 0, report
    (received,) = storescp.received()
    got = pydicom.dcmread(received)
    assert got.file_meta.TransferSyntaxUID == video.H264_HP41
    assert got.SOPInstanceUID == clip.SOPInstanceUID
    assert got.PixelData == clip.PixelData  # byte for byte


def test_a_pacs_without_video_gets_jpeg_cine_converted_once(
    tmp_path: Path, pki: PKI, storescp: StoreSCP, clip: Dataset
) -> None:
    storescp.extra = ("+xy",)  # JPEG Baseline and uncompressed, no video
    storescp.start()
    with new_outbox(tmp_path / "queue", ["pacs"]) as outbox:
        _queue(outbox, clip)
        report = Forwarder(outbox, [destination(pki, storescp.port)], "EDGE1").flush(timeout=60)
        assert report.sent == 1 and report.failed == 0, report
        assert not list((tmp_path / "queue" / "convert").glob("*.tmp"))  # cleaned up
    (received,) = storescp.received()
    got = pydicom.dcmread(received)
    assert got.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert (got.SOPClassUID, got.SOPInstanceUID) == (clip.SOPClassUID, clip.SOPInstanceUID)
    assert got.PhotometricInterpretation == "YBR_FULL_422"
    assert int(got.NumberOfFrames) == FRAMES
    assert list(got.LossyImageCompressionMethod) == ["ISO_14496_10", "ISO_10918_1"]
    assert len(got.LossyImageCompressionRatio) == 2
    jpeg = got.pixel_array
    assert jpeg.shape == (FRAMES, 240, 320, 3)
    stream = _decode(clip)
    worst = min(_luma_psnr(a, b) for a, b in zip(jpeg, stream, strict=True))
    assert worst >= 35, worst  # JPEG at quality 90 of the decoded video


def test_not_converting_when_configured_so_fails_with_the_reason(
    tmp_path: Path, pki: PKI, storescp: StoreSCP, clip: Dataset
) -> None:
    storescp.extra = ("+xy",)
    storescp.start()
    with new_outbox(tmp_path / "queue", ["pacs"]) as outbox:
        obj = _queue(outbox, clip)
        forwarder = Forwarder(
            outbox, [destination(pki, storescp.port)], "EDGE1", convert_video=False
        )
        report = forwarder.flush(timeout=60)
        assert report.sent == 0 and report.failed == 1, report
        failed = outbox.delivery(obj, "pacs")
        assert failed is not None and failed.state is DeliveryState.FAILED
        assert "convert_video is off" in (failed.last_error or "")
    assert storescp.received() == []


def test_an_uncompressed_only_pacs_gets_native_frames(
    tmp_path: Path, pki: PKI, storescp: StoreSCP, clip: Dataset
) -> None:
    """storescp's defaults (Explicit/Implicit VR Little Endian only, as every
    SCP must accept): the decoded frames, written one at a time; still lossy
    with the video's ratio and method."""
    storescp.start()
    with new_outbox(tmp_path / "queue", ["pacs"]) as outbox:
        _queue(outbox, clip)
        report = Forwarder(outbox, [destination(pki, storescp.port)], "EDGE1").flush(timeout=60)
        assert report.sent == 1 and report.failed == 0, report
    (received,) = storescp.received()
    got = pydicom.dcmread(received)
    assert got.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    assert got.SOPInstanceUID == clip.SOPInstanceUID
    assert got.PhotometricInterpretation == "RGB"
    assert got.LossyImageCompression == "01"
    assert got.LossyImageCompressionMethod == "ISO_14496_10"
    native = got.pixel_array
    assert native.shape == (FRAMES, 240, 320, 3)
    assert all(np.array_equal(a, b) for a, b in zip(native, _decode(clip), strict=True))


def test_conversion_is_bounded_by_a_few_frames_not_the_clip(tmp_path: Path, clip: Dataset) -> None:
    path = tmp_path / "clip.dcm"
    path.write_bytes(part10.to_bytes(clip))
    p = plan(path, JPEG_BASELINE)
    assert p.frames == FRAMES
    # One frame, its copies and the decoder's reference frames: far below
    # what the clip decoded at once would take, and enough.
    assert p.memory_needed < FRAMES * p.frame_bytes + (16 << 20)
    out = reencode(path, JPEG_BASELINE, tmp_path / "work", memory_limit=p.memory_needed)
    assert int(pydicom.dcmread(out, stop_before_pixels=True).NumberOfFrames) == FRAMES
    with pytest.raises(TooLarge, match="convert_memory_mb"):
        reencode(path, JPEG_BASELINE, tmp_path / "work", memory_limit=p.memory_needed - 1)
