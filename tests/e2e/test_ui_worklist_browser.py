"""The worklist screen in Chromium at 800×480: search, pick, confirm, capture,
finish, and the object arriving at storescp over TLS carrying the order's
Accession Number and Study Instance UID; then the RIS goes away and the
screen says it shows the cache. The UI, forwarder and capture run in this
process (the C-FIND worklist service lands separately; a fixed list stands in
for it behind the same `query` signature)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from drivers import create_driver
from drivers.stream import FrameStream
from gateway.config import load_config
from gateway.send.forwarder import Forwarder
from gateway.ui.server import UIServer
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import ARTIFACTS, free_port, require_tool, wait_for_port
from tests.support.queue import new_outbox
from tests.support.ui import ListWorklist, entry, small_targets, wait_until


@pytest.fixture
def served(tmp_path: Path, pki: PKI, storescp: StoreSCP) -> Iterator[tuple[str, ListWorklist]]:
    storescp.start()
    port = free_port()
    data = gateway_config(tmp_path, pki, storescp.port, ui={"listen": f"127.0.0.1:{port}"})
    config = load_config(write_config(tmp_path / "gateway.toml", data))
    stop = threading.Event()
    stream = FrameStream(create_driver("testpattern", {"width": 320, "height": 240, "fps": 25}))
    stream.start()
    outbox = new_outbox(config.queue.path, ["pacs"])
    forwarder = Forwarder(outbox, list(config.destinations), "EDGE1")
    fwd = threading.Thread(target=forwarder.run, args=(stop,), kwargs={"idle": 0.2}, daemon=True)
    worklist = ListWorklist([entry("Roe^Anna", "100", "ACC100"), entry("Poe^Bob", "200", "")])
    ui = UIServer(
        config,
        stop,
        stream=stream,
        forwarder_status=lambda: forwarder.status,
        worklist=worklist,
    ).start()
    fwd.start()
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}", worklist
    finally:
        stop.set()
        ui.thread.join(10)
        fwd.join(10)
        stream.stop()
        forwarder.outbox.close()
        assert not ui.thread.is_alive()


def test_pick_from_worklist_to_pacs_then_offline_cache(
    served: tuple[str, ListWorklist], storescp: StoreSCP, chromium: Any
) -> None:
    url, worklist = served
    context = chromium.new_context(viewport={"width": 800, "height": 480}, has_touch=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(url + "/")
    entries = page.get_by_role("list", name="Today's worklist").get_by_role("button")
    expect(entries).to_have_count(2)
    page.get_by_label("Search worklist").fill("roe")
    expect(entries).to_have_count(1)
    assert small_targets(page) == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-12-worklist-search.png"))
    page.get_by_role("button", name="Roe, Anna, ID 100").click()
    details = page.locator("#confirm-details")
    expect(details).to_contain_text("Roe, Anna")
    expect(details).to_contain_text("ACC100")
    page.screenshot(path=str(ARTIFACTS / "ui-13-confirm.png"))
    page.get_by_role("button", name="Start exam").click()
    page.wait_for_url(f"{url}/exam/**")
    page.get_by_role("button", name="Capture", exact=True).click()
    expect(page.locator(".thumb")).to_have_count(1)
    page.get_by_role("button", name="Finish").click()
    page.wait_for_url(url + "/")
    wait_until(lambda: len(storescp.received()) == 1)
    dump = subprocess.run(
        [require_tool("dcmdump"), str(storescp.received()[0])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ACC100" in dump and "Roe^Anna" in dump
    assert "1.2.826.0.1.3680043.10.1.100" in dump  # the order's Study Instance UID

    worklist.offline = True
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#wl-note")).to_contain_text(
        "Offline — worklist cached at 2026-01-02 07:30"
    )
    page.screenshot(path=str(ARTIFACTS / "ui-14-worklist-offline.png"))
    context.close()
