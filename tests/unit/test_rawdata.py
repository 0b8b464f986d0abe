"""The raw data set reader against pydicom's writer: every element comes back
byte for byte, in both Little Endian syntaxes, with sequences of defined and
undefined length; malformed bytes raise RawDataError, never anything else."""

from __future__ import annotations

import contextlib
import random

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from gateway.dicom.rawdata import RawDataError, RawItem, read_dataset


def _response() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen=ミュラー"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3.4"
    step = Dataset()
    step.Modality = "US"
    step.ScheduledProcedureStepStartDate = "20261123"
    code = Dataset()
    code.CodeValue = "P1"
    code.CodeMeaning = "Abdomen"
    step.ScheduledProtocolCodeSequence = Sequence([code, Dataset()])
    ds.ScheduledProcedureStepSequence = Sequence([step])
    ds.add_new(0x00291010, "OB", b"\x01\x02")  # a private element is kept as bytes
    return ds


def _encode(ds: Dataset, implicit: bool, undefined_lengths: bool) -> bytes:
    if undefined_lengths:
        for elem in ds.iterall():
            if elem.VR == "SQ":
                elem.is_undefined_length = True
                for item in elem.value:
                    item.is_undefined_length_sequence_item = True
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = implicit
    write_dataset(out, ds)
    return out.getvalue()


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
def test_round_trip(implicit: bool, undefined: bool) -> None:
    data = _encode(_response(), implicit, undefined)
    item = read_dataset(data, explicit_vr=not implicit)
    assert item[0x00100010] == "Müller^Jürgen=ミュラー".encode()  # even length, as written
    assert item[0x00100020] == b"P1"
    assert item[0x0020000D] == b"1.2.3.4\x00"
    steps = item[0x00400100]
    assert isinstance(steps, list) and len(steps) == 1
    step = steps[0]
    assert step[0x00080060] == b"US"
    codes = step[0x00400008]
    assert isinstance(codes, list) and len(codes) == 2
    assert codes[0][0x00080100] == b"P1" and codes[1] == {}
    assert item[0x00291010] == b"\x01\x02"


def test_cut_and_corrupted_data_raise_only_rawdataerror() -> None:
    data = _encode(_response(), implicit=False, undefined_lengths=True)
    for end in range(1, len(data)):
        with contextlib.suppress(RawDataError):
            read_dataset(data[:end])
    rng = random.Random(7)
    for _ in range(2000):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        with contextlib.suppress(RawDataError):
            read_dataset(bytes(bad))
    with pytest.raises(RawDataError, match="no sequence delimiter"):
        read_dataset(data[: data.rindex(b"\xfe\xff\xdd\xe0")])


def test_nesting_is_bounded() -> None:
    item: RawItem = {}
    ds = Dataset()
    inner = ds
    for _ in range(40):
        nested = Dataset()
        inner.ScheduledProcedureStepSequence = Sequence([nested])
        inner = nested
    with pytest.raises(RawDataError, match="nested too deeply"):
        item = read_dataset(_encode(ds, implicit=False, undefined_lengths=False))
    assert item == {}
