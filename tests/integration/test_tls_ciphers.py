"""The suite order suits the CPU: AES-GCM where it has AES instructions,
ChaCha20-Poly1305 first where it has none (a Raspberry Pi 4), for TLS 1.2
(`set_ciphers`) and TLS 1.3 (SSL_CTX_set_ciphersuites); negotiated with a
real DCMTK storescp, and shown by `dicom-gateway echo`."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import pytest

from gateway.config import TLSConfig
from gateway.net.association import connect
from gateway.net.echo import _CONTEXT
from gateway.net.tls import client_context, cpu_has_aes, server_context
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import Gateway
from tests.support.peers import destination, raw_peer, server_tls
from tests.support.pki import PKI

PI4 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
PI5 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp\n"
XEON = "processor\t: 0\nflags\t\t: fpu vme sse2 ssse3 sse4_1 sse4_2 aes avx avx2\n"
OLD_X86 = "processor\t: 0\nflags\t\t: fpu vme sse2 ssse3\n"


@pytest.mark.parametrize(
    ("text", "has_aes"), [(PI4, False), (PI5, True), (XEON, True), (OLD_X86, False), ("", True)]
)
def test_aes_instructions_read_from_cpuinfo(tmp_path: Path, text: str, has_aes: bool) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert cpu_has_aes(path) is has_aes


def _tls(pki: PKI) -> TLSConfig:
    return TLSConfig(ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key)


def _negotiated(pki: PKI, aes: bool, maximum: ssl.TLSVersion) -> tuple[str, str]:
    """(version, suite) a peer that honours the client's order (OpenSSL's
    default for a server; Python's `ssl` sets server preference, so it is
    cleared here) settles on with our client context."""
    seen: list[tuple[str, str]] = []

    def respond(conn: socket.socket) -> None:
        assert isinstance(conn, ssl.SSLSocket)
        cipher = conn.cipher()
        seen.append((str(conn.version()), cipher[0] if cipher else ""))

    peer_ctx = server_tls(pki.server, pki.ca.cert, maximum=maximum)
    peer_ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    with raw_peer(respond, peer_ctx) as port:
        ctx = client_context(_tls(pki), aes=aes)
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.recv(1)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize(
    ("aes", "suite"),
    [
        (True, ("TLSv1.3", "TLS_AES_256_GCM_SHA384")),
        (False, ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256")),
    ],
)
def test_tls13_suite_follows_our_order(pki: PKI, aes: bool, suite: tuple[str, str]) -> None:
    assert _negotiated(pki, aes, ssl.TLSVersion.TLSv1_3) == suite


@pytest.mark.parametrize(
    ("aes", "suite"),
    [
        (True, ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")),
        (False, ("TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305")),
    ],
)
def test_tls12_suite_follows_our_order(pki: PKI, aes: bool, suite: tuple[str, str]) -> None:
    assert _negotiated(pki, aes, ssl.TLSVersion.TLSv1_2) == suite


def test_dcmtk_chooses_by_its_own_order(tmp_path: Path, pki: PKI) -> None:
    """DCMTK's storescp picks by server preference (AES-256-GCM first): a PACS
    that does decides, whatever we offer, and `transport` says what it chose."""
    scp = StoreSCP(tmp_path / "pacs", pki.server, pki.ca.cert).start()
    try:
        ctx = client_context(_tls(pki), aes=False)
        conn = connect("EDGE1", destination(pki, scp.port), [_CONTEXT], ssl_context=ctx)
        try:
            assert conn.transport == "TLSv1.3 TLS_AES_256_GCM_SHA384"
        finally:
            conn.release()
    finally:
        scp.stop()


def test_our_listeners_choose_by_our_order(pki: PKI) -> None:
    """As a server (inbound C-STORE, commitment), the box picks the suite
    that is fast on its own CPU, whatever a client prefers."""
    ctx = server_context(TLSConfig(ca=pki.ca.cert, cert=pki.server.cert, key=pki.server.key))
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    first = next(c["name"] for c in ctx.get_ciphers())
    expected = "TLS_AES_256_GCM_SHA384" if cpu_has_aes() else "TLS_CHACHA20_POLY1305_SHA256"
    assert first == expected


def test_echo_shows_the_negotiated_suite(gateway: Gateway, storescp: StoreSCP) -> None:
    storescp.start()
    result = gateway("echo", "--json", check=True)
    detail = json.loads(result.stdout)[0]["detail"]
    expected = "TLS_AES_256_GCM_SHA384" if cpu_has_aes() else "TLS_CHACHA20_POLY1305_SHA256"
    assert detail == f"TLSv1.3 {expected}"
