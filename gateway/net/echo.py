"""C-ECHO: the installer's first question, "can I reach the PACS, and how?"."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway.config import DestinationConfig
from gateway.net.association import DEFAULT_TIMEOUTS, PeerError, open_association, tls_description
from gateway.net.ul import Timeouts
from gateway.tls import TLSSetupError


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
    try:
        assoc = open_association(calling_ae, dest, [build_context(Verification)], timeouts)
    except (PeerError, TLSSetupError) as exc:
        return EchoResult(dest.name, False, str(exc), time.monotonic() - started)
    try:
        transport = tls_description(assoc)
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
    finally:
        assoc.release()
    elapsed = time.monotonic() - started
    if code == 0x0000:
        return EchoResult(dest.name, True, transport, elapsed)
    reason = "no response" if code is None else f"status 0x{code:04X}"
    return EchoResult(dest.name, False, f"C-ECHO failed: {reason} over {transport}", elapsed)
