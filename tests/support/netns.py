"""The UI service in a network namespace of its own: only `lo`, carrying
127.0.0.1 (the kiosk) and 198.51.100.7 ("a client on the LAN"), so tests can
be a remote client without any packet reaching or leaving the host's
network. The test's clients enter the namespace on threads of their own
(setns(2)); threads and processes they start are in it too."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from gateway.ui.security import hash_pin
from tests.support.audit import event_code, parse_frame
from tests.support.gateway import gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import GATEWAY, REPO, require_tool, stop_process

PIN = "583021"
LAN = "198.51.100.7"  # TEST-NET-2, on the namespace's lo only
PORT = 8443
KIOSK_PORT = 8080  # the kiosk unit's http://127.0.0.1:8080
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


def csrf_of(client: httpx.Client) -> str:
    r = client.get("/api/session")
    assert r.status_code == 200, r.text
    return str(r.json()["csrf"])


@contextlib.contextmanager
def namespaced_ui(tmp_path: Path, pki: PKI) -> Iterator[Namespaced]:
    """`dicom-gateway run --only ui` on 0.0.0.0:8443 (HTTPS, a certificate
    for 127.0.0.1 and LAN) and the kiosk's http://127.0.0.1:8080, in a
    network namespace of its own; audit messages to `Namespaced.syslog`."""
    require_tool("unshare")
    require_tool("ip")
    cert = pki.ca.issue(tmp_path, "ui", hosts=("localhost", "127.0.0.1", LAN))
    data = gateway_config(
        tmp_path,
        pki,
        None,
        ui={
            "listen": f"0.0.0.0:{PORT}",
            "kiosk_listen": f"127.0.0.1:{KIOSK_PORT}",
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
