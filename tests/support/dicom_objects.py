"""DICOM objects for the tests, built by the gateway's own IOD builders from
test-pattern frames: every kind (single and multi-frame, SC and US) in every
encoding the gateway makes (none, RLE, JPEG Baseline, JPEG passthrough)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from drivers import create_driver
from gateway.dicom import iods
from gateway.dicom.iods import Coding, Header
from gateway.dicom.modules import Cine, Equipment, ImageInfo, Patient, Series, Study
from gateway.dicom.pixels import EncodedJpeg, encode_jpeg

KINDS: dict[str, tuple[Callable[..., Dataset], bool, str]] = {
    "sc": (iods.secondary_capture, False, "OT"),
    "mf-true-colour-sc": (iods.multiframe_true_color_sc, True, "OT"),
    "us": (iods.ultrasound_image, False, "US"),
    "us-multiframe": (iods.ultrasound_multiframe, True, "US"),
}
ENCODINGS = ("none", "rle", "jpeg-baseline", "jpeg-passthrough")


def pattern(n: int, width: int = 96, height: int = 64) -> list[np.ndarray]:  # type: ignore[type-arg]
    driver = create_driver("testpattern", {"width": width, "height": height, "realtime": False})
    with driver:
        return [f.pixels for f in driver.frames(n)]


def build(kind: str, encoding: str, frames: list[Any], **extra: Any) -> Dataset:
    builder, multi, modality = KINDS[kind]
    source: list[Any] = (
        [EncodedJpeg.from_bytes(encode_jpeg(f)) for f in frames]
        if encoding == "jpeg-passthrough"
        else frames
    )
    header = Header(
        patient=Patient(name="Doe^Jane", id="P1", sex="F"),
        study=Study(study_id="S1", accession_number="A1"),
        series=Series(modality=modality),
        equipment=Equipment("Maker", "Model", "0.1.0", "ROOM1", "Clinic", "SN1"),
        image=ImageInfo(instance_number=1, conversion_type="DV"),
    )
    coding = Coding("none" if encoding == "jpeg-passthrough" else encoding, **extra)
    if multi:
        return builder(source, Cine.from_fps(25), header, coding)
    return builder(source[0], header, coding)
