"""Shared fixtures: throwaway PKI, real DCMTK peers on loopback, and the
gateway run as a real subprocess. The helpers themselves live in
tests/support/."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.dcmtk import StoreSCP
from tests.support.gateway import Gateway, gateway_config, write_config
from tests.support.pki import PKI, make_pki
from tests.support.process import require_tool

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def storescp(tmp_path: Path, pki: PKI) -> Iterator[StoreSCP]:
    """Not started: the test decides when the PACS is up."""
    scp = StoreSCP(tmp_path / "pacs", pki.server, pki.ca.cert)
    yield scp
    scp.stop()


@pytest.fixture
def gateway(tmp_path: Path, pki: PKI, storescp: StoreSCP) -> Gateway:
    path = write_config(tmp_path / "gateway.toml", gateway_config(tmp_path, pki, storescp.port))
    return Gateway(path)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One Debian Chromium for the whole session, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    executable = require_tool("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def syslog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """The local syslog socket the audit trail writes to, read by the test."""
    path = tmp_path / "dev-log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    monkeypatch.setenv("DICOM_GATEWAY_AUDIT_SOCKET", str(path))
    yield sock
    sock.close()
