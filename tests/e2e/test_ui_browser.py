"""The touchscreen in Debian's Chromium at 800×480 with touch, driven by
Playwright, against `dicom-gateway run` as a real process and DCMTK's
storescp over mutual TLS: an unscheduled patient from the form through
capture (double taps make one image), a delete with Undo, Finish, and the
objects arriving at the PACS; "Save last" right after the start holding no
earlier frame (the test pattern's burnt-in counters say which frames); the
wrong patient sending nothing unless confirmed; Finish asking when there is
no image; forms saying what is wrong next to the field; the settings PIN;
the PACS going down and the status bar telling the truth; a frozen service
making the preview say it stalled; a service restart under an open page,
then Capture working without a reload. A screenshot of each screen goes to
test-artifacts/."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from pydicom import dcmread

from gateway.ui.security import hash_pin
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import UIGateway, gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import ARTIFACTS, free_port, require_tool
from tests.support.ui import (
    SMALL,
    UIRig,
    crowded_destructive,
    frame_counters,
    small_targets,
    touch_page,
    wait_until,
)

PIN = "471136"
WIDTH, HEIGHT = 800, 480  # the test pattern's frames


Rig = UIRig


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
            # Clips lossless too: these tests read frame counters from the pixels
            # (H.264 clips in the review: tests/e2e/test_video_review.py).
            "clip_compression": "none",
            "options": {"width": WIDTH, "height": HEIGHT, "fps": 25},
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
        for secret in ("Müller", "Jürgen", "UI-1", "Outage", "UI-3", "Wrongly"):
            assert secret not in err, err


@pytest.fixture(autouse=True)
def no_exam_left_open(rig: Rig) -> Iterator[None]:
    """A test that fails mid-exam must not fail every later one ("Start exam"
    stays disabled while another exam is open): its exam is discontinued."""
    yield
    page = rig.page()
    try:
        page.goto(rig.gateway.url + "/")
        resume = page.get_by_role("link", name="Resume exam")
        if resume.count():
            resume.click()
            page.get_by_role("button", name="Discontinue").click()
            page.get_by_role("button", name="Patient left").click()
            page.get_by_role("button", name="Discontinue exam").click()
            page.wait_for_url(rig.gateway.url + "/")
    finally:
        page.context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"))


def fill_form(page: Page, family: str, pid: str, given: str = "Jürgen", sex: str = "Male") -> None:
    page.get_by_label("Family name").fill(family)
    page.get_by_label("Given name").fill(given)
    page.get_by_label("Patient ID").fill(pid)
    page.get_by_role("radio", name=sex, exact=True).click()


def start_unscheduled(page: Page, url: str, family: str, pid: str) -> None:
    page.goto(url + "/")
    expect(page.get_by_role("button", name="Unscheduled patient")).to_be_visible()
    page.get_by_role("button", name="Unscheduled patient").click()
    fill_form(page, family, pid)
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", name="Is this the right patient?")).to_be_visible()
    page.get_by_role("button", name="Start exam").click()
    page.wait_for_url(re.compile(r"/exam/[0-9a-f]{32}$"))
    wait_until(
        lambda: page.evaluate("Number(document.getElementById('preview').dataset.frame)") > 0
    )


def thumbs(page: Page) -> Any:
    return page.locator(".thumbs li:not([hidden]) .thumb")


def exam_json(page: Page, url: str) -> dict[str, Any]:
    exam_id = page.url.rsplit("/", 1)[1]
    r = page.request.get(f"{url}/api/exams/{exam_id}")
    assert r.ok, r.text()
    data: dict[str, Any] = r.json()
    return data


def tap_twice(page: Page, name: str) -> None:
    """Two taps of a gloved finger, a few tens of ms apart (well under 300 ms)."""
    box = page.get_by_role("button", name=name, exact=True).bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.touchscreen.tap(x, y)
    page.touchscreen.tap(x, y)


def queue_status(rig: Rig) -> dict[str, int]:
    import json
    import urllib.request

    with urllib.request.urlopen(rig.gateway.url + "/api/status", timeout=10) as r:
        counts: dict[str, int] = json.load(r)["queue"]
    return counts


def pacs_files(rig: Rig) -> set[Path]:
    """What the PACS holds once the gateway has nothing left to send (an
    earlier test's objects may still be on their way)."""
    wait_until(lambda: queue_status(rig)["pending"] == 0)
    return set(rig.pacs.received())


def received_since(rig: Rig, before: set[Path], count: int) -> list[Path]:
    """The files the PACS stored since `before`, once the gateway has them
    all as sent (storescp answers after writing: no file is half there)."""
    wait_until(
        lambda: (
            len(set(rig.pacs.received()) - before) >= count and queue_status(rig)["pending"] == 0
        )
    )
    return sorted(set(rig.pacs.received()) - before)


def test_full_exam_from_unscheduled_patient_to_pacs(rig: Rig) -> None:
    url = rig.gateway.url
    page = rig.page()
    page.goto(url + "/")
    expect(page.locator("#wl-note")).to_contain_text("No worklist server is configured")
    expect(page.locator("#sb-link")).to_have_text(re.compile("PACS"))
    assert small_targets(page) == []
    shot(page, "01-worklist-no-ris")
    page.get_by_role("button", name="Unscheduled patient").click()
    shot(page, "02-unscheduled-form")
    assert small_targets(page) == []
    page.get_by_role("button", name="Cancel").click()

    start_unscheduled(page, url, "Müller", "UI-1")
    assert "Müller" not in page.url and "UI-1" not in page.url
    box = page.get_by_label("Patient", exact=True)
    for text in ("Müller, Jürgen", "UI-1", "not given", "Male", "none (unscheduled)"):
        expect(box).to_contain_text(text)
    assert small_targets(page) == [] and crowded_destructive(page) == []
    for name in ("Capture", "Record", "Save last 10 s", "Finish", "Discontinue"):
        expect(page.get_by_role("button", name=name, exact=True)).to_be_visible()
    # A double tap makes one image; taps further apart make one each.
    tap_twice(page, "Capture")
    expect(thumbs(page)).to_have_count(1)
    page.wait_for_timeout(700)
    assert len(exam_json(page, url)["objects"]) == 1
    for _ in range(2):
        page.wait_for_timeout(350)
        page.get_by_role("button", name="Capture", exact=True).tap()
    expect(thumbs(page)).to_have_count(3)
    expect(page.locator("#counts")).to_have_text("3 images")
    expect(thumbs(page).nth(2).locator("img")).to_have_js_property("complete", True)
    shot(page, "03-live-with-thumbnails")

    # The pedal (through the same path a trigger callback takes) shows on screen.
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    pressed = page.request.post(
        url + "/api/pedal", data={"action": "capture"}, headers={"X-CSRF-Token": csrf}
    )
    assert pressed.ok, pressed.text()
    expect(page.locator("#toast")).to_contain_text("Pedal: capture")
    expect(thumbs(page)).to_have_count(4)

    # Review: Delete waits 5 s for an Undo.
    thumbs(page).nth(1).click()
    expect(page.get_by_role("img", name="Enlarged image")).to_be_visible()
    assert crowded_destructive(page) == []
    shot(page, "04-review")
    page.get_by_role("button", name="Delete").click()
    expect(thumbs(page)).to_have_count(3)
    expect(page.get_by_role("button", name="Undo")).to_be_visible()
    shot(page, "05-deleted-with-undo")
    page.get_by_role("button", name="Undo").click()
    expect(thumbs(page)).to_have_count(4)
    page.wait_for_timeout(5500)
    assert len(exam_json(page, url)["objects"]) == 4  # undone: nothing was deleted
    thumbs(page).nth(1).click()
    page.get_by_role("button", name="Delete").click()
    thumbs(page).nth(2).click()  # the pedal's
    page.get_by_role("button", name="Delete").click()
    expect(thumbs(page)).to_have_count(2)
    expect(page.locator("#counts")).to_have_text("2 images")

    before = pacs_files(rig)
    page.get_by_role("button", name="Finish").click()  # the deletes still waiting go first
    page.wait_for_url(url + "/")
    expect(page.locator("#toast")).to_contain_text("2 object(s) queued")
    for file in received_since(rig, before, 2):
        dump = subprocess.run(
            [require_tool("dcmdump"), str(file)], capture_output=True, text=True, check=True
        ).stdout
        assert "Müller^Jürgen" in dump and "UI-1" in dump
        check = subprocess.run(
            [require_tool("dciodvfy"), str(file)], capture_output=True, text=True
        )
        errors = [ln for ln in (check.stdout + check.stderr).splitlines() if ln.startswith("Error")]
        assert errors == []
    page.wait_for_timeout(1500)
    assert len(set(rig.pacs.received()) - before) == 2  # the deleted two never left
    expect(page.locator("#sb-queue")).to_contain_text("0 waiting · 2 sent · 0 failed")
    expect(page.locator("#sb-link")).to_have_text("PACS OK")
    shot(page, "06-worklist-after-finish")
    page.get_by_role("button", name="Queue").click()
    expect(page.locator("#status-details")).to_contain_text("2 sent")
    shot(page, "07-status-details")
    page.context.close()


def test_forms_say_what_is_wrong_next_to_the_field(rig: Rig) -> None:
    page = rig.page()
    page.goto(rig.gateway.url + "/")
    page.get_by_role("button", name="Unscheduled patient").click()
    page.get_by_role("button", name="Continue").click()
    form = page.locator("#unsch-form")
    expect(form.locator('[data-for="family_name"]')).to_have_text("Family name is needed")
    expect(form.locator('[data-for="id"]')).to_have_text("Patient ID is needed")
    # Typed, each message goes; a name too long together says so at once.
    page.get_by_label("Family name").fill("D" * 40)
    expect(form.locator('[data-for="family_name"]')).to_have_text("")
    page.get_by_label("Given name").fill("J" * 30)
    expect(form.locator('[data-for="family_name"]')).to_have_text(
        "Name is 71 characters (family and given together); at most 64"
    )
    assert page.get_by_label("Family name").input_value() == "D" * 40  # nothing cut off
    tomorrow = (date.today() + timedelta(days=1)).strftime("%Y%m%d")
    page.get_by_label("Birth date").fill(tomorrow)
    expect(page.get_by_label("Birth date")).to_have_value(
        f"{tomorrow[:4]}-{tomorrow[4:6]}-{tomorrow[6:]}"
    )
    page.get_by_label("Birth date").dispatch_event("input")
    expect(form.locator('[data-for="birth_date"]')).to_have_text("Birth date is in the future")
    page.get_by_label("Patient ID").fill("F-1\\2")
    page.get_by_label("Patient ID").dispatch_event("input")
    expect(form.locator('[data-for="id"]')).to_have_text("Patient ID may not contain \\")
    assert small_targets(page) == []
    shot(page, "08-form-errors")
    # Fixed: Continue, then Back keeps every value typed. The birth date on
    # the keyboard's digit pad: the dashes come by themselves.
    page.get_by_label("Given name").fill("Jo")
    page.get_by_label("Birth date").fill("")
    page.get_by_label("Birth date").tap()
    keyboard = page.get_by_role("group", name="On-screen keyboard")
    expect(keyboard.locator('[data-key="5"]')).to_be_visible()
    expect(keyboard.locator('[data-key="q"]')).to_have_count(0)  # digits only
    shot(page, "08a-date-pad")
    for key in "19700506":
        keyboard.locator(f'[data-key="{key}"]').tap()
    expect(page.get_by_label("Birth date")).to_have_value("1970-05-06")
    expect(form.locator('[data-for="birth_date"]')).to_have_text("")
    keyboard.get_by_role("button", name="Enter").tap()
    expect(keyboard).to_be_hidden()
    page.get_by_label("Patient ID").click()  # a mouse from here on: no keyboard
    page.get_by_label("Patient ID").fill("F-12")
    page.get_by_role("radio", name="Female", exact=True).click()
    page.get_by_role("button", name="Continue").click()
    details = page.locator("#confirm-details")
    expect(details).to_contain_text("D" * 40 + ", Jo")
    expect(details).to_contain_text("1970-05-06")
    expect(details).to_contain_text("Female")
    shot(page, "09-confirm-unscheduled")
    page.get_by_role("button", name="Back").click()
    expect(page.get_by_label("Patient ID")).to_have_value("F-12")
    expect(page.get_by_label("Given name")).to_have_value("Jo")
    expect(page.get_by_role("radio", name="Female", exact=True)).to_have_attribute(
        "aria-checked", "true"
    )
    page.context.close()


def test_save_last_right_after_the_start_holds_no_earlier_frame(rig: Rig) -> None:
    url = rig.gateway.url
    page = rig.page()
    page.goto(url + "/")
    page.wait_for_timeout(1000)  # the frame buffer holds seconds from before this exam
    shown = page.request.get(url + "/api/preview.jpg")
    before_start = int(shown.headers["x-frame-index"])
    start_unscheduled(page, url, "Clip", "UI-4")
    page.get_by_role("button", name="Save last 10 s").tap()
    expect(page.locator("#toast")).to_contain_text(
        re.compile(r"Saved \d+\.\d s — only what was filmed since this exam started")
    )
    expect(thumbs(page)).to_have_count(1)
    expect(page.locator(".thumb-len")).to_contain_text(re.compile(r"▶ \d+\.\d s"))
    shot(page, "10-save-last-right-after-start")
    clip = exam_json(page, url)["objects"][0]
    assert clip["kind"] == "clip" and clip["seconds"] < 10
    thumbs(page).first.click()
    expect(page.locator(".clip-time")).to_contain_text(re.compile(r"\d+\.\d s / \d+\.\d s"))
    shot(page, "11-review-clip")
    page.get_by_role("button", name="Close").click()
    before = pacs_files(rig)
    page.get_by_role("button", name="Finish").click()
    page.wait_for_url(url + "/")
    (file,) = received_since(rig, before, 1)
    ds = dcmread(file)
    frames = ds.pixel_array if int(ds.NumberOfFrames) > 1 else [ds.pixel_array]
    counters = frame_counters(frames, WIDTH, HEIGHT, around=before_start)
    assert min(counters) > before_start, (before_start, counters)
    assert counters == sorted(counters)
    page.context.close()


def test_double_taps_on_record_and_save_last_make_one_clip_each(rig: Rig) -> None:
    url = rig.gateway.url
    page = rig.page()
    start_unscheduled(page, url, "Gloves", "UI-9")
    record = page.locator("#btn-record")
    tap_twice(page, "Record")  # the second tap must not stop it at once
    expect(record).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#rec-badge")).to_contain_text(re.compile(r"REC 0:0[1-9] / 0:30"))
    shot(page, "12a-recording")
    assert exam_json(page, url)["recording"]
    page.get_by_role("button", name="Stop recording").tap()
    expect(thumbs(page)).to_have_count(1)
    page.wait_for_timeout(400)
    tap_twice(page, "Save last 10 s")
    expect(thumbs(page)).to_have_count(2, timeout=30_000)  # ten seconds of frames, a loaded box
    page.wait_for_timeout(1000)
    exam = exam_json(page, url)
    assert exam["counts"] == {"images": 0, "clips": 2}
    expect(page.locator("#counts")).to_have_text("2 clips")
    page.get_by_role("button", name="Discontinue").click()
    page.get_by_role("button", name="Patient left").click()
    page.get_by_role("button", name="Discontinue exam").click()
    page.wait_for_url(url + "/")
    page.context.close()


def test_wrong_patient_sends_nothing_unless_confirmed(rig: Rig) -> None:
    url = rig.gateway.url
    page = rig.page()
    start_unscheduled(page, url, "Wrongly", "UI-5")
    for _ in range(2):
        page.get_by_role("button", name="Capture", exact=True).tap()
        page.wait_for_timeout(350)
    expect(thumbs(page)).to_have_count(2)
    before = pacs_files(rig)
    page.get_by_role("button", name="Discontinue").click()
    page.get_by_role("button", name="Wrong patient").click()
    assert crowded_destructive(page) == []
    shot(page, "12-discontinue")
    page.get_by_role("button", name="Discontinue exam").click()
    expect(
        page.get_by_role("heading", name="Wrong patient — what about the images?")
    ).to_be_visible()
    expect(page.locator("#wrong-text")).to_contain_text("2 images were taken under Wrongly")
    assert crowded_destructive(page) == [] and small_targets(page) == []
    shot(page, "13-wrong-patient")
    page.get_by_role("button", name="Back").click()  # not answered: nothing happens
    assert exam_json(page, url)["state"] == "in_progress"
    page.get_by_role("button", name="Discontinue").click()
    page.get_by_role("button", name="Wrong patient").click()
    page.get_by_role("button", name="Discontinue exam").click()
    page.get_by_role("button", name="Delete 2 images").click()
    page.wait_for_url(url + "/")
    expect(page.locator("#toast")).to_contain_text("images deleted, nothing sent")
    # Sent anyway, when the technician says so.
    start_unscheduled(page, url, "Wrongly", "UI-5")
    page.get_by_role("button", name="Capture", exact=True).tap()
    expect(thumbs(page)).to_have_count(1)
    page.get_by_role("button", name="Discontinue").click()
    page.get_by_role("button", name="Wrong patient").click()
    page.get_by_role("button", name="Discontinue exam").click()
    page.get_by_role("button", name="Send anyway").click()
    page.wait_for_url(url + "/")
    assert len(received_since(rig, before, 1)) == 1
    page.wait_for_timeout(1500)
    assert len(set(rig.pacs.received()) - before) == 1  # the two deleted never went
    page.context.close()


def test_finish_without_images_asks_first(rig: Rig) -> None:
    page = rig.page({"width": 1024, "height": 600})
    start_unscheduled(page, rig.gateway.url, "Empty", "UI-6")
    assert small_targets(page) == [] and crowded_destructive(page) == []
    shot(page, "14-live-1024x600")
    page.get_by_role("button", name="Finish").click()
    expect(page.get_by_role("heading", name="Finish without images?")).to_be_visible()
    shot(page, "15-finish-without-images")
    page.get_by_role("button", name="Back").click()
    assert exam_json(page, rig.gateway.url)["state"] == "in_progress"
    page.get_by_role("button", name="Finish").click()
    page.get_by_role("button", name="Finish without images").click()
    page.wait_for_url(rig.gateway.url + "/")
    expect(page.locator("#toast")).to_contain_text("0 object(s) queued")
    page.context.close()


def test_discontinue_with_a_reason_and_large_layout(rig: Rig) -> None:
    page = rig.page({"width": 1280, "height": 800})
    start_unscheduled(page, rig.gateway.url, "Large", "UI-2")
    assert small_targets(page) == [] and crowded_destructive(page) == []
    shot(page, "16-live-1280x800")
    page.get_by_role("button", name="Discontinue").click()
    page.get_by_role("button", name="Discontinue exam").click()
    expect(page.locator('#dlg-discontinue [data-for="reason"]')).to_have_text(
        "Choose or type a reason"
    )
    page.get_by_role("button", name="Patient left").click()
    expect(page.locator('#dlg-discontinue [data-for="reason"]')).to_have_text("")
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
    shot(page, "17-pin")
    for digit in "1234":
        page.get_by_role("button", name=digit, exact=True).click()
    page.get_by_role("button", name="Unlock").click()
    error = page.locator("#pin-error")
    expect(error).to_have_text("Wrong PIN — 4 tries left before a wait")
    # Above the pad, in sight.
    pad = page.get_by_role("group", name="PIN pad").bounding_box()
    where = error.bounding_box()
    assert pad and where and where["y"] + where["height"] <= SMALL["height"]
    assert pad["y"] + pad["height"] <= SMALL["height"]
    shot(page, "18-pin-wrong")
    expect(page.locator("#settings-form")).to_be_hidden()
    for digit in PIN:
        page.get_by_role("button", name=digit, exact=True).click()
    page.get_by_role("button", name="Unlock").click()
    expect(page.get_by_role("button", name="Save settings")).to_be_visible()
    expect(page.get_by_label("Destination name")).to_have_value("pacs")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator(".echo-result")).to_contain_text(re.compile(r"Connected: TLSv1\.[23] "))
    assert crowded_destructive(page) == []
    shot(page, "19-settings")
    # A bad port: said beside the field and at the top; the file is not touched.
    before = rig.gateway.config.read_text()
    page.get_by_role("tab", name="Worklist").click()
    page.get_by_label("Worklist host").fill("ris.example")
    page.get_by_label("Worklist AE title").fill("RIS")
    page.get_by_label("Worklist port").fill("0")
    page.get_by_role("tab", name="PACS").click()
    page.get_by_label("Destination port").fill("99999")
    page.get_by_role("button", name="Save settings").click()
    top = page.locator("#settings-problems")
    expect(top).to_contain_text("Destination 1 — Port must be 1–65535")
    expect(top).to_contain_text("Worklist server — Port must be 1–65535")
    dest_error = page.locator('.dest [data-for="port"]')
    expect(dest_error).to_have_text("Port must be 1–65535")
    shot(page, "20-settings-error")
    assert rig.gateway.config.read_text() == before
    page.get_by_role("tab", name="Worklist").click()
    expect(page.locator('#wl-fields [data-for="port"]')).to_have_text("Port must be 1–65535")
    page.get_by_label("Worklist port").fill("104")
    expect(page.locator('#wl-fields [data-for="port"]')).to_have_text("")
    page.get_by_role("button", name="Lock").click()
    page.wait_for_url(rig.gateway.url + "/")
    page.context.close()


def test_settings_keep_what_the_screen_does_not_show(
    tmp_path: Path, pki: PKI, chromium: Any
) -> None:
    """A DICOMweb destination is shown as one (its URL, not AE/host/port),
    and Save writes back every key the screen has no field for."""
    import tomllib

    port = free_port()
    data = gateway_config(tmp_path, pki, free_port(), ui={"listen": f"127.0.0.1:{port}"})
    data["ui"]["pin_hash"] = hash_pin(PIN)
    data["destinations"].append(
        {
            "name": "cloud",
            "protocol": "stow-rs",
            "allow_plain_http": True,
            "url": "http://127.0.0.1:1/dicom-web",
            "batch_max_objects": 7,
        }
    )
    data["worklist"] = {"ae_title": "RIS", "host": "localhost", "port": 1, "max_entries": 99}
    config = write_config(tmp_path / "gateway.toml", data)
    gateway = UIGateway(config, port).start()
    try:
        page = touch_page(chromium)
        page.goto(gateway.url + "/settings")
        for digit in PIN:
            page.get_by_role("button", name=digit, exact=True).click()
        page.get_by_role("button", name="Unlock").click()
        cloud = page.locator(".dest").nth(1)
        expect(cloud.get_by_label("DICOMweb URL")).to_have_value("http://127.0.0.1:1/dicom-web")
        expect(cloud.get_by_label("Destination AE title")).to_be_hidden()
        page.get_by_role("button", name="Save settings").click()
        expect(page.locator("#settings-note")).to_contain_text("Saved")
        page.context.close()
    finally:
        gateway.stop()
    saved = tomllib.loads(config.read_text())
    assert saved["destinations"][1]["batch_max_objects"] == 7
    assert saved["destinations"][1]["protocol"] == "stow-rs"
    assert "ae_title" not in saved["destinations"][1]
    assert saved["worklist"]["max_entries"] == 99


def test_pacs_down_and_the_status_bar_tells_the_truth(rig: Rig) -> None:
    page = rig.page()
    rig.pacs.stop()
    start_unscheduled(page, rig.gateway.url, "Outage", "UI-3")
    page.get_by_role("button", name="Capture", exact=True).click()
    expect(thumbs(page)).to_have_count(1)
    page.get_by_role("button", name="Finish").click()
    page.wait_for_url(rig.gateway.url + "/")
    message = page.locator("#sb-message")
    expect(message).to_contain_text(
        re.compile(r"PACS unreachable since \d\d:\d\d — 1 image waiting, next try \d\d:\d\d"),
        timeout=30_000,
    )
    expect(page.locator("#sb-link")).to_have_text(re.compile(r"PACS down since \d\d:\d\d"))
    expect(page.locator("#sb-queue")).to_contain_text("1 waiting")
    shot(page, "21-pacs-down")
    message.click()
    expect(page.locator("#status-details")).to_contain_text("PACS unreachable since")
    page.get_by_role("button", name="Close").click()
    before = len(rig.pacs.received())
    rig.pacs.start()  # same port: the forwarder's next try gets through
    expect(page.locator("#sb-link")).to_have_text("PACS OK", timeout=40_000)
    expect(page.locator("#sb-queue")).to_contain_text("0 waiting", timeout=10_000)
    assert len(rig.pacs.received()) == before + 1
    shot(page, "22-pacs-back")
    page.context.close()


def test_a_frozen_service_makes_the_preview_say_it_stalled(rig: Rig) -> None:
    page = rig.page()
    start_unscheduled(page, rig.gateway.url, "Frozen", "UI-7")
    capture = page.get_by_role("button", name="Capture", exact=True)
    expect(capture).to_be_enabled()
    assert rig.gateway.proc is not None
    pid = rig.gateway.proc.pid
    os.kill(pid, signal.SIGSTOP)  # no frame reaches the page any more
    try:
        expect(page.locator("#stalled")).to_be_visible(timeout=10_000)
        expect(capture).to_be_disabled()
        expect(page.get_by_role("button", name="Save last 10 s")).to_be_disabled()
        shot(page, "23-preview-stalled")
    finally:
        os.kill(pid, signal.SIGCONT)
    expect(page.locator("#stalled")).to_be_hidden(timeout=15_000)
    expect(capture).to_be_enabled()
    page.get_by_role("button", name="Discontinue").click()
    page.get_by_role("button", name="Equipment failure").click()
    page.get_by_role("button", name="Discontinue exam").click()
    page.wait_for_url(rig.gateway.url + "/")
    page.context.close()


def test_pin_lockout_says_the_seconds_above_the_pad(rig: Rig) -> None:
    """Five wrong PINs lock the pad; the wait counts down where it is seen.
    (The limiter lives in the service: the restart test after this one clears it.)"""
    page = rig.page()
    page.goto(rig.gateway.url + "/settings")
    error = page.locator("#pin-error")
    for _ in range(5):
        for digit in "0000":
            page.get_by_role("button", name=digit, exact=True).click()
        page.get_by_role("button", name="Unlock").click()
        expect(error).not_to_have_text("")
    expect(error).to_have_text(re.compile(r"Too many wrong PINs — try again in \d+ s"))
    expect(page.get_by_role("button", name="Unlock")).to_be_disabled()
    first = int(re.findall(r"\d+", error.inner_text())[0])
    page.wait_for_timeout(2100)
    assert int(re.findall(r"\d+", error.inner_text())[0]) < first  # counting down
    shot(page, "18a-pin-locked")
    page.context.close()


def test_a_service_restart_under_an_open_page_then_capture_works(rig: Rig) -> None:
    url = rig.gateway.url
    page = rig.page()
    start_unscheduled(page, url, "Restart", "UI-8")
    page.get_by_role("button", name="Capture", exact=True).tap()
    expect(thumbs(page)).to_have_count(1)
    # A token the service no longer knows: refreshed, and the tap still works.
    page.evaluate("CSRF = 'stale'")
    page.wait_for_timeout(350)  # not a repeat tap
    page.get_by_role("button", name="Capture", exact=True).tap()
    expect(thumbs(page)).to_have_count(2)
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    old_csrf = page.evaluate("CSRF")
    first_frame = page.evaluate("Number(document.getElementById('preview').dataset.frame)")
    rig.gateway.stop()
    expect(page.locator("#sb-message")).to_contain_text("Lost contact with the gateway")
    shot(page, "24-service-restarting")
    rig.gateway.start()
    # The page catches up by itself: a new token, the preview moving again.
    wait_until(lambda: page.evaluate("CSRF") != old_csrf, 30)
    wait_until(
        lambda: (
            page.evaluate("Number(document.getElementById('preview').dataset.frame)") != first_frame
        ),
        30,
    )
    expect(page.locator("#stalled")).to_be_hidden()
    page.get_by_role("button", name="Capture", exact=True).tap()
    expect(thumbs(page)).to_have_count(3)
    assert page.evaluate("window.__sameDocument") is True
    assert len(exam_json(page, url)["objects"]) == 3
    shot(page, "25-after-restart")
    before = pacs_files(rig)
    page.get_by_role("button", name="Finish").click()
    page.wait_for_url(url + "/")
    files = received_since(rig, before, 3)
    uids = {str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    assert len(uids) == 1  # one exam, across the restart
    page.context.close()


def test_preview_stream_is_mjpeg(rig: Rig) -> None:
    """A raw client sees multipart JPEG parts, each with its frame index."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", rig.gateway.port, timeout=10)
    conn.request("GET", "/api/preview.mjpg")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("multipart/x-mixed-replace")
    data = b""
    deadline = time.monotonic() + 20
    while data.count(b"\xff\xd9") < 3 and len(data) < 5_000_000 and time.monotonic() < deadline:
        data += resp.read1(65536)
    assert data.count(b"Content-Type: image/jpeg") >= 3
    indices = [int(i) for i in re.findall(rb"X-Frame-Index: (\d+)", data)]
    assert len(indices) >= 3 and indices == sorted(indices)
    conn.close()
