"""BCP 195 non-downgrading: TLS 1.2/1.3 only, AEAD suites, the peer's
certificate and host name verified, ours presented — every refusal says why,
and the objects stay queued. Run against TLS 1.2 and TLS 1.3 peers."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.config import TLSConfig
from gateway.net.tls import client_context, server_context
from gateway.net.ul import Timeouts, ULConnection
from gateway.ops.certs import Issued
from gateway.send.forwarder import Forwarder
from tests.support.hostile import refused_with
from tests.support.peers import StoreSCPy, destination, queue_objects, raw_peer, server_tls
from tests.support.pki import PKI, make_crl
from tests.support.process import free_port, require_tool, wait_for_port
from tests.support.queue import new_outbox

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
QUICK = Timeouts(connect=2, acse=2, dimse=2, network=2)


def _read(conn: socket.socket) -> None:
    conn.recv(65536)


def refusal(tmp_path: Path, pki: PKI, ctx: ssl.SSLContext) -> str:
    """Queue two objects, try to send them to a TLS peer using `ctx`; return
    the reason, after checking both objects are still pending."""
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
        queue_objects(outbox, 2)
        with raw_peer(_read, tls=ctx) as port:
            dest = destination(pki, port)
            report = Forwarder(outbox, [dest], "EDGE1", timeouts=QUICK).send_batch(dest)
        assert report.sent == 0 and report.retried == 2
        assert {d.state.value for d in outbox.deliveries()} == {"pending"}
        assert all(d.last_error == report.error for d in outbox.deliveries())
        return str(report.error)


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        ("stranger", "not signed by our CA"),
        ("wrong_host", "does not match the host name"),
        ("expired", "has expired"),
    ],
)
def test_untrusted_peer_certificates_are_refused(
    tmp_path: Path, pki: PKI, version: ssl.TLSVersion, cert: str, reason: str
) -> None:
    issued: Issued = getattr(pki, cert)
    ctx = server_tls(issued, pki.ca.cert, minimum=version, maximum=version)
    assert reason in refusal(tmp_path, pki, ctx)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["tls1.0", "tls1.1"]
)
def test_old_tls_versions_are_refused(tmp_path: Path, pki: PKI, version: ssl.TLSVersion) -> None:
    ctx = server_tls(pki.server, pki.ca.cert, minimum=version, maximum=version)
    assert "does not speak TLS 1.2 or 1.3" in refusal(tmp_path, pki, ctx)


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_peer_that_does_not_trust_our_certificate(
    tmp_path: Path, pki: PKI, version: ssl.TLSVersion
) -> None:
    ctx = server_tls(pki.server, pki.other_ca.cert, minimum=version, maximum=version)
    reason = refusal(tmp_path, pki, ctx)
    assert "our certificate" in reason or "our client certificate" in reason, reason


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_our_listeners_refuse_a_client_without_certificate(
    pki: PKI, version: ssl.TLSVersion
) -> None:
    """Our own SCP ports (Storage Commitment) insist on mutual authentication."""
    ours = server_context(TLSConfig(ca=pki.ca.cert, cert=pki.server.cert, key=pki.server.key))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(pki.ca.cert)
    client.minimum_version = client.maximum_version = version
    with raw_peer(lambda c: c.sendall(b"hello"), tls=ours) as port:
        with (
            pytest.raises((ssl.SSLError, ConnectionError)) as info,
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            if tls.recv(5) == b"":  # TLS 1.3: the refusal arrives after the handshake
                raise ConnectionError("closed")
        text = str(info.value).lower()
        assert any(w in text for w in ("certificate", "closed", "handshake failure")), text


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_negotiated_suite_is_aead_and_preferred_version(pki: PKI, version: ssl.TLSVersion) -> None:
    ctx = server_tls(pki.server, pki.ca.cert, maximum=version)
    scp = StoreSCPy(tls=ctx).start()
    try:
        ours = client_context(TLSConfig(ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key))
        conn = ULConnection.connect("localhost", scp.port, "EDGE1", "PACS", [], Timeouts(), ours)
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.version() == (
            "TLSv1.3" if version == ssl.TLSVersion.TLSv1_3 else "TLSv1.2"
        )
        name = conn.sock.cipher()[0]  # type: ignore[index]
        assert "GCM" in name or "CHACHA20" in name, name
        conn.release()
    finally:
        scp.stop()


def test_client_policy_never_offers_less_than_tls12(pki: PKI) -> None:
    ctx = client_context(TLSConfig(ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    for cipher in ctx.get_ciphers():
        assert cipher["aead"], cipher["name"]


# -- our listeners: a CRL per trust store, a certificate bound to an AE title --


def _inbound_tls(tmp_path: Path, pki: PKI, crl: Path | None, cn: str | None) -> Any:
    from gateway.config import parse_config

    tls = {"ca": str(pki.ca.cert), "cert": str(pki.server.cert), "key": str(pki.server.key)}
    if crl is not None:
        tls["crl"] = str(crl)
    port = free_port()
    peer: dict[str, str] = {"ae_title": "MODALITY", "address": "127.0.0.1"}
    if cn is not None:
        peer["certificate_cn"] = cn
    return port, parse_config(
        {
            "station": {"ae_title": "EDGE1"},
            "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0},
            "inbound": {
                "enabled": True,
                "listen": f"127.0.0.1:{port}",
                "allowed": [peer],
                "tls": tls,
                "handshake_timeout_s": 2,
            },
        }
    )


def _echo(port: int, cert: Issued, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(require_tool("echoscu"), "+tls", str(cert.key), str(cert.cert), "+cf", str(ca)),
            *("-aet", "MODALITY", "-aec", "EDGE1", "localhost", str(port)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _listening(tmp_path: Path, pki: PKI, crl: Path | None, cn: str | None) -> Any:
    from gateway.acquire.inbound import InboundService

    port, cfg = _inbound_tls(tmp_path, pki, crl, cn)
    outbox = new_outbox(cfg.queue.path, [])
    refusals: list[tuple[str, str, str]] = []
    service = InboundService(outbox, cfg, refused=lambda *r: refusals.append(r))
    service.start()
    wait_for_port(port)
    return port, service, outbox, refusals


def test_listener_refuses_a_revoked_client_certificate(tmp_path: Path, pki: PKI) -> None:
    revoked = pki.ca.issue(tmp_path, "revoked-modality")
    crl = make_crl(pki.ca, [revoked], tmp_path / "ca.crl")
    port, service, outbox, refusals = _listening(tmp_path, pki, crl, None)
    try:
        assert _echo(port, revoked, pki.ca.cert).returncode != 0
        assert refused_with(refusals, "revoked"), refusals
        good = _echo(port, pki.client, pki.ca.cert)  # a certificate of the same CA, not revoked
        assert good.returncode == 0, good.stderr
    finally:
        service.stop()
        outbox.close()


def test_listener_binds_a_certificate_cn_to_the_ae_title(tmp_path: Path, pki: PKI) -> None:
    port, service, outbox, refusals = _listening(tmp_path, pki, None, "gateway")
    try:
        # pki.server (CN "pacs") is from our CA, but is not MODALITY's certificate.
        assert _echo(port, pki.server, pki.ca.cert).returncode != 0
        assert refused_with(refusals, "certificate CN 'pacs'"), refusals
        ok = _echo(port, pki.client, pki.ca.cert)  # CN "gateway", the one bound to MODALITY
        assert ok.returncode == 0, ok.stderr
    finally:
        service.stop()
        outbox.close()
