"""An H.264 clip in the review strip, in Debian's Chromium: the browser's own
<video> plays the queued stream (remuxed to MP4 by the server), its frame
size and length those of the clip; a browser that cannot play it gets the
frame strip. The default `capture.clip_compression` (h264)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from gateway.ui.security import hash_pin
from tests.e2e.test_ui_browser import exam_json, start_unscheduled, thumbs
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import UIGateway, gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import ARTIFACTS, free_port
from tests.support.ui import UIRig, wait_until

WIDTH, HEIGHT = 800, 480


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, pki: PKI, chromium: Any) -> Iterator[UIRig]:
    tmp = tmp_path_factory.mktemp("ui-video")
    pacs = StoreSCP(tmp / "pacs", pki.server, pki.ca.cert).start()
    port = free_port()
    data = gateway_config(
        tmp,
        pki,
        pacs.port,
        capture={
            "driver": "testpattern",
            "options": {"width": WIDTH, "height": HEIGHT, "fps": 25},
        },
        ui={"listen": f"127.0.0.1:{port}", "pin_hash": hash_pin("471136")},
    )
    gateway = UIGateway(write_config(tmp / "gateway.toml", data), port).start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield UIRig(gateway, pacs, chromium)
    finally:
        err = gateway.stop()
        pacs.stop()
        assert "Traceback" not in err, err


def test_an_h264_clip_plays_in_the_browsers_own_player(rig: UIRig) -> None:
    url = rig.gateway.url
    page = rig.page()
    start_unscheduled(page, url, "Video", "UI-V1")
    page.wait_for_timeout(1500)
    page.get_by_role("button", name=re.compile(r"Save last")).tap()
    expect(thumbs(page)).to_have_count(1)
    clip = exam_json(page, url)["objects"][0]
    assert clip["kind"] == "clip" and clip["video_url"].endswith("/clip.mp4")
    mp4 = page.request.get(url + clip["video_url"])
    assert mp4.ok and mp4.headers["content-type"] == "video/mp4"
    thumbs(page).first.click()
    player = page.locator("#review-media video.clip-video")
    expect(player).to_be_visible()
    wait_until(lambda: page.evaluate("document.querySelector('video.clip-video').readyState") >= 2)
    size = page.evaluate(
        "(() => { const v = document.querySelector('video.clip-video');"
        " return [v.videoWidth, v.videoHeight, v.duration]; })()"
    )
    assert size[:2] == [WIDTH, HEIGHT]
    assert abs(size[2] - clip["seconds"]) < 0.2, (size, clip["seconds"])
    wait_until(lambda: page.evaluate("document.querySelector('video.clip-video').currentTime") > 0)
    expect(page.locator(".clip-time")).to_contain_text(re.compile(r"\d+\.\d s / \d+\.\d s"))
    page.screenshot(path=str(ARTIFACTS / "30-review-h264-clip.png"))
    page.get_by_role("button", name="Close").click()
    page.get_by_role("button", name="Finish").click()
    page.wait_for_url(url + "/")
    page.context.close()


def test_without_h264_playback_the_frame_strip_plays(rig: UIRig) -> None:
    url = rig.gateway.url
    page = rig.page()
    # A browser without H.264: canPlayType says no.
    page.add_init_script("HTMLMediaElement.prototype.canPlayType = () => '';")
    start_unscheduled(page, url, "Video", "UI-V2")
    page.wait_for_timeout(1000)
    page.get_by_role("button", name=re.compile(r"Save last")).tap()
    expect(thumbs(page)).to_have_count(1)
    thumbs(page).first.click()
    expect(page.locator("#review-media img.clip-frame")).to_be_visible()
    assert page.locator("#review-media video").count() == 0
    page.get_by_role("button", name="Close").click()
    page.get_by_role("button", name="Finish").click()
    page.wait_for_url(url + "/")
    page.context.close()
