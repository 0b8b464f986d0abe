"""IOD builders: each takes the modules its IOD requires, as typed arguments,
and returns a complete dataset with file meta, ready to write."""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
import numpy.typing as npt
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, SecondaryCaptureImageStorage

from gateway import __version__
from gateway.dicom.modules import Equipment, ImageInfo, Patient, Series, Study
from gateway.dicom.pixels import Encoding, set_pixels

IMPLEMENTATION_VERSION = f"EDGEGW_{__version__}"[:16]


def _da(value: datetime) -> str:
    return value.strftime("%Y%m%d")


def _tm(value: datetime) -> str:
    return value.strftime("%H%M%S.%f")


def _tz(value: datetime) -> str:
    offset = value.strftime("%z")
    return offset or "+0000"


def _patient_module(ds: Dataset, patient: Patient) -> None:
    ds.PatientName = patient.name
    ds.PatientID = patient.id
    if patient.issuer_of_id:
        ds.IssuerOfPatientID = patient.issuer_of_id
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    ds.PatientSex = patient.sex


def _study_module(ds: Dataset, study: Study) -> None:
    ds.StudyInstanceUID = study.instance_uid
    ds.StudyDate = _da(study.started)
    ds.StudyTime = _tm(study.started)
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    if study.description:
        ds.StudyDescription = study.description


def _series_module(ds: Dataset, series: Series) -> None:
    ds.Modality = series.modality
    ds.SeriesInstanceUID = series.instance_uid
    ds.SeriesNumber = series.number
    ds.Laterality = ""  # type 2C; the gateway never knows the side
    if series.description:
        ds.SeriesDescription = series.description


def _equipment_module(ds: Dataset, equipment: Equipment) -> None:
    ds.Manufacturer = equipment.manufacturer
    ds.ManufacturerModelName = equipment.model_name
    ds.SoftwareVersions = equipment.software_versions
    if equipment.station_name:
        ds.StationName = equipment.station_name
    if equipment.institution_name:
        ds.InstitutionName = equipment.institution_name
    if equipment.device_serial_number:
        ds.DeviceSerialNumber = equipment.device_serial_number


def _image_module(ds: Dataset, image: ImageInfo) -> None:
    ds.InstanceNumber = image.instance_number
    ds.PatientOrientation = ""
    ds.ContentDate = _da(image.content_time)
    ds.ContentTime = _tm(image.content_time)
    ds.TimezoneOffsetFromUTC = _tz(image.content_time)
    ds.ImageType = ["DERIVED", "SECONDARY"]


def _sop_common(ds: Dataset, sop_class: UID, image: ImageInfo) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = image.sop_instance_uid
    ds.InstanceCreationDate = _da(image.content_time)
    ds.InstanceCreationTime = _tm(image.content_time)


def _file_meta(ds: Dataset, transfer_syntax: UID) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta


def secondary_capture(
    pixels: npt.NDArray[np.uint8],
    *,
    patient: Patient,
    study: Study,
    series: Series,
    equipment: Equipment,
    image: ImageInfo,
    encoding: Encoding = "none",
) -> Dataset:
    """Secondary Capture Image (PS3.3 A.8.1): one 8-bit RGB or monochrome frame."""
    ds = Dataset()
    _sop_common(ds, SecondaryCaptureImageStorage, image)
    _patient_module(ds, patient)
    _study_module(ds, study)
    _series_module(ds, series)
    _equipment_module(ds, equipment)
    ds.ConversionType = image.conversion_type  # SC Equipment module
    _image_module(ds, image)
    transfer_syntax = set_pixels(ds, [pixels], encoding)
    _file_meta(ds, transfer_syntax)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """The Part 10 file for a dataset built here."""
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
