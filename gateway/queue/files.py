"""Crash-safe file writes: temp → fsync → rename → fsync(dir).

After `write_atomic` returns, the file is on stable storage under its final
name, or (after a crash before that) only a `.tmp` exists, which start-up
removes. There is never a half-written `.dcm`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int = 0o750) -> None:
    """`mkdir -p` that survives a power cut: each directory made here has
    its name fsynced into its parent (a queue directory created on the
    first start and lost with the power would take every object with it)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            continue
        fsync_dir(directory.parent)


def write_atomic(path: Path, data: bytes | Sequence[bytes], *, sync_dir: bool = True) -> None:
    """`data` may come in pieces (written one after the other, never joined
    in memory). `sync_dir=False` leaves the directory's fsync to a caller
    writing several files (one fsync of the directory covers every rename)."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        for part in [data] if isinstance(data, bytes) else data:
            view = memoryview(part)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def remove_durably(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fsync_dir(path.parent)
