"""The C-FIND response parser: the one element walker
(gateway/dicom/rawdata.py) and the worklist entry built from it
(gateway/ris/mwl.py), on what a broken or hostile RIS might send. Property:
the walker raises only RawDataError; `parse_entry` never raises (problems
become warnings) and every UID it keeps passes the one UID check."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from gateway.dicom.part10 import encode_dataset
from gateway.dicom.rawdata import RawDataError, read_dataset
from gateway.dicom.uids import check_uid
from gateway.ris.mwl import parse_entry
from tests.fuzz.conftest import executed
from tests.fuzz.test_fuzz_pdu import mutated

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def _entry() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "Doe^Jane",
        "P1",
        "19800101",
        "F",
    )
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.AccessionNumber, ds.RequestedProcedureID = "A1", "RP1"
    step = Dataset()
    step.Modality, step.ScheduledStationAETitle = "US", "EDGE1"
    step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime = "20260101", "0930"
    step.ScheduledProcedureStepID, step.ScheduledProcedureStepDescription = "S1", "Abdomen"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "X1", "99LOCAL", "Scan"
    step.ScheduledProtocolCodeSequence = [code]
    ds.ScheduledProcedureStepSequence = [step]
    return ds


SEED_EXPLICIT = encode_dataset(_entry(), EXPLICIT)
SEED_IMPLICIT = encode_dataset(_entry(), IMPLICIT)

# Elements with tags from the worklist's own keys and VRs that may lie.
TAGS = [
    0x00080005,
    0x00100010,
    0x00100020,
    0x00100030,
    0x0020000D,
    0x00400100,
    0x00400009,
    0x00400002,
]
elements = st.builds(
    lambda tag, vr, value, lie: (
        struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        + vr
        + struct.pack("<H", (len(value) + lie) & 0xFFFF)
        + value
    ),
    st.sampled_from(TAGS),
    st.sampled_from([b"PN", b"LO", b"UI", b"DA", b"CS", b"SQ", b"UN", b"\x00\x00"]),
    st.binary(max_size=70),
    st.sampled_from([0, 0, 1, -1, 0x100]),
)


@given(
    st.one_of(
        st.binary(max_size=500),
        mutated(SEED_EXPLICIT),
        mutated(SEED_IMPLICIT),
        st.lists(elements, max_size=10).map(b"".join),
    ),
    st.booleans(),
)
def test_worklist_response_parser(data: bytes, explicit: bool) -> None:
    executed("rawdata.read_dataset + mwl.parse_entry")
    try:
        response = read_dataset(data, explicit)
    except RawDataError:
        return
    entry = parse_entry(response)
    check_uid(entry.order.study_instance_uid, "Study Instance UID")
