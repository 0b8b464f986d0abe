"""`dicom-gateway queue flush` handing its work to the running forwarder
(`run --only forwarder`, as dicom-gateway-forwarder.service runs it) over
`forwarder.sock`: the objects reach a real DCMTK storescp, the command prints
and exits as an in-process flush does, loads no DICOM stack, and falls back
to sending in-process when the socket is stale."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app.control import FORWARDER_SOCKET_NAME
from gateway.config import load_config
from gateway.queue.outbox import outbox_for
from tests.support.dcmtk import StoreSCP
from tests.support.gateway import gateway_config, write_config
from tests.support.peers import queue_objects
from tests.support.pki import PKI
from tests.support.process import GATEWAY, REPO, imported_modules, stop_process

# What `queue flush` must never load in its own process when a service runs.
HEAVY = ("pydicom", "pynetdicom", "numpy", "cv2", "pydantic", "starlette")


class Forwarder:
    """`dicom-gateway run --only forwarder` as a real process, its log in a file."""

    def __init__(self, config: Path, queue: Path) -> None:
        self.config = config
        self.socket = queue / FORWARDER_SOCKET_NAME
        self.log_path = config.parent / "forwarder.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Forwarder:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*GATEWAY, "--config", str(self.config), "run", "--only", "forwarder"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, f"no {self.socket}: {self.log()}"
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)
        self.proc = None


@pytest.fixture
def setup(tmp_path: Path, pki: PKI, storescp: StoreSCP) -> Iterator[tuple[Path, Forwarder]]:
    data = gateway_config(tmp_path, pki, storescp.port)
    # The service must not send on its own between the test's steps: only the
    # flush (which ignores back-off) sends.
    data["forwarding"] = {"retry_base_s": 600.0, "retry_cap_s": 600.0}
    config = write_config(tmp_path / "gateway.toml", data)
    forwarder = Forwarder(config, tmp_path / "queue")
    yield config, forwarder
    forwarder.stop()


def _flush(config: Path, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(GATEWAY[0], "-X", "importtime", *GATEWAY[1:], "--config", str(config)),
            *("queue", "flush", "--timeout", str(timeout), *extra),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def _error_lines(stderr: str) -> list[str]:
    """The command's own words (an in-process flush also logs each retry)."""
    return [line for line in stderr.splitlines() if line.startswith("dicom-gateway:")]


def _queue(config: Path, count: int) -> None:
    with outbox_for(load_config(config)) as outbox:
        queue_objects(outbox, count)


def test_flush_is_done_by_the_running_forwarder(
    setup: tuple[Path, Forwarder], storescp: StoreSCP
) -> None:
    config, forwarder = setup
    forwarder.start()
    # The PACS is down: the service tries once, and backs off for ten minutes.
    _queue(config, 5)
    down = _flush(config, timeout=3)
    assert down.returncode == 1, down.stderr
    assert down.stdout.strip() == "sent 0, pending 5, failed 0"
    errors = _error_lines(down.stderr)
    assert len(errors) == 1 and errors[0].startswith(
        "dicom-gateway: not all delivered: 5 pending, 0 failed; last error: pacs (PACS@"
    ), errors
    assert "connection refused" in errors[0]

    storescp.start()
    up = _flush(config)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == "sent 5, pending 0, failed 0"
    assert _error_lines(up.stderr) == []
    assert len(storescp.received()) == 5
    # The service did it, and the command loaded none of the DICOM stack.
    assert forwarder.log().count("queue flush handed over by uid") == 2
    assert not imported_modules(up.stderr) & set(HEAVY), imported_modules(up.stderr) & set(HEAVY)
    assert "gateway" in imported_modules(up.stderr)  # the parse is not vacuous

    as_json = _flush(config, "--json")
    assert as_json.returncode == 0
    assert '"sent": 0' in as_json.stdout and '"pending": 0' in as_json.stdout


def test_without_a_service_flush_sends_in_process_with_the_same_words(
    setup: tuple[Path, Forwarder], storescp: StoreSCP
) -> None:
    config, forwarder = setup
    _queue(config, 3)
    down = _flush(config, timeout=3)  # no service, PACS down
    assert down.returncode == 1
    assert down.stdout.strip() == "sent 0, pending 3, failed 0"
    errors = _error_lines(down.stderr)
    assert len(errors) == 1
    assert errors[0].startswith("dicom-gateway: not all delivered: 3 pending, 0 failed; last error")
    storescp.start()
    # A socket file left by a killed service: nobody answers, the command sends itself.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(forwarder.socket))
    stale.close()
    up = _flush(config)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == "sent 3, pending 0, failed 0"
    assert len(storescp.received()) == 3
    assert "pydantic" in imported_modules(up.stderr)  # it really ran in-process
