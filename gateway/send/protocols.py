"""Which protocol serves a destination: the one place that knows the kinds
(DIMSE C-STORE, DICOMweb STOW-RS), so the forwarder, Storage Commitment and
"Test connection" treat every destination through the same interfaces."""

from __future__ import annotations

from pathlib import Path

from gateway.config import Destination, StowDestinationConfig
from gateway.net.echo import EchoResult, echo
from gateway.net.ul import Timeouts
from gateway.send.destination import Confirmer, Sender
from gateway.send.dimse import DimseSender

CONVERT_DIR = "convert"


def sender_for(dest: Destination, calling_ae: str, timeouts: Timeouts, queue_root: Path) -> Sender:
    """The sender for a destination's protocol."""
    if isinstance(dest, StowDestinationConfig):
        from gateway.send.stow import StowSender

        return StowSender(dest)
    return DimseSender(dest, calling_ae, timeouts, queue_root / CONVERT_DIR)


def confirmer_for(dest: Destination) -> Confirmer | None:
    """Who confirms what was stored, for a destination with
    `storage_commitment`: None where the protocol has Storage Commitment
    itself (DIMSE's N-ACTION, gateway.send.commitment)."""
    if isinstance(dest, StowDestinationConfig):
        from gateway.send.stow import StowSender

        return StowSender(dest)
    return None


def echo_destination(calling_ae: str, dest: Destination) -> EchoResult:
    """ "Test connection" / `echo`: C-ECHO for DIMSE, an authenticated QIDO-RS
    request for DICOMweb; both with the TLS version and cipher."""
    if isinstance(dest, StowDestinationConfig):
        from gateway.send.stow import stow_echo

        return stow_echo(dest)
    return echo(calling_ae, dest)
