"""The screen's settings saved when the configuration file has no table for
what the screen shows: the defaults it showed come back with None values
(TOML has none), found on the booted appliance, where Save answered 500."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.ui.settings import SettingsStore


def test_capture_saved_from_its_defaults_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        f'[station]\nae_title = "EDGE7"\n[queue]\npath = "{tmp_path / "q"}"\n', "utf-8"
    )
    overlay = tmp_path / "state" / "settings.toml"
    overlay.parent.mkdir()
    monkeypatch.setenv("DICOM_GATEWAY_SETTINGS", str(overlay))  # as the units set it
    store = SettingsStore(config_file, load_config(config_file), overlay)
    capture = dict(store.view()["capture"])
    assert None in capture.values()  # what made the save fail: a default shown as None
    capture["compression"] = "rle"
    store.update({"capture": capture})
    saved = tomllib.loads(overlay.read_text("utf-8"))
    assert saved["capture"]["compression"] == "rle"
    assert None not in saved["capture"].values()
    again = SettingsStore(config_file, load_config(config_file), overlay)
    assert again.view()["capture"]["compression"] == "rle"
    assert again.config.capture.compression == "rle"
