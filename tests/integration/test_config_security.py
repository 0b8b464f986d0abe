"""`config check` on what makes the box insecure: a UI beyond loopback
without HTTPS is refused; patient data without TLS and readable private keys
are warned about; the screen's saved settings are laid over gateway.toml."""

from __future__ import annotations

import json
import os
from pathlib import Path

import tomli_w

from gateway.config import load_config
from tests.support.gateway import Gateway, assert_one_line_error, gateway_config, write_config
from tests.support.pki import PKI


def test_ui_beyond_loopback_needs_tls(tmp_path: Path, pki: PKI) -> None:
    data = gateway_config(tmp_path, pki, 11112, ui={"listen": "0.0.0.0:8443"})
    path = write_config(tmp_path / "gateway.toml", data)
    line = assert_one_line_error(Gateway(path)("config", "check"))
    assert "ui: " in line and "beyond loopback" in line and "[ui.tls]" in line
    data["ui"]["tls"] = {"cert": str(pki.server.cert), "key": str(pki.server.key)}
    write_config(path, data)
    ok = Gateway(path)("config", "check")
    assert ok.returncode == 0, ok.stderr


def test_the_kiosk_listener_stays_on_loopback(tmp_path: Path, pki: PKI) -> None:
    tls = {"cert": str(pki.server.cert), "key": str(pki.server.key)}
    data = gateway_config(
        tmp_path,
        pki,
        11112,
        ui={"listen": "0.0.0.0:8443", "tls": tls, "kiosk_listen": "0.0.0.0:8080"},
    )
    path = write_config(tmp_path / "gateway.toml", data)
    line = assert_one_line_error(Gateway(path)("config", "check"))
    assert "ui.kiosk_listen: '0.0.0.0:8080' is not a loopback address" in line, line
    data["ui"]["kiosk_listen"] = "127.0.0.1:8080"
    write_config(path, data)
    assert Gateway(path)("config", "check").returncode == 0


def test_warns_when_patient_data_travels_in_clear(tmp_path: Path, pki: PKI) -> None:
    data = gateway_config(tmp_path, pki, 11112)
    data["destinations"].append(
        {"name": "plain", "ae_title": "OLDPACS", "host": "192.0.2.9", "port": 104}
    )
    data["worklist"] = {"ae_title": "RIS", "host": "192.0.2.10", "port": 105}
    path = write_config(tmp_path / "gateway.toml", data)
    result = Gateway(path)("config", "check", "--json")
    assert result.returncode == 0, result.stderr
    warnings = json.loads(result.stdout)["warnings"]
    assert any("destination 'plain' (192.0.2.9:104): no TLS" in w for w in warnings), warnings
    assert any("worklist 192.0.2.10:105: no TLS" in w for w in warnings), warnings
    assert not any("'pacs'" in w for w in warnings)
    assert "warning: destination 'plain'" in result.stderr


def test_warns_about_a_readable_private_key(tmp_path: Path, pki: PKI) -> None:
    key = tmp_path / "gateway.key"
    key.write_bytes(pki.client.key.read_bytes())
    os.chmod(key, 0o640)
    data = gateway_config(tmp_path, pki, 11112)
    data["destinations"][0]["tls"]["key"] = str(key)
    path = write_config(tmp_path / "gateway.toml", data)
    out = Gateway(path)("config", "check").stderr
    assert f"{key}: private key is mode 0640" in out
    os.chmod(key, 0o600)
    assert "private key" not in Gateway(path)("config", "check").stderr


def test_screen_settings_are_laid_over_the_file(tmp_path: Path, pki: PKI) -> None:
    data = gateway_config(tmp_path, pki, 11112)
    data["worklist"] = {"ae_title": "RIS", "host": "localhost", "port": 105}
    path = write_config(tmp_path / "gateway.toml", data)
    settings = tmp_path / "state/settings.toml"
    settings.parent.mkdir()
    dest = dict(data["destinations"][0], ae_title="PACS2")
    settings.write_text(tomli_w.dumps({"destinations": [dest], "cleared": ["worklist"]}))
    env = {"DICOM_GATEWAY_SETTINGS": str(settings)}
    shown = Gateway(path, env)("config", "show")
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)
    assert config["destinations"][0]["ae_title"] == "PACS2" and config["worklist"] is None
    settings.write_text('[station]\nae_title = "X"\n')
    line = assert_one_line_error(Gateway(path, env)("config", "check"))
    assert f"{settings}: station: not a section the screen saves" in line
    assert load_config(path).destinations[0].ae_title == "PACS"  # no env: the file alone
