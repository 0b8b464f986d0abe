"""USB export: queued objects as a DICOM file-set (PS3.10 media with a
DICOMDIR, PS3.11 General Purpose profile) for hand-carrying to the PACS when
the network never comes back.

Export only reads the queue: every object stays queued until the PACS has
it, so a stick lost on the way loses nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

from gateway.queue.model import DeliveryState, QueuedObject
from gateway.queue.outbox import Outbox

DONE = (DeliveryState.SENT, DeliveryState.COMMITTED)


class ExportError(Exception):
    """The export cannot be done; nothing in the queue was touched."""


@dataclass(frozen=True)
class ExportReport:
    directory: Path
    exported: int
    skipped: list[str]  # one reason per object left out
    bytes: int


def select(outbox: Outbox, exam: str | None = None, pending: bool = False) -> list[QueuedObject]:
    objects = outbox.objects()
    if exam is not None:
        objects = [o for o in objects if o.exam_id == exam]
        if not objects:
            raise ExportError(f"no queued objects for exam {exam!r}")
    if pending:
        undelivered = {d.object.id for d in outbox.deliveries() if d.state not in DONE}
        objects = [o for o in objects if o.id in undelivered]
    return objects


def _check_target(target: Path, needed: int) -> None:
    if not target.is_dir():
        raise ExportError(f"{target} is not a directory (is the USB stick mounted?)")
    if not os.access(target, os.W_OK):
        raise ExportError(f"{target} is not writable")
    if (target / "DICOMDIR").exists() or (target / "DICOM").exists():
        raise ExportError(f"{target} already holds a DICOM file-set; use an empty directory")
    free = shutil.disk_usage(target).free
    if free < needed:
        raise ExportError(
            f"{target} has {free // 2**20} MB free, the export needs {needed // 2**20 + 1} MB"
        )


class Progress:
    """A one-line bar on a terminal, nothing when output is piped."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.tty = stream.isatty()

    def __call__(self, done: int, label: str) -> None:
        if not self.tty:
            return
        width = 30
        filled = width * done // self.total
        self.stream.write(
            f"\r{label:<9} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
        )
        if done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def export(
    objects: list[QueuedObject],
    target: Path,
    progress: Callable[[int, str], None] | None = None,
) -> ExportReport:
    """Write `objects` under `target` as DICOM/… files plus a DICOMDIR."""
    if not objects:
        raise ExportError("nothing to export: no queued objects match")
    needed = sum(o.size for o in objects) * 2 + 2**20  # files + DICOMDIR headroom
    _check_target(target, needed)
    fileset = FileSet()
    fileset.ID = "EDGEGATEWAY"
    skipped: list[str] = []
    added = 0
    for i, obj in enumerate(objects, 1):
        try:
            fileset.add(pydicom.dcmread(obj.path))
            added += 1
        except (OSError, InvalidDicomError, ValueError) as exc:
            skipped.append(f"object {obj.id}: {exc}")
        if progress:
            progress(i, "reading")
    if not added:
        raise ExportError("no object could be read: " + "; ".join(skipped))
    if progress:
        progress(0, "writing")
    try:
        fileset.write(target)
    except OSError as exc:
        raise ExportError(f"cannot write the file-set to {target}: {exc.strerror}") from None
    if progress:
        progress(len(objects), "writing")
    os.sync()  # the stick may be pulled right after we say done
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return ExportReport(target, added, skipped, size)
