"""Drivers are found through the `dicom_gateway.drivers` entry-point group, so a
third party adds one by installing a package, without touching `gateway/`."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from drivers.base import Driver, DriverError, DriverOptions

ENTRY_POINT_GROUP = "dicom_gateway.drivers"


def available_drivers() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def driver_class(name: str) -> type[Driver]:
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        known = ", ".join(available_drivers()) or "none installed"
        raise DriverError(f"unknown capture driver {name!r} (available: {known})")
    try:
        cls = matches[0].load()
    except Exception as exc:  # a broken plug-in must not take the gateway down
        raise DriverError(f"capture driver {name!r} failed to load: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise DriverError(f"capture driver {name!r} is not a Driver class")
    return cls


def parse_options(cls: type[Driver], raw: dict[str, Any]) -> DriverOptions:
    try:
        return cls.Options.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(options)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"capture.options.{key}: {msg}")
        raise DriverError("; ".join(problems)) from None


def create_driver(name: str, raw_options: dict[str, Any]) -> Driver:
    return driver_class(name).from_options(raw_options)
