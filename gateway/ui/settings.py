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
from pathlib import Path
from typing import Any

import tomli_w

from gateway.config import (
    ConfigError,
    GatewayConfig,
    _resolve_relative_paths,
    parse_config,
)
from gateway.queue.files import write_atomic
from gateway.ui.security import hash_pin

EDITABLE = ("destinations", "worklist", "capture")


class SettingsError(Exception):
    """A settings change refused, with the reason for the screen."""


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
            return parse_config(resolved, "settings")
        except ConfigError as exc:
            raise SettingsError(str(exc).replace("\n", "; ")) from None

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
