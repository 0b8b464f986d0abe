"""USB export read back the way the PACS side would: DCMTK's dcmdump on the
DICOMDIR, dciodvfy on it, every exported object present; the queue keeps
every object until the PACS has it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydicom

from tests.support.gateway import Gateway, assert_one_line_error, gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import require_tool


def _gateway(tmp_path: Path, pki: PKI) -> Gateway:
    # A destination that never answers: everything stays pending.
    return Gateway(write_config(tmp_path / "gateway.toml", gateway_config(tmp_path, pki, 9)))


def test_export_writes_a_fileset_dcmtk_reads(tmp_path: Path, pki: PKI) -> None:
    gw = _gateway(tmp_path, pki)
    gw("capture", "--patient-id", "P1", "--patient-name", "Doe^A", "--frames", "2", check=True)
    gw("capture", "--patient-id", "P2", "--patient-name", "Roe^B", "--frames", "1", check=True)
    queued = json.loads(gw("queue", "list", "--json", check=True).stdout)
    assert len(queued) == 3
    stick = tmp_path / "usb"
    stick.mkdir()
    result = gw("export", "--to", str(stick), "--pending", check=True)
    assert "exported 3 object(s)" in result.stdout
    dicomdir = stick / "DICOMDIR"
    dump = subprocess.run(
        [require_tool("dcmdump"), str(dicomdir)], capture_output=True, text=True, timeout=30
    )
    assert dump.returncode == 0, dump.stderr
    assert "=MediaStorageDirectoryStorage" in dump.stdout
    for row in queued:
        assert row["sop_instance_uid"] in dump.stdout
    verify = subprocess.run(
        [require_tool("dciodvfy"), str(dicomdir)], capture_output=True, text=True, timeout=60
    )
    report = verify.stdout + verify.stderr
    assert "BasicDirectory" in report, report  # recognised as the Basic Directory IOD
    assert "Error" not in report, report
    # every referenced file exists and is the object we queued
    ds = pydicom.dcmread(dicomdir)
    found = {}
    for record in ds.DirectoryRecordSequence:
        if record.DirectoryRecordType == "IMAGE":
            path = stick.joinpath(*record.ReferencedFileID)
            found[record.ReferencedSOPInstanceUIDInFile] = pydicom.dcmread(path).SOPInstanceUID
    assert found == {r["sop_instance_uid"]: r["sop_instance_uid"] for r in queued}
    patients = [
        r.PatientID for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "PATIENT"
    ]
    assert sorted(patients) == ["P1", "P2"]
    after = json.loads(gw("queue", "list", "--json", check=True).stdout)
    assert [(r["id"], r["state"]) for r in after] == [(r["id"], "pending") for r in queued]


def test_export_errors_are_one_line(tmp_path: Path, pki: PKI) -> None:
    gw = _gateway(tmp_path, pki)
    assert "nothing to export" in assert_one_line_error(gw("export", "--to", str(tmp_path)))
    gw("capture", "--patient-id", "P1", "--patient-name", "Doe^A", check=True)
    missing = tmp_path / "not-mounted"
    assert "is not a directory" in assert_one_line_error(gw("export", "--to", str(missing)))
    assert "no queued objects for exam" in assert_one_line_error(
        gw("export", "--to", str(tmp_path), "--exam", "nope")
    )
    used = tmp_path / "used"
    used.mkdir()
    gw("export", "--to", str(used), check=True)
    assert "already holds a DICOM file-set" in assert_one_line_error(
        gw("export", "--to", str(used))
    )


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    import io
    import os

    from gateway.ops.export import Progress

    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        bar = Progress(4, tty)
        for i in range(1, 5):
            bar(i, "reading")
    out = ""
    for _ in range(50):  # bounded: the pty hands over what was written in chunks
        out += os.read(master, 4096).decode()
        if "4/4" in out:
            break
    os.close(master)
    assert "\rreading   [" + "#" * 30 + "] 4/4" in out
    assert "1/4" in out
    piped = io.StringIO()
    Progress(4, piped)(4, "reading")
    assert piped.getvalue() == ""
