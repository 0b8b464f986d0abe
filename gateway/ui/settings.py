"""Settings edited on the touchscreen, and the PIN.

A change is checked by the same configuration model `config check` uses, on
the whole configuration as it would be after the change, and written with
`write_atomic` (a power cut mid-save leaves the old file, never half a file).
Only the sections the screen edits are replaced.

Where they go: on the installed appliance /etc is read-only to the service
(`ProtectSystem=strict`), so the sections are saved in the UI's state
directory (`settings.toml`, 0640 for the dicom-gateway group: the forwarder
reads the destinations from it) and laid over gateway.toml by `load_config`;
the PIN's hash goes to `pin-hash` beside it, 0600, the capture user's alone.
Without such a directory (development) both are written into the
configuration file itself.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from gateway.config import (
    SETTINGS_SECTIONS,
    ConfigError,
    GatewayConfig,
    _resolve_relative_paths,
    apply_settings,
    read_settings,
    settings_with_change,
)
from gateway.ops import audit
from gateway.paths import PIN_HASH_NAME
from gateway.queue.files import write_atomic
from gateway.ui.security import PinError, check_pin_format, hash_pin, verify_pin

log = logging.getLogger(__name__)

EDITABLE = SETTINGS_SECTIONS
_PROVISIONED = "provisioned "  # the pin-hash line naming the credential last taken


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


def _without_none(value: Any) -> Any:
    """TOML has no null: a key the screen sends as None (a default it showed,
    such as `capture.trigger`) is one not set, so it is left out of the file
    (tomli_w raised on it, and Save answered 500)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


class SettingsStore:
    """The screen's settings and PIN; `overlay` is where they are saved
    (None: into the configuration file at `path`)."""

    def __init__(
        self, path: Path | None, config: GatewayConfig, overlay: Path | None = None
    ) -> None:
        self.path = path
        self.overlay = overlay
        self.config = config
        self.pin_file = overlay.with_name(PIN_HASH_NAME) if overlay is not None else None
        self._provisioned_hash: str | None = None
        self._memory_pin: str | None = None  # a credential with nowhere to keep its hash
        self._lock = threading.Lock()

    def _base(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            return tomllib.loads(self.path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"{self.path}: cannot read: {exc}") from None

    def _saved(self) -> dict[str, Any]:
        assert self.overlay is not None
        try:
            return read_settings(self.overlay)
        except ConfigError as exc:
            raise SettingsError(str(exc)) from None

    def _raw(self) -> dict[str, Any]:
        raw = self._base()
        if self.overlay is not None:
            apply_settings(raw, self._saved())
        return raw

    def _validate(self, raw: dict[str, Any]) -> GatewayConfig:
        resolved = copy.deepcopy(raw)
        if self.path is not None:
            _resolve_relative_paths(resolved, self.path.parent)
        try:
            return GatewayConfig.model_validate(resolved)
        except ValidationError as exc:
            message, fields = settings_problems(exc)
            raise SettingsError(message, fields) from None

    def _write(self, target: Path | None, raw: dict[str, Any], mode: int = 0o640) -> None:
        if target is None:
            raise SettingsError(
                "no configuration file to save to; start the gateway with --config PATH"
            )
        try:
            write_atomic(target, tomli_w.dumps(_without_none(raw)).encode("utf-8"))
            os.chmod(target, mode)  # whatever the umask: never world-readable
        except OSError as exc:
            raise SettingsError(f"{target}: cannot save: {exc.strerror}") from None

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
            "config_file": str(self.overlay or self.path) if (self.overlay or self.path) else None,
            "pin_set": bool(self.pin_hash),
            "pin_min_length": config.ui.pin_min_length,
        }

    def update(self, changes: dict[str, Any]) -> GatewayConfig:
        unknown = sorted(set(changes) - set(EDITABLE))
        if unknown:
            raise SettingsError(f"cannot change {', '.join(unknown)} here")
        with self._lock:
            if self.overlay is not None:
                saved = self._saved()
                for key in EDITABLE:
                    if key in changes:
                        saved = settings_with_change(saved, key, changes[key])
                raw = self._base()
                apply_settings(raw, saved)
                config = self._validate(raw)
                self._write(self.overlay, saved)
            else:
                raw = self._raw()
                for key in EDITABLE:
                    if key in changes:
                        if changes[key] is None:
                            raw.pop(key, None)
                        else:
                            raw[key] = changes[key]
                config = self._validate(raw)
                self._write(self.path, raw)
            self.config = config
            return config

    # -- the PIN ---------------------------------------------------------

    def _pin_lines(self) -> list[str]:
        if self.pin_file is None:
            return []
        try:
            return self.pin_file.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            log.error("%s: cannot read the PIN: %s", self.pin_file, exc)
            return []

    @property
    def pin_hash(self) -> str | None:
        """The PIN to check: the state file's, else a credential's kept in
        memory, else the configuration's `ui.pin_hash`."""
        lines = self._pin_lines()
        if lines and lines[0].startswith("scrypt$"):
            return lines[0]
        return self._memory_pin or self.config.ui.pin_hash

    def check_new_pin(self, pin: str) -> str:
        """The PIN if it may be set; PinError saying the rule otherwise."""
        return check_pin_format(pin, self.config.ui.pin_min_length)

    def set_pin(self, pin: str) -> GatewayConfig:
        self.check_new_pin(pin)
        with self._lock:
            if self.pin_file is not None:
                self._write_pin(hash_pin(pin), self._provisioned_line())
                return self.config
            raw = self._raw()
            ui = raw.setdefault("ui", {})
            if not isinstance(ui, dict):
                raise SettingsError("the [ui] section of the configuration is not a table")
            ui["pin_hash"] = hash_pin(pin)
            config = self._validate(raw)
            self._write(self.path, raw)
            self.config = config
            return config

    def _provisioned_line(self) -> str | None:
        for line in self._pin_lines()[1:]:
            if line.startswith(_PROVISIONED):
                return line
        return None

    def _write_pin(self, pin_hash: str, provisioned: str | None) -> None:
        assert self.pin_file is not None
        text = pin_hash + "\n" + (provisioned + "\n" if provisioned else "")
        try:
            write_atomic(self.pin_file, text.encode())
            os.chmod(self.pin_file, 0o600)
        except OSError as exc:
            raise SettingsError(f"{self.pin_file}: cannot save the PIN: {exc.strerror}") from None

    def provision_pin(self, credential: Path | None) -> bool:
        """Take the PIN handed in by systemd (`LoadCredential=pin`): hashed
        into the state file the first time, and again only when the
        credential changes (a re-provisioned box), so a PIN changed on the
        screen later is kept across restarts. True when the PIN was taken."""
        if credential is None:
            return False
        try:
            pin = credential.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            log.error("provisioned PIN %s not read: %s", credential, exc)
            return False
        try:
            self.check_new_pin(pin)
        except PinError as exc:
            log.error("provisioned PIN not used: %s", exc)
            return False
        with self._lock:
            if self.pin_file is None:
                self._memory_pin = hash_pin(pin)
                return True  # nothing kept: taken again at every start, no audit
            line = self._provisioned_line()
            if line is not None and verify_pin(pin, line.removeprefix(_PROVISIONED)):
                return False  # already taken; the screen may have changed it since
            digest = hash_pin(pin)
            self._write_pin(digest, _PROVISIONED + digest)
        log.info("provisioned PIN taken into %s", self.pin_file)
        audit.emit(lambda t: t.settings_changed("provisioning", "settings PIN provisioned"))
        return True
