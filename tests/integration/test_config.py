"""`config check`: every bad configuration named by file, key and problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import Gateway, assert_one_line_error, gateway_config, write_config
from tests.support.pki import PKI


def _check(tmp_path: Path, data: dict[str, Any]) -> tuple[int, str, Path]:
    path = write_config(tmp_path / "gateway.toml", data)
    result = Gateway(path)("config", "check")
    return result.returncode, result.stderr + result.stdout, path


def test_valid_configuration_passes(tmp_path: Path, pki: PKI) -> None:
    code, out, path = _check(tmp_path, gateway_config(tmp_path, pki, 11112))
    assert code == 0, out
    assert f"{path}: configuration OK" in out


@pytest.mark.parametrize(
    ("mutate", "key", "problem"),
    [
        (lambda d: d["station"].update(colour="blue"), "station.colour", "unknown key"),
        (lambda d: d.update(extra_table={}), "extra_table", "unknown key"),
        (
            lambda d: d["capture"].update(buffer_mb=4),
            "capture.buffer_mb",
            "greater than or equal to 16",
        ),
        (
            lambda d: d["capture"].update(buffer_seconds=0),
            "capture.buffer_seconds",
            "greater than 0",
        ),
        (
            lambda d: d["destinations"][0].update(port="eleven"),
            "destinations[0].port",
            "valid integer",
        ),
        (
            lambda d: d["destinations"][0].update(port=70000),
            "destinations[0].port",
            "less than or equal to 65535",
        ),
        (
            lambda d: d["destinations"][0].update(port=0),
            "destinations[0].port",
            "greater than or equal to 1",
        ),
        (
            lambda d: d["station"].update(ae_title="A_TITLE_THAT_IS_TOO_LONG"),
            "station.ae_title",
            "at most 16",
        ),
        (
            lambda d: d["station"].update(ae_title="BAD\\AE"),
            "station.ae_title",
            "illegal characters",
        ),
        (
            lambda d: d["destinations"][0].update(ae_title="PACS\tX"),
            "destinations[0].ae_title",
            "illegal characters",
        ),
        (
            lambda d: d["destinations"][0]["tls"].update(ca="/nonexistent/ca.pem"),
            "destinations[0].tls.ca",
            "'/nonexistent/ca.pem' does not exist",
        ),
        (
            lambda d: d["destinations"][0]["tls"].update(key="missing.key"),
            "destinations[0].tls.key",
            "does not exist",
        ),
        (
            lambda d: d["destinations"][0].pop("host"),
            "destinations[0].host",
            "required key is missing",
        ),
        (
            lambda d: d["queue"].update(min_free_mb=-1),
            "queue.min_free_mb",
            "greater than or equal to 0",
        ),
        (
            lambda d: d["capture"].update(compression="jpeg2000"),
            "capture.compression",
            "'none', 'rle' or 'jpeg-baseline'",
        ),
        (
            lambda d: (
                d["ui"].update(listen="localhost")
                if "ui" in d
                else d.update(ui={"listen": "localhost"})
            ),
            "ui.listen",
            "HOST:PORT",
        ),
        (
            lambda d: d["capture"]["options"].update(width="wide"),
            "capture.options.width",
            "valid integer",
        ),
        (lambda d: d["capture"]["options"].update(zoom=2), "capture.options.zoom", "unknown key"),
        (
            lambda d: d["capture"].update(driver="nosuchdriver"),
            "capture",
            "unknown capture driver 'nosuchdriver'",
        ),
    ],
)
def test_bad_configuration_is_named(
    tmp_path: Path, pki: PKI, mutate: Any, key: str, problem: str
) -> None:
    data = gateway_config(tmp_path, pki, 11112)
    mutate(data)
    path = write_config(tmp_path / "gateway.toml", data)
    result = Gateway(path)("config", "check")
    assert result.returncode == 2
    line = assert_one_line_error(result)
    assert line.startswith(f"{path}: "), line
    assert key in line, line
    assert problem in line, line


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[station]\nae_title = "EDGE1\nstation_name = 1\n')
    line = assert_one_line_error(Gateway(path)("config", "check"))
    assert str(path) in line and "TOML syntax error" in line and "line 2" in line


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    line = assert_one_line_error(Gateway(path)("config", "check"))
    assert line == f"{path}: configuration file does not exist"


def test_duplicate_destination_names(tmp_path: Path, pki: PKI) -> None:
    data = gateway_config(tmp_path, pki, 11112)
    data["destinations"].append(dict(data["destinations"][0]))
    code, out, _ = _check(tmp_path, data)
    assert code == 2 and "destination name 'pacs' is used twice" in out


def test_relative_certificate_paths_are_relative_to_the_file(tmp_path: Path, pki: PKI) -> None:
    data = gateway_config(tmp_path, pki, 11112)
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    for name in ("ca", "cert", "key"):
        src = Path(data["destinations"][0]["tls"][name])
        (tls_dir / src.name).write_bytes(src.read_bytes())
        data["destinations"][0]["tls"][name] = f"tls/{src.name}"
    code, out, _ = _check(tmp_path, data)
    assert code == 0, out


def test_no_configuration_gives_demo_defaults(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DICOM_GATEWAY_CONFIG"}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "show"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    shown = json.loads(result.stdout)
    assert shown["capture"]["driver"] == "testpattern"
    assert shown["station"]["ae_title"] == "EDGE1"


def test_config_option_accepted_before_and_after_subcommand(tmp_path: Path, pki: PKI) -> None:
    import subprocess
    import sys

    path = write_config(tmp_path / "gateway.toml", gateway_config(tmp_path, pki, 11112))
    for args in (
        ["--config", str(path), "config", "check"],
        ["config", "check", "--config", str(path)],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *args], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert str(path) in result.stdout


def test_environment_variable_names_the_config(tmp_path: Path, pki: PKI) -> None:
    import os
    import subprocess
    import sys

    path = write_config(tmp_path / "env.toml", gateway_config(tmp_path, pki, 11112))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check"],
        capture_output=True,
        text=True,
        env={**os.environ, "DICOM_GATEWAY_CONFIG": str(path)},
    )
    assert result.returncode == 0 and str(path) in result.stdout
