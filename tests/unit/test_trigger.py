"""The foot-pedal trigger. A pty has no modem-status lines (TIOCMGET fails
with ENOTTY), so the port boundary is pyserial's loop://, where CTS follows
RTS and DSR follows DTR. Its limits: RI is always off and CD always on, so
those two lines are covered only by the state machine tests below."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import serial

from drivers import DriverError
from drivers.trigger import PedalTrigger, PressDetector, TriggerEvent, TriggerOptions


def test_short_press_captures_on_release_and_bounces_are_ignored() -> None:
    d = PressDetector(debounce=0.03, long_press=0.8)
    # contact bounce: a few ms of chatter, then a clean 200 ms press
    timeline = [(0.000, True), (0.004, False), (0.007, True), (0.010, True), (0.050, True)]
    timeline += [(0.200, True), (0.210, False), (0.215, True), (0.220, False), (0.260, False)]
    events = [e for t, level in timeline if (e := d.feed(level, t)) is not None]
    assert [e.action for e in events] == ["capture"]
    assert events[0].held == pytest.approx(0.203, abs=0.01)


def test_long_press_records_once_at_the_threshold_and_release_is_silent() -> None:
    d = PressDetector(debounce=0.03, long_press=0.8)
    events = [e for t in range(0, 2000, 10) if (e := d.feed(t < 1500, t / 1000)) is not None]
    assert [e.action for e in events] == ["record"]
    assert events[0].held == pytest.approx(0.8, abs=0.02)


def test_glitch_shorter_than_debounce_fires_nothing() -> None:
    d = PressDetector(debounce=0.03, long_press=0.8)
    events = [
        d.feed(level, t) for t, level in [(0.0, False), (0.1, True), (0.12, False), (0.5, False)]
    ]
    assert events == [None, None, None, None]


def _collect(trigger_line: str, toggle: str) -> list[TriggerEvent]:
    port = serial.serial_for_url("loop://", timeout=0)
    seen: list[TriggerEvent] = []
    got = threading.Event()

    def on_event(event: TriggerEvent) -> None:
        seen.append(event)
        got.set()

    options = TriggerOptions(
        device="loop://", line=trigger_line, debounce_ms=20, long_press_ms=1000, poll_ms=2,
        power_lines=False,
    )  # fmt: skip
    setattr(port, toggle, False)
    trigger = PedalTrigger(options, on_event, port=port).start()
    try:
        setattr(port, toggle, True)  # press …
        time.sleep(0.1)
        setattr(port, toggle, False)  # … and release: a short press
        assert got.wait(5), "no event for a short press"
        got.clear()
        setattr(port, toggle, True)  # hold
        assert got.wait(5), "no event for a long press"
        setattr(port, toggle, False)
        time.sleep(0.1)
    finally:
        trigger.stop()
    port.close()
    return seen


@pytest.mark.parametrize(("line", "toggle"), [("cts", "rts"), ("dsr", "dtr")])
def test_pedal_on_a_port_fires_capture_then_record(line: str, toggle: str) -> None:
    events = _collect(line, toggle)
    assert [e.action for e in events] == ["capture", "record"]


def test_port_without_the_line_is_a_clear_error(tmp_path: object) -> None:
    trigger = PedalTrigger.from_options({"device": "/dev/ttyUSB-no-pedal"}, lambda e: None)
    with pytest.raises(DriverError, match="trigger port /dev/ttyUSB-no-pedal cannot be opened"):
        trigger.open()


def test_trigger_options_are_validated() -> None:
    with pytest.raises(DriverError, match=r"trigger\.line"):
        PedalTrigger.from_options({"device": "loop://", "line": "dcd"}, lambda e: None)


def test_pedal_takes_a_still_from_a_running_video_stream(tmp_path: Path) -> None:
    """The trigger beside the video driver: a press picks the latest frame."""
    from drivers import create_driver
    from drivers.stream import FrameStream
    from tests.support.driver_sources import write_mjpeg

    video = write_mjpeg(tmp_path / "grabber.avi", 60)
    stream = FrameStream(create_driver("file", {"path": str(video), "loop": True})).start()
    port = serial.serial_for_url("loop://", timeout=0)
    port.rts = False
    stills = []
    done = threading.Event()

    def on_event(event: TriggerEvent) -> None:
        if event.action == "capture":
            stills.append(stream.latest())
            done.set()

    options = TriggerOptions(device="loop://", debounce_ms=10, poll_ms=2, power_lines=False)
    trigger = PedalTrigger(options, on_event, port=port).start()
    try:
        assert stream.wait_frame(timeout=10) is not None
        port.rts = True
        time.sleep(0.05)
        port.rts = False
        assert done.wait(5)
    finally:
        trigger.stop()
        stream.stop()
    assert stills and stills[0] is not None and stills[0].jpeg is not None
