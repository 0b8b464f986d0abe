"""The touchscreen UI against hostile LAN clients, on the real server: the
`dicom-gateway run --only ui` process (uvicorn) listening on 0.0.0.0 with
HTTPS (and the kiosk's plain-HTTP listener on loopback), inside a network
namespace of its own (`tests.support.netns`: nothing reaches or leaves the
host's network).

Checked: guesses sent at once cannot overlap the back-off, and a remote
guesser never locks the kiosk out; anonymous remote clients get no session
(a flood cannot evict the kiosk's); HTTPS only, Secure cookies, TLS ≥ 1.2,
a new token at login; request bodies refused before they are read, chunked
ones included."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.netns import KIOSK_PORT, LAN, PIN, PORT, Namespaced, csrf_of, namespaced_ui
from tests.support.pki import PKI


@pytest.fixture
def ui(tmp_path: Path, pki: PKI) -> Iterator[Namespaced]:
    with namespaced_ui(tmp_path, pki) as namespaced:
        yield namespaced


def test_concurrent_guesses_cannot_overlap_the_backoff(ui: Namespaced) -> None:
    guesses = 30

    async def flood() -> list[httpx.Response]:
        async with ui.async_client(LAN) as client:
            csrf = (await client.get("/api/session")).json()["csrf"]
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            "/api/login",
                            json={"pin": f"{100000 + n}"},
                            headers={"x-csrf-token": csrf},
                        )
                        for n in range(guesses)
                    )
                )
            )

    answers = ui.run(lambda: asyncio.run(flood()))
    checked = [r for r in answers if r.status_code == 403]
    refused = [r for r in answers if r.status_code == 429]
    assert len(checked) + len(refused) == guesses, [r.text for r in answers]
    # Exactly the five free tries were checked, one after the other.
    assert sorted(r.json()["tries_left"] for r in checked) == [0, 1, 2, 3, 4]
    assert all(r.json()["wait_seconds"] > 0 for r in refused)

    def after() -> tuple[int, int, int]:
        with ui.client(LAN) as remote:
            csrf = csrf_of(remote)
            right = remote.post("/api/login", json={"pin": PIN}, headers={"x-csrf-token": csrf})
        with ui.client("127.0.0.1") as kiosk:
            csrf = csrf_of(kiosk)
            unlock = kiosk.post(
                "/api/pin/unlock", json={"pin": PIN}, headers={"x-csrf-token": csrf}
            )
            settings = kiosk.get("/api/settings")
        return right.status_code, unlock.status_code, settings.status_code

    # The guesser stays locked out even with the right PIN; the kiosk is not.
    assert ui.run(after) == (429, 200, 200)

    # Audited (PS3.15 A.5, schema-checked): the application start, five
    # User Authentication failures from the LAN address, then one lockout.
    events = ui.audit(7)
    assert [code for code, _ in events] == [
        ("110100", "110120"),
        *[("110114", "110122")] * 5,
        ("110113", "110137"),
    ]
    for _, xml in events[1:]:
        point = xml.find("ActiveParticipant[@UserID='settings-pin']")
        assert point is not None and point.get("NetworkAccessPointID") == LAN
    lockout = events[-1][1].find("EventIdentification/EventOutcomeDescription")
    assert lockout is not None and "after 5 wrong tries" in (lockout.text or "")

    def change() -> int:
        with ui.client("127.0.0.1") as kiosk:
            headers = {"x-csrf-token": csrf_of(kiosk)}
            kiosk.post("/api/pin/unlock", json={"pin": PIN}, headers=headers)
            r = kiosk.put("/api/settings", json={"worklist": None}, headers=headers)
            return r.status_code

    assert ui.run(change) == 200
    [(code, xml)] = ui.audit(1)
    assert code == ("110113", "110131")  # Security Alert: Software Configuration
    described = xml.find("EventIdentification/EventOutcomeDescription")
    assert described is not None and described.text == "settings changed: worklist"
    assert xml.find("ActiveParticipant[@UserID='touchscreen']") is not None


def test_anonymous_remote_clients_get_no_session(ui: Namespaced) -> None:
    def flood() -> dict[str, Any]:
        with ui.client("127.0.0.1") as kiosk:
            csrf = csrf_of(kiosk)
            kiosk_cookie = kiosk.cookies.get("gw_session")
            set_cookies: set[str] = set()
            for _ in range(300):  # more than either pool of sessions holds
                with ui.client(LAN) as stranger:
                    r = stranger.get("/api/session")
                    page = stranger.get("/login")
                    set_cookies.update(c.split("=")[0] for c in r.headers.get_list("set-cookie"))
                    set_cookies.update(c.split("=")[0] for c in page.headers.get_list("set-cookie"))
                    assert r.json()["login_required"] and not r.json()["logged_in"]
                    assert stranger.get("/api/status").status_code == 401
            still = kiosk.post("/api/pin/lock", headers={"x-csrf-token": csrf})
            return {
                "kiosk": kiosk_cookie,
                "after": still.status_code,
                "same": kiosk.cookies.get("gw_session") == kiosk_cookie,
                "cookies": set_cookies,
            }

    result = ui.run(flood)
    assert result["kiosk"] and result["after"] == 200 and result["same"]
    assert result["cookies"] == {"gw_prelogin"}  # never a session cookie for them


def test_https_only_secure_cookies_and_a_new_token_at_login(ui: Namespaced) -> None:
    def probe() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with httpx.Client(base_url=f"http://{LAN}:{PORT}", timeout=10) as plain:
            try:
                out["plain"] = plain.get("/api/session").status_code
            except httpx.HTTPError as exc:
                out["plain"] = type(exc).__name__
        old = ssl.create_default_context(cafile=str(ui.ca))
        with warnings.catch_warnings():  # deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        try:
            with (
                socket.create_connection((LAN, PORT), timeout=10) as raw,
                old.wrap_socket(raw, server_hostname=LAN),
            ):
                out["tls11"] = "accepted"
        except (ssl.SSLError, OSError) as exc:
            out["tls11"] = type(exc).__name__
        with ui.client(LAN) as remote:
            r = remote.get("/api/session")
            out["prelogin_cookie"] = r.headers.get("set-cookie", "")
            csrf = r.json()["csrf"]
            first = remote.post("/api/login", json={"pin": PIN}, headers={"x-csrf-token": csrf})
            out["login_cookie"] = first.headers.get("set-cookie", "")
            token1 = remote.cookies.get("gw_session")
            csrf1 = first.json()["csrf"]
            second = remote.post("/api/login", json={"pin": PIN}, headers={"x-csrf-token": csrf1})
            token2 = remote.cookies.get("gw_session")
            out["rotated"] = bool(token1 and token2 and token1 != token2)
            out["second"] = second.status_code
            out["status"] = remote.get("/api/status").status_code
        with ui.client(LAN, cookies={"gw_session": token1 or ""}) as replay:
            out["old_token"] = replay.get("/api/status").status_code
        return out

    out = ui.run(probe)
    assert out["plain"] in (400, "RemoteProtocolError", "ReadError", "ConnectError"), out
    assert out["tls11"] != "accepted", out
    for cookie in (out["prelogin_cookie"], out["login_cookie"]):
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie, out
    assert out["rotated"] and out["second"] == 200 and out["status"] == 200, out
    assert out["old_token"] == 401, out  # the token from before the last login is dead


def test_the_kiosk_keeps_plain_http_on_loopback_only(ui: Namespaced) -> None:
    def probe() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{KIOSK_PORT}", timeout=10) as kiosk:
            r = kiosk.get("/api/session")
            out["session"] = r.json()
            out["cookie"] = r.headers.get("set-cookie", "")
            out["page"] = kiosk.get("/").status_code
            out["status"] = kiosk.get("/api/status").status_code
        try:
            socket.create_connection((LAN, KIOSK_PORT), timeout=5).close()
            out["lan"] = "connected"
        except OSError as exc:
            out["lan"] = type(exc).__name__
        return out

    out = ui.run(probe)
    assert out["session"]["logged_in"] and out["page"] == 200 and out["status"] == 200, out
    assert "gw_session=" in out["cookie"] and "Secure" not in out["cookie"], out
    assert out["lan"] == "ConnectionRefusedError", out  # plain HTTP never beyond loopback


def test_request_bodies_are_capped_before_they_are_read(ui: Namespaced) -> None:
    def probe() -> dict[str, Any]:
        out: dict[str, Any] = {}
        ctx = ssl.create_default_context(cafile=str(ui.ca))
        # An announced length far over the cap is refused from the headers
        # alone: no byte of the body is ever sent.
        with (
            socket.create_connection(("127.0.0.1", PORT), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(
                b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 4000000000\r\n\r\n"
            )
            out["announced"] = tls.recv(200).split(b"\r\n")[0]
        # Chunked, no Content-Length: cut off once past the cap.
        sent = 0
        total = 64 * 1024 * 1024

        def body() -> Iterator[bytes]:
            nonlocal sent
            chunk = b"1" * 65536
            while sent < total:
                sent += len(chunk)
                yield chunk

        with ui.client("127.0.0.1") as kiosk:
            csrf = csrf_of(kiosk)
            started = time.monotonic()
            try:
                r = kiosk.post(
                    "/api/pin/unlock",
                    content=body(),
                    headers={"x-csrf-token": csrf, "content-type": "application/json"},
                )
                out["chunked"] = (r.status_code, r.json().get("error", ""))
            except httpx.HTTPError as exc:  # the server may close while we still send
                out["chunked"] = (type(exc).__name__, "")
            out["seconds"] = time.monotonic() - started
            out["sent"] = sent
            out["after"] = kiosk.get("/api/status").status_code
        return out

    out = ui.run(probe)
    assert out["announced"] == b"HTTP/1.1 413 Request Entity Too Large", out
    status, error = out["chunked"]
    assert status in (413, "WriteError", "RemoteProtocolError", "ReadError"), out
    if status == 413:
        assert "at most 16384" in error, out
    # Far less than the 64 MiB offered went in: the server stopped reading.
    assert out["sent"] < 16 * 1024 * 1024, out
    assert out["after"] == 200, out
