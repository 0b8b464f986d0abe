"""TLS contexts per DICOM PS3.15's BCP 195 non-downgrading profile.

Built here, outside the network code, and injected (pynetdicom's `tls_args` /
`ssl_context`), so every association in the gateway has the same policy:
TLS 1.2 or 1.3 only, AEAD suites with forward secrecy, certificates verified
both ways, host names checked.
"""

from __future__ import annotations

import os
import socket
import ssl

from gateway.config import HttpsTLSConfig, TLSConfig

# TLS 1.2 suites of BCP 195 (RFC 9325 4.2) that are AEAD with ECDHE; TLS 1.3
# suites are all AEAD and are left to OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS"


class TLSSetupError(Exception):
    """Our own certificate, key or CA file cannot be used."""


def _load(ctx: ssl.SSLContext, tls: TLSConfig) -> None:
    try:
        ctx.load_verify_locations(cafile=str(tls.ca))
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError(f"CA file {tls.ca}: {_reason(exc)}") from None
    if tls.crl is not None:
        # The leaf only: intermediate CAs of a site PKI rarely publish CRLs,
        # and requiring one for each would refuse every peer.
        try:
            ctx.load_verify_locations(cafile=str(tls.crl))
        except (ssl.SSLError, OSError) as exc:
            raise TLSSetupError(f"CRL file {tls.crl}: {_reason(exc)}") from None
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    try:
        ctx.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError(f"certificate {tls.cert} / key {tls.key}: {_reason(exc)}") from None


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def client_context(tls: TLSConfig) -> ssl.SSLContext:
    """For our outgoing associations: verify the peer and its host name, present ours."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, tls)
    return ctx


def https_context(tls: HttpsTLSConfig | None) -> ssl.SSLContext:
    """For HTTPS (DICOMweb) with the same policy: the server is checked
    against the configured CA only; with none configured, against the
    system's store at OpenSSL's compiled-in locations, never at
    SSL_CERT_FILE / SSL_CERT_DIR (nor requests' or curl's variables), so the
    environment can neither widen nor swap the trust. Our client certificate
    is presented when configured (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    ca = tls.ca if tls else None
    try:
        if ca is not None:
            ctx.load_verify_locations(cafile=str(ca))
        else:
            paths = ssl.get_default_verify_paths()
            cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
            capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
            if cafile is None and capath is None:
                raise TLSSetupError("no CA configured and the system has no certificate store")
            ctx.load_verify_locations(cafile=cafile, capath=capath)
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError(f"CA file {ca or 'of the system'}: {_reason(exc)}") from None
    if tls is not None and tls.cert is not None and tls.key is not None:
        try:
            ctx.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
        except (ssl.SSLError, OSError) as exc:
            raise TLSSetupError(f"certificate {tls.cert} / key {tls.key}: {_reason(exc)}") from None
    return ctx


def server_context(tls: TLSConfig, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """For our listening ports: mutual authentication unless told otherwise."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    _load(ctx, tls)
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def describe_tls_failure(exc: BaseException) -> str:
    """One plain line for an operator, from whatever the handshake raised."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = exc.verify_message or ""
        if "Hostname mismatch" in msg or "IP address mismatch" in msg:
            return f"peer certificate does not match the host name ({msg})"
        if "expired" in msg:
            return "peer certificate has expired"
        if "not yet valid" in msg:
            return "peer certificate is not yet valid (is the clock right?)"
        if "revoked" in msg:
            return "peer certificate has been revoked (on the CRL)"
        if "self-signed" in msg or "unable to get local issuer" in msg:
            return f"peer certificate is not signed by our CA ({msg})"
        return f"peer certificate rejected: {msg}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        if "unsupported protocol" in reason or "version" in reason:
            return f"peer does not speak TLS 1.2 or 1.3 ({exc.reason})"
        if "certificate required" in reason or "certificate_required" in reason:
            return "peer requires a client certificate and rejected ours"
        if "unknown ca" in reason or "bad certificate" in reason:
            return f"peer rejected our certificate ({exc.reason})"
        if "wrong version number" in reason or "record layer" in reason:
            return "peer is not speaking TLS on this port"
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listening?)"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def probe(host: str, port: int, ctx: ssl.SSLContext | None, timeout: float = 10.0) -> str:
    """Connect and handshake once, to explain why an association failed.

    pynetdicom logs handshake errors but returns only "not established"; the
    operator deserves the actual reason. With TLS 1.3 a server refuses a client
    certificate after the handshake, so wait briefly for its alert.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if ctx is None:
                return "connected, but the DICOM association was refused"
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(1.0)
                try:
                    if tls.recv(1) == b"":
                        return "peer closed the TLS connection (does it accept our certificate?)"
                except TimeoutError:
                    pass
                return "TLS works, but the peer aborted or did not answer the association"
    except (ssl.SSLError, OSError) as exc:
        return describe_tls_failure(exc)
