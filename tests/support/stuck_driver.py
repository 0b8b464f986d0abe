"""A test-only capture driver: the test pattern, until a named file appears;
then `read` blocks (bounded) as a wedged USB grabber would, so the service's
capture loop stops beating. Registered through a dist-info directory the
test puts on PYTHONPATH, exactly as a third-party driver package would be."""

from __future__ import annotations

import time
from pathlib import Path

from drivers.base import DriverOptions, Frame
from drivers.testpattern import TestPatternDriver, TestPatternOptions

STUCK_FOR = 60.0


class StuckOptions(TestPatternOptions):
    stick_file: str


class StuckDriver(TestPatternDriver):
    name = "stuck"
    Options = StuckOptions

    def __init__(self, options: DriverOptions) -> None:
        assert isinstance(options, StuckOptions)
        super().__init__(options)
        self.stick_file = Path(options.stick_file)

    def read(self) -> Frame:
        deadline = time.monotonic() + STUCK_FOR
        while self.stick_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.02)
        return super().read()


def register(directory: Path) -> Path:
    """Write the entry-point metadata; put `directory` on PYTHONPATH."""
    info = directory / "stuck_driver-0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stuck-driver\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        "[dicom_gateway.drivers]\nstuck = tests.support.stuck_driver:StuckDriver\n"
    )
    return directory
