"""Memory budgets of the real processes, as systemd runs them (README,
"Memory"): the forwarder (`run --only forwarder`) within 64 MiB idle and
while it sends a 1 GB cine to DCMTK's storescp over TLS; capture + UI
(`run --only capture,ui`) within 160 MiB plus the ring's configured size;
and each process loading only what it needs (the forwarder no OpenCV, no
numpy, no Starlette, no DICOM toolkit), read from `python -X importtime`
and from the shared objects mapped into the running process."""

from __future__ import annotations

import sqlite3
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.app.control import FORWARDER_SOCKET_NAME
from gateway.config import load_config
from gateway.queue.outbox import outbox_for
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import gateway_config, write_config
from tests.support.pki import PKI
from tests.support.process import GATEWAY, REPO, imported_modules, stop_process, wait_for_port

MIB = 1 << 20
FORWARDER_BUDGET = 64 * MIB
CAPTURE_UI_BUDGET = 160 * MIB
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
# Never in the forwarder's process: capture's and the UI's libraries, and the
# DICOM toolkits (the lean upper layer streams files as they are).
NOT_IN_FORWARDER = ("cv2", "numpy", "starlette", "uvicorn", "jinja2", "pydicom", "pynetdicom")


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


class Sampler:
    """VmRSS of a process every 20 ms, on a thread, until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, _status(self.pid, "VmRSS"))
            except (OSError, AssertionError):
                return


def _cine(frames: int, rows: int = 480, cols: int = 640) -> tuple[str, bytes]:
    """A Part 10 Ultrasound Multi-frame object of `frames` RGB frames, its
    pixel data element appended by hand (pydicom would copy 1 GB twice)."""
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = US_MULTIFRAME, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Memory^Budget", "MEM", "US"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    size = rows * cols * 3 * frames
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, size)
    frame = bytes(range(256)) * (rows * cols * 3 // 256)
    return uid, out.getvalue() + pixel_header + frame * frames


def _sent(queue: Path) -> int:
    with sqlite3.connect(queue / "outbox.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'sent'").fetchone()[0])


@pytest.fixture
def forwarder_setup(tmp_path: Path, pki: PKI) -> Iterator[tuple[Path, StoreSCP]]:
    scp = StoreSCP(tmp_path / "pacs", pki.server, pki.ca.cert, extra=("--ignore",)).start()
    data = gateway_config(tmp_path, pki, scp.port)
    data["queue"]["min_free_mb"] = 0
    yield write_config(tmp_path / "gateway.toml", data), scp
    scp.stop()


def test_forwarder_within_64_mib_idle_and_sending_a_1_gb_cine(
    tmp_path: Path, forwarder_setup: tuple[Path, StoreSCP]
) -> None:
    config, _scp = forwarder_setup
    queue = tmp_path / "queue"
    err = tmp_path / "forwarder.err"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [
                *(GATEWAY[0], "-X", "importtime", *GATEWAY[1:], "--config", str(config)),
                *("run", "--only", "forwarder"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + 30
        while not (queue / FORWARDER_SOCKET_NAME).exists():
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the forwarder did not start"
            time.sleep(0.05)
        time.sleep(2.0)  # a couple of idle rounds
        idle = _status(proc.pid, "VmRSS")
        assert idle <= FORWARDER_BUDGET, f"idle forwarder at {idle / MIB:.1f} MiB"

        uid, data = _cine(1100)  # 1.01 GB
        assert len(data) > 1_000_000_000
        with outbox_for(load_config(config)) as outbox:
            outbox.add(
                data,
                sop_instance_uid=uid,
                sop_class_uid=US_MULTIFRAME,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                study_instance_uid="1.2.3",
            )
        del data
        with Sampler(proc.pid) as sampler:
            deadline = time.monotonic() + 240
            while _sent(queue) < 1:
                assert proc.poll() is None, err.read_text()
                assert time.monotonic() < deadline, "the cine was not sent in 4 minutes"
                time.sleep(0.1)
        peak = _status(proc.pid, "VmHWM")
        maps = _mapped(proc.pid)
        assert sampler.peak > idle * 0.5  # the sampler saw the process
        print(f"forwarder RSS: idle {idle / MIB:.1f} MiB, peak sending 1 GB {peak / MIB:.1f} MiB")
        assert peak <= FORWARDER_BUDGET, f"forwarder peaked at {peak / MIB:.1f} MiB"
        for lib in ("cv2", "numpy", "_multiarray_umath", "libavcodec"):
            assert lib not in maps, f"{lib} is mapped into the forwarder"
    finally:
        stop_process(proc, timeout=20)
    imported = imported_modules(err.read_text())
    assert "gateway" in imported and "ssl" in imported  # the parse is not vacuous
    assert not imported & set(NOT_IN_FORWARDER), imported & set(NOT_IN_FORWARDER)


def test_capture_and_ui_within_160_mib_plus_the_ring(tmp_path: Path, pki: PKI) -> None:
    """640×480 at 30 fps, raw frames, a 64 MiB ring filled to its cap (10 s
    of these frames would be 264 MiB), the UI serving its page."""
    ring_mb = 64
    data = gateway_config(tmp_path, pki, None)
    data["capture"] = {
        "driver": "testpattern",
        "compression": "none",
        "buffer_mb": ring_mb,
        "options": {"width": 640, "height": 480, "fps": 30, "realtime": True},
    }
    config = write_config(tmp_path / "gateway.toml", data)
    port = int(data["ui"]["listen"].rsplit(":", 1)[1])
    with open(tmp_path / "service.log", "wb") as log:
        proc = subprocess.Popen(
            [*GATEWAY, "--config", str(config), "run", "--only", "capture,ui"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_for_port(port, proc, timeout=30)
        with Sampler(proc.pid) as sampler:
            end = time.monotonic() + 6.0  # > 64 MiB / (0.88 MiB × 30 fps): the ring is full
            while time.monotonic() < end:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
                    assert page.status == 200
                time.sleep(0.5)
        peak = _status(proc.pid, "VmHWM")
        maps = _mapped(proc.pid)
    finally:
        stop_process(proc, timeout=20)
    budget = CAPTURE_UI_BUDGET + ring_mb * MIB
    assert "cv2" in maps  # it is the capture process
    assert sampler.peak > 100 * MIB  # the ring really filled (raw frames)
    print(f"capture + UI RSS: peak {peak / MIB:.1f} MiB with a {ring_mb} MiB ring")
    assert peak <= budget, f"capture + UI peaked at {peak / MIB:.1f} MiB (budget {budget / MIB})"
