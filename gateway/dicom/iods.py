"""IOD builders: each takes the modules its IOD requires, as typed arguments,
and returns a complete dataset with file meta, ready to write.

The IODs a capture box can honestly claim: Secondary Capture (single frame
and Multi-frame True Colour) for any device, Ultrasound (single frame and
multi-frame cine) for an ultrasound scanner's video output, and Video
Endoscopic / Video Photographic Image for clips from an endoscope or a camera
(`station.iod`). A clip's frames are either pixels stored as `Coding` says or
an H.264/HEVC stream (`gateway.dicom.video.EncodedVideo`), wrapped as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    VideoEndoscopicImageStorage,
    VideoPhotographicImageStorage,
)

from gateway import __version__
from gateway.dicom.modules import (
    Cine,
    Code,
    Equipment,
    ImageInfo,
    ModuleError,
    Order,
    Patient,
    Series,
    Study,
)
from gateway.dicom.pixels import (
    DEFAULT_JPEG_QUALITY,
    Encoding,
    FrameData,
    LossyHistory,
    set_pixels,
)
from gateway.dicom.video import EncodedVideo, set_video_pixels

IMPLEMENTATION_VERSION = f"EDGEGW_{__version__}"[:16]
UNICODE = "ISO_IR 192"
_TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}
# (0018,1063) Frame Time: what each multi-frame object steps through.
_FRAME_TIME_TAG = 0x00181063


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
    # Type 2C: the gateway never knows the body part or side. Empty is the
    # honest value (dciodvfy warns; absent would be an error).
    ds.Laterality = ""
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


def _dt(value: datetime) -> str:
    return value.strftime("%Y%m%d%H%M%S.%f") + _tz(value)


def _image_module(ds: Dataset, image: ImageInfo, image_type: list[str]) -> None:
    ds.ImageType = image_type
    ds.InstanceNumber = image.instance_number
    ds.PatientOrientation = ""
    ds.ContentDate = _da(image.content_time)
    ds.ContentTime = _tm(image.content_time)
    ds.AcquisitionDateTime = _dt(image.content_time)
    # Video from a device carries its on-screen text (names, dates) in the
    # pixels; de-identification must know it cannot trust the header alone.
    ds.BurnedInAnnotation = "YES"


def _order_attributes(ds: Dataset, order: Order) -> None:
    """IHE Scheduled Workflow (RAD TF-2 4.8.4.1.3): what ties the image to the
    order, so the PACS files it under the right request."""
    item = Dataset()
    item.RequestedProcedureID = order.requested_procedure_id
    if order.requested_procedure_description:
        item.RequestedProcedureDescription = order.requested_procedure_description
    item.ScheduledProcedureStepID = order.scheduled_procedure_step_id
    if order.scheduled_procedure_step_description:
        item.ScheduledProcedureStepDescription = order.scheduled_procedure_step_description
    if order.scheduled_protocol_codes:
        codes = []
        for code in order.scheduled_protocol_codes:
            codes.append(code.as_item())
        item.ScheduledProtocolCodeSequence = Sequence(codes)
    if order.accession_number:
        item.AccessionNumber = order.accession_number
    item.StudyInstanceUID = order.study_instance_uid
    ds.RequestAttributesSequence = Sequence([item])


def _sop_common(ds: Dataset, sop_class: UID, image: ImageInfo) -> None:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = image.sop_instance_uid
    ds.InstanceCreationDate = _da(image.content_time)
    ds.InstanceCreationTime = _tm(image.content_time)
    ds.TimezoneOffsetFromUTC = _tz(image.content_time)


def _text_values(ds: Dataset) -> Iterable[str]:
    for elem in ds.iterall():
        if elem.VR in _TEXT_VRS and elem.value is not None:
            values = elem.value if elem.VM > 1 else [elem.value]
            yield from (str(v) for v in values)


def _encodable(ds: Dataset, character_set: str) -> bool:
    encodings = convert_encodings([t.strip() for t in character_set.split("\\")])
    for text in _text_values(ds):
        if text.isascii():
            continue
        for enc in encodings:
            try:
                text.encode(enc)
                break
            except (UnicodeEncodeError, LookupError):
                continue
        else:
            return False
    return True


def _character_set(ds: Dataset, wanted: str) -> None:
    """The worklist's character set is kept when every value fits it; a name
    it cannot hold (a Latin-1 worklist, a Cyrillic name typed at the box)
    is written in UTF-8 rather than mangled."""
    chosen = wanted if _encodable(ds, wanted) else UNICODE
    ds.SpecificCharacterSet = chosen.split("\\") if "\\" in chosen else chosen


def _file_meta(ds: Dataset, transfer_syntax: UID) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta


@dataclass(frozen=True)
class Header:
    """The modules every image carries, each a typed value checked where it
    was made: Patient, General Study, General Series, General Equipment, the
    image's own (instance number, content time, SOP Instance UID) and, when
    the exam was scheduled, the order (IHE Scheduled Workflow)."""

    patient: Patient
    study: Study
    series: Series
    equipment: Equipment
    image: ImageInfo
    order: Order | None = None
    # Anatomic Region Sequence (VL IODs, where it is required).
    anatomic_region: Code | None = None

    def __post_init__(self) -> None:
        order = self.order
        if order is not None and order.study_instance_uid != self.study.instance_uid:
            raise ModuleError(
                "Study Instance UID: the study is not the one the order scheduled "
                f"({self.study.instance_uid} vs {order.study_instance_uid})"
            )


@dataclass(frozen=True)
class Coding:
    """How the pixels are stored, and any lossy step they went through before."""

    encoding: Encoding = "none"
    quality: int = DEFAULT_JPEG_QUALITY
    history: LossyHistory | None = None


def _dataset(sop_class: UID, header: Header, image_type: list[str]) -> Dataset:
    ds = Dataset()
    _sop_common(ds, sop_class, header.image)
    _patient_module(ds, header.patient)
    _study_module(ds, header.study)
    _series_module(ds, header.series)
    if header.order is not None:
        _order_attributes(ds, header.order)
    _equipment_module(ds, header.equipment)
    _image_module(ds, header.image, image_type)
    _character_set(ds, header.order.specific_character_set if header.order else UNICODE)
    return ds


def _cine_module(ds: Dataset, cine: Cine) -> None:
    ds.FrameTime = f"{cine.frame_time_ms:.4f}".rstrip("0").rstrip(".")[:16]
    ds.CineRate = cine.rate
    ds.RecommendedDisplayFrameRate = cine.rate
    ds.FrameIncrementPointer = _FRAME_TIME_TAG


def _finish(ds: Dataset, transfer_syntax: UID) -> Dataset:
    if "LossyImageCompression" not in ds:
        ds.LossyImageCompression = "00"
    _file_meta(ds, transfer_syntax)
    return ds


@dataclass(frozen=True)
class _Iod:
    sop_class: UID
    image_type: tuple[str, ...]
    secondary_capture: bool  # SC Equipment and SC Image modules
    colour_only: bool = False  # Multi-frame True Colour SC
    ultrasound: bool = False
    modality: str | None = None  # the one Modality the IOD allows
    acquisition_context: bool = False  # VL IODs: Acquisition Context module


_SC = _Iod(SecondaryCaptureImageStorage, ("DERIVED", "SECONDARY"), True)
_MF_SC = _Iod(
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    ("DERIVED", "SECONDARY"),
    True,
    colour_only=True,
)
_US = _Iod(UltrasoundImageStorage, ("DERIVED", "PRIMARY"), False, ultrasound=True)
_US_MF = _Iod(UltrasoundMultiFrameImageStorage, ("DERIVED", "PRIMARY"), False, ultrasound=True)
_VIDEO_ES = _Iod(
    VideoEndoscopicImageStorage,
    ("ORIGINAL", "PRIMARY"),
    False,
    colour_only=True,
    modality="ES",
    acquisition_context=True,
)
_VIDEO_XC = _Iod(
    VideoPhotographicImageStorage,
    ("ORIGINAL", "PRIMARY"),
    False,
    colour_only=True,
    modality="XC",
    acquisition_context=True,
)

Clip = Iterable[FrameData] | EncodedVideo


def _build(iod: _Iod, frames: Clip, header: Header, coding: Coding, cine: Cine | None) -> Dataset:
    if iod.ultrasound and header.series.modality != "US":
        raise ModuleError(f"Modality: {header.series.modality!r}; an Ultrasound image must be US")
    if iod.modality is not None and header.series.modality != iod.modality:
        raise ModuleError(
            f"Modality: {header.series.modality!r}; this IOD's objects must be {iod.modality}"
        )
    ds = _dataset(iod.sop_class, header, list(iod.image_type))
    if iod.secondary_capture:
        ds.ConversionType = header.image.conversion_type  # SC Equipment module
        ds.DateOfSecondaryCapture = ds.ContentDate  # SC Image module
        ds.TimeOfSecondaryCapture = ds.ContentTime
    if iod.acquisition_context:
        # Type 2: the gateway records no acquisition conditions.
        ds.AcquisitionContextSequence = Sequence([])
        region = header.anatomic_region
        if region is None:
            raise ModuleError("Anatomic Region Sequence: required for this IOD (station config)")
        ds.AnatomicRegionSequence = Sequence([region.as_item()])
        # Laterality (2C) only for a paired region; the configured one names
        # the region, and a station's single region is taken as unpaired.
        del ds.Laterality
    if cine is not None:
        _cine_module(ds, cine)
    if isinstance(frames, EncodedVideo):
        if cine is None:
            raise ModuleError("a video stream is a multi-frame object")
        return _finish(ds, set_video_pixels(ds, frames))
    ts = set_pixels(
        ds,
        frames,
        coding.encoding,
        multiframe=cine is not None,
        quality=coding.quality,
        colour_only=iod.colour_only,
        history=coding.history,
    )
    return _finish(ds, ts)


def secondary_capture(pixels: FrameData, header: Header, coding: Coding = Coding()) -> Dataset:
    """Secondary Capture Image (PS3.3 A.8.1): one 8-bit RGB or monochrome frame."""
    return _build(_SC, [pixels], header, coding, None)


def multiframe_true_color_sc(
    frames: Clip, cine: Cine, header: Header, coding: Coding = Coding()
) -> Dataset:
    """Multi-frame True Color Secondary Capture (PS3.3 A.8.5): a clip from any
    device, played back at its recorded rate. Monochrome frames become RGB,
    as the IOD is colour only."""
    return _build(_MF_SC, frames, header, coding, cine)


def ultrasound_image(pixels: FrameData, header: Header, coding: Coding = Coding()) -> Dataset:
    """Ultrasound Image (PS3.3 A.6): a still of the scanner's screen."""
    return _build(_US, [pixels], header, coding, None)


def ultrasound_multiframe(
    frames: Clip, cine: Cine, header: Header, coding: Coding = Coding()
) -> Dataset:
    """Ultrasound Multi-frame Image (PS3.3 A.7): a cine loop."""
    return _build(_US_MF, frames, header, coding, cine)


def video_endoscopic(
    frames: Clip, cine: Cine, header: Header, coding: Coding = Coding()
) -> Dataset:
    """Video Endoscopic Image (PS3.3 A.32.5): an endoscope's clip, Modality ES."""
    return _build(_VIDEO_ES, frames, header, coding, cine)


def video_photographic(
    frames: Clip, cine: Cine, header: Header, coding: Coding = Coding()
) -> Dataset:
    """Video Photographic Image (PS3.3 A.32.7): a camera's clip, Modality XC."""
    return _build(_VIDEO_XC, frames, header, coding, cine)
