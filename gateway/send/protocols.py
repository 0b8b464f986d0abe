"""Which protocol serves a destination: the one place that knows the kinds
(DIMSE C-STORE, DICOMweb STOW-RS), so the forwarder, Storage Commitment and
"Test connection" treat every destination through the same interfaces."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gateway.config import Destination, StowDestinationConfig
from gateway.dicom.transcode import DEFAULT_MEMORY_LIMIT
from gateway.net.echo import EchoResult, echo
from gateway.net.ul import Timeouts
from gateway.send.destination import Confirmer, Sender
from gateway.send.dimse import DimseSender

CONVERT_DIR = "convert"


def sender_for(
    dest: Destination,
    calling_ae: str,
    timeouts: Timeouts,
    queue_root: Path,
    *,
    progress: Callable[[], None] = lambda: None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    converting: Callable[[int, bool], None] = lambda object_id, started: None,
    convert_video: bool = True,
) -> Sender:
    """The sender for a destination's protocol. `progress` is called while it
    writes (the forwarder's heartbeat: a long object on a slow link is not a
    stuck loop). For C-STORE: a conversion stays within `memory_limit` and is
    bracketed by `converting` (recorded durably: an object the forwarder dies
    on twice is set aside)."""
    if isinstance(dest, StowDestinationConfig):
        from gateway.send.stow import StowSender

        return StowSender(dest, progress=progress)
    return DimseSender(
        dest,
        calling_ae,
        timeouts,
        queue_root / CONVERT_DIR,
        progress=progress,
        memory_limit=memory_limit,
        converting=converting,
        convert_video=convert_video,
    )


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
