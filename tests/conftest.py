"""Shared fixtures: throwaway PKI, real DCMTK peers on loopback, and the
gateway run as a real subprocess."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from gateway.certs import Authority, Issued, make_authority

REPO = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]


def require_tool(name: str) -> str:
    """Tests use real tools; `make test` installs them. A missing one is a
    broken set-up, so fail loudly instead of skipping."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run the tests through `make test`")
    return path


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it has not gone after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


@dataclass(frozen=True)
class PKI:
    ca: Authority
    server: Issued  # for localhost / 127.0.0.1, signed by `ca`
    client: Issued  # the gateway's own, signed by `ca`
    other_ca: Authority
    stranger: Issued  # a server certificate from `other_ca`
    wrong_host: Issued  # signed by `ca`, but for another host name
    expired: Issued  # signed by `ca`, expired yesterday


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca = make_authority(d, "ca")
    other = make_authority(d / "other", "other-ca")
    return PKI(
        ca=ca,
        server=ca.issue(d, "pacs"),
        client=ca.issue(d, "gateway"),
        other_ca=other,
        stranger=other.issue(d / "other", "stranger"),
        wrong_host=ca.issue(d, "elsewhere", hosts=("pacs.elsewhere.invalid",)),
        expired=ca.issue(d, "expired", expired=True),
    )


@dataclass
class StoreSCP:
    """DCMTK storescp with TLS and mutual authentication, in its own process."""

    directory: Path
    cert: Issued
    ca: Path
    ae_title: str = "PACS"
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            require_tool("storescp"),
            "--log-level",
            "warn",
            "+tls",
            str(self.cert.key),
            str(self.cert.cert),
            "-pw",
            "+cf",
            str(self.ca),
            "-aet",
            self.ae_title,
            "-od",
            str(self.directory),
            *self.extra,
            str(self.port),
        ]

    def start(self) -> StoreSCP:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.proc = subprocess.Popen(
            self.command(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())


@pytest.fixture
def storescp(tmp_path: Path, pki: PKI) -> Iterator[StoreSCP]:
    """Not started: the test decides when the PACS is up."""
    scp = StoreSCP(tmp_path / "pacs", pki.server, pki.ca.cert)
    yield scp
    scp.stop()


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


@pytest.fixture
def gateway(tmp_path: Path, pki: PKI, storescp: StoreSCP) -> Gateway:
    path = write_config(tmp_path / "gateway.toml", gateway_config(tmp_path, pki, storescp.port))
    return Gateway(path)


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    return lines[-1]


# -- touchscreen UI (issue 8) ------------------------------------------------------

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One Debian Chromium for the whole session, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    executable = require_tool("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class UIGateway:
    """`dicom-gateway run` (capture + forwarder + UI) as a real subprocess."""

    config: Path
    port: int
    proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> UIGateway:
        self.proc = subprocess.Popen(
            [*GATEWAY, "--config", str(self.config), "run"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_port(self.port, self.proc, timeout=30)
        return self

    def stop(self) -> str:
        err = ""
        if self.proc is not None:
            stop_process(self.proc, timeout=20)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc = None
        return err
