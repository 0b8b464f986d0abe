"""A throwaway PKI for the tests: a CA, the PACS's and the gateway's
certificates, and the wrong ones a hostile or broken peer would present."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.ops.certs import Authority, Issued, make_authority


@dataclass(frozen=True)
class PKI:
    ca: Authority
    server: Issued  # for localhost / 127.0.0.1, signed by `ca`
    client: Issued  # the gateway's own, signed by `ca`
    other_ca: Authority
    stranger: Issued  # a server certificate from `other_ca`
    wrong_host: Issued  # signed by `ca`, but for another host name
    expired: Issued  # signed by `ca`, expired yesterday


def make_pki(d: Path) -> PKI:
    ca = make_authority(d, "ca")
    other = make_authority(d / "other", "other-ca")
    return PKI(
        ca=ca,
        server=ca.issue(d, "pacs"),
        client=ca.issue(d, "gateway"),
        other_ca=other,
        stranger=other.issue(d / "other", "stranger"),
        wrong_host=ca.issue(d, "elsewhere", hosts=("pacs.elsewhere.invalid",)),
        expired=ca.issue(d, "expired", expired=True),
    )


def make_crl(authority: Authority, revoked: list[Issued], path: Path) -> Path:
    """A CRL from `authority` listing `revoked` (PEM), current for a day."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority._cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=1))
    )
    for issued in revoked:
        cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    crl = builder.sign(authority._key, hashes.SHA256())
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path
