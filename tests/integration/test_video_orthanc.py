"""Video objects into a real archive: Orthanc (Debian's package, with its
DICOMweb plugin) behind nginx over mutual TLS, the same archive as
test_stow.py. Every video IOD × codec is accepted through the queue and
served back over WADO-RS byte for byte."""

from __future__ import annotations

from pathlib import Path

from gateway.dicom import part10, video
from gateway.dicom.modules import Cine
from gateway.queue.model import QueuedObject
from tests.integration.test_stow import (  # the archive and its helpers, not its tests
    Archive,
    archive,
    assert_equal_over_wado,
    forwarder,
    states,
    stow,
)
from tests.integration.test_video_objects import KINDS, header
from tests.support.dicom_objects import pattern
from tests.support.pki import PKI
from tests.support.queue import new_outbox

__all__ = ["archive"]  # the module-scoped fixture, used by name


def test_every_video_object_is_stored_and_served_back_identical(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    frames = pattern(20, 320, 240)
    with new_outbox(tmp_path / "queue", ["cloud"]) as outbox:
        objects: list[QueuedObject] = []
        for codec in ("h264", "hevc"):
            stream = video.encode(frames, 25, codec)  # type: ignore[arg-type]
            for builder, modality in KINDS.values():
                ds = builder(stream, Cine.from_fps(25), header(modality))
                objects.append(
                    outbox.add(
                        part10.to_parts(ds),
                        sop_instance_uid=str(ds.SOPInstanceUID),
                        sop_class_uid=str(ds.SOPClassUID),
                        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                        study_instance_uid=str(ds.StudyInstanceUID),
                    )
                )
        report = forwarder(outbox, stow(archive, pki)).flush(timeout=120)
        assert report.sent == len(objects) and report.failed == 0, (report, states(outbox))
        assert all(archive.orthanc.has(o.sop_instance_uid) for o in objects)
        assert_equal_over_wado(archive, objects)
    assert {o.transfer_syntax_uid for o in objects} == {video.H264_HP41, video.HEVC_MAIN51}
    assert len(objects) == 2 * len(KINDS)
