"""A cloud archive as a destination: STOW-RS through the queue to a real
DICOMweb server started here (Orthanc + its DICOMweb plugin, basic auth,
behind nginx terminating HTTPS with a client certificate required), and the
faults a field link meets: the server going away mid-body, 503, 202 with one
instance failed, 409 for one instance, 401 until the token is refreshed.
Each is reconciled per instance: nothing lost, nothing marked stored that
the archive did not store. Plus the trust the configuration gives (the
environment cannot change it), proxies, the archive check that stands in
for Storage Commitment, "Test connection", and memory while a 1 GB cine goes.

Cost: about 40 s (Orthanc and nginx start once for the module; the 1 GB
object goes to a sink behind nginx, not into Orthanc's database).
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import tomli_w

from gateway.config import GatewayConfig, StowDestinationConfig, parse_config
from gateway.queue.model import DeliveryState, QueuedObject
from gateway.queue.outbox import Outbox
from gateway.send.commitment import CommitmentService
from gateway.send.forwarder import Forwarder
from gateway.send.protocols import echo_destination
from tests.support.dicomweb import (
    PASSWORD,
    USER,
    FaultProxy,
    Nginx,
    Orthanc,
    fetch_wado,
    queue_cine,
)
from tests.support.peers import queue_objects
from tests.support.pki import PKI
from tests.support.process import GATEWAY, free_port, launched
from tests.support.queue import new_outbox


@dataclass
class Archive:
    orthanc: Orthanc
    proxy: FaultProxy
    nginx: Nginx
    secrets: Path


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("archive")
    orthanc = Orthanc(root / "orthanc").start()
    proxy = FaultProxy(orthanc).start()
    nginx = Nginx(root / "nginx", pki, orthanc.port, proxy.port).start()
    secrets = root / "secrets"
    secrets.mkdir()
    (secrets / "archive.pass").write_text(PASSWORD + "\n")
    (secrets / "client.secret").write_text(proxy.client_secret)
    try:
        yield Archive(orthanc, proxy, nginx, secrets)
    finally:
        nginx.stop()
        proxy.stop()
        orthanc.stop()


@pytest.fixture(autouse=True)
def _proxy_reset(archive: Archive) -> None:
    p = archive.proxy
    p.mode, p.target, p.require_token = "pass", None, False
    p.hold_s, p.most_at_once = 0.0, 0
    p.requests.clear()
    if archive.nginx.proc is None or archive.nginx.proc.poll() is not None:
        archive.nginx.start()


def stow(archive: Archive, pki: PKI, route: str = "orthanc", **extra: Any) -> StowDestinationConfig:
    table: dict[str, Any] = {
        "name": "cloud",
        "protocol": "stow-rs",
        "url": archive.nginx.url(route),
        "tls": {"ca": str(pki.ca.cert), "cert": str(pki.client.cert), "key": str(pki.client.key)},
        "http_auth": {"username": USER, "password_file": str(archive.secrets / "archive.pass")},
        "connect_timeout_s": 5,
        "idle_timeout_s": 30,
    }
    table.update(extra)
    dest = parse_config({"destinations": [table]}).destinations[0]
    assert isinstance(dest, StowDestinationConfig)
    return dest


def forwarder(outbox: Outbox, dest: StowDestinationConfig) -> Forwarder:
    return Forwarder(outbox, [dest], "EDGE1", retry_base=0.01, retry_cap=0.02)


def states(outbox: Outbox) -> dict[str, str]:
    return {d.object.sop_instance_uid: d.state.value for d in outbox.deliveries()}


def assert_equal_over_wado(archive: Archive, objects: list[QueuedObject]) -> None:
    """Each instance fetched back over WADO-RS is the queued file, byte for byte."""
    with archive.nginx.client() as client:
        for obj in objects:
            ds = pydicom.dcmread(obj.path, stop_before_pixels=True)
            got = fetch_wado(
                client,
                archive.nginx.url(),
                obj.study_instance_uid,
                str(ds.SeriesInstanceUID),
                obj.sop_instance_uid,
            )
            assert got == obj.path.read_bytes(), obj.sop_instance_uid


def test_stills_and_a_cine_through_the_queue_equal_over_wado(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    study = "1.2.826.0.1.3680043.10.19.1"
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        objects = queue_objects(outbox, 5, study=study)
        objects.append(queue_cine(outbox, 30, study))  # ≈ 28 MB
        dest = stow(archive, pki, batch_max_objects=4)
        report = forwarder(outbox, dest).flush(timeout=120)
        assert (report.sent, report.failed, report.retried) == (6, 0, 0)
        assert set(states(outbox).values()) == {"sent"}
        assert all(archive.orthanc.has(o.sop_instance_uid) for o in objects)
        assert_equal_over_wado(archive, objects)


def test_chunked_bodies_and_the_batch_bounds(tmp_path: Path, pki: PKI, archive: Archive) -> None:
    """Through the fault proxy in pass mode, which records each request: at
    most `batch_max_objects` per request and one study per `/studies/{uid}`."""
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        a = queue_objects(outbox, 3, study="1.2.826.0.1.3680043.10.19.2")
        b = queue_objects(outbox, 2, study="1.2.826.0.1.3680043.10.19.3")
        dest = stow(archive, pki, route="faults", chunked=True, batch_max_objects=2)
        report = forwarder(outbox, dest).flush(timeout=60)
        assert report.sent == 5
        posts = [path for method, path, _ in archive.proxy.requests if method == "POST"]
        # 2 + 2 + 1, the middle one holding both studies; two connections
        # at once, so in either order.
        assert sorted(posts) == [
            "/dicom-web/studies",
            "/dicom-web/studies/1.2.826.0.1.3680043.10.19.2",
            "/dicom-web/studies/1.2.826.0.1.3680043.10.19.3",
        ]
        assert_equal_over_wado(archive, a + b)


def test_server_going_away_mid_body_loses_nothing(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    study = "1.2.826.0.1.3680043.10.19.4"
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        cine = queue_cine(outbox, 80, study)  # ≈ 74 MB
        fwd = forwarder(outbox, stow(archive, pki))
        done: list[Any] = []
        sender = threading.Thread(target=lambda: done.append(fwd.send_batch(fwd.destinations[0])))
        sender.start()
        deadline = time.monotonic() + 60
        while archive.nginx.buffered_body_bytes() < 8 << 20 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert archive.nginx.buffered_body_bytes() >= 8 << 20, "the body never started"
        archive.nginx.kill()
        sender.join(timeout=120)
        report = done[0]
        assert (report.sent, report.retried, report.failed) == (0, 1, 0)
        delivery = outbox.delivery(cine.id, "cloud")
        assert delivery is not None and delivery.state is DeliveryState.PENDING
        assert delivery.last_error and "during STOW-RS" in delivery.last_error
        assert not archive.orthanc.has(cine.sop_instance_uid)
        # While it is down: the link is down, the object waits.
        report = fwd.send_batch(fwd.destinations[0], now=float("inf"))
        assert report.retried == 1 and fwd.status["cloud"].reachable is False
        archive.nginx.start()
        assert fwd.flush(timeout=120).sent == 1
        assert_equal_over_wado(archive, [cine])


@pytest.mark.parametrize("connections", [1, 2])
def test_requests_in_flight_at_once_each_reconciled(
    tmp_path: Path, pki: PKI, archive: Archive, connections: int
) -> None:
    """`connections = 2`: two requests in flight at once (the archive holds
    each a moment, as while it stores), each answer reconciled with its own
    objects: the one instance refused in one request is failed, the rest
    stored. With 1, never two at once."""
    proxy = archive.proxy
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        objects = queue_objects(outbox, 8, study=f"1.2.826.0.1.3680043.10.19.20.{connections}")
        bad = objects[5]
        proxy.mode, proxy.target, proxy.reason = "fail-one", bad.sop_instance_uid, 0xC000
        proxy.hold_s = 0.5
        dest = stow(archive, pki, route="faults", batch_max_objects=2, connections=connections)
        report = forwarder(outbox, dest).flush(timeout=60)
        assert (report.sent, report.failed, report.retried) == (7, 1, 0)
        assert proxy.most_at_once == connections
        assert len([m for m, _, _ in proxy.requests if m == "POST"]) == 4
        got = states(outbox)
        assert got.pop(bad.sop_instance_uid) == "failed"
        assert set(got.values()) == {"sent"}
        assert_equal_over_wado(archive, [o for o in objects if o is not bad])


def test_link_lost_with_two_requests_in_flight_loses_nothing(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    """Both requests in flight (their bodies taken in, the archive not yet
    answering) when the archive goes away: neither request's objects are
    marked stored, all stay queued and go later."""
    study = "1.2.826.0.1.3680043.10.19.21"
    archive.proxy.hold_s = 5.0  # no answer before the link goes
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        cines = [queue_cine(outbox, 60, study) for _ in range(2)]  # ≈ 55 MB each
        fwd = forwarder(outbox, stow(archive, pki, route="faults", connections=2))
        done: list[Any] = []
        sender = threading.Thread(target=lambda: done.append(fwd.send_batch(fwd.destinations[0])))
        sender.start()
        deadline = time.monotonic() + 60
        while archive.proxy.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert archive.proxy.in_flight == 2, "two requests never in flight"
        archive.nginx.kill()
        sender.join(timeout=120)
        report = done[0]
        assert (report.sent, report.failed) == (0, 0) and report.retried == 2
        assert set(states(outbox).values()) == {"pending"}
        assert not any(archive.orthanc.has(c.sop_instance_uid) for c in cines)
        archive.proxy.hold_s = 0.0
        archive.nginx.start()
        assert fwd.flush(timeout=120).sent == 2
        assert_equal_over_wado(archive, cines)


def test_the_heartbeat_goes_on_while_a_long_body_is_sent(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    """A long body on a slow field link is not a stuck loop: the forwarder's
    heartbeat (the service's watchdog) is beaten as the body goes, about
    once per MiB, not only once the archive has answered."""
    archive.proxy.mode = "sink"
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        queue_cine(outbox, 30, "1.2.826.0.1.3680043.10.19.22")  # ≈ 28 MB
        fwd = forwarder(outbox, stow(archive, pki, route="faults"))
        beats: list[float] = []
        fwd.heartbeat = lambda: beats.append(time.monotonic())
        assert fwd.flush(timeout=120).sent == 1
        assert len(beats) >= 20, len(beats)


def test_the_heartbeat_goes_on_while_the_archive_takes_its_time(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    """An archive that takes 9 s to answer (storing a large request, say):
    the forwarder beats meanwhile (every 5 s), so the watchdog does not
    restart a service that is only waiting within its time-outs."""
    archive.proxy.hold_s = 9.0
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        queue_objects(outbox, 2, study="1.2.826.0.1.3680043.10.19.23")
        fwd = forwarder(outbox, stow(archive, pki, route="faults", connections=1))
        beats: list[float] = [time.monotonic()]
        fwd.heartbeat = lambda: beats.append(time.monotonic())
        assert fwd.flush(timeout=120).sent == 2
        beats.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert sum(gaps) >= 9, gaps
        assert max(gaps) < 7, gaps


def test_503_keeps_every_object_queued(tmp_path: Path, pki: PKI, archive: Archive) -> None:
    archive.proxy.mode = "unavailable"
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        objects = queue_objects(outbox, 3, study="1.2.826.0.1.3680043.10.19.5")
        fwd = forwarder(outbox, stow(archive, pki, route="faults"))
        report = fwd.send_batch(fwd.destinations[0])
        assert (report.sent, report.retried, report.failed) == (0, 3, 0)
        assert report.error and "HTTP 503" in report.error and "archive busy" in report.error
        assert set(states(outbox).values()) == {"pending"}
        assert not any(archive.orthanc.has(o.sop_instance_uid) for o in objects)
        archive.proxy.mode = "pass"
        assert fwd.flush(timeout=60).sent == 3
        assert_equal_over_wado(archive, objects)


@pytest.mark.parametrize(
    ("mode", "reason", "status", "words"),
    [
        ("fail-one", 0xC000, 202, ["0xC000 cannot understand"]),
        (
            "conflict",
            0x0111,
            409,
            ["duplicate SOP instance", "already stored with different content"],
        ),
    ],
)
def test_one_instance_refused_is_permanent_with_its_reason(
    tmp_path: Path,
    pki: PKI,
    archive: Archive,
    mode: str,
    reason: int,
    status: int,
    words: list[str],
) -> None:
    """202 with one instance in the Failed SOP Sequence, or 409 for one
    instance (same UID, different content, said in the Warning header)."""
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        objects = queue_objects(outbox, 4, study=f"1.2.826.0.1.3680043.10.19.6.{status}")
        bad = objects[2]
        archive.proxy.mode, archive.proxy.target = mode, bad.sop_instance_uid
        archive.proxy.reason = reason
        dest = stow(archive, pki, route="faults", connections=1)
        report = forwarder(outbox, dest).flush(timeout=60)
        assert (report.sent, report.failed) == (3, 1)
        assert [s for _, _, s in archive.proxy.requests] == [status]
        got = states(outbox)
        assert got.pop(bad.sop_instance_uid) == "failed"
        assert set(got.values()) == {"sent"}
        failed = outbox.delivery(bad.id, "cloud")
        assert failed is not None and failed.last_error
        assert all(w in failed.last_error for w in words), failed.last_error
        assert not archive.orthanc.has(bad.sop_instance_uid)
        assert_equal_over_wado(archive, [o for o in objects if o is not bad])


def test_202_with_a_transient_failure_is_sent_again(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        objects = queue_objects(outbox, 3, study="1.2.826.0.1.3680043.10.19.7")
        archive.proxy.mode, archive.proxy.target = "fail-one", objects[0].sop_instance_uid
        archive.proxy.reason = 0xA700  # out of resources: later
        fwd = forwarder(outbox, stow(archive, pki, route="faults"))
        report = fwd.send_batch(fwd.destinations[0])
        assert (report.sent, report.retried) == (2, 1)
        assert states(outbox)[objects[0].sop_instance_uid] == "pending"
        archive.proxy.mode = "pass"
        assert fwd.flush(timeout=60).sent == 1
        assert_equal_over_wado(archive, objects)


def test_identical_resend_counts_as_stored(tmp_path: Path, pki: PKI, archive: Archive) -> None:
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        objects = queue_objects(outbox, 2, study="1.2.826.0.1.3680043.10.19.9")
        fwd = forwarder(outbox, stow(archive, pki))
        assert fwd.flush(timeout=60).sent == 2
        outbox.retry()  # as after a crash before the marks were committed
        for o in objects:
            outbox.mark_retry(o.id, "cloud", "resend", delay=0)
        assert fwd.flush(timeout=60).sent == 2
        assert set(states(outbox).values()) == {"sent"}


def test_401_until_the_oauth2_token_is_refreshed(
    tmp_path: Path, pki: PKI, archive: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = archive.proxy
    proxy.require_token = True
    issued = proxy.issued
    auth = {
        "token_url": f"https://localhost:{archive.nginx.port}/faults/token",
        "client_id": proxy.client_id,
        "client_secret_file": str(archive.secrets / "client.secret"),
        "scope": "dicom.write",
    }
    caplog.set_level(logging.DEBUG)
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        first = queue_objects(outbox, 2, study="1.2.826.0.1.3680043.10.19.10")
        fwd = forwarder(outbox, stow(archive, pki, route="faults", http_auth=auth, connections=1))
        assert fwd.flush(timeout=60).sent == 2
        assert proxy.issued == issued + 1
        second = queue_objects(outbox, 2, study="1.2.826.0.1.3680043.10.19.10")
        proxy.revoke()  # the archive stops taking the cached token
        proxy.requests.clear()
        assert fwd.flush(timeout=60).sent == 2
        stores = [status for _, path, status in proxy.requests if path != "/token"]
        assert stores == [401, 200]
        assert proxy.issued == issued + 2
        assert_equal_over_wado(archive, first + second)
    secrets_seen = [proxy.client_secret, *proxy.tokens]
    assert not any(s in caplog.text for s in secrets_seen)


def test_bearer_token_file_refreshed_on_change(tmp_path: Path, pki: PKI, archive: Archive) -> None:
    proxy = archive.proxy
    proxy.require_token = True
    token_file = tmp_path / "token"
    token_file.write_text("stale-token\n")
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        objects = queue_objects(outbox, 2, study="1.2.826.0.1.3680043.10.19.11")
        dest = stow(archive, pki, route="faults", http_auth={"bearer_token_file": str(token_file)})
        fwd = forwarder(outbox, dest)
        report = fwd.send_batch(dest)
        assert (report.sent, report.retried) == (0, 2)
        assert report.error and "HTTP 401" in report.error and "stale-token" not in report.error
        fresh = "fresh-" + os.urandom(8).hex()
        proxy.tokens.add(fresh)
        token_file.write_text(fresh + "\n")
        assert fwd.flush(timeout=60).sent == 2
        assert_equal_over_wado(archive, objects)


def test_wrong_password_is_a_link_failure_not_a_lost_object(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not-the-password")
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        queue_objects(outbox, 2, study="1.2.826.0.1.3680043.10.19.12")
        dest = stow(archive, pki, http_auth={"username": USER, "password_file": str(wrong)})
        fwd = forwarder(outbox, dest)
        report = fwd.send_batch(dest)
        assert (report.sent, report.retried, report.failed) == (0, 2, 0)
        assert report.error and "HTTP 401" in report.error
        assert "not-the-password" not in report.error
        assert fwd.status["cloud"].reachable is False


def test_configured_ca_is_the_only_trust_whatever_the_environment(
    tmp_path: Path, pki: PKI, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment points every client's bundle at our test CA: it must
    # not make a destination without a configured CA trust the archive...
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(var, str(pki.ca.cert))
    monkeypatch.setenv("SSL_CERT_DIR", str(pki.ca.cert.parent))
    no_ca = {"cert": str(pki.client.cert), "key": str(pki.client.key)}
    with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
        queue_objects(outbox, 1, study="1.2.826.0.1.3680043.10.19.13")
        dest = stow(archive, pki, tls=no_ca)
        report = forwarder(outbox, dest).send_batch(dest)
        assert report.retried == 1 and report.error
        assert "not signed by our CA" in report.error
        # ... and pointing it at the system's bundle does not undo a configured CA.
        for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.setenv(var, "/etc/ssl/certs/ca-certificates.crt")
        good = stow(archive, pki)
        assert forwarder(outbox, good).flush(timeout=60).sent == 1
    result = echo_destination("EDGE1", stow(archive, pki, tls=no_ca))
    assert not result.ok and "not signed by our CA" in result.detail


def test_archive_without_our_client_certificate_refuses(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    result = echo_destination("EDGE1", stow(archive, pki, tls={"ca": str(pki.ca.cert)}))
    assert not result.ok
    assert "400" in result.detail or "certificate" in result.detail


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback that counts the tunnels it opened."""

    def __init__(self) -> None:
        self.port = free_port()
        self.tunnels: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(4096)
            if not data:
                return
            head += data
        target = head.split(b" ")[1].decode()
        self.tunnels.append(target)
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pair = {client: upstream, upstream: client}
        try:
            while True:
                ready, _, _ = select.select(list(pair), [], [], 30)
                if not ready:
                    return
                for s in ready:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    pair[s].sendall(data)
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.sock.close()


def test_https_proxy_and_no_proxy_are_honoured(
    tmp_path: Path, pki: PKI, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = ConnectProxy()
    try:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with new_outbox(tmp_path / "q", ["cloud"]) as outbox:
            objects = queue_objects(outbox, 2, study="1.2.826.0.1.3680043.10.19.14")
            dest = stow(archive, pki, connections=1)  # one tunnel to count
            assert forwarder(outbox, dest).flush(timeout=60).sent == 2
            assert proxy.tunnels == [f"localhost:{archive.nginx.port}"]
            monkeypatch.setenv("NO_PROXY", "localhost")
            more = queue_objects(outbox, 1, study="1.2.826.0.1.3680043.10.19.14")
            assert forwarder(outbox, dest).flush(timeout=60).sent == 1
            assert len(proxy.tunnels) == 1
            assert_equal_over_wado(archive, objects + more)
    finally:
        proxy.close()


def test_archive_check_stands_in_for_storage_commitment(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    """Sent is not enough: an object is purgeable only once QIDO-RS lists it;
    one the archive lost goes back to the queue and is sent again."""
    dest = stow(archive, pki, storage_commitment=True)
    config = GatewayConfig(destinations=[dest])
    study = "1.2.826.0.1.3680043.10.19.15"
    with new_outbox(tmp_path / "q", ["cloud"], commitment=["cloud"], retention_days=0) as outbox:
        objects = queue_objects(outbox, 3, study=study)
        fwd = forwarder(outbox, dest)
        assert fwd.flush(timeout=60).sent == 3
        assert outbox.purgeable() == []  # sent, not confirmed
        lost = objects[0]
        archive.orthanc.delete(lost.sop_instance_uid)
        service = CommitmentService(outbox, config)
        assert service.request_due() == 1
        got = states(outbox)
        assert got.pop(lost.sop_instance_uid) == "pending"
        assert set(got.values()) == {"committed"}
        assert {o.id for o in outbox.purgeable()} == {objects[1].id, objects[2].id}
        again = outbox.delivery(lost.id, "cloud")
        assert again is not None and again.last_error and "QIDO-RS" in again.last_error
        assert fwd.flush(timeout=60).sent == 1
        assert service.request_due() == 1
        assert set(states(outbox).values()) == {"committed"}


def test_echo_is_an_authenticated_check_with_tls_and_status(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    config_path = tmp_path / "gateway.toml"
    table = stow(archive, pki).model_dump(mode="json", exclude_none=True)
    config_path.write_text(
        tomli_w.dumps({"destinations": [table], "queue": {"path": str(tmp_path / "q")}})
    )
    out = subprocess.run(
        [*GATEWAY, "--config", str(config_path), "echo", "cloud"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "cloud: OK" in out.stdout and "TLSv1." in out.stdout and "HTTP 200" in out.stdout
    assert PASSWORD not in out.stdout + out.stderr
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("nope")
    bad = stow(archive, pki, http_auth={"username": USER, "password_file": str(wrong)})
    result = echo_destination("EDGE1", bad)
    assert not result.ok and "HTTP 401" in result.detail


def test_memory_stays_bounded_while_a_1_gb_cine_is_sent(
    tmp_path: Path, pki: PKI, archive: Archive
) -> None:
    """`queue flush` as its own process, the peak RSS of that process only."""
    queue = tmp_path / "q"
    with new_outbox(queue, ["cloud"]) as outbox:
        cine = queue_cine(outbox, 1165, "1.2.826.0.1.3680043.10.19.16")  # 1.07 GB
    assert cine.size > 1_000_000_000
    archive.proxy.mode = "sink"
    archive.proxy.sunk_bytes = 0
    table = stow(archive, pki, route="faults").model_dump(mode="json", exclude_none=True)
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(
        tomli_w.dumps({"destinations": [table], "queue": {"path": str(queue), "min_free_mb": 0}})
    )
    rusage = tmp_path / "rusage"
    cmd = [sys.executable, "-m", "gateway", "--config", str(config_path), "queue", "flush"]
    out = subprocess.run(launched(rusage, cmd), capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-2000:]
    peak_mib = int(rusage.read_text().split()[0]) / 1024
    assert archive.proxy.sunk_bytes >= cine.size
    with new_outbox(queue, ["cloud"]) as outbox:
        assert outbox.delivery(cine.id, "cloud").state is DeliveryState.SENT  # type: ignore[union-attr]
    print(f"peak RSS of queue flush sending {cine.size / 1e9:.2f} GB: {peak_mib:.0f} MiB")
    assert peak_mib < 100, f"peak RSS {peak_mib:.0f} MiB while sending a 1 GB object"
