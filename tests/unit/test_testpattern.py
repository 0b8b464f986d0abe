"""The test-pattern driver behind the shared driver interface."""

from __future__ import annotations

import numpy as np
import pytest

from drivers import DriverError, available_drivers, create_driver


def test_registered_through_entry_points() -> None:
    assert "testpattern" in available_drivers()


def test_frames_have_the_configured_size_and_differ() -> None:
    driver = create_driver("testpattern", {"width": 200, "height": 100, "realtime": False})
    with driver:
        frames = list(driver.frames(3))
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.pixels.shape == (100, 200, 3) and f.pixels.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0].pixels, frames[1].pixels)


def test_reopen_continues_and_read_when_closed_is_an_error() -> None:
    driver = create_driver("testpattern", {"width": 64, "height": 48, "realtime": False})
    with pytest.raises(DriverError, match="not open"):
        driver.read()
    with driver:
        driver.read()
    with driver:
        assert driver.read().index == 1


def test_bad_options_are_named() -> None:
    with pytest.raises(DriverError, match=r"capture.options.fps: .*greater than 0"):
        create_driver("testpattern", {"fps": 0})
