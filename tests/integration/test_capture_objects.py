"""Objects made through an exam: the IOD the configuration asks for, the
order's data as IHE Scheduled Workflow wants it, names in any script,
equipment and UIDs from the configuration, clips as cine."""

from __future__ import annotations

import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest

from drivers import create_driver
from drivers.base import Frame
from gateway import __version__
from gateway.acquire.capture import Capturer
from gateway.acquire.exam import ExamService
from gateway.config import ConfigError, parse_config
from gateway.dicom.modules import Code, ModuleError, Order, Patient
from gateway.dicom.pixels import PixelError, encode_jpeg
from tests.support.process import require_tool
from tests.support.queue import new_outbox


def service(tmp_path: Path, station: dict[str, Any] | None = None, **capture: Any) -> ExamService:
    config = parse_config(
        {
            "station": {"station_name": "ROOM-1", "institution_name": "Clinic", **(station or {})},
            "capture": {
                "compression": "none",
                "clip_compression": capture.get("compression", "none"),
                **capture,
            },
            "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0},
        }
    )
    outbox = new_outbox(tmp_path / "q", ["pacs"])
    return ExamService(config, outbox, Capturer(config, outbox, "video"))


def frames(n: int, width: int = 64, height: int = 48) -> list[Frame]:
    driver = create_driver("testpattern", {"width": width, "height": height, "realtime": False})
    with driver:
        return [
            Frame(pixels=f.pixels, index=f.index, timestamp=1_700_000_000 + f.index / 25)
            for f in driver.frames(n)
        ]


def order(charset: str) -> Order:
    return Order(
        study_instance_uid="1.2.826.0.1.3680043.2.1143.77",
        accession_number="ACC-4711",
        referring_physician="Référent^Anne",
        requested_procedure_id="RP-12",
        requested_procedure_description="Échographie abdominale",
        scheduled_procedure_step_id="SPS-34",
        scheduled_procedure_step_description="Abdomen complet",
        scheduled_protocol_codes=(Code("24558-9", "LN", "US Abdomen"),),
        specific_character_set=charset,
    )


PATIENTS = {
    "ISO_IR 100": "Müller^Jörg^Søren",
    "ISO_IR 192": "Иванов^Иван=伊万诺夫^伊万",
}


@pytest.mark.parametrize("charset", list(PATIENTS))
def test_worklist_object_carries_every_swf_attribute(tmp_path: Path, charset: str) -> None:
    exams = service(tmp_path, {"modality": "US"})
    patient = Patient(
        name=PATIENTS[charset],
        id="PID-9",
        issuer_of_id="HOSP",
        birth_date=date(1961, 2, 3),
        sex="M",
    )
    exam = exams.start(patient, order(charset))
    queued = exams.capture(exam, frames(1)[0])
    ds = pydicom.dcmread(queued.path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image
    assert ds.SpecificCharacterSet == charset
    assert ds.PatientName == PATIENTS[charset]
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("PID-9", "HOSP")
    assert (ds.PatientBirthDate, ds.PatientSex) == ("19610203", "M")
    assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.2.1143.77"
    assert ds.AccessionNumber == "ACC-4711"
    assert ds.ReferringPhysicianName == "Référent^Anne"
    assert ds.StudyDescription == "Échographie abdominale"
    (item,) = ds.RequestAttributesSequence
    assert item.RequestedProcedureID == "RP-12"
    assert item.RequestedProcedureDescription == "Échographie abdominale"
    assert item.ScheduledProcedureStepID == "SPS-34"
    assert item.ScheduledProcedureStepDescription == "Abdomen complet"
    (code,) = item.ScheduledProtocolCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "24558-9",
        "LN",
        "US Abdomen",
    )
    raw = queued.path.read_bytes()
    family = PATIENTS[charset].split("^")[0]
    assert family.encode("latin-1" if charset == "ISO_IR 100" else "utf-8") in raw

    dump = subprocess.run(
        [require_tool("dcmdump"), "+U8", str(queued.path)], capture_output=True, text=True
    )
    assert dump.returncode == 0, dump.stderr
    assert f"[{PATIENTS[charset]}]" in dump.stdout
    assert "[Référent^Anne]" in dump.stdout
    check = subprocess.run(
        [require_tool("dciodvfy"), str(queued.path)], capture_output=True, text=True
    )
    assert "Error" not in check.stderr, check.stderr


def test_name_outside_the_worklist_charset_is_written_in_utf8(tmp_path: Path) -> None:
    exams = service(tmp_path)
    exam = exams.start(Patient(name="Ωμέγα^Άλφα", id="1"), order("ISO_IR 100"))
    ds = pydicom.dcmread(exams.capture(exam, frames(1)[0]).path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientName == "Ωμέγα^Άλφα"


def test_unscheduled_patient_gets_new_study_and_empty_accession(tmp_path: Path) -> None:
    exams = service(tmp_path, {"uid_root": "1.2.826.0.1.99"})
    exam = exams.start(Patient(name="Doe^John", id="7"))
    ds = pydicom.dcmread(exams.capture(exam, frames(1)[0]).path)
    assert ds.AccessionNumber == ""
    assert "RequestAttributesSequence" not in ds
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture (modality OT)
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert uid.startswith("1.2.826.0.1.99.") and len(uid) <= 64


def test_equipment_and_times_from_configuration(tmp_path: Path) -> None:
    exams = service(
        tmp_path,
        {"manufacturer": "Acme", "model_name": "Box 2", "device_serial_number": "SN-42"},
    )
    exam = exams.start(Patient(name="Doe^John", id="7"))
    ds = pydicom.dcmread(exams.capture(exam, frames(1)[0]).path)
    assert (ds.Manufacturer, ds.ManufacturerModelName, ds.DeviceSerialNumber) == (
        "Acme",
        "Box 2",
        "SN-42",
    )
    assert (ds.StationName, ds.InstitutionName) == ("ROOM-1", "Clinic")
    assert ds.SoftwareVersions == __version__
    assert ds.ConversionType == "DV"  # a video grabber
    assert (
        ds.AcquisitionDateTime[-5] in "+-"
        and ds.TimezoneOffsetFromUTC == ds.AcquisitionDateTime[-5:]
    )


def test_iod_override_and_instance_numbers_count_up(tmp_path: Path) -> None:
    exams = service(tmp_path, {"modality": "US", "iod": "secondary-capture"})
    exam = exams.start(Patient(name="Doe^John", id="7"))
    images = [exams.capture(exam, f) for f in frames(3)]
    exams.delete(exam, images[2].id)
    images.append(exams.capture(exam, frames(1)[0]))
    datasets = [pydicom.dcmread(i.path) for i in images if i.path.exists()]
    assert [d.InstanceNumber for d in datasets] == [1, 2, 4]  # never reused
    assert {d.SOPClassUID for d in datasets} == {"1.2.840.10008.5.1.4.1.1.7"}
    assert {d.Modality for d in datasets} == {"US"}
    assert {d.SeriesNumber for d in datasets} == {1}


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [("US", "1.2.840.10008.5.1.4.1.1.3.1"), ("ES", "1.2.840.10008.5.1.4.1.1.7.4")],
)
def test_clip_becomes_cine_at_the_captured_rate(
    tmp_path: Path, modality: str, sop_class: str
) -> None:
    exams = service(tmp_path, {"modality": modality}, compression="jpeg-baseline")
    exam = exams.start(Patient(name="Doe^John", id="7"), order("ISO_IR 192"))
    queued = exams.capture_clip(exam, frames(5))
    ds = pydicom.dcmread(queued.path)
    assert ds.SOPClassUID == sop_class
    assert ds.NumberOfFrames == 5
    assert float(ds.FrameTime) == pytest.approx(40.0)
    assert ds.pixel_array.shape == (5, 48, 64, 3)
    assert ds.RequestAttributesSequence[0].ScheduledProcedureStepID == "SPS-34"
    check = subprocess.run(
        [require_tool("dciodvfy"), str(queued.path)], capture_output=True, text=True
    )
    assert "Error" not in check.stderr, check.stderr


def test_mjpeg_clip_is_passed_through(tmp_path: Path) -> None:
    exams = service(tmp_path, {"modality": "US"}, compression="none")
    exam = exams.start(Patient(name="Doe^John", id="7"))
    clip = [
        Frame(pixels=f.pixels, index=f.index, timestamp=f.timestamp, jpeg=encode_jpeg(f.pixels))
        for f in frames(3)
    ]
    ds = pydicom.dcmread(exams.capture_clip(exam, clip).path)
    # The device's JPEG, not the configured "none": no second lossy generation.
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert clip[1].jpeg is not None and clip[1].jpeg in ds.PixelData


def test_clip_with_a_frame_of_the_wrong_size_queues_nothing(tmp_path: Path) -> None:
    exams = service(tmp_path, {"modality": "US"}, compression="jpeg-baseline")
    exam = exams.start(Patient(name="Doe^John", id="7"))
    clip = frames(3) + frames(1, 80, 48)
    with pytest.raises(PixelError, match="frame 3: size 80×48"):
        exams.capture_clip(exam, clip)
    assert exams.outbox.deliveries() == []
    assert list((tmp_path / "q" / "objects").iterdir()) == []


@pytest.mark.parametrize(
    ("station", "message"),
    [
        ({"modality": "ES", "iod": "ultrasound"}, "needs modality 'US'"),
        ({"uid_root": "1.02.3"}, "not dotted decimal"),
        ({"iod": "mpeg"}, "station.iod"),
    ],
)
def test_bad_station_keys_are_named(station: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"station": station})


@pytest.mark.parametrize(
    ("fields", "attribute"),
    [
        ({"study_instance_uid": ""}, "Study Instance UID"),
        ({"accession_number": "X" * 17}, "Accession Number"),
        ({"specific_character_set": "ISO_IR 999"}, "Specific Character Set"),
        ({"scheduled_procedure_step_id": "a\\b"}, "Scheduled Procedure Step ID"),
    ],
)
def test_worklist_entry_with_a_bad_or_missing_key_names_the_attribute(
    fields: dict[str, str], attribute: str
) -> None:
    values = {"study_instance_uid": "1.2.3", **fields}
    with pytest.raises(ModuleError, match=f"^{attribute}"):
        Order(**values)  # type: ignore[arg-type]


def test_device_jpeg_that_cannot_be_wrapped_is_reencoded_with_its_history(
    tmp_path: Path,
) -> None:
    import cv2

    exams = service(tmp_path, {"modality": "US"}, compression="jpeg-baseline")
    exam = exams.start(Patient(name="Doe^John", id="7"))
    frame = frames(1)[0]
    ok, buf = cv2.imencode(
        ".jpg",
        frame.pixels,
        [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
    )
    assert ok
    queued = exams.capture(exam, Frame(frame.pixels, 0, frame.timestamp, buf.tobytes()))
    ds = pydicom.dcmread(queued.path)
    assert ds.PhotometricInterpretation == "YBR_FULL_422"  # re-encoded, not 4:4:4 as sent
    assert ds.LossyImageCompressionMethod == ["ISO_10918_1", "ISO_10918_1"]
    assert len(ds.LossyImageCompressionRatio) == 2
    check = subprocess.run(
        [require_tool("dciodvfy"), str(queued.path)], capture_output=True, text=True
    )
    assert "Error" not in check.stderr, check.stderr
