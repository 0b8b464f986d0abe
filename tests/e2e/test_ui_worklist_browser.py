"""The worklist screen in Chromium at 800×480 with touch, against `dicom-gateway
run` and a real RIS over TLS (DCMTK's wlmscpfs behind stunnel, client
certificates required) holding entries on several dates and at two stations:
typing filters the list on screen without a C-FIND (the RIS's own log counts
the associations), Search asks the RIS; a patient scheduled yesterday found by
name and one at another station by accession, each picked, captured and
finished, their objects arriving at storescp with that entry's Study Instance
UID and accession; the on-screen keyboard; the confirm dialog naming an exam
already open; the RIS stopped: the cache answers at once and the gateway does
not ask again until its retry, which brings the live list back by itself."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from pydicom import dcmread

from tests.support.dcmtk import StoreSCP
from tests.support.gateway import UIGateway, gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import ARTIFACTS, free_port
from tests.support.ui import (
    ENTRIES,
    RisPeer,
    UIRig,
    crowded_destructive,
    small_targets,
    wait_until,
)

Rig = UIRig


def ris_of(rig: Rig) -> RisPeer:
    assert rig.ris is not None  # always here
    return rig.ris


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, pki: PKI, chromium: Any) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("wl")
    ris = RisPeer(tmp, pki).start()
    pacs = StoreSCP(tmp / "pacs", pki.server, pki.ca.cert).start()
    port = free_port()
    data = gateway_config(tmp, pki, pacs.port, ui={"listen": f"127.0.0.1:{port}"})
    data["worklist"] = ris.config()
    gateway = UIGateway(write_config(tmp / "gateway.toml", data), port).start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield Rig(gateway, pacs, chromium, ris)
    finally:
        log = gateway.stop()
        pacs.stop()
        ris.stop()
        assert "Traceback" not in log, log
        for secret in ("Yester", "Roe^Anna", "Other^Station", "Müller"):  # names
            assert secret not in log, log


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"))


def rows(page: Page) -> Any:
    return page.get_by_role("list", name="Worklist").get_by_role("button")


def study_uid(accession: str) -> str:
    return next(e.study_uid for e in ENTRIES if e.accession == accession)


def exam_to_pacs(rig: Rig, page: Page, name: str, accession: str) -> None:
    """Pick the entry shown as `name`, confirm, capture, finish; the object
    reaches the PACS under the entry's study and accession."""
    url = rig.gateway.url
    page.get_by_role("button", name=re.compile("^" + re.escape(name))).click()
    details = page.locator("#confirm-details")
    expect(details).to_contain_text(accession)
    page.get_by_role("button", name="Start exam").click()
    page.wait_for_url(f"{url}/exam/**")
    expect(page.get_by_label("Patient", exact=True)).to_contain_text(accession)
    before = set(rig.pacs.received())
    page.get_by_role("button", name="Capture", exact=True).tap()
    expect(page.locator(".thumb")).to_have_count(1)
    page.get_by_role("button", name="Finish").click()
    page.wait_for_url(url + "/")
    wait_until(lambda: len(set(rig.pacs.received()) - before) == 1)
    (file,) = set(rig.pacs.received()) - before
    wait_until(lambda: page.locator("#sb-queue").inner_text().startswith("0 waiting"))
    ds = dcmread(file, stop_before_pixels=True)
    assert ds.AccessionNumber == accession
    assert ds.StudyInstanceUID == study_uid(accession)


def test_find_by_name_and_by_accession_pick_and_send(rig: Rig) -> None:
    page = rig.page()
    page.goto(rig.gateway.url + "/")
    expect(rows(page)).to_have_count(5)
    heading = page.locator("#wl-heading")
    expect(heading).to_contain_text("· 5 scheduled")
    expect(page.get_by_role("button", name="Müller, Jürgen Maria, ID 500")).to_be_visible()
    assert small_targets(page) == [] and crowded_destructive(page) == []
    shot(page, "30-worklist-today")

    # Typing on the on-screen keyboard filters what is shown; the RIS hears nothing.
    seen = ris_of(rig).associations()
    page.get_by_label("Search worklist").tap()
    keyboard = page.get_by_role("group", name="On-screen keyboard")
    expect(keyboard).to_be_visible()
    for key in "yes":
        keyboard.locator(f'[data-key="{key}"]').tap()
    expect(page.get_by_label("Search worklist")).to_have_value("yes")
    expect(rows(page)).to_have_count(0)
    expect(heading).to_contain_text("0 of 5 scheduled")
    expect(page.locator("#wl-note")).to_contain_text("No match for “yes” — 5 scheduled. Tap Search")
    assert small_targets(page) == []
    shot(page, "31-keyboard-typing")
    assert ris_of(rig).associations() == seen
    # Search asks the RIS: one association, today only at first.
    keyboard.get_by_role("button", name="Enter").tap()
    expect(keyboard).to_be_hidden()
    expect(page.locator("#wl-note")).to_have_text("No match for “yes” — 5 scheduled.")
    assert ris_of(rig).associations() == seen + 1
    shot(page, "32-search-no-match")
    page.get_by_role("button", name="Yesterday–Tomorrow").tap()
    expect(rows(page)).to_have_count(1)
    expect(heading).to_contain_text("“yes”")
    expect(rows(page).first).to_contain_text(re.compile(r"\w{3} \d+ \w{3}"))  # its day
    assert ris_of(rig).associations() == seen + 2
    exam_to_pacs(rig, page, "Yester, Day", "ACC-YEST")

    # Another station, by accession: All stations, then Search.
    page.get_by_role("button", name="Station filter").tap()
    expect(page.get_by_role("button", name="Station filter")).to_have_text("All stations")
    page.get_by_label("Search worklist").fill("ACC-OTHER")
    page.get_by_role("button", name="Search", exact=True).tap()
    expect(heading).to_contain_text("“ACC-OTHER” ·")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("station EDGE2")
    shot(page, "33-search-other-station")
    exam_to_pacs(rig, page, "Other, Station", "ACC-OTHER")

    # Performed entries carry a "done" badge.
    page.get_by_role("button", name="Station filter").tap()
    page.get_by_role("button", name="Yesterday–Tomorrow").tap()
    expect(
        page.get_by_role("button", name=re.compile("^Yester, Day")).locator(".badge")
    ).to_have_text("done")
    shot(page, "34-done-badge")
    page.context.close()


def test_confirm_names_the_exam_already_open(rig: Rig) -> None:
    first, second = rig.page(), rig.page()
    first.goto(rig.gateway.url + "/")
    first.get_by_role("button", name=re.compile("^Roe, Anna")).click()
    first.get_by_role("button", name="Start exam").click()
    first.wait_for_url(re.compile("/exam/"))
    second.goto(rig.gateway.url + "/")
    expect(second.locator(".banner")).to_contain_text("Roe, Anna")
    second.get_by_role("button", name=re.compile("^Poe, Bob")).click()
    warning = second.locator("#confirm-open")
    expect(warning).to_contain_text("Another exam is open: Roe, Anna · ID 100 · Acc ACC100")
    expect(second.get_by_role("button", name="Start exam")).to_be_disabled()
    shot(second, "35-confirm-other-exam-open")
    second.get_by_role("link", name="Go to the open exam").click()
    second.wait_for_url(first.url)
    second.get_by_role("button", name="Discontinue").click()
    second.get_by_role("button", name="Patient left").click()
    second.get_by_role("button", name="Discontinue exam").click()
    second.wait_for_url(rig.gateway.url + "/")
    first.wait_for_url(rig.gateway.url + "/")  # told by the exam event
    for page in (first, second):
        page.context.close()


def test_larger_screens(rig: Rig) -> None:
    for width, height in ((1024, 600), (1280, 800)):
        page = rig.page({"width": width, "height": height})
        page.goto(rig.gateway.url + "/")
        expect(rows(page)).to_have_count(5)
        assert small_targets(page) == [] and crowded_destructive(page) == []
        shot(page, f"36-worklist-{width}x{height}")
        page.get_by_role("button", name=re.compile("^HAYDN, FRANZ JOSEPH")).first.click()
        expect(page.locator("#confirm-details")).to_contain_text("Shoulder left")
        shot(page, f"37-confirm-{width}x{height}")
        page.get_by_role("button", name="Back").click()
        page.context.close()


def test_ris_stopped_the_cache_answers_at_once_and_the_list_comes_back(rig: Rig) -> None:
    page = rig.page()
    page.goto(rig.gateway.url + "/")
    expect(rows(page)).to_have_count(5)
    # The RIS itself stops; its TLS front stays up, so every try the gateway
    # makes is counted (stunnel logs each connection it accepts).
    ris_of(rig).wlm.stop()
    page.get_by_role("button", name="Refresh").click()  # finds the link down
    offline = page.locator("#wl-offline")
    expect(offline).to_contain_text(re.compile(r"Offline · list from \d\d:\d\d"))
    expect(rows(page)).to_have_count(5)
    expect(page.locator("#sb-ris")).to_have_text("RIS down", timeout=10_000)
    shot(page, "38-worklist-offline")
    offline.click()
    expect(page.locator("#offline-details")).to_contain_text("unreachable")
    shot(page, "39-offline-details")
    page.get_by_role("button", name="Close").click()
    tries = ris_of(rig).connections()
    started = time.monotonic()
    # Typing filters the cached list: no try per keystroke. The gateway's own
    # retry (5 s, doubling) may fall inside the typing; three keystrokes each
    # trying would show as three.
    page.get_by_label("Search worklist").tap()
    keyboard = page.get_by_role("group", name="On-screen keyboard")
    for key in "roe":
        keyboard.locator(f'[data-key="{key}"]').tap()
    expect(rows(page)).to_have_count(1)
    typed = ris_of(rig).connections() - tries
    assert typed <= 1 + (time.monotonic() - started) / 5, typed
    keyboard.get_by_role("button", name="Backspace").tap()
    keyboard.get_by_role("button", name="Enter").tap()  # Search; the keyboard closes
    expect(keyboard).to_be_hidden()
    page.get_by_role("button", name="Back to list").click()  # a mouse from here on
    # Each Search: the cache at once; the gateway tries the RIS on its own
    # schedule (5 s, doubling), not once per search.
    timings = []
    for text in ("roe", "100", "ACC500", "haydn", "poe"):
        page.get_by_label("Search worklist").fill(text)
        took = page.evaluate(
            """async (text) => { const t = performance.now();
                 const heading = document.getElementById('wl-heading');
                 document.getElementById('wl-go').click();
                 while (!heading.textContent.includes(`“${text}” ·`))
                   await new Promise(r => setTimeout(r, 2));
                 return performance.now() - t; }""",
            text,
        )
        timings.append(took)
        expect(rows(page)).not_to_have_count(0)
        expect(offline).to_be_visible()
        page.get_by_role("button", name="Back to list").click()
        expect(page.locator("#wl-heading")).to_contain_text("scheduled")
    elapsed = time.monotonic() - started
    attempts = ris_of(rig).connections() - tries
    assert attempts <= 1 + elapsed / 5, (attempts, elapsed)
    (ARTIFACTS / "ui-worklist-offline-timings.txt").write_text(
        "Search answered from the cache, RIS link known down (ms from tap to list): "
        + ", ".join(f"{t:.0f}" for t in timings)
        + f"\nconnection tries during {elapsed:.1f} s and {len(timings)} searches: {attempts}\n"
    )
    # The RIS comes back: the retry finds it, the page shows the live list by itself.
    ris_of(rig).wlm.start()
    expect(page.locator("#sb-ris")).to_have_text("RIS OK", timeout=90_000)
    expect(offline).to_be_hidden(timeout=10_000)
    expect(rows(page)).to_have_count(5)
    page.context.close()
