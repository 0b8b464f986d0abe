"""Where things are, without validating anything: the configuration file,
the queue directory, and the rule for relative paths in the configuration.

Kept apart from `gateway.config` (pydantic, ~0.1 s to import) so a command
that only needs to find the running service's socket starts in milliseconds.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/dicom-gateway/gateway.toml")
CONFIG_ENV = "DICOM_GATEWAY_CONFIG"


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """--config, else $DICOM_GATEWAY_CONFIG, else /etc/..., else None (defaults)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    if DEFAULT_CONFIG_PATH.is_file():
        return DEFAULT_CONFIG_PATH
    return None


def default_queue_path() -> Path:
    """Where the queue lives when nobody said: systemd's StateDirectory, else
    /var/lib for root, else the user's state directory (so the demo runs
    unprivileged with nothing configured)."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/dicom-gateway")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dicom-gateway"


def resolve_path_value(value: str, base: Path) -> str:
    """A path in the configuration: ${VARIABLES} expanded (systemd's
    ${CREDENTIALS_DIRECTORY}), then taken relative to the file's directory."""
    if "$" in value:
        value = os.path.expandvars(value)
    if value and not os.path.isabs(value):
        value = str(base / value)
    return value


def queue_path_of(config_path: Path | None) -> Path | None:
    """The queue directory a configuration names, read without validating the
    rest; None when the file cannot be read as TOML (whoever loads it
    properly will say what is wrong)."""
    if config_path is None:
        return default_queue_path()
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    queue = data.get("queue", {})
    value = queue.get("path") if isinstance(queue, dict) else None
    if value is None:
        return default_queue_path()
    if not isinstance(value, str):
        return None
    return Path(resolve_path_value(value, config_path.parent))
