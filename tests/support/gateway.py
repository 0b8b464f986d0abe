"""The gateway as the tests run it: a configuration for loopback peers, and
`dicom-gateway` as a real subprocess (a command, or `run` as the service)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from tests.support.pki import PKI
from tests.support.process import GATEWAY, REPO, free_port, stop_process, wait_for_port


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


def gateway_config(tmp_path: Path, pki: PKI, port: int | None, **overrides: Any) -> dict[str, Any]:
    """A complete configuration for one TLS destination on loopback."""
    data: dict[str, Any] = {
        "station": {
            "ae_title": "EDGE1",
            "station_name": "TEST-ROOM",
            "modality": "OT",
            "institution_name": "Test Clinic",
        },
        "capture": {
            "driver": "testpattern",
            "compression": "none",
            # Paced: a `run` under test must not spin a core filling its frame buffer.
            "options": {"width": 320, "height": 240, "fps": 60, "realtime": True},
        },
        "destinations": []
        if port is None
        else [
            {
                "name": "pacs",
                "ae_title": "PACS",
                "host": "localhost",
                "port": port,
                "tls": {
                    "ca": str(pki.ca.cert),
                    "cert": str(pki.client.cert),
                    "key": str(pki.client.key),
                },
            }
        ],
        "queue": {"path": str(tmp_path / "queue"), "min_free_mb": 10},
        # `run` serves the UI too: never on the shared default port in tests.
        "ui": {"listen": f"127.0.0.1:{free_port()}"},
    }
    for key, value in overrides.items():
        data[key] = value
    return data


@dataclass
class Gateway:
    """Runs `dicom-gateway` as a real subprocess with a given configuration."""

    config: Path
    env: dict[str, str] = field(default_factory=dict)

    def __call__(
        self, *args: str, timeout: float = 120.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*GATEWAY, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
            cwd=REPO,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}")
        return result


def queue_rows(config: Path) -> list[dict[str, Any]]:
    """`queue list --json` for a configuration, as a script would read it."""
    out = subprocess.run(
        [*GATEWAY, "--config", str(config), "queue", "list", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    return lines[-1]


@dataclass
class UIGateway:
    """`dicom-gateway run` (capture + forwarder + UI) as a real subprocess.
    Its log goes to a file next to the configuration (a pipe nobody reads
    would fill and stall the service), read back by `stop` and `log`."""

    config: Path
    port: int
    proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.config.with_suffix(".log")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> UIGateway:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [*GATEWAY, "--config", str(self.config), "run"],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=log,
                text=True,
            )
        wait_for_port(self.port, self.proc, timeout=30)
        return self

    def stop(self) -> str:
        """Stops the service (SIGTERM, as systemd does); returns the whole log."""
        if self.proc is not None:
            stop_process(self.proc, timeout=20)
            self.proc = None
        return self.log()
