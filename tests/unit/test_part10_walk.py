"""`read_top_level_value`: one early element of a queued file (the audit's
Patient ID) read without pydicom, past undefined-length sequences, in both
Little Endian encodings; what it cannot walk it says, never guesses."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.dicom.part10 import Part10Error, read_header, read_top_level_value
from tests.support.peers import small_object

PATIENT_ID = 0x00100020


def _with_sequence(path: Path, ts: str, undefined: bool) -> Path:
    _, data = small_object()
    path.write_bytes(data)
    ds = pydicom.dcmread(path)
    inner = Dataset()
    inner.CodeValue = "X"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2", "1.2.3"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedStudySequence = Sequence([item, item])
    ds.PatientID = "PID42"
    ds.file_meta.TransferSyntaxUID = ts
    if undefined:
        ds[0x00081110].is_undefined_length = True
        for it in ds.ReferencedStudySequence:
            it.is_undefined_length_sequence_item = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True)
    return path


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("undefined", [False, True])
def test_patient_id_past_sequences(tmp_path: Path, ts: str, undefined: bool) -> None:
    path = _with_sequence(tmp_path / "a.dcm", ts, undefined)
    assert (b"\xff\xff\xff\xff" in path.read_bytes()) == undefined
    header = read_header(path)
    assert read_top_level_value(header, PATIENT_ID) == b"PID42 "
    assert read_top_level_value(header, 0x00100021) is None  # absent: None, not a guess


def test_damage_is_an_error(tmp_path: Path) -> None:
    path = _with_sequence(tmp_path / "a.dcm", ExplicitVRLittleEndian, True)
    header = read_header(path)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\xfe\xff\xdd\xe0")  # the sequence delimiter
    raw[at : at + 4] = b"\x08\x00\x30\x11"  # now the sequence never ends
    path.write_bytes(bytes(raw[: at + 64]))
    with pytest.raises(Part10Error):
        read_top_level_value(header, PATIENT_ID)


@pytest.mark.parametrize("private_bytes", [0, 3000, 9000])
def test_header_of_a_file_meta_group_of_any_length(tmp_path: Path, private_bytes: int) -> None:
    """The header is read in one go when the File Meta group is of usual size
    and at its own length when it is longer (a large Private Information)."""
    path = tmp_path / "a.dcm"
    _, data = small_object()
    path.write_bytes(data)
    ds = pydicom.dcmread(path)
    if private_bytes:
        ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
        ds.file_meta.PrivateInformation = b"P" * private_bytes
    ds.save_as(path, enforce_file_format=True)
    header = read_header(path)
    assert header.sop_instance == ds.SOPInstanceUID
    assert header.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert header.size == path.stat().st_size
    assert header.dataset_offset > 144 + private_bytes
    path.write_bytes(path.read_bytes()[: 144 + private_bytes // 2])  # cut inside the group
    with pytest.raises(Part10Error, match=r"truncated|no File Meta"):
        read_header(path)
