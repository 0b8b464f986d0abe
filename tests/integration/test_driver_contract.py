"""Every registered driver against the same contract: opens, delivers frames
of the documented shape, closes, reopens, and reports a missing device and
bad options as DriverError naming the problem."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers import Driver, DriverError, available_drivers, create_driver, driver_class
from drivers.stream import FrameStream
from tests.support.driver_sources import write_image, write_mjpeg
from tests.support.process import require_tool
from tests.support.serial_line import SerialLine, finish


@dataclass
class Rig:
    options: dict[str, Any]
    feed: Callable[[], None]  # make one frame available (a serial transfer)
    missing: dict[str, Any]  # options naming a device that is not there
    missing_words: str
    source: str


@pytest.fixture(params=["testpattern", "file", "video", "xmodem"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    name = request.param
    if name == "testpattern":
        yield Rig(
            {"width": 96, "height": 64, "realtime": False},
            lambda: None,
            {"width": 96, "height": 64, "fps": -1},
            "fps",
            "synthetic",
        )
    elif name == "file":
        video = write_mjpeg(tmp_path / "clip.avi", 20)
        yield Rig(
            {"path": str(video), "realtime": False, "loop": True},
            lambda: None,
            {"path": str(tmp_path / "nothing.avi")},
            "does not exist",
            "file",
        )
    elif name == "video":
        video = write_mjpeg(tmp_path / "grabber.avi", 20)
        yield Rig(
            {"device": str(video)},
            lambda: None,
            {"device": "/dev/v4l/by-id/usb-no-such-grabber-video-index0"},
            "not there",
            "video",
        )
    else:
        require_tool("sx")
        image = write_image(tmp_path / "scan.png")
        senders: list[subprocess.Popen[bytes]] = []
        with SerialLine() as line:

            def feed() -> None:
                for proc in senders:
                    finish(proc)
                senders.append(line.send(["sx", "-q"], image))

            yield Rig(
                {"device": line.receiver_tty, "poke_interval": 0.3, "char_timeout": 0.3},
                feed,
                {"device": str(tmp_path / "ttyUSB9")},
                "cannot be opened",
                "digital",
            )
            for proc in senders:
                finish(proc)


def test_every_shipped_driver_is_registered() -> None:
    assert {"testpattern", "file", "video", "xmodem"} <= set(available_drivers())


def _frame_ok(driver: Driver, rig: Rig) -> int:
    rig.feed()
    frame = driver.read()
    assert frame.pixels.dtype == np.uint8
    assert frame.pixels.ndim in (2, 3)
    assert frame.pixels.ndim == 2 or frame.pixels.shape[2] == 3
    assert frame.width >= 16 and frame.height >= 16
    return frame.index


def test_open_frames_close_reopen(rig: Rig, request: pytest.FixtureRequest) -> None:
    name = request.node.callspec.params["rig"]
    driver = create_driver(name, rig.options)
    assert driver.source == rig.source
    assert not driver.is_open
    with pytest.raises(DriverError):
        driver.read()
    driver.open()
    assert driver.is_open
    first = [_frame_ok(driver, rig) for _ in range(2)]
    assert first[1] > first[0]
    driver.close()
    driver.close()  # twice is fine
    assert not driver.is_open
    with driver:
        _frame_ok(driver, rig)
    assert not driver.is_open


def test_missing_device_is_a_driver_error_naming_it(
    rig: Rig, request: pytest.FixtureRequest
) -> None:
    name = request.node.callspec.params["rig"]
    if name == "testpattern":  # no device: its option check is the error case
        with pytest.raises(DriverError, match=r"capture\.options\.fps"):
            create_driver(name, rig.missing)
        return
    driver = create_driver(name, rig.missing)
    with pytest.raises(DriverError, match=rig.missing_words):
        driver.open()
    assert not driver.is_open


def test_unknown_option_is_named(rig: Rig, request: pytest.FixtureRequest) -> None:
    name = request.node.callspec.params["rig"]
    with pytest.raises(DriverError, match=r"capture\.options\.colour: unknown key"):
        create_driver(name, {**rig.options, "colour": "blue"})


def test_runs_in_a_frame_stream(rig: Rig, request: pytest.FixtureRequest) -> None:
    name = request.node.callspec.params["rig"]
    stream = FrameStream(create_driver(name, rig.options), min_backoff=0.05).start()
    try:
        rig.feed()
        frame = stream.wait_frame(timeout=20)
        assert frame is not None
        assert stream.latest() is frame or stream.latest() is not None
        assert stream.stats().frames >= 1
    finally:
        stream.stop()
    assert not stream.driver.is_open


def test_a_stream_reports_a_missing_device_and_keeps_trying(
    rig: Rig, request: pytest.FixtureRequest
) -> None:
    name = request.node.callspec.params["rig"]
    if name == "testpattern":  # no device to miss: bad options never reach a stream
        with pytest.raises(DriverError, match="fps"):
            create_driver(name, rig.missing)
        return
    stream = FrameStream(create_driver(name, rig.missing), min_backoff=0.05, max_backoff=0.1)
    stream.start()
    try:
        deadline = time.monotonic() + 10
        while stream.stats().error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = stream.stats()
        assert stats.error is not None and rig.missing_words in stats.error
        assert not stats.connected and stats.frames == 0 and stream.alive
    finally:
        stream.stop()


def test_a_broken_plugin_is_reported_not_raised() -> None:
    with pytest.raises(DriverError, match="unknown capture driver 'nope'"):
        driver_class("nope")
