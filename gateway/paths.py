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
# The installed queue (tmpfiles.d: 2770 root:dicom-gateway, shared by the
# capture and forwarder users through that group alone).
INSTALLED_QUEUE_PATH = Path("/var/lib/dicom-gateway")
# What the touchscreen saves on the installed appliance: /etc is read-only
# under ProtectSystem=strict, so the screen's settings go to the capture
# unit's StateDirectory= (dicom-gateway-ui), and are laid over gateway.toml.
DEFAULT_SETTINGS_PATH = Path("/var/lib/dicom-gateway-ui/settings.toml")
SETTINGS_ENV = "DICOM_GATEWAY_SETTINGS"
PIN_HASH_NAME = "pin-hash"


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
    """Where the queue lives when nobody said: /var/lib/dicom-gateway for root
    or when the installed layout made it ours to write (the services' users,
    through the dicom-gateway group), else the user's state directory (so the
    demo runs unprivileged with nothing configured). Not $STATE_DIRECTORY:
    the capture unit's is its private dicom-gateway-ui, never the queue."""
    if os.geteuid() == 0 or os.access(INSTALLED_QUEUE_PATH, os.W_OK | os.X_OK):
        return INSTALLED_QUEUE_PATH
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dicom-gateway"


def resolve_settings_path(config_path: Path | None) -> Path | None:
    """Where the touchscreen's settings are saved and read back: the file in
    $DICOM_GATEWAY_SETTINGS, else for the installed configuration
    (/etc/dicom-gateway/gateway.toml) the UI's state directory; None when the
    screen writes into the configuration file itself (a development setup)."""
    env = os.environ.get(SETTINGS_ENV)
    if env:
        return Path(env)
    if config_path is not None and config_path == DEFAULT_CONFIG_PATH:
        return DEFAULT_SETTINGS_PATH
    return None


def pin_credential_path() -> Path | None:
    """The PIN provisioned through systemd's `LoadCredential=pin`, if any."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not creds:
        return None
    path = Path(creds) / "pin"
    return path if path.is_file() else None


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
