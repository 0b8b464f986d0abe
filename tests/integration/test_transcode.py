"""A PACS that accepts only uncompressed transfer syntaxes (DCMTK storescp
with its defaults, like many older archives) gets every encoding we make
(none, RLE, JPEG Baseline, JPEG passthrough; single and multi-frame)
converted, keeping every UID and attribute as queued: before, a JPEG
capture failed for good with 0xA900 because the conversion gave the data set
a new SOP Instance UID, and storescp even stored it under that new UID.

Also: a conversion that would exceed the memory bound is refused before
decoding and set aside on the failed list with its reason, the queue moving
on; an object the forwarder dies on twice while converting is set aside."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from gateway.dicom import part10
from gateway.dicom.transcode import TooLarge, plan, reencode
from gateway.queue.model import DeliveryState
from gateway.queue.outbox import Outbox
from gateway.send.forwarder import Forwarder
from tests.support.dcmtk import StoreSCP
from tests.support.dicom_objects import ENCODINGS, KINDS, build, pattern
from tests.support.gateway import gateway_config, write_config
from tests.support.peers import destination
from tests.support.pki import PKI
from tests.support.process import GATEWAY, REPO
from tests.support.queue import new_outbox

# Attributes that describe the encoding, which a conversion may change.
ENCODING_ATTRS = {"PhotometricInterpretation", "PlanarConfiguration", "PixelData"}


def _queue(outbox: Outbox, ds: Dataset) -> int:
    return outbox.add(
        part10.to_parts(ds),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        study_instance_uid=str(ds.StudyInstanceUID),
    ).id


def _plain(ds: Dataset) -> dict[str, str]:
    return {e.keyword: str(e.value) for e in ds if e.keyword and e.keyword not in ENCODING_ATTRS}


def test_every_encoding_reaches_an_uncompressed_only_pacs_with_its_uids(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    storescp.start()  # its defaults: uncompressed transfer syntaxes only
    frames = pattern(3)
    queued: dict[str, Dataset] = {}
    with new_outbox(tmp_path / "queue", ["pacs"]) as outbox:
        for kind in KINDS:
            for encoding in ENCODINGS:
                ds = build(kind, encoding, frames)
                _queue(outbox, ds)
                queued[str(ds.SOPInstanceUID)] = ds
        dest = destination(pki, storescp.port)
        report = Forwarder(outbox, [dest], "EDGE1").flush(timeout=120)
        assert report.failed == 0 and report.sent == len(queued), report
    received = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in storescp.received()}
    assert set(received) == set(queued)  # never a new UID
    for uid, original in queued.items():
        path = received[uid]
        assert uid in path.name  # stored under the queued UID
        got = pydicom.dcmread(path)
        assert got.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
        assert _plain(got) == _plain(original), uid
        # Lossy history kept: a JPEG capture stays "lossy" with ratio and method.
        for keyword in (
            "LossyImageCompression",
            "LossyImageCompressionRatio",
            "LossyImageCompressionMethod",
        ):
            assert str(got.get(keyword)) == str(original.get(keyword)), (uid, keyword)
        if original.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50":
            assert got.LossyImageCompression == "01"
        # Only the encoding changed: the pixels are those pydicom decodes.
        assert np.array_equal(got.pixel_array, original.pixel_array), uid


def test_conversion_is_frame_by_frame_and_bounded_before_decoding(tmp_path: Path) -> None:
    frames = pattern(40, width=320, height=240)
    ds = build("us-multiframe", "jpeg-baseline", frames)
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    p = plan(path, "1.2.840.10008.1.2.1")
    assert p.frames == 40 and p.frame_bytes == 320 * 240 * 3
    # The bound is about one frame, not the clip: 40 frames decoded at once
    # would need 9 MiB more than this, and it is enough.
    out = reencode(path, "1.2.840.10008.1.2.1", tmp_path / "work", memory_limit=p.memory_needed)
    got = pydicom.dcmread(out)
    assert got.SOPInstanceUID == ds.SOPInstanceUID and int(got.NumberOfFrames) == 40
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    with pytest.raises(TooLarge, match=r"convert_memory_mb"):
        reencode(path, "1.2.840.10008.1.2.1", tmp_path / "work", memory_limit=p.memory_needed - 1)


def test_a_conversion_over_the_memory_bound_is_set_aside_and_the_queue_moves_on(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    storescp.start()
    frames = pattern(2)
    with new_outbox(tmp_path / "queue", ["pacs"]) as outbox:
        big = _queue(outbox, build("us-multiframe", "jpeg-baseline", frames))
        plain = _queue(outbox, build("sc", "none", frames))
        forwarder = Forwarder(
            outbox, [destination(pki, storescp.port)], "EDGE1", memory_limit=1 << 20
        )
        report = forwarder.flush(timeout=60)
        assert report.sent == 1 and report.failed == 1, report
        failed = outbox.delivery(big, "pacs")
        assert failed is not None and failed.state is DeliveryState.FAILED
        assert "MiB allowed (forwarding.convert_memory_mb)" in (failed.last_error or "")
        sent = outbox.delivery(plain, "pacs")
        assert sent is not None and sent.state is DeliveryState.SENT


def test_an_object_the_forwarder_dies_on_twice_while_converting_is_set_aside(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    """The kernel (MemoryMax=) kills the forwarder in the middle of a
    conversion: after a restart it tries once more; after the second death
    the object goes to the failed list and everything behind it is sent."""
    storescp.start()
    data = gateway_config(tmp_path, pki, storescp.port)
    data["queue"]["min_free_mb"] = 0
    config = write_config(tmp_path / "gateway.toml", data)
    queue = tmp_path / "queue"
    with new_outbox(queue, ["pacs"]) as outbox:
        cine = _queue(outbox, build("us-multiframe", "jpeg-baseline", pattern(300, 640, 480)))
        behind = [_queue(outbox, build("sc", "none", pattern(1))) for _ in range(3)]
    holder = None
    for _ in range(2):
        flush = subprocess.Popen(
            [*GATEWAY, "--config", str(config), "queue", "flush", "--timeout", "120"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _converting(queue, cine) in (None, holder):
            time.sleep(0.01)
        holder = _converting(queue, cine)
        assert holder is not None, "the conversion never started"
        flush.send_signal(signal.SIGKILL)
        flush.wait()
    with new_outbox(queue, ["pacs"]) as outbox:
        outbox.recover()  # the restart after the second death
        set_aside = outbox.delivery(cine, "pacs")
        assert set_aside is not None and set_aside.state is DeliveryState.FAILED
        assert "stopped 2 time(s) while converting" in (set_aside.last_error or "")
        report = Forwarder(outbox, [destination(pki, storescp.port)], "EDGE1").flush(60)
        assert report.sent == len(behind), report
    listed = subprocess.run(
        [*GATEWAY, "--config", str(config), "queue", "list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "while converting this object" in listed, listed


def _converting(queue: Path, object_id: int) -> str | None:
    """Who is converting the object now (its claim), or None."""
    db = sqlite3.connect(f"file:{queue / 'outbox.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute(
            "SELECT converting_since, claimed_by FROM deliveries WHERE object_id = ?",
            (object_id,),
        ).fetchone()
    finally:
        db.close()
    return None if row is None or row[0] is None else str(row[1])
