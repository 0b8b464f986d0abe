"""The touchscreen UI against hostile LAN clients, on the real server: the
`dicom-gateway run --only ui` process (uvicorn) listening on 0.0.0.0 with
HTTPS, inside a network namespace of its own (only `lo`, carrying
127.0.0.1 for the kiosk and 198.51.100.7 for "a client on the LAN"; nothing
reaches or leaves the host's network). The test's clients enter that
namespace on threads of their own (setns(2)).

Checked: guesses sent at once cannot overlap the back-off, and a remote
guesser never locks the kiosk out; anonymous remote clients get no session
(a flood cannot evict the kiosk's); HTTPS only, Secure cookies, TLS ≥ 1.2,
a new token at login; request bodies refused before they are read, chunked
ones included."""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from gateway.ui.security import hash_pin
from tests.support.audit import event_code, parse_frame
from tests.support.gateway import gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import GATEWAY, REPO, require_tool, stop_process

PIN = "583021"
LAN = "198.51.100.7"  # TEST-NET-2, on the namespace's lo only
PORT = 8443
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


@dataclass
class Namespaced:
    """The UI service in its own network namespace, and a way in; `syslog`
    receives its audit messages (a Unix socket: reachable from any network
    namespace)."""

    proc: subprocess.Popen[bytes]
    ca: Path
    log: Path
    syslog: socket.socket

    def audit(self, count: int) -> list[tuple[tuple[str, str | None], Any]]:
        """The next `count` audit messages: (event ID, type) codes and the XML."""
        out = []
        for _ in range(count):
            _, xml = parse_frame(self.syslog.recv(65536))
            out.append((event_code(xml), xml))
        return out

    def run(self, fn: Callable[[], T]) -> T:
        """`fn()` on a thread that joined the service's network namespace
        (threads it starts are in it too)."""
        out: list[Any] = []

        def body() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{self.proc.pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    out.append(OSError(ctypes.get_errno(), "setns"))
                    return
            finally:
                os.close(fd)
            try:
                out.append(fn())
            except BaseException as exc:  # re-raised on the test's thread
                out.append(exc)

        thread = threading.Thread(target=body)
        thread.start()
        thread.join(300)
        assert out, "namespace thread did not finish"
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]  # type: ignore[no-any-return]

    def client(self, host: str, **kw: Any) -> httpx.Client:
        return httpx.Client(
            base_url=f"https://{host}:{PORT}", verify=self._trust(), timeout=30, **kw
        )

    def async_client(self, host: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"https://{host}:{PORT}", verify=self._trust(), timeout=60
        )

    def _trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def _csrf(client: httpx.Client) -> str:
    r = client.get("/api/session")
    assert r.status_code == 200, r.text
    return str(r.json()["csrf"])


@pytest.fixture
def ui(tmp_path: Path, pki: PKI) -> Iterator[Namespaced]:
    require_tool("unshare")
    require_tool("ip")
    cert = pki.ca.issue(tmp_path, "ui", hosts=("localhost", "127.0.0.1", LAN))
    data = gateway_config(
        tmp_path,
        pki,
        None,
        ui={
            "listen": f"0.0.0.0:{PORT}",
            "pin_hash": hash_pin(PIN),
            "tls": {"cert": str(cert.cert), "key": str(cert.key)},
        },
    )
    config = write_config(tmp_path / "gateway.toml", data)
    log = tmp_path / "ui.log"
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(str(tmp_path / "dev-log"))
    syslog.settimeout(20)
    script = (
        f"ip link set lo up && ip addr add {LAN}/32 dev lo && "
        f'exec "$@" --config {config} run --only ui'
    )
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", script, "sh", *GATEWAY],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, "DICOM_GATEWAY_AUDIT_SOCKET": str(tmp_path / "dev-log")},
        )
    ns = Namespaced(proc, pki.ca.cert, log, syslog)
    try:
        deadline = time.monotonic() + 60

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=0.5).close()
                return True
            except OSError:
                return False

        while not ns.run(listening):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "UI did not listen"
            time.sleep(0.2)
        yield ns
    finally:
        stop_process(proc, timeout=20)
        syslog.close()
    assert "Traceback" not in log.read_text(errors="replace")


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
            csrf = _csrf(remote)
            right = remote.post("/api/login", json={"pin": PIN}, headers={"x-csrf-token": csrf})
        with ui.client("127.0.0.1") as kiosk:
            csrf = _csrf(kiosk)
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
            headers = {"x-csrf-token": _csrf(kiosk)}
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
            csrf = _csrf(kiosk)
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
            csrf = _csrf(kiosk)
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
