"""Certificate alarms. An expired certificate stops every association at
once, usually on a weekend months after installation; warning 30 days ahead
(in the logs, the UI and the fleet's metrics) gives IT time to renew.

Covers our own certificate, the CAs we trust and, when reachable, the
certificate each peer actually presents."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway.config import GatewayConfig, HttpsTLSConfig, TLSConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CertStatus:
    name: str  # e.g. "pacs/own", "pacs/ca", "pacs/peer"
    subject: str
    not_after: float
    days_left: float
    warn: bool

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _status(name: str, cert: x509.Certificate, warn_days: int, now: float) -> CertStatus:
    not_after = cert.not_valid_after_utc.timestamp()
    days = (not_after - now) / 86400
    return CertStatus(name, cert.subject.rfc4514_string(), not_after, days, days <= warn_days)


def _load_pem(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def peer_certificate(
    host: str, port: int, tls: TLSConfig | HttpsTLSConfig, timeout: float = 5.0
) -> bytes | None:
    """The DER certificate the peer presents, fetched without verifying it
    (an expired one must still be reported), or None when unreachable."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        if tls.cert is not None and tls.key is not None:  # HTTPS may have no client cert
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError):
        return None
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as conn,
        ):
            return conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def _endpoints(
    config: GatewayConfig,
) -> list[tuple[str, str, int, TLSConfig | HttpsTLSConfig]]:
    out: list[tuple[str, str, int, TLSConfig | HttpsTLSConfig]] = [
        (d.name, d.host, d.port, d.tls) for d in config.destinations if d.tls
    ]
    if config.worklist and config.worklist.tls:
        wl = config.worklist
        out.append(("worklist", wl.host, wl.port, wl.tls))  # type: ignore[arg-type]
    if config.audit.collector:
        col = config.audit.collector
        out.append(("audit", col.host, col.port, col.tls))
    return out


def check_certificates(
    config: GatewayConfig, probe_peers: bool = True, now: float | None = None
) -> list[CertStatus]:
    now = time.time() if now is None else now
    warn = config.certificates.warn_days
    seen: set[tuple[str, Path]] = set()
    out: list[CertStatus] = []
    for name, host, port, tls in _endpoints(config):
        for role, path in (("own", tls.cert), ("ca", tls.ca)):
            if path is None:
                continue
            key = (role, path)
            cert = _load_pem(path)
            if cert is None or key in seen:
                continue
            seen.add(key)
            out.append(_status(f"{name}/{role}", cert, warn, now))
        if probe_peers:
            der = peer_certificate(host, port, tls)
            if der is not None:
                out.append(_status(f"{name}/peer", x509.load_der_x509_certificate(der), warn, now))
    return out


def log_alarms(statuses: list[CertStatus]) -> list[CertStatus]:
    """Log each certificate near or past expiry; returns those."""
    alarms = [s for s in statuses if s.warn]
    for s in alarms:
        if s.days_left < 0:
            log.error(
                "certificate %s (%s) expired %.0f day(s) ago", s.name, s.subject, -s.days_left
            )
        else:
            log.warning(
                "certificate %s (%s) expires in %.0f day(s): renew it",
                s.name,
                s.subject,
                s.days_left,
            )
    return alarms


_latest: list[CertStatus] = []


def remember(statuses: list[CertStatus]) -> None:
    global _latest
    _latest = list(statuses)


def current() -> list[CertStatus]:
    """The service's latest check, for the UI's warning banner (empty outside
    the service or before the first check)."""
    return list(_latest)
