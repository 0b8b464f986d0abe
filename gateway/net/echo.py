"""C-ECHO: the installer's first question, "can I reach the PACS, and how?".

On the same upper layer as forwarding (gateway.net.ul), so "Test connection"
tests the stack that will carry the images: its TLS policy, its certificates,
its time-outs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from gateway.config import DestinationConfig
from gateway.net.association import DEFAULT_TIMEOUTS, PeerError, connect, peer_label
from gateway.net.tls import TLSSetupError
from gateway.net.ul import Proposed, Timeouts, ULError, c_echo_rq, command_us

VERIFICATION = "1.2.840.10008.1.1"
_CONTEXT = Proposed(1, VERIFICATION, ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"))
C_ECHO_RSP = 0x8030


@dataclass(frozen=True)
class EchoResult:
    name: str
    ok: bool
    detail: str
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def echo(
    calling_ae: str, dest: DestinationConfig, timeouts: Timeouts = DEFAULT_TIMEOUTS
) -> EchoResult:
    started = time.monotonic()

    def result(ok: bool, detail: str) -> EchoResult:
        return EchoResult(dest.name, ok, detail, time.monotonic() - started)

    try:
        conn = connect(calling_ae, dest, [_CONTEXT], timeouts)
    except (PeerError, TLSSetupError) as exc:
        return result(
            False, str(exc) if isinstance(exc, PeerError) else f"{peer_label(dest)}: {exc}"
        )
    transport = conn.transport
    try:
        if _CONTEXT.id not in conn.accepted:
            return result(
                False, f"{peer_label(dest)}: the peer does not accept Verification (C-ECHO)"
            )
        message_id = conn.next_message_id()
        response = conn.request(_CONTEXT.id, c_echo_rq(message_id), None, C_ECHO_RSP, message_id)
        code = command_us(response.command, 0x0900)
    except (ULError, OSError) as exc:
        conn.abort()
        return result(False, f"{peer_label(dest)}: C-ECHO failed over {transport}: {exc}")
    finally:
        conn.release()
    if code == 0x0000:
        return result(True, transport)
    reason = "no status" if code is None else f"status 0x{code:04X}"
    return result(False, f"C-ECHO failed: {reason} over {transport}")
