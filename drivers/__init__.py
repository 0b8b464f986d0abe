"""Capture drivers: each yields frames and knows nothing of DICOM, queues or networks."""

from drivers.base import (
    Driver,
    DriverError,
    DriverOptions,
    EndOfStream,
    Frame,
    FrameRejected,
    SourceKind,
)
from drivers.registry import available_drivers, create_driver, driver_class

__all__ = [
    "Driver",
    "DriverError",
    "DriverOptions",
    "EndOfStream",
    "Frame",
    "FrameRejected",
    "SourceKind",
    "available_drivers",
    "create_driver",
    "driver_class",
]
