"""The touchscreen's JSON API, in process: every endpoint, the happy path and
bad input (wrong types, unknown exam, oversized fields, missing CSRF, locked
settings) — always a clear 4xx with a one-line message, never a 500."""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from drivers import create_driver
from drivers.stream import FrameStream
from gateway.acquire.capture import Capturer
from gateway.acquire.exam import ExamService
from gateway.config import load_config
from gateway.queue.model import DeliveryState
from gateway.queue.outbox import Outbox
from gateway.ris.worklist import WorklistService
from gateway.ui.app import UIContext, app_state, create_app
from gateway.ui.security import hash_pin, verify_pin
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import free_port
from tests.support.queue import new_outbox
from tests.support.ui import RisPeer, wait_until

PIN = "246813"


@dataclass
class Rig:
    client: TestClient
    csrf: str
    worklist: WorklistService | None
    config_path: Path
    outbox: Outbox

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.client.post(path, json=body, headers={"X-CSRF-Token": self.csrf}, **kw)

    def start(self, **patient: Any) -> str:
        body = {"family_name": "Doe", "given_name": "Jane", "id": "P1", **patient}
        r = self.post("/api/exams", {"patient": body})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def _make_app(
    tmp_path: Path,
    pki: PKI,
    port: int | None,
    *,
    listen: str = "127.0.0.1:8080",
    pin: str | None = PIN,
    ris: RisPeer | None = None,
    client_addr: tuple[str, int] = ("127.0.0.1", 50000),
    buffer_seconds: float = 10.0,
) -> Iterator[Rig]:
    ui: dict[str, Any] = {"listen": listen, "max_record_seconds": 2.0}
    if pin:
        ui["pin_hash"] = hash_pin(pin)
    if not listen.startswith("127."):
        ui["tls"] = {"cert": str(pki.server.cert), "key": str(pki.server.key)}
    data = gateway_config(tmp_path, pki, port, ui=ui)
    if ris is not None:
        data["worklist"] = ris.config()
    path = write_config(tmp_path / "gateway.toml", data)
    config = load_config(path)
    outbox = new_outbox(config.queue.path, [d.name for d in config.destinations])
    status_outbox = new_outbox(config.queue.path, [d.name for d in config.destinations])
    stream = FrameStream(
        create_driver("testpattern", {"width": 320, "height": 240, "fps": 30}),
        buffer_seconds=buffer_seconds,
    )
    stream.start()
    assert stream.wait_frame(timeout=10) is not None
    exams = ExamService(config, outbox, Capturer(config, outbox, "synthetic"))
    wl = WorklistService(config, background=True) if ris is not None else None
    app = create_app(
        UIContext(
            config=config,
            exams=exams,
            status_outbox=status_outbox,
            stream=stream,
            worklist=wl,
            config_path=path,
        )
    )
    try:
        scheme = "https" if "tls" in ui else "http"  # Secure cookies travel only then
        with TestClient(app, client=client_addr, base_url=f"{scheme}://127.0.0.1") as client:
            csrf = client.get("/api/session").json()["csrf"]
            yield Rig(client, csrf, wl, path, outbox)
    finally:
        if wl is not None:
            wl.close()
        stream.stop()
        outbox.close()
        status_outbox.close()


@pytest.fixture
def rig(tmp_path: Path, pki: PKI) -> Iterator[Rig]:
    yield from _make_app(tmp_path, pki, free_port())  # a PACS that is down


def _error(r: Any, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    message = r.json()["error"]
    assert isinstance(message, str) and message and "\n" not in message
    return str(message)


def test_pages_render_with_csrf_and_accessible_controls(rig: Rig) -> None:
    page = rig.client.get("/")
    assert page.status_code == 200
    assert 'name="csrf-token"' in page.text and "Unscheduled patient" in page.text
    exam_id = rig.start()
    exam = rig.client.get(f"/exam/{exam_id}").text
    for name in ("Capture", "Record", "Save last 10 s", "Finish", "Discontinue"):
        assert f">{name}<" in exam
    assert "Doe, Jane" in exam
    assert rig.client.get("/exam/nope", follow_redirects=False).status_code == 303
    assert rig.client.get("/settings").status_code == 200
    assert rig.client.get("/static/app.js").status_code == 200
    still = rig.client.get("/api/preview.jpg")
    assert still.headers["content-type"] == "image/jpeg" and still.content[:2] == b"\xff\xd8"
    assert "openapi.json" in rig.client.get("/api").text
    assert "cdn" not in page.text.lower() and "https://" not in page.text


def test_openapi_documents_every_endpoint(rig: Rig) -> None:
    doc = rig.client.get("/api/openapi.json").json()
    assert doc == rig.client.app.openapi()  # type: ignore[attr-defined]
    assert doc["openapi"].startswith("3.")
    routes = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert ("POST", "/api/exams/{exam_id}/capture") in routes
    assert ("PUT", "/api/settings") in routes
    body = doc["paths"]["/api/exams"]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    if "$ref" in schema:  # FastAPI puts models under components
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert "patient" in schema["properties"]
    assert all(op["summary"] for ops in doc["paths"].values() for op in ops.values())
    # Responses are documented by their models, refusals by the one-line error.
    capture = doc["paths"]["/api/exams/{exam_id}/capture"]["post"]["responses"]
    assert capture["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/ShotView")
    assert capture["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")


def test_exam_flow_capture_delete_finish(rig: Rig) -> None:
    exam_id = rig.start(birth_date="1980-02-03", sex="F")
    assert rig.client.get("/api/exams/current").json()["id"] == exam_id
    shots = [rig.post(f"/api/exams/{exam_id}/capture") for _ in range(3)]
    assert [s.status_code for s in shots] == [201] * 3
    ids = [s.json()["id"] for s in shots]
    thumb = rig.client.get(shots[0].json()["thumb_url"])
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    assert rig.client.get(shots[0].json()["image_url"]).content[:2] == b"\xff\xd8"
    r = rig.client.delete(
        f"/api/exams/{exam_id}/objects/{ids[1]}", headers={"X-CSRF-Token": rig.csrf}
    )
    assert r.status_code == 200
    _error(
        rig.client.delete(
            f"/api/exams/{exam_id}/objects/{ids[1]}", headers={"X-CSRF-Token": rig.csrf}
        ),
        404,
    )
    exam = rig.client.get(f"/api/exams/{exam_id}").json()
    assert [o["id"] for o in exam["objects"]] == [ids[0], ids[2]]
    assert [d.state for d in rig.outbox.deliveries()] == [DeliveryState.HELD] * 2
    # A second exam while one is open is refused.
    _error(rig.post("/api/exams", {"patient": {"family_name": "X", "id": "2"}}), 409)
    r = rig.post(f"/api/exams/{exam_id}/finish")
    assert r.status_code == 200 and r.json()["queued"] == 2
    assert [d.state for d in rig.outbox.deliveries()] == [DeliveryState.PENDING] * 2
    assert "completed" in _error(rig.post(f"/api/exams/{exam_id}/finish"), 409)
    _error(rig.post(f"/api/exams/{exam_id}/capture"), 409)
    _error(rig.client.get("/api/exams/current"), 404)


def test_discontinue_needs_a_reason(rig: Rig) -> None:
    exam_id = rig.start()
    rig.post(f"/api/exams/{exam_id}/capture")
    assert "reason" in _error(rig.post(f"/api/exams/{exam_id}/discontinue", {}), 422)
    assert "reason" in _error(rig.post(f"/api/exams/{exam_id}/discontinue", {"reason": "   "}), 422)
    _error(rig.post(f"/api/exams/{exam_id}/discontinue", {"reason": "x" * 65}), 422)
    r = rig.post(f"/api/exams/{exam_id}/discontinue", {"reason": "Patient left"})
    assert r.status_code == 200 and r.json()["state"] == "discontinued"


def test_bad_input_is_a_clear_4xx(rig: Rig) -> None:
    assert "CSRF" in _error(rig.client.post("/api/exams", json={}), 403)
    wrong = rig.client.post("/api/exams", json={}, headers={"X-CSRF-Token": "forged"})
    _error(wrong, 403)
    _error(rig.post("/api/exams", {}), 422)
    msg = _error(rig.post("/api/exams", {"patient": {"family_name": "Doe", "id": 123}}), 422)
    assert "patient.id" in msg
    long = rig.post("/api/exams", {"patient": {"family_name": "D" * 65, "id": "1"}})
    assert "65 characters, at most 64" in _error(long, 422)
    assert list(long.json()["fields"]) == ["family_name"]
    _error(rig.post("/api/exams", {"patient": {"family_name": "Doe", "id": "1", "sex": "X"}}), 422)
    _error(rig.post("/api/exams", {"patient": {"family_name": "Doe", "id": "1", "extra": 1}}), 422)
    _error(rig.post("/api/exams", {"patient": {"family_name": "Do\\e", "id": "1"}}), 422)
    _error(
        rig.post(
            "/api/exams", {"patient": {"family_name": "Doe", "id": "1", "birth_date": "soon"}}
        ),
        422,
    )
    _error(rig.post("/api/exams", {"worklist_key": "no/such"}), 404)
    big = rig.client.post(
        "/api/exams",
        content=b'{"patient": "' + b"x" * 20000 + b'"}',
        headers={"X-CSRF-Token": rig.csrf, "Content-Type": "application/json"},
    )
    _error(big, 413)
    notjson = rig.client.post("/api/exams", content=b"{nope", headers={"X-CSRF-Token": rig.csrf})
    assert "JSON" in _error(notjson, 400)
    _error(rig.post("/api/exams", [1, 2]), 400)
    for path in ("capture", "record/start", "record/stop", "save-last", "finish"):
        _error(rig.post(f"/api/exams/unknown/{path}"), 404)
    _error(rig.post("/api/exams/unknown/discontinue", {"reason": "x"}), 404)
    _error(rig.client.get("/api/exams/unknown"), 404)
    _error(rig.client.get("/api/exams/unknown/objects/1/thumb.jpg"), 404)
    exam_id = rig.start()
    _error(rig.client.get(f"/api/exams/{exam_id}/objects/abc/thumb.jpg"), 404)
    _error(rig.client.get(f"/api/exams/{exam_id}/objects/99/image.jpg"), 404)
    _error(
        rig.client.delete(f"/api/exams/{exam_id}/objects/99", headers={"X-CSRF-Token": rig.csrf}),
        404,
    )
    _error(rig.post(f"/api/exams/{exam_id}/record/stop"), 409)
    rig.outbox.policy = replace(
        rig.outbox.policy, min_free_mb=10**9
    )  # the disk is "full": capture refused, said plainly
    assert "capture refused" in _error(rig.post(f"/api/exams/{exam_id}/capture"), 507)
    rig.outbox.policy = replace(rig.outbox.policy, min_free_mb=0)
    _error(rig.client.get("/api/no-such-thing"), 404)
    _error(rig.client.get("/api/exams"), 405)
    _error(rig.post("/api/worklist/search", {"text": "x" * 65}), 422)
    _error(rig.post("/api/worklist/search", {"text": 5}), 422)
    _error(rig.post("/api/pedal", {"action": "explode"}), 422)


@pytest.fixture
def ris(tmp_path: Path) -> Iterator[RisPeer]:
    server = RisPeer(tmp_path / "ris-root").start()
    yield server
    server.stop()


def _ids(view: dict[str, Any]) -> list[str]:
    return [e["accession_number"] or e["patient_id"] for e in view["entries"]]


def test_worklist_dates_station_and_search_against_the_ris(
    tmp_path: Path, pki: PKI, ris: RisPeer
) -> None:
    for rig in _make_app(tmp_path, pki, None, ris=ris):
        listing = rig.client.get("/api/worklist").json()
        assert _ids(listing) == ["ACC100", "200", "ACC500", "ACC-HF1", "ACC-HF2"]
        assert listing["cached_at"] is None and listing["dates"] == "today"
        assert listing["range_label"] == f"{date.today():%a} {date.today().day} {date.today():%b}"
        assert listing["station_label"] == "this station (EDGE1)"
        müller = listing["entries"][2]["patient"]
        assert müller["display_name"] == "Müller, Jürgen Maria" and müller["sex_text"] == "Female"
        # The two Haydn rows say what tells them apart.
        haydn = [e["procedure"] for e in listing["entries"] if e["patient_id"] == "HF"]
        assert haydn == ["Shoulder left", "Shoulder right"]

        def search(text: str, rig: Rig = rig, **more: Any) -> dict[str, Any]:
            r = rig.post("/api/worklist/search", {"text": text, **more})
            assert r.status_code == 200, r.text
            return dict(r.json())

        around = search("", dates="around")
        assert {"ACC-YEST", "ACC-TMRW"} <= set(_ids(around)) and "ACC-OTHER" not in _ids(around)
        assert "–" in around["range_label"]
        assert "ACC-OTHER" in _ids(search("", station="all"))
        # Search asks the RIS with the keys, in one association per search.
        before = ris.associations()
        assert _ids(search("yester")) == []  # today only
        assert _ids(search("yester", dates="any")) == ["ACC-YEST"]  # lower case, a prefix
        assert _ids(search("haydn fr", dates="any")) == ["ACC-HF1", "ACC-HF2"]
        assert _ids(search("ACC-OTHER", dates="any")) == []  # another station
        assert _ids(search("ACC-OTHER", dates="any", station="all")) == ["ACC-OTHER"]
        assert _ids(search("T1", dates="week")) in (["ACC-TMRW"], [])  # tomorrow may be next week
        assert _ids(search("OS1", dates="any", station="all")) == ["ACC-OTHER"]  # by patient ID
        assert ris.associations() - before == 7
        found = search("ACC-YEST", dates="any")["entries"]
        r = rig.post("/api/exams", {"worklist_key": found[0]["key"]})
        assert r.status_code == 201, r.text
        exam = r.json()
        assert exam["scheduled"] and exam["accession_number"] == "ACC-YEST"
        assert exam["patient"]["display_name"] == "Yester, Day"


def test_worklist_offline_answers_from_the_cache_without_asking_again(
    tmp_path: Path, pki: PKI, ris: RisPeer
) -> None:
    for rig in _make_app(tmp_path, pki, None, ris=ris):
        assert rig.worklist is not None
        live = rig.post("/api/worklist/search", {"text": ""}).json()
        assert live["error"] is None and len(live["entries"]) == 5
        ris.stop()
        first = rig.post("/api/worklist/search", {"text": ""}).json()
        assert first["cached_at"] is not None and "unreachable" in first["error"]
        assert [e["key"] for e in first["entries"]] == [e["key"] for e in live["entries"]]
        assert rig.worklist.link_status().state == "down"
        status = rig.client.get("/api/status").json()
        assert status["ris"]["state"] == "down" and "RIS unreachable since" in status["ris"]["text"]
        # Known down: every further look is the cache at once, never a new
        # connection (the RIS is back, but nobody asked it yet: the retry waits).
        ris.resume()
        seen = ris.associations()
        for text in ("r", "ro", "roe"):
            cached = rig.post("/api/worklist/search", {"text": text}).json()
            assert cached["cached_at"] is not None
        assert [e["accession_number"] for e in cached["entries"]] == ["ACC100"]
        assert ris.associations() == seen
        # Refresh has the retry go now; the answer is still the cache at once.
        refreshed = rig.post("/api/worklist/search", {"text": "", "refresh": True}).json()
        assert refreshed["cached_at"] is not None
        wait_until(lambda w=rig.worklist: w.link_status().state == "up", 20)
        fresh = rig.post("/api/worklist/search", {"text": ""}).json()
        assert fresh["cached_at"] is None and fresh["error"] is None


def test_confirm_check_names_every_problem_and_the_open_exam(rig: Rig) -> None:
    def check(**patient: Any) -> Any:
        return rig.post("/api/exams/check", {"patient": {"id": "P9", **patient}})

    ok = check(family_name="Doe", given_name="Jane Ann", sex="O", birth_date="1980-02-03")
    assert ok.status_code == 200, ok.text
    view = ok.json()
    assert view["patient"]["display_name"] == "Doe, Jane Ann"
    assert view["patient"]["sex_text"] == "Other" and view["open_exam"] is None
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    r = check(family_name="Doe", birth_date=tomorrow)
    _error(r, 422)
    assert "future" in r.json()["fields"]["birth_date"]
    r = check(family_name="D" * 40, given_name="J" * 30)  # 71 together
    _error(r, 422)
    assert "together" in r.json()["fields"]["family_name"]
    r = check(family_name="Doe", birth_date="1980-13-01")
    assert r.json()["fields"] == {"birth_date": "Not a date; use YYYY-MM-DD"}
    # The API refuses a future birth date on Start as well.
    r = rig.post("/api/exams", {"patient": {"family_name": "X", "id": "1", "birth_date": tomorrow}})
    assert "future" in _error(r, 422)
    exam_id = rig.start()
    other = check(family_name="Roe").json()["open_exam"]
    assert other["id"] == exam_id and other["patient"]["display_name"] == "Doe, Jane"


def test_wrong_patient_holds_the_images_until_told(rig: Rig) -> None:
    exam_id = rig.start()
    for _ in range(2):
        rig.post(f"/api/exams/{exam_id}/capture")
    r = rig.post(f"/api/exams/{exam_id}/discontinue", {"reason": "110514"})
    assert "delete them or send them anyway" in _error(r, 409)
    assert r.json()["code"] == "confirm_images" and r.json()["held"] == 2
    assert [d.state for d in rig.outbox.deliveries()] == [DeliveryState.HELD] * 2
    r = rig.post(
        f"/api/exams/{exam_id}/discontinue", {"reason": "Wrong patient", "images": "delete"}
    )
    assert r.status_code == 200 and r.json()["queued"] == 0
    assert rig.outbox.deliveries() == [] and rig.outbox.objects() == []
    # Send anyway: they go out as usual.
    second = rig.start()
    rig.post(f"/api/exams/{second}/capture")
    r = rig.post(f"/api/exams/{second}/discontinue", {"reason": "110514", "images": "send"})
    assert r.status_code == 200 and r.json()["queued"] == 1
    _error(rig.post(f"/api/exams/{second}/discontinue", {"reason": "x", "images": "maybe"}), 422)


def test_csrf_refusal_says_what_to_do(rig: Rig) -> None:
    r = rig.client.post("/api/exams", json={"patient": {}}, headers={"X-CSRF-Token": "stale"})
    assert _error(r, 403) and r.json()["code"] == "csrf"
    fresh = rig.client.get("/api/session").json()["csrf"]
    assert fresh == rig.csrf  # the same session: the page simply retries with it


def test_clips_record_and_save_last(rig: Rig) -> None:
    exam_id = rig.start()
    assert rig.post(f"/api/exams/{exam_id}/record/start").status_code == 200
    _error(rig.post(f"/api/exams/{exam_id}/record/start"), 409)
    time.sleep(0.5)
    recording = rig.client.get(f"/api/exams/{exam_id}").json()
    assert recording["recording"] and recording["recording_seconds"] > 0
    assert recording["record_limit"] == 2.0
    stopped = rig.post(f"/api/exams/{exam_id}/record/stop")
    assert stopped.status_code == 201 and stopped.json()["kind"] == "clip"
    clip = stopped.json()
    assert clip["seconds"] > 0 and 1 <= len(clip["preview_urls"]) <= 30
    frame = rig.client.get(clip["preview_urls"][-1])
    assert frame.status_code == 200 and frame.content[:2] == b"\xff\xd8"
    _error(rig.client.get(clip["preview_urls"][0].replace("/0.jpg", "/99.jpg")), 404)
    saved = rig.post(f"/api/exams/{exam_id}/save-last")
    assert saved.status_code == 201 and saved.json()["frames"] >= 1
    exam = rig.client.get(f"/api/exams/{exam_id}").json()
    assert exam["counts"] == {"images": 0, "clips": 2}


def test_save_last_never_reaches_before_the_exam(rig: Rig) -> None:
    """Pressed right after the start, "Save last 10 s" holds only what was
    filmed since: the frames before may show the previous patient."""
    time.sleep(1.5)  # the buffer holds 1.5 s of frames from before the exam
    started = time.time()
    exam_id = rig.start()
    saved = rig.post(f"/api/exams/{exam_id}/save-last")
    elapsed = time.time() - started
    if saved.status_code == 409:  # no frame since the start yet: said so
        assert "since this exam started" in saved.json()["error"]
        return
    clip = saved.json()
    assert clip["frames"] <= 30 * elapsed + 2  # a 30 fps test pattern
    assert clip["seconds"] <= elapsed + 0.1


def test_save_last_saves_what_the_buffer_holds(tmp_path: Path, pki: PKI) -> None:
    """capture.buffer_seconds sets how far back "Save last N s" reaches, and
    the button says so."""
    for rig in _make_app(tmp_path, pki, free_port(), buffer_seconds=1.5):
        exam_id = rig.start()
        assert ">Save last 1.5 s<" in rig.client.get(f"/exam/{exam_id}").text
        time.sleep(2.5)  # more than the buffer holds
        saved = rig.post(f"/api/exams/{exam_id}/save-last")
        assert saved.status_code == 201
        assert 2 <= saved.json()["frames"] <= 1.5 * 30 + 3  # 30 fps test pattern


def test_pedal_captures_on_the_open_exam(rig: Rig) -> None:
    assert "no exam" in _error(rig.post("/api/pedal", {"action": "capture"}), 409)
    exam_id = rig.start()
    r = rig.post("/api/pedal", {"action": "capture"})
    assert r.status_code == 200 and r.json()["ok"]
    desk = app_state(rig.client.app).desk  # type: ignore[arg-type]
    event = desk.trigger("capture")
    assert event["ok"] and event["object"]["kind"] == "image"
    assert len(rig.client.get(f"/api/exams/{exam_id}").json()["objects"]) == 2


def test_pin_unlock_rate_limit_and_settings(tmp_path: Path, pki: PKI, storescp: StoreSCP) -> None:
    storescp.start()
    for rig in _make_app(tmp_path, pki, storescp.port):
        assert "locked" in _error(rig.client.get("/api/settings"), 403)
        assert "wrong PIN" in _error(rig.post("/api/pin/unlock", {"pin": "000000"}), 403)
        _error(rig.post("/api/pin/unlock", {"pin": 2468}), 422)
        assert rig.post("/api/pin/unlock", {"pin": PIN}).status_code == 200
        view = rig.client.get("/api/settings").json()
        assert view["destinations"][0]["name"] == "pacs" and view["pin_set"]
        echo = rig.post("/api/settings/echo", {"name": "pacs"}).json()
        assert echo["ok"] and echo["detail"].startswith("TLSv1.")
        _error(rig.post("/api/settings/echo", {"name": "nope"}), 404)
        bad = dict(view["destinations"][0], port="eleven")
        refused = rig.client.put(
            "/api/settings",
            json={"destinations": [bad], "worklist": {"ae_title": "RIS", "host": "", "port": 0}},
            headers={"X-CSRF-Token": rig.csrf},
        )
        msg = _error(refused, 422)
        assert msg.startswith("Destination 1 — Port must be 1–65535; ")
        assert refused.json()["fields"] == {
            "destinations.0.port": "Port must be 1–65535",
            "worklist.host": "Host is needed",
            "worklist.port": "Port must be 1–65535",
        }
        _error(
            rig.client.put(
                "/api/settings", json={"station": {}}, headers={"X-CSRF-Token": rig.csrf}
            ),
            422,
        )
        _error(rig.client.put("/api/settings", json={}, headers={"X-CSRF-Token": rig.csrf}), 422)
        before = rig.config_path.read_text()
        assert tomllib.loads(before)["destinations"][0]["port"] == storescp.port
        good = [
            dict(view["destinations"][0], ae_title="PACS2"),
            dict(view["destinations"][0], name="backup"),
        ]
        r = rig.client.put(
            "/api/settings",
            json={"destinations": good, "worklist": None},
            headers={"X-CSRF-Token": rig.csrf},
        )
        assert r.status_code == 200, r.text
        saved = load_config(rig.config_path)
        assert [d.name for d in saved.destinations] == ["pacs", "backup"]
        assert saved.destinations[0].ae_title == "PACS2" and saved.ui.pin_hash
        # Changing the PIN (unlocked) keeps the rest of the file.
        _error(rig.post("/api/pin/setup", {"pin": "12"}), 422)
        assert "6 to 12 digits" in _error(rig.post("/api/pin/setup", {"pin": "12345"}), 422)
        assert rig.post("/api/pin/setup", {"pin": "135790"}).status_code == 200
        stored = load_config(rig.config_path).ui.pin_hash
        assert (
            stored and verify_pin("135790", stored) and "135790" not in rig.config_path.read_text()
        )
        assert rig.post("/api/pin/lock").status_code == 200
        _error(rig.client.get("/api/settings"), 403)
        tries = [rig.post("/api/pin/unlock", {"pin": "111111"}) for _ in range(4)]
        assert [_error(t, 403) and t.json()["tries_left"] for t in tries] == [4, 3, 2, 1]
        locked = rig.post("/api/pin/unlock", {"pin": "111111"})
        assert "locked for" in _error(locked, 403) and locked.json()["tries_left"] == 0
        waiting = rig.post("/api/pin/unlock", {"pin": "135790"})
        assert "try again" in _error(waiting, 429) and 0 < waiting.json()["wait_seconds"] <= 30


def test_first_pin_is_chosen_at_the_box(tmp_path: Path, pki: PKI) -> None:
    for rig in _make_app(tmp_path, pki, None, pin=None):
        assert not rig.client.get("/api/session").json()["pin_set"]
        _error(rig.post("/api/pin/unlock", {"pin": "123456"}), 409)
        _error(rig.post("/api/pin/setup", {"pin": "12ab"}), 422)
        assert rig.post("/api/pin/setup", {"pin": "123456"}).status_code == 200
        assert rig.client.get("/api/settings").status_code == 200
        assert verify_pin("123456", load_config(rig.config_path).ui.pin_hash or "")


def test_remote_clients_must_log_in(tmp_path: Path, pki: PKI) -> None:
    # Bound beyond loopback; the client address is a documentation address and
    # no packet leaves the process (the app is called in-process).
    for rig in _make_app(
        tmp_path, pki, None, listen="0.0.0.0:8080", client_addr=("192.0.2.7", 4000)
    ):
        session = rig.client.get("/api/session").json()
        assert session["login_required"] and not session["logged_in"]
        assert "log in" in _error(rig.client.get("/api/status"), 401)
        _error(rig.post("/api/exams", {"patient": {"family_name": "Doe", "id": "1"}}), 401)
        page = rig.client.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        _error(rig.client.post("/api/login", json={"pin": PIN}), 403)  # no CSRF token
        _error(rig.post("/api/login", {"pin": "999999"}), 403)
        _error(rig.post("/api/pin/setup", {"pin": "123456"}), 401)
        assert rig.post("/api/login", {"pin": PIN}).status_code == 200
        assert rig.client.get("/api/status").status_code == 200
        assert rig.client.get("/").status_code == 200


def test_status_reports_queue_and_link(tmp_path: Path, pki: PKI) -> None:
    dead = free_port()  # nothing listens: the link is down
    for rig in _make_app(tmp_path, pki, dead):
        status = rig.client.get("/api/status").json()
        assert status["queue"] == {"held": 0, "pending": 0, "sent": 0, "failed": 0}
        assert status["links"][0]["state"] == "unknown"
        assert status["video"]["connected"] and status["clock"]["ok"]
        exam_id = rig.start()
        rig.post(f"/api/exams/{exam_id}/capture")
        rig.post(f"/api/exams/{exam_id}/finish")
        obj = rig.outbox.objects()[0]
        # Its own back-off is 10 min; the forwarder tries the link within 30 s.
        failed_at = time.time()
        due = rig.outbox.mark_retry(obj.id, "pacs", "PACS (localhost): connection refused", 600)
        assert due >= failed_at + 599
        app_state(rig.client.app).board.ttl = 0  # type: ignore[arg-type]
        status = rig.client.get("/api/status").json()
        assert status["links"][0]["state"] == "down"
        assert failed_at < status["links"][0]["next_try"] <= time.time() + 30
        text = status["messages"][0]["text"]
        assert re.match(r"PACS unreachable since \d\d:\d\d — 1 image waiting, next try ", text)
        assert status["links"][0]["since"] is not None
        # A refused object: counted, and why is one tap away.
        rig.outbox.mark_failed(obj.id, "pacs", "PACS refused: 0xA700 out of resources")
        status = rig.client.get("/api/status").json()
        assert status["queue"]["failed"] == 1
        assert status["failures"][0]["reason"] == "PACS refused: 0xA700 out of resources"


def test_recorder_stops_at_its_memory_cap() -> None:
    from gateway.ui.desk import Recorder

    stream = FrameStream(create_driver("testpattern", {"width": 64, "height": 48, "fps": 60}))
    stream.start()
    try:
        hit: list[bool] = []
        recorder = Recorder(
            stream, 30.0, max_bytes=5 * 64 * 48 * 3, on_limit=lambda: hit.append(True)
        )
        wait = time.monotonic() + 20
        while recorder.running and time.monotonic() < wait:
            time.sleep(0.05)
        frames = recorder.stop()
        assert hit == [True] and len(frames) == 5
        assert [f.index for f in frames] == sorted({f.index for f in frames})
    finally:
        stream.stop()


def test_status_warns_about_disk_and_clock(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.ui import status as status_module

    board = app_state(rig.client.app).board  # type: ignore[arg-type]
    board.ttl = 0
    board.config = board.config.model_copy(
        update={"queue": board.config.queue.model_copy(update={"min_free_mb": 10**9})}
    )
    monkeypatch.setattr(status_module, "CLOCK_FLOOR", time.time() + 86400)
    current = rig.client.get("/api/status").json()
    texts = [m["text"] for m in current["messages"]]
    assert any(t.startswith("Disk full — ") and "capture is refused" in t for t in texts), texts
    assert any(t.startswith("Clock is wrong (") for t in texts), texts
    assert current["disk"]["low"] and not current["clock"]["ok"]
