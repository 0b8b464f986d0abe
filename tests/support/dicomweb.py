"""A DICOMweb archive as archives are deployed, on loopback: Orthanc with its
DICOMweb plugin (Debian's `orthanc`, `orthanc-dicomweb`) and HTTP basic
auth, behind Debian's nginx terminating HTTPS with a client certificate
required. Beside Orthanc, a fault proxy (a special peer, like the pynetdicom
ones) that nginx can route to: it forwards to the same Orthanc but answers
503, 202 with one instance failed, 409 for one instance, requires OAuth2
bearer tokens from its own token endpoint, or swallows a body as a sink.

Orthanc 1.10's own HTTPS crashes on the first connection on these machines,
hence nginx in front (which is how archives are exposed anyway)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.support.pki import PKI
from tests.support.process import free_port, require_tool, stop_process, wait_for_port

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "edge7", "orthanc-" + secrets.token_hex(8)


@dataclass
class Orthanc:
    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Orthanc:
        binary = require_tool("Orthanc")
        if not DICOMWEB_PLUGIN.is_file():
            import pytest

            pytest.fail("orthanc-dicomweb is not installed; run the tests through `make test`")
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-archive",
            "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpDescribeErrors": True,
            "StorageCompression": False,
            "KeepAlive": True,
            "HttpTimeout": 600,
            "HttpThreadsCount": 8,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config))
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen([binary, str(path)], stdout=log, stderr=log)
        wait_for_port(self.port, self.proc, timeout=60)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/system", auth=(USER, PASSWORD)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("Orthanc did not answer /system")

    def stop(self) -> None:
        stop_process(self.proc)

    def instance_count(self) -> int:
        r = httpx.get(self.base + "/statistics", auth=(USER, PASSWORD))
        return int(r.json()["CountInstances"])

    def delete(self, sop_instance_uid: str) -> None:
        found = httpx.post(
            self.base + "/tools/lookup", auth=(USER, PASSWORD), content=sop_instance_uid
        ).json()
        for hit in found:
            httpx.delete(self.base + f"/instances/{hit['ID']}", auth=(USER, PASSWORD))

    def has(self, sop_instance_uid: str) -> bool:
        r = httpx.post(
            self.base + "/tools/find",
            auth=(USER, PASSWORD),
            json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}},
        )
        return bool(r.json())


NGINX_CONF = """
{user}
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    # The buffered body stays visible in client_body_temp_path while it
    # arrives (a test waits for it to be part-way in before killing nginx).
    client_body_in_file_only clean;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    proxy_read_timeout 600s;
    proxy_send_timeout 600s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        location /orthanc/ {{
            proxy_pass http://127.0.0.1:{orthanc}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location /stream/ {{
            proxy_pass http://127.0.0.1:{orthanc}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            client_body_in_file_only off;
        }}
        location /faults/ {{
            proxy_pass http://127.0.0.1:{faults}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """HTTPS with a client certificate required (signed by the test CA),
    `/orthanc/` to Orthanc (request bodies buffered, as nginx does by
    default), `/stream/` to Orthanc with bodies streamed through as they
    arrive, and `/faults/` to the fault proxy (streamed)."""

    root: Path
    pki: PKI
    orthanc_port: int
    faults_port: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, route: str = "orthanc") -> str:
        return f"https://localhost:{self.port}/{route}/dicom-web"

    def start(self) -> Nginx:
        binary = require_tool("nginx")
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                # As root, nginx's worker would become `nobody`, shut out of
                # the test's private directories.
                user="user root root;" if os.geteuid() == 0 else "",
                root=self.root,
                port=self.port,
                cert=self.pki.server.cert,
                key=self.pki.server.key,
                ca=self.pki.ca.cert,
                orthanc=self.orthanc_port,
                faults=self.faults_port,
            )
        )
        log = open(self.root / "nginx.out", "ab")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self.root)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        wait_for_port(self.port, self.proc, timeout=30)
        return self

    def kill(self) -> None:
        """The server goes away at once: master and worker, SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def buffered_body_bytes(self) -> int:
        """How much of a request body nginx has taken in so far (its temp file)."""
        total = 0
        for dirpath, _, files in os.walk(self.root / "body"):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total = max(total, os.stat(os.path.join(dirpath, name)).st_size)
        return total

    def client(self) -> httpx.Client:
        """A test-side client through nginx (our CA, our client certificate)."""
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        ctx.load_cert_chain(str(self.pki.client.cert), str(self.pki.client.key))
        return httpx.Client(verify=ctx, auth=(USER, PASSWORD), trust_env=False, timeout=120)


def parse_multipart(body: bytes, content_type: str) -> list[bytes]:
    match = re.search(r'boundary="?([^";,\s]+)"?', content_type)
    assert match, content_type
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, content = chunk.partition(b"\r\n\r\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


def sop_instance_uid(part: bytes) -> str:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True)
    return str(ds.file_meta.MediaStorageSOPInstanceUID)


def fetch_wado(client: httpx.Client, url: str, study: str, series: str, sop: str) -> bytes:
    """The instance as stored, over WADO-RS (PS3.18 10.4), original encoding."""
    r = client.get(
        f"{url}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert r.status_code == 200, (r.status_code, r.text[:200])
    parts = parse_multipart(r.content, r.headers["content-type"])
    assert len(parts) == 1
    return parts[0]


def stow_json(
    referenced: list[str], failed: dict[str, int], sop_class: str = "1.2.840.10008.5.1.4.1.1.7"
) -> bytes:
    def item(uid: str, reason: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "00081150": {"vr": "UI", "Value": [sop_class]},
            "00081155": {"vr": "UI", "Value": [uid]},
        }
        if reason is not None:
            out["00081197"] = {"vr": "US", "Value": [reason]}
        return out

    answer: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": [item(u) for u in referenced]}}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": [item(u, r) for u, r in failed.items()]}
    return json.dumps(answer).encode()


@dataclass
class FaultProxy:
    """Plain HTTP on loopback behind nginx's `/faults/`. `mode`:
    "pass" forwards to Orthanc; "unavailable" answers 503; "fail-one"
    forwards all but `target` and answers 202 with it failed (`reason`);
    "conflict" the same with 409 and a Warning header; "sink" discards the
    body and answers it stored. With `require_token`, requests need a
    bearer token from `/token` (OAuth2 client credentials); `revoke()`
    makes every token issued so far invalid."""

    orthanc: Orthanc
    port: int = field(default_factory=free_port)
    mode: str = "pass"
    target: str | None = None
    reason: int = 0xC000
    require_token: bool = False
    client_id: str = "edge-client"
    client_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    tokens: set[str] = field(default_factory=set)
    issued: int = 0
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status
    sunk_bytes: int = 0
    # Each POST held this long before it is answered (an archive storing), and
    # the most POSTs seen in flight at once.
    hold_s: float = 0.0
    most_at_once: int = 0
    _at_once: int = 0
    _count_lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def in_flight(self) -> int:
        """POSTs taken and not yet answered."""
        with self._count_lock:
            return self._at_once

    def revoke(self) -> None:
        self.tokens.clear()

    # -- the handler --

    def _reply(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes = b"",
        content_type: str = "application/dicom+json",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.requests.append((h.command, h.path, status))
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _body(self, h: BaseHTTPRequestHandler, keep: bool = True) -> bytes:
        out = bytearray()
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    h.rfile.readline()
                    break
                data = h.rfile.read(size)
                h.rfile.readline()
                if keep:
                    out += data
                else:
                    self._sink(out, data)
            return bytes(out)
        left = int(h.headers.get("Content-Length", "0"))
        while left > 0:
            data = h.rfile.read(min(left, 1 << 20))
            if not data:
                break
            left -= len(data)
            if keep:
                out += data
            else:
                self._sink(out, data)
        return bytes(out)

    def _sink(self, head: bytearray, data: bytes) -> None:
        """Keep the first 64 KiB (the part headers and File Meta), count the rest."""
        self.sunk_bytes += len(data)
        if len(head) < 65536:
            head += data[: 65536 - len(head)]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        if h.command != "POST" or h.path == "/token":
            self._handle_one(h)
            return
        with self._count_lock:
            self._at_once += 1
            self.most_at_once = max(self.most_at_once, self._at_once)
        try:
            time.sleep(self.hold_s)
            self._handle_one(h)
        finally:
            with self._count_lock:
                self._at_once -= 1

    def _handle_one(self, h: BaseHTTPRequestHandler) -> None:
        if h.path == "/token":
            self._token(h)
            return
        if self.require_token:
            auth = h.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                self._body(h, keep=False)
                self._reply(h, 401, b"", "text/plain", {"WWW-Authenticate": "Bearer"})
                return
        if self.mode == "sink" and h.command == "POST":
            head = self._body(h, keep=False)
            uid = sop_instance_uid(head.split(b"\r\n\r\n", 1)[1])
            self._reply(h, 200, stow_json([uid], {}))
            return
        body = self._body(h) if h.command == "POST" else b""
        if self.mode == "unavailable":
            self._reply(h, 503, b"archive busy", "text/plain", {"Retry-After": "1"})
            return
        if h.command == "POST" and self.mode in ("fail-one", "conflict"):
            self._drop_target(h, body)
            return
        status, content, ctype = self._forward(h.command, h.path, body, h.headers)
        self._reply(h, status, content, ctype)

    def _forward(self, method: str, path: str, body: bytes, headers: Any) -> tuple[int, bytes, str]:
        keep = {k: v for k, v in headers.items() if k.lower() in ("content-type", "accept")}
        r = httpx.request(
            method,
            self.orthanc.base + path,
            content=body or None,
            headers=keep,
            auth=(USER, PASSWORD),
            timeout=600,
        )
        return r.status_code, r.content, r.headers.get("content-type", "")

    def _drop_target(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        ctype = h.headers["Content-Type"]
        parts = parse_multipart(body, ctype)
        kept = [p for p in parts if sop_instance_uid(p) != self.target]
        referenced: list[str] = []
        if kept:
            boundary = "proxy" + secrets.token_hex(8)
            forwarded = (
                b"".join(
                    b"--"
                    + boundary.encode()
                    + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + p
                    + b"\r\n"
                    for p in kept
                )
                + b"--"
                + boundary.encode()
                + b"--\r\n"
            )
            status, content, _ = self._forward(
                "POST",
                h.path,
                forwarded,
                {
                    "Content-Type": 'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}",
                    "Accept": "application/dicom+json",
                },
            )
            assert status == 200, content[:300]
            answer = json.loads(content)
            referenced = [i["00081155"]["Value"][0] for i in answer["00081199"]["Value"]]
        failed = {self.target: self.reason} if len(kept) < len(parts) and self.target else {}
        if self.mode == "conflict":
            warning = '299 archive "SOP Instance UID already stored with different content"'
            self._reply(h, 409, stow_json(referenced, failed), extra={"Warning": warning})
        else:
            self._reply(h, 202 if failed else 200, stow_json(referenced, failed))

    def _token(self, h: BaseHTTPRequestHandler) -> None:
        form = self._body(h).decode()
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if h.headers.get("Authorization") != f"Basic {expected}":
            self._reply(h, 401, b'{"error": "invalid_client"}', "application/json")
            return
        if "grant_type=client_credentials" not in form:
            self._reply(h, 400, b'{"error": "unsupported_grant_type"}', "application/json")
            return
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        self.issued += 1
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        self._reply(h, 200, json.dumps(answer).encode(), "application/json")


US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def dicom_head(sop_class: str, frames: int, study: str, pixel_bytes: int) -> tuple[str, bytes]:
    """A Part 10 file up to (and including) its Pixel Data element's header:
    the pixels follow, written by the caller in pieces."""
    import struct

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import generate_uid

    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, study + ".1"
    ds.PatientName, ds.PatientID, ds.Modality = "Cloud^Test", "C1", "US"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = 480, 640
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.NumberOfFrames = frames
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    pixel_header = b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", pixel_bytes)
    return uid, out.getvalue() + pixel_header


FRAME_BYTES = 480 * 640 * 3


class Pieces:
    """A file as pieces made on demand (the queue writes pieces in turn): a
    gigabyte cine without a gigabyte in the test's memory."""

    def __init__(self, head: bytes, frame: bytes, frames: int) -> None:
        self.head, self.frame, self.frames = head, frame, frames

    def __len__(self) -> int:
        return 1 + self.frames

    def __getitem__(self, index: int) -> bytes:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.head if index == 0 else self.frame

    def __iter__(self) -> Any:
        yield self.head
        for _ in range(self.frames):
            yield self.frame


def queue_cine(outbox: Any, frames: int, study: str) -> Any:
    """An Ultrasound Multi-frame of `frames` 640×480 RGB frames (≈0.9 MB each)."""
    uid, head = dicom_head(US_MULTIFRAME, frames, study, frames * FRAME_BYTES)
    return outbox.add(
        Pieces(head, os.urandom(FRAME_BYTES), frames),
        sop_instance_uid=uid,
        sop_class_uid=US_MULTIFRAME,
        transfer_syntax_uid=EXPLICIT_VR_LE,
        study_instance_uid=study,
    )
