"""The touchscreen in Debian's Chromium at 800×480, driven by Playwright,
against `dicom-gateway run` as a real process and DCMTK's storescp over
mutual TLS: an unscheduled patient from the form through capture, a delete
before finishing, Finish, and the objects arriving at the PACS; the pedal on
screen; the settings PIN; the PACS going down and the status bar telling the
truth. A screenshot of each screen goes to test-artifacts/."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from gateway.ui.security import hash_pin
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import UIGateway, gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import ARTIFACTS, free_port, require_tool
from tests.support.ui import small_targets, wait_until

PIN = "4711"
SMALL = {"width": 800, "height": 480}


@dataclass
class Rig:
    gateway: UIGateway
    pacs: StoreSCP
    browser: Any

    def page(self, viewport: dict[str, int] = SMALL) -> Page:
        context = self.browser.new_context(viewport=viewport, has_touch=True)
        context.set_default_timeout(15_000)
        page: Page = context.new_page()
        return page


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, pki: PKI, chromium: Any) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("ui")
    pacs = StoreSCP(tmp / "pacs", pki.server, pki.ca.cert).start()
    port = free_port()
    data = gateway_config(
        tmp,
        pki,
        pacs.port,
        capture={
            "driver": "testpattern",
            "compression": "none",
            "options": {"width": 800, "height": 480, "fps": 25},
        },
        ui={"listen": f"127.0.0.1:{port}", "pin_hash": hash_pin(PIN)},
    )
    config = write_config(tmp / "gateway.toml", data)
    gateway = UIGateway(config, port).start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield Rig(gateway, pacs, chromium)
    finally:
        err = gateway.stop()
        pacs.stop()
        assert "Traceback" not in err, err
        assert "captured image" in err  # the log is there to search
        # No patient data in the log (names and IDs typed in the tests).
        for secret in ("Müller", "Jürgen", "UI-1", "Outage", "UI-3"):
            assert secret not in err, err


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"))


def start_unscheduled(page: Page, url: str, family: str, pid: str) -> None:
    page.goto(url + "/")
    expect(page.get_by_role("button", name="Unscheduled patient")).to_be_visible()
    page.get_by_role("button", name="Unscheduled patient").click()
    page.get_by_label("Family name").fill(family)
    page.get_by_label("Given name").fill("Jürgen")
    page.get_by_label("Patient ID").fill(pid)
    page.get_by_label("Sex").select_option("M")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", name="Is this the right patient?")).to_be_visible()
    page.get_by_role("button", name="Start exam").click()
    page.wait_for_url(re.compile(r"/exam/[0-9a-f]{32}$"))


def test_full_exam_from_unscheduled_patient_to_pacs(rig: Rig) -> None:
    url = rig.gateway.url
    page = rig.page()
    page.goto(url + "/")
    expect(page.locator("#wl-note")).to_contain_text("No worklist server is configured")
    expect(page.locator("#sb-link")).to_have_text(re.compile("PACS"))
    assert small_targets(page) == []
    shot(page, "1-worklist")
    page.get_by_role("button", name="Unscheduled patient").click()
    shot(page, "2-unscheduled-form")
    assert small_targets(page) == []
    page.get_by_role("button", name="Cancel").click()

    start_unscheduled(page, url, "Müller", "UI-1")
    assert "Müller" not in page.url and "UI-1" not in page.url
    expect(page.get_by_label("Patient")).to_contain_text("Müller, Jürgen")
    # The MJPEG preview is decoding.
    wait_until(
        lambda: bool(page.evaluate("document.getElementById('preview').naturalWidth > 0")), 15
    )
    assert small_targets(page) == []
    for name in ("Capture", "Record", "Save last 10 s", "Finish", "Discontinue"):
        expect(page.get_by_role("button", name=name, exact=True)).to_be_visible()
    for _ in range(3):
        page.get_by_role("button", name="Capture", exact=True).click()
    expect(page.locator(".thumb")).to_have_count(3)
    expect(page.locator(".thumb img").nth(2)).to_have_js_property("complete", True)
    shot(page, "3-live-with-thumbnails")

    # The pedal (through the same path a trigger callback takes) shows on screen.
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    pressed = page.request.post(
        url + "/api/pedal", data={"action": "capture"}, headers={"X-CSRF-Token": csrf}
    )
    assert pressed.ok, pressed.text()
    expect(page.locator("#toast")).to_contain_text("Pedal: capture")
    expect(page.locator(".thumb")).to_have_count(4)

    # Review: enlarge the second image, delete it; and the pedal's, too.
    page.locator(".thumb").nth(1).click()
    expect(page.get_by_role("img", name="Enlarged image")).to_be_visible()
    shot(page, "4-review")
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".thumb")).to_have_count(3)
    page.locator(".thumb").nth(2).click()
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".thumb")).to_have_count(2)

    page.get_by_role("button", name="Finish").click()
    page.wait_for_url(url + "/")
    expect(page.locator("#toast")).to_contain_text("2 object(s) queued")

    wait_until(lambda: len(rig.pacs.received()) == 2)
    for file in rig.pacs.received():
        dump = subprocess.run(
            [require_tool("dcmdump"), str(file)], capture_output=True, text=True, check=True
        ).stdout
        assert "Müller^Jürgen" in dump and "UI-1" in dump
        check = subprocess.run(
            [require_tool("dciodvfy"), str(file)], capture_output=True, text=True
        )
        errors = [ln for ln in (check.stdout + check.stderr).splitlines() if ln.startswith("Error")]
        assert errors == []
    expect(page.locator("#sb-queue")).to_contain_text("0 waiting · 2 sent · 0 failed")
    expect(page.locator("#sb-link")).to_have_text("PACS OK")
    shot(page, "5-worklist-after-finish")
    page.context.close()


def test_discontinue_with_a_reason_and_large_layout(rig: Rig) -> None:
    page = rig.page({"width": 1280, "height": 800})
    start_unscheduled(page, rig.gateway.url, "Large", "UI-2")
    assert small_targets(page) == []
    shot(page, "6-live-1280x800")
    page.get_by_role("button", name="Discontinue").click()
    page.get_by_role("button", name="Discontinue exam").click()
    expect(page.get_by_text("Choose or type a reason")).to_be_visible()
    page.get_by_role("button", name="Patient left").click()
    shot(page, "7-discontinue")
    page.get_by_role("button", name="Discontinue exam").click()
    page.wait_for_url(rig.gateway.url + "/")
    expect(page.locator("#toast")).to_contain_text("Exam discontinued")
    page.context.close()


def test_settings_behind_the_pin(rig: Rig) -> None:
    page = rig.page()
    page.goto(rig.gateway.url + "/")
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("group", name="PIN pad")).to_be_visible()
    assert small_targets(page) == []
    shot(page, "8-pin")
    for digit in "1234":
        page.get_by_role("button", name=digit, exact=True).click()
    page.get_by_role("button", name="Unlock").click()
    expect(page.locator("#pin-form .form-error")).to_have_text("wrong PIN")
    expect(page.locator("#settings-form")).to_be_hidden()
    for digit in PIN:
        page.get_by_role("button", name=digit, exact=True).click()
    page.get_by_role("button", name="Unlock").click()
    expect(page.get_by_role("button", name="Save settings")).to_be_visible()
    expect(page.get_by_label("Destination name")).to_have_value("pacs")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator(".echo-result")).to_contain_text(re.compile(r"Connected: TLSv1\.[23] "))
    shot(page, "9-settings")
    # A bad port is refused with the key named; the file is not touched.
    before = rig.gateway.config.read_text()
    page.get_by_label("Destination port").fill("99999")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#settings-form > .form-error")).to_contain_text("destinations[0].port")
    assert rig.gateway.config.read_text() == before
    page.get_by_role("button", name="Lock").click()
    page.wait_for_url(rig.gateway.url + "/")
    page.context.close()


def test_pacs_down_and_the_status_bar_tells_the_truth(rig: Rig) -> None:
    page = rig.page()
    rig.pacs.stop()
    start_unscheduled(page, rig.gateway.url, "Outage", "UI-3")
    page.get_by_role("button", name="Capture", exact=True).click()
    expect(page.locator(".thumb")).to_have_count(1)
    page.get_by_role("button", name="Finish").click()
    page.wait_for_url(rig.gateway.url + "/")
    message = page.locator("#sb-message")
    expect(message).to_contain_text(
        re.compile(r"PACS unreachable — 1 image waiting, next try \d\d:\d\d"), timeout=30_000
    )
    expect(page.locator("#sb-link")).to_have_text("PACS down")
    expect(page.locator("#sb-queue")).to_contain_text("1 waiting")
    shot(page, "10-pacs-down")
    before = len(rig.pacs.received())
    rig.pacs.start()  # same port: the forwarder's next try gets through
    expect(page.locator("#sb-link")).to_have_text("PACS OK", timeout=40_000)
    expect(page.locator("#sb-queue")).to_contain_text("0 waiting", timeout=10_000)
    assert len(rig.pacs.received()) == before + 1
    shot(page, "11-pacs-back")
    page.context.close()


def test_preview_stream_is_mjpeg(rig: Rig) -> None:
    """A raw client sees multipart JPEG parts (frame rate is for the benchmark)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", rig.gateway.port, timeout=10)
    conn.request("GET", "/api/preview.mjpg")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("multipart/x-mixed-replace")
    data = b""
    while data.count(b"\xff\xd9") < 3 and len(data) < 5_000_000:
        data += resp.read1(65536)
    assert data.count(b"Content-Type: image/jpeg") >= 3
    conn.close()
