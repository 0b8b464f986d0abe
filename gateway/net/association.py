"""Opening associations with the gateway's TLS policy and time-outs, and
turning failures into one-line reasons an operator can act on: `connect` on
the lean upper layer (C-STORE, C-FIND), `open_association` on pynetdicom
(everything else)."""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.config import DestinationConfig, TLSConfig
from gateway.net.ul import Proposed, Timeouts, ULConnection, ULError
from gateway.tls import client_context, describe_tls_failure, probe

if TYPE_CHECKING:  # pynetdicom is imported when used: the bulk path does without it
    from pynetdicom.association import Association
    from pynetdicom.presentation import PresentationContext

MAX_PDU = 131072


DEFAULT_TIMEOUTS = Timeouts()


class PeerError(Exception):
    """A peer could not be reached or refused us; the message says which and why."""


def peer_label(dest: DestinationConfig) -> str:
    return f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port})"


def tls_context(tls: TLSConfig | None) -> ssl.SSLContext | None:
    return client_context(tls) if tls else None


def connect(
    calling_ae: str,
    dest: DestinationConfig,
    contexts: Sequence[Proposed],
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ssl_context: ssl.SSLContext | None = None,
) -> ULConnection:
    """An association on the lean upper layer (bulk C-STORE, C-FIND).
    Raises PeerError with the reason; TLSSetupError when our own
    certificates cannot be loaded."""
    ctx = ssl_context if ssl_context is not None else tls_context(dest.tls)
    try:
        return ULConnection.connect(
            dest.host, dest.port, calling_ae, dest.ae_title, contexts, timeouts, ctx
        )
    except (ULError, OSError) as exc:  # ssl.SSLError is an OSError
        raise PeerError(f"{peer_label(dest)}: {describe_link_failure(exc)}") from None


def describe_link_failure(exc: ULError | OSError) -> str:
    """What broke on the lean upper layer, as one plain line."""
    return str(exc) if isinstance(exc, ULError) else describe_tls_failure(exc)


def open_association(
    calling_ae: str,
    dest: DestinationConfig,
    contexts: Iterable[PresentationContext],
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ssl_context: ssl.SSLContext | None = None,
    *,
    evt_handlers: Sequence[tuple[Any, Any]] = (),
    roles: Sequence[Any] = (),
) -> Association:
    from pynetdicom import AE, _config

    # A file is streamed from disk rather than loaded whole: a 110 MB cine
    # must not cost 110 MB of memory on a 1 GB Pi.
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    ae.requested_contexts = list(contexts)
    ctx = ssl_context if ssl_context is not None else tls_context(dest.tls)
    tls_args = (ctx, dest.host) if ctx is not None else None
    assoc = ae.associate(
        dest.host,
        dest.port,
        ae_title=dest.ae_title,
        max_pdu=MAX_PDU,
        tls_args=tls_args,
        evt_handlers=list(evt_handlers) or None,
        ext_neg=list(roles) or None,
    )
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        reason = "association rejected by the peer (check AE titles)"
    else:
        # pynetdicom reports a refused connection and a failed handshake
        # alike as "aborted"; one more connection tells which it was.
        reason = probe(dest.host, dest.port, ctx, timeout=timeouts.connect)
    raise PeerError(f"{peer_label(dest)}: {reason}")


def contexts_for(pairs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """One context per (SOP class, transfer syntax) seen, plus Explicit VR
    Little Endian for each class so an uncompressed fallback is on offer."""
    from pynetdicom.presentation import build_context

    out: list[PresentationContext] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for sop_class, ts in pairs:
        for syntaxes in ([ts], ["1.2.840.10008.1.2.1"]):
            key = (sop_class, tuple(syntaxes))
            if key not in seen:
                seen.add(key)
                out.append(build_context(sop_class, syntaxes))
    if len(out) > 128:
        raise ValueError("more than 128 presentation contexts in one association")
    return out


def tls_description(assoc: Association) -> str:
    """ "TLSv1.3 TLS_AES_256_GCM_SHA384" for a TLS association, else "plain TCP"."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, ssl.SSLSocket):
        cipher = sock.cipher()
        return f"{sock.version()} {cipher[0] if cipher else '?'}"
    return "plain TCP"
