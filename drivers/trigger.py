"""A foot pedal or freeze button wired to a serial port's modem-status line
(CTS, DSR, RI or CD): short press → "capture", long press → "record".

The line is polled (pyserial offers no portable wait for a modem-status
change); contacts bounce, so a level counts only once it has held for
`debounce_ms`. The press logic is a pure state machine (`PressDetector`) fed
with (level, time), separate from the port, so it is exact to test. The
trigger runs on its own thread beside any capture driver and calls back:

    trigger = PedalTrigger.from_options({"device": "/dev/ttyUSB1", "line": "cts"},
                                        on_event=lambda e: ...)
    trigger.start() … trigger.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import serial
from pydantic import Field, ValidationError

from drivers.base import DriverError, DriverOptions

log = logging.getLogger(__name__)

Action = Literal["capture", "record"]
Line = Literal["cts", "dsr", "ri", "cd"]


class TriggerOptions(DriverOptions):
    device: str = Field(min_length=1)  # a path or pyserial URL
    line: Line = "cts"
    # A pedal that opens the circuit when pressed reads inverted.
    active_low: bool = False
    debounce_ms: int = Field(default=30, ge=0, le=1000)
    long_press_ms: int = Field(default=800, ge=100, le=10_000)
    poll_ms: int = Field(default=5, ge=1, le=100)
    # Modem-status lines float unless the port drives a pull-up: RTS and DTR
    # raised give the pedal something to switch.
    power_lines: bool = True


@dataclass(frozen=True)
class TriggerEvent:
    action: Action
    at: float  # time.monotonic() of the press
    held: float  # seconds the pedal was down when the event fired


class PressDetector:
    """Debounced press classification: a short press fires "capture" on
    release; holding past `long_press` fires "record" once, at the
    threshold (the technician hears/sees recording start while still
    pressing), and its release fires nothing."""

    def __init__(self, debounce: float, long_press: float) -> None:
        self.debounce = debounce
        self.long_press = long_press
        self.pressed = False  # the debounced state
        self._raw = False
        self._raw_since = 0.0
        self._pressed_at = 0.0
        self._long_fired = False

    def feed(self, level: bool, now: float) -> TriggerEvent | None:
        if level != self._raw:
            self._raw, self._raw_since = level, now
        event: TriggerEvent | None = None
        if self._raw != self.pressed and now - self._raw_since >= self.debounce:
            self.pressed = self._raw
            if self.pressed:
                self._pressed_at, self._long_fired = self._raw_since, False
            elif not self._long_fired:
                event = TriggerEvent(
                    "capture", self._pressed_at, self._raw_since - self._pressed_at
                )
        if self.pressed and not self._long_fired and now - self._pressed_at >= self.long_press:
            self._long_fired = True
            event = TriggerEvent("record", self._pressed_at, now - self._pressed_at)
        return event


def _read_line(port: serial.SerialBase, line: Line) -> bool:
    return bool(getattr(port, line))


class PedalTrigger:
    def __init__(
        self,
        options: TriggerOptions,
        on_event: Callable[[TriggerEvent], None],
        port: serial.SerialBase | None = None,
    ) -> None:
        """`port`: an already open port (one shared with other use, or a test
        double such as pyserial's loop://); else `options.device` is opened."""
        self.options = options
        self.on_event = on_event
        self._given_port = port
        self._port: serial.SerialBase | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.events = 0

    @classmethod
    def from_options(
        cls, raw: dict[str, Any], on_event: Callable[[TriggerEvent], None]
    ) -> PedalTrigger:
        try:
            options = TriggerOptions.model_validate(raw)
        except ValidationError as exc:
            problems = [
                f"trigger.{'.'.join(str(p) for p in e['loc']) or '(options)'}: "
                + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
                for e in exc.errors()
            ]
            raise DriverError("; ".join(problems)) from None
        return cls(options, on_event)

    def open(self) -> None:
        if self._port is not None:
            return
        if self._given_port is not None:
            port = self._given_port
        else:
            try:
                port = serial.serial_for_url(self.options.device, timeout=0)
            except (serial.SerialException, ValueError, OSError) as exc:
                raise DriverError(
                    f"trigger port {self.options.device} cannot be opened: {exc}"
                ) from None
        if self.options.power_lines:
            port.rts = True
            port.dtr = True
        try:
            _read_line(port, self.options.line)
        except (serial.SerialException, OSError) as exc:
            if port is not self._given_port:
                port.close()
            raise DriverError(
                f"trigger port {self.options.device} has no {self.options.line.upper()} "
                f"line to read ({exc})"
            ) from None
        self._port = port

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None and port is not self._given_port:
            port.close()

    def start(self) -> PedalTrigger:
        self.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pedal-trigger", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def _run(self) -> None:
        o = self.options
        detector = PressDetector(o.debounce_ms / 1000, o.long_press_ms / 1000)
        interval = o.poll_ms / 1000
        backoff = 1.0
        while not self._stop.is_set():
            try:
                if self._port is None:
                    self.open()
                    log.info("trigger port %s is back", o.device)
                    self.error, backoff = None, 1.0
                assert self._port is not None
                level = _read_line(self._port, o.line) != o.active_low
            except (DriverError, serial.SerialException, OSError) as exc:
                if self.error is None:
                    log.warning("trigger port %s: %s; retrying", o.device, exc)
                self.error = str(exc)
                self.close()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            event = detector.feed(level, time.monotonic())
            if event is not None:
                self.events += 1
                try:
                    self.on_event(event)
                except Exception:  # a failing handler must not silence the pedal
                    log.exception("trigger handler failed for %s", event.action)
            self._stop.wait(interval)
