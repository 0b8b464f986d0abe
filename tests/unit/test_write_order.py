"""The order that makes an acknowledged capture survive a power cut, pinned
by tracing the real calls of `Outbox.add`: the file's bytes are written,
the file is fsynced, renamed to its final name, its directory is fsynced,
and only then is the row committed (SQLite's COMMIT, traced on the
connection). Any other order can leave a row pointing at a file the power
cut took (test_power_cut shows it on a file system that really drops
unsynced writes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.queue import files
from tests.support.queue import new_outbox


def test_add_writes_fsyncs_renames_fsyncs_the_directory_then_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []

    def where(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    real_write, real_fsync, real_rename = os.write, os.fsync, os.rename

    def write(fd: int, data: bytes) -> int:
        calls.append(("write", where(fd)))
        return real_write(fd, data)

    def fsync(fd: int) -> None:
        calls.append(("fsync", where(fd)))
        real_fsync(fd)

    def rename(src: str | Path, dst: str | Path) -> None:
        calls.append(("rename", f"{src} -> {dst}"))
        real_rename(src, dst)

    with new_outbox(tmp_path, ["pacs"]) as outbox:
        outbox._db.set_trace_callback(
            lambda sql: (
                calls.append(("sql", sql.split()[0].upper()))
                if sql.split()[0].upper() in ("BEGIN", "COMMIT", "INSERT")
                else None
            )
        )
        monkeypatch.setattr(files.os, "write", write)
        monkeypatch.setattr(files.os, "fsync", fsync)
        monkeypatch.setattr(files.os, "rename", rename)
        obj = outbox.add(
            b"DICM" * 1000,
            sop_instance_uid="1.2.3.4.5",
            sop_class_uid="1.2.3",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            study_instance_uid="1.2.3.4",
        )
        monkeypatch.undo()
    final = str(obj.path)
    tmp = final + files.TMP_SUFFIX
    steps = [c for c in calls if c[0] != "sql" or c[1] in ("BEGIN", "COMMIT")]
    assert steps == [
        ("write", tmp),
        ("fsync", tmp),
        ("rename", f"{tmp} -> {final}"),
        ("fsync", str(obj.path.parent)),
        ("sql", "BEGIN"),
        ("sql", "COMMIT"),
    ], steps
