"""Our listening DICOM ports (Storage Commitment answers, inbound C-STORE),
on pynetdicom's threaded server, with one fix: the TLS handshake runs in the
connection's own thread with a time-out.

pynetdicom performs the handshake in the accept loop, so one client that
connects and says nothing blocks every other client, forever. Here accept
only accepts; the handshake happens later, bounded by `handshake_timeout`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from gateway.net.tls import describe_tls_failure

log = logging.getLogger(__name__)


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def start_server(
    ae: Any,
    address: tuple[str, int],
    evt_handlers: Sequence[tuple[Any, Any]],
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float = 10.0,
    heartbeat: Callable[[], None] | None = None,
) -> Any:
    """Start `ae` serving on `address` in the background; returns the server
    (call `.shutdown()` to stop). `heartbeat` is called from the accept loop
    at least every half second while it runs (socketserver's
    service_actions), so a wedged accept loop shows as a stale loop."""
    server = ae.start_server(address, block=False, evt_handlers=list(evt_handlers))
    if heartbeat is not None:
        original_actions = server.service_actions

        def service_actions() -> None:
            heartbeat()
            original_actions()

        server.service_actions = service_actions
    if ssl_context is None:
        return server
    original_finish = server.finish_request

    def get_request() -> tuple[socket.socket, tuple[str, int]]:
        client, peer = server.socket.accept()
        client.settimeout(handshake_timeout)
        wrapped = ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return wrapped, peer

    def finish_request(request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            log.warning(
                "TLS handshake with %s failed: %s", client_address, describe_tls_failure(exc)
            )
            with contextlib.suppress(OSError):
                request.close()
            return
        request.settimeout(None)
        original_finish(request, client_address)

    server.get_request = get_request
    server.finish_request = finish_request
    return server
