"""A peer that advertises an absurd maximum PDU (0, "unlimited", or 4 GB)
does not make the gateway build PDUs of that size: what is sent in one PDU
is clamped to 4 MiB (gateway.net.ul.LARGEST_PDU_SENT), and a 12 MB object
still arrives whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.dicom import part10
from gateway.net.ul import LARGEST_PDU_SENT
from gateway.send.forwarder import Forwarder
from tests.support.peers import SC, StoreSCPy, destination, mutual_tls
from tests.support.pki import PKI
from tests.support.queue import new_outbox


def _large_object() -> Dataset:
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = SC, uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SC, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.1"
    ds.PatientName, ds.PatientID, ds.Modality = "Pdu^Test", "P1", "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = 2000, 2000
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.random.default_rng(1).integers(0, 255, 12_000_000, np.uint8).tobytes()
    return ds


@pytest.mark.parametrize("advertised", [0, 0xFFFFFFFF])
def test_peer_max_pdu_is_clamped_on_send(tmp_path: Path, pki: PKI, advertised: int) -> None:
    scp = StoreSCPy(tls=mutual_tls(pki), max_pdu=advertised).start()
    try:
        ds = _large_object()
        with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
            outbox.add(
                part10.to_parts(ds),
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=SC,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                study_instance_uid="1.2.3.4",
            )
            report = Forwarder(outbox, [destination(pki, scp.port)], "EDGE1").flush(60)
        assert report.sent == 1, report
        assert scp.received == [str(ds.SOPInstanceUID)]
        assert scp.datasets[str(ds.SOPInstanceUID)].PixelData == ds.PixelData
        # The negotiated length is the PDU's variable field: all but 6 bytes.
        assert max(scp.pdu_sizes) - 6 <= LARGEST_PDU_SENT, max(scp.pdu_sizes)
        assert len(scp.pdu_sizes) >= 3  # 12 MB in PDUs of at most 4 MiB
    finally:
        scp.stop()
