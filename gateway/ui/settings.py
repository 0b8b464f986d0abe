"""Settings edited on the touchscreen, written back to the TOML file.

A change is checked by the same configuration model `config check` uses, on
the whole file as it would be after the change, and written with
`write_atomic` (a power cut mid-save leaves the old file, never half a file).
Only the sections the screen edits are replaced; everything else in the file
(comments aside) is kept as it was.
"""

from __future__ import annotations

import copy
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from gateway.config import (
    GatewayConfig,
    _resolve_relative_paths,
)
from gateway.queue.files import write_atomic
from gateway.ui.security import hash_pin

EDITABLE = ("destinations", "worklist", "capture")


class SettingsError(Exception):
    """A settings change refused, with the reason for the screen; `fields`
    maps each bad field ("destinations.0.port") to its message in words."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields


LABELS = {
    "name": "Name",
    "ae_title": "AE title",
    "host": "Host",
    "port": "Port",
    "ca": "CA file",
    "cert": "Certificate file",
    "key": "Key file",
    "driver": "Driver",
    "compression": "Compression",
    "url": "URL",
    "storage_commitment": "Storage commitment",
}
SECTIONS = {"destinations": "Destination", "worklist": "Worklist server", "capture": "Capture"}


def _label(path: list[str]) -> str:
    return LABELS.get(path[-1], path[-1].replace("_", " ").capitalize()) if path else "Settings"


_NUMBER = ("int_parsing", "int_type", "int_from_float")
_WORDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("missing", "string_too_short"), "{label} is needed"),
    (("extra_forbidden",), "{label}: not a setting this gateway knows"),
    (("less_than_equal",), "{label} must be at most {le}"),
    (("greater_than_equal",), "{label} must be at least {ge}"),
    (_NUMBER, "{label} must be a whole number"),
    (("float_parsing", "float_type"), "{label} must be a number"),
    (("literal_error",), "{label} must be {expected}"),
    (("string_too_long",), "{label} is too long (at most {max_length} characters)"),
)


def field_message(path: list[str], err: Mapping[str, Any]) -> str:
    """One problem as the settings screen says it: "Port must be 1–65535"."""
    kind, ctx = str(err["type"]), err.get("ctx") or {}
    label = _label(path)
    if path and path[-1] == "port" and kind in ("greater_than_equal", "less_than_equal", *_NUMBER):
        return "Port must be 1–65535"
    for kinds, words in _WORDS:
        if kind in kinds:
            return words.format(**{"expected": "one of the choices", **ctx, "label": label})
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{label}: {msg}" if path else msg


def settings_problems(exc: ValidationError) -> tuple[str, dict[str, str]]:
    """The top line and field → message for every problem."""
    fields: dict[str, str] = {}
    lines: list[str] = []
    for err in exc.errors():
        path = [
            str(p)
            for p in err["loc"]
            if not (isinstance(p, str) and (p.startswith("function-") or p in ("dimse", "stow-rs")))
        ]
        message = field_message(path, err)
        key = ".".join(path)
        fields.setdefault(key, message)
        where = ""
        if path and path[0] in SECTIONS:
            where = SECTIONS[path[0]]
            if len(path) > 1 and path[1].isdigit():
                where += f" {int(path[1]) + 1}"
            where += " — "
        lines.append(where + message)
    return "; ".join(lines[:3]), fields


class SettingsStore:
    def __init__(self, path: Path | None, config: GatewayConfig) -> None:
        self.path = path
        self.config = config
        self._lock = threading.Lock()

    def _raw(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            return tomllib.loads(self.path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"{self.path}: cannot read: {exc}") from None

    def _validate(self, raw: dict[str, Any]) -> GatewayConfig:
        resolved = copy.deepcopy(raw)
        if self.path is not None:
            _resolve_relative_paths(resolved, self.path.parent)
        try:
            return GatewayConfig.model_validate(resolved)
        except ValidationError as exc:
            message, fields = settings_problems(exc)
            raise SettingsError(message, fields) from None

    def _write(self, raw: dict[str, Any]) -> None:
        if self.path is None:
            raise SettingsError(
                "no configuration file to save to; start the gateway with --config PATH"
            )
        try:
            write_atomic(self.path, tomli_w.dumps(raw).encode("utf-8"))
        except OSError as exc:
            raise SettingsError(f"{self.path}: cannot save: {exc.strerror}") from None

    def view(self) -> dict[str, Any]:
        """What the settings screen shows (paths as written in the file)."""
        raw = self._raw()
        config = self.config
        return {
            "station": {"ae_title": config.station.ae_title},
            "destinations": raw.get(
                "destinations",
                [d.model_dump(mode="json", exclude_none=True) for d in config.destinations],
            ),
            "worklist": raw.get(
                "worklist",
                config.worklist.model_dump(mode="json", exclude_none=True)
                if config.worklist
                else None,
            ),
            "capture": raw.get("capture", config.capture.model_dump(mode="json")),
            "config_file": str(self.path) if self.path else None,
            "pin_set": bool(config.ui.pin_hash),
        }

    def update(self, changes: dict[str, Any]) -> GatewayConfig:
        unknown = sorted(set(changes) - set(EDITABLE))
        if unknown:
            raise SettingsError(f"cannot change {', '.join(unknown)} here")
        with self._lock:
            raw = self._raw()
            for key in EDITABLE:
                if key in changes:
                    if changes[key] is None:
                        raw.pop(key, None)
                    else:
                        raw[key] = changes[key]
            config = self._validate(raw)
            self._write(raw)
            self.config = config
            return config

    def set_pin(self, pin: str) -> GatewayConfig:
        with self._lock:
            raw = self._raw()
            ui = raw.setdefault("ui", {})
            if not isinstance(ui, dict):
                raise SettingsError("the [ui] section of the configuration is not a table")
            ui["pin_hash"] = hash_pin(pin)
            config = self._validate(raw)
            self._write(raw)
            self.config = config
            return config
