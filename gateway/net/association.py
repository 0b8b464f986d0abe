"""Opening associations with the gateway's TLS policy and time-outs, and
turning failures into one-line reasons an operator can act on. Every
association the box initiates goes through `connect` (gateway.net.ul)."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from gateway.config import DestinationConfig, TLSConfig
from gateway.net.tls import client_context, describe_tls_failure
from gateway.net.ul import Proposed, Role, Timeouts, ULConnection, ULError

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
    roles: Sequence[Role] = (),
) -> ULConnection:
    """An association on the lean upper layer. Raises PeerError with the
    reason; TLSSetupError when our own certificates cannot be loaded."""
    ctx = ssl_context if ssl_context is not None else tls_context(dest.tls)
    try:
        return ULConnection.connect(
            dest.host, dest.port, calling_ae, dest.ae_title, contexts, timeouts, ctx, roles
        )
    except (ULError, OSError) as exc:  # ssl.SSLError is an OSError
        raise PeerError(f"{peer_label(dest)}: {describe_link_failure(exc)}") from None


def describe_link_failure(exc: ULError | OSError) -> str:
    """What broke on the lean upper layer, as one plain line."""
    return str(exc) if isinstance(exc, ULError) else describe_tls_failure(exc)
