"""A LAN client's browser against the UI opened beyond loopback: Chromium,
started inside the UI's own network namespace (`tests.support.netns`) as a
client at 198.51.100.7, is sent to the login page over HTTPS, logs in with
the PIN through the page's own script (the pre-login token, no session
before) and lands on the worklist with a Secure session cookie."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import expect, sync_playwright

from tests.conftest import CHROMIUM_ARGS
from tests.support.netns import LAN, PIN, PORT, namespaced_ui
from tests.support.pki import PKI
from tests.support.process import require_tool


def test_a_lan_browser_logs_in_over_https(tmp_path: Path, pki: PKI) -> None:
    executable = require_tool("chromium")
    url = f"https://{LAN}:{PORT}"

    def browse() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                # The certificate is checked by the API tests; the browser
                # has no way to take our test CA without a profile of its own.
                context = browser.new_context(ignore_https_errors=True)
                context.set_default_timeout(20_000)
                page = context.new_page()
                page.goto(url + "/")
                out["login_url"] = page.url
                out["cookies_before"] = {c["name"]: c for c in context.cookies()}
                page.locator("#login-pin").fill("000000")
                page.get_by_role("button", name="Log in").click()
                expect(page.locator(".form-error")).to_have_text(
                    "Wrong PIN — 4 tries left before a wait"
                )
                page.locator("#login-pin").fill(PIN)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_url(url + "/")
                expect(page.get_by_role("button", name="Unscheduled patient")).to_be_visible()
                out["cookies_after"] = {c["name"]: c for c in context.cookies()}
            finally:
                browser.close()
        return out

    with namespaced_ui(tmp_path, pki) as ui:
        out = ui.run(browse)
    assert out["login_url"] == url + "/login", out
    before, after = out["cookies_before"], out["cookies_after"]
    assert set(before) == {"gw_prelogin"} and before["gw_prelogin"]["secure"], before
    session = after["gw_session"]
    assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict", after
    assert "gw_prelogin" not in after, after
