"""The page's side of CSRF, in Chromium against the real service: a token
the server no longer knows (a restart, an evicted session) is answered by a
403, the page fetches a fresh token and repeats the request once, so the
technician's tap still works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from gateway.ui.security import hash_pin
from tests.support.gateway import UIGateway, gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import free_port
from tests.support.ui import touch_page

PIN = "640173"


@pytest.fixture
def gateway(tmp_path: Path, pki: PKI) -> Iterator[UIGateway]:
    port = free_port()
    data = gateway_config(
        tmp_path, pki, None, ui={"listen": f"127.0.0.1:{port}", "pin_hash": hash_pin(PIN)}
    )
    service = UIGateway(write_config(tmp_path / "gateway.toml", data), port).start()
    try:
        yield service
    finally:
        log = service.stop()
        assert "Traceback" not in log, log


def test_a_stale_token_is_replaced_after_the_403_and_the_tap_goes_through(
    gateway: UIGateway, chromium: Any
) -> None:
    page = touch_page(chromium)
    seen: list[tuple[str, str, int]] = []
    page.on(
        "response",
        lambda r: (
            seen.append((r.request.method, urlsplit(r.url).path, r.status))
            if urlsplit(r.url).path.startswith("/api/pin") or urlsplit(r.url).path == "/api/session"
            else None
        ),
    )
    page.goto(gateway.url + "/settings")
    expect(page.get_by_role("group", name="PIN pad")).to_be_visible()
    seen.clear()
    page.evaluate("CSRF = 'a-token-the-server-never-issued'")
    for digit in PIN:
        page.get_by_role("button", name=digit, exact=True).click()
    page.get_by_role("button", name="Unlock").click()
    expect(page.get_by_role("tab", name="PIN")).to_be_visible()
    assert seen[:3] == [
        ("POST", "/api/pin/unlock", 403),
        ("GET", "/api/session", 200),
        ("POST", "/api/pin/unlock", 200),
    ], seen
    assert page.evaluate("CSRF") != "a-token-the-server-never-issued"
    page.context.close()
