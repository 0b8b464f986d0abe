"""`dicom-gateway import` handing its files to a running `dicom-gateway run`
over the control socket: same objects and messages as an in-process import,
nothing queued from a client that breaks off, and a fallback to the
in-process import when the socket is stale."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from gateway.app.control import SOCKET_NAME
from tests.support.gateway import Gateway, assert_one_line_error, write_config
from tests.support.process import GATEWAY, REPO, free_port, stop_process


def _jpeg(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def _made(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_ctime_ns


class Service:
    def __init__(self, config: Path, queue: Path) -> None:
        self.config = config
        self.queue = queue
        self.socket = queue / SOCKET_NAME
        self.log = config.parent / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        # A SIGKILLed service leaves its socket file behind: wait for the new
        # one (made later: inode numbers are reused), not for a name that is
        # already there.
        stale = _made(self.socket)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*GATEWAY, "--config", str(self.config), "run", "--only", "ui"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        deadline = time.monotonic() + 60
        while not self.socket.exists() or _made(self.socket) == stale:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the control socket never appeared"
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    queue = tmp_path / "q"
    config = write_config(
        tmp_path / "gateway.toml",
        {
            "station": {"modality": "US"},
            "capture": {"compression": "jpeg-baseline"},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "localhost", "port": 1}],
            "queue": {"path": "q", "min_free_mb": 0},  # relative: resolved like the service
            "ui": {"listen": f"127.0.0.1:{free_port()}"},
        },
    )
    svc = Service(config, queue).start()
    yield svc
    svc.stop()


def _queued(gateway: Gateway) -> list[dict[str, object]]:
    result = gateway("queue", "list", "--json", check=True)
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_import_is_handed_to_the_running_service(tmp_path: Path, service: Service) -> None:
    files = [_jpeg(tmp_path / f"photo{i}.jpg", i) for i in range(3)]
    gateway = Gateway(service.config)
    result = gateway(
        "import", *map(str, files), "--patient-id", "P1", "--patient-name", "Doe^Jane", "--json"
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [r["source"] for r in out["imported"]] == [str(f) for f in files]
    log = service.log.read_text()
    assert "import of 3 file(s)" in log and f"handed over by uid {os.getuid()}" in log
    assert len(_queued(gateway)) == 3
    ds = pydicom.dcmread(out["imported"][0]["path"])
    assert ds.PatientName == "Doe^Jane"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    # The content time is the file's, not the staged copy's.
    mtime = files[0].stat().st_mtime
    assert ds.ContentDate == time.strftime("%Y%m%d", time.localtime(mtime))
    assert list((service.queue / "staging").iterdir()) == []


def test_bad_file_is_named_as_the_user_typed_it(tmp_path: Path, service: Service) -> None:
    good = _jpeg(tmp_path / "good.jpg", 1)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(good.read_bytes()[:200])  # a JPEG cut short
    gateway = Gateway(service.config)
    result = gateway("import", str(good), str(bad), "--patient-id", "P1", "--patient-name", "A^B")
    line = assert_one_line_error(result)
    assert line.startswith(f"dicom-gateway: {bad}:"), line
    assert "staging" not in result.stderr
    assert _queued(gateway) == []
    # A malformed subject is a usage error, said by the service in the same words.
    result = gateway("import", str(good), "--patient-id", "P1")
    assert result.returncode == 2
    assert "needs --accession, or --patient-id and --patient-name" in result.stderr
    assert list((service.queue / "staging").iterdir()) == []


def test_client_breaking_off_leaves_nothing_queued(tmp_path: Path, service: Service) -> None:
    good = _jpeg(tmp_path / "good.jpg", 1)
    data = good.read_bytes()
    header = {
        "op": "import",
        "subject": {"patient_id": "P1", "patient_name": "A^B"},
        "files": [{"name": str(good), "size": len(data), "mtime": 0.0}] * 2,
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(service.socket))
        sock.sendall(json.dumps(header).encode() + b"\n" + data + data[:100])
    # A header that is not the protocol gets an answer, not a crash.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(service.socket))
        sock.sendall(b'{"op": "format-disk"}\n')
        assert b"unknown request" in sock.recv(4096)
    gateway = Gateway(service.config)
    deadline = time.monotonic() + 10
    while "abandoned" not in service.log.read_text():
        assert time.monotonic() < deadline, service.log.read_text()
        time.sleep(0.1)
    assert _queued(gateway) == []
    assert list((service.queue / "staging").iterdir()) == []
    # The service still takes the next import.
    result = gateway("import", str(good), "--patient-id", "P1", "--patient-name", "A^B")
    assert result.returncode == 0, result.stderr
    assert len(_queued(gateway)) == 1


def test_stale_socket_falls_back_to_importing_in_process(tmp_path: Path, service: Service) -> None:
    service.kill()  # SIGKILL: the socket file stays behind, nobody listens
    assert service.socket.exists()
    good = _jpeg(tmp_path / "good.jpg", 1)
    gateway = Gateway(service.config)
    result = gateway("import", str(good), "--patient-id", "P1", "--patient-name", "A^B", "--json")
    assert result.returncode == 0, result.stderr
    assert len(_queued(gateway)) == 1
    assert service.log.read_text().count("handed over") == 0


def test_handing_over_loads_no_dicom_stack(tmp_path: Path, service: Service) -> None:
    """The point of handing over: the command itself imports no pydicom,
    numpy or pydantic (the service has them loaded already)."""
    good = _jpeg(tmp_path / "good.jpg", 1)
    probe = (
        "import sys; from gateway.app.cli import main; "
        "status = main(sys.argv[1:]); "
        "heavy = [m for m in ('pydicom', 'numpy', 'pydantic', 'cv2') if m in sys.modules]; "
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(status)"
    )
    result = subprocess.run(
        [
            *(sys.executable, "-c", probe, "--config", str(service.config), "import", str(good)),
            *("--patient-id", "P1", "--patient-name", "A^B"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stderr


def test_sigkill_of_the_service_during_imports_loses_nothing_acknowledged(
    tmp_path: Path, service: Service
) -> None:
    """Imports handed over while the service is SIGKILLed at random points:
    every import the command reported as done is wholly in the queue after a
    restart, every queued file is a complete object, and nothing is left in
    staging."""
    import random

    rng = random.Random(20261123)
    files = [_jpeg(tmp_path / f"img{i}.jpg", i) for i in range(12)]
    gateway = Gateway(service.config)
    acknowledged: list[str] = []
    kills = 0
    deadline = time.monotonic() + 60
    for cycle in range(8):
        if time.monotonic() > deadline:
            break
        importing = subprocess.Popen(
            [
                *(*GATEWAY, "--config", str(service.config), "import", *map(str, files)),
                *("--patient-id", f"K{cycle}", "--patient-name", "KILL^TEST", "--json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        time.sleep(rng.uniform(0.0, 0.4))
        if rng.random() < 0.7:
            service.kill()
            kills += 1
        out, err = importing.communicate(timeout=60)
        if importing.returncode == 0:
            acknowledged.extend(r["sop_instance_uid"] for r in json.loads(out)["imported"])
        else:  # the service died under it: one line that says so
            assert "Traceback" not in err and "service" in err.splitlines()[-1], err
        if service.proc is not None and service.proc.poll() is not None:
            service.start()
    service.stop()
    rows = _queued(gateway)
    queued = {str(r["sop_instance_uid"]) for r in rows}
    assert set(acknowledged) <= queued, "an acknowledged import lost objects"
    for row in rows:
        ds = pydicom.dcmread(str(row["path"]))  # complete, readable objects only
        assert ds.SOPInstanceUID == row["sop_instance_uid"]
        assert len(ds.PixelData) > 0
    assert kills >= 3 and acknowledged, f"kills={kills}, acknowledged={len(acknowledged)}"
    staging = service.queue / "staging"  # cleared by the restart after each kill
    assert not staging.exists() or list(staging.iterdir()) == []


def test_a_client_that_stalls_is_dropped_and_the_next_import_goes_through(
    tmp_path: Path, service: Service
) -> None:
    good = _jpeg(tmp_path / "good.jpg", 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.connect(str(service.socket))
        stalled.sendall(b'{"op": "imp')  # and then nothing
        started = time.monotonic()
        result = Gateway(service.config)(
            "import", str(good), "--patient-id", "P1", "--patient-name", "A^B", timeout=60
        )
        waited = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "abandoned" in service.log.read_text()
    assert waited < 30  # the service gave up on the stalled client (10 s), then imported
