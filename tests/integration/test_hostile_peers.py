"""The inbound C-STORE port against hostile and broken peers: path-like and
mismatched UIDs, Deflate, oversized PDUs and data sets, the association
count and deadline, and a crowd of slow-drip and idle connections while an
allowed modality (DCMTK storescu) stores. Each asserts what was written
(nothing, or only the allowed modality's objects) and that the others went on."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom import config as pydicom_config
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.acquire.inbound import InboundService
from gateway.queue.outbox import Outbox
from tests.support.hostile import (
    ALLOWED,
    EXPLICIT_LE,
    SECONDARY_CAPTURE,
    Crowd,
    associate_rq,
    inbound_config,
    pdu_header,
    read_pdu,
    refused_with,
)
from tests.support.peers import SC, small_object
from tests.support.process import free_port, require_tool, wait_for_port
from tests.support.queue import new_outbox


class Running:
    def __init__(self, tmp_path: Path, **limits: Any) -> None:
        self.port = free_port()
        self.config = inbound_config(tmp_path, self.port, **limits)
        self.outbox: Outbox = new_outbox(self.config.queue.path, ["pacs"])
        self.refusals: list[tuple[str, str, str]] = []
        self.service = InboundService(
            self.outbox, self.config, refused=lambda *r: self.refusals.append(r)
        )
        self.service.start()
        wait_for_port(self.port)

    def refused_with(self, words: str, timeout: float = 10.0) -> bool:
        return refused_with(self.refusals, words, timeout)

    def files(self) -> list[Path]:
        return sorted(p for p in self.config.queue.path.rglob("*") if p.is_file())

    def close(self) -> None:
        self.service.stop()
        self.outbox.close()


@pytest.fixture
def inbound(tmp_path: Path) -> Any:
    running = Running(tmp_path)
    yield running
    running.close()


def part10(command_uid: str, dataset_uid: str) -> bytes:
    """A Part 10 file whose File Meta (what pynetdicom's C-STORE takes its
    command from) may name another SOP Instance UID than its data set."""
    from pydicom import dcmread

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pydicom_config.disable_value_validation():
            ds = dcmread(DicomBytesIO(small_object()[1]))
            ds.file_meta.MediaStorageSOPInstanceUID = command_uid
            ds.SOPInstanceUID = dataset_uid
            out = DicomBytesIO()
            # As given: pydicom would otherwise copy the data set's UID into the meta.
            ds.save_as(out, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return out.getvalue()


def pynetdicom_store(port: int, path: Path, aet: str = "MODALITY") -> int | None:
    """The status a pynetdicom SCU gets for the file at `path`, sent as it
    is (the command's UIDs from its File Meta, the data set's bytes
    untouched); None when the association or the store failed."""
    from pynetdicom import _config

    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return _store(port, path, aet)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked


def _store(port: int, path: Path, aet: str) -> int | None:
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.add_requested_context(SC, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE1")
    if not assoc.is_established:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            status = assoc.send_c_store(str(path))
        return int(status.Status) if "Status" in status else None
    finally:
        if assoc.is_established:
            assoc.release()


def storescu(port: int, *files: Path, aet: str = "MODALITY") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(require_tool("storescu"), "-to", "20", "-ta", "20", "-td", "20", "-aet", aet),
            *("-aec", "EDGE1", "127.0.0.1", str(port), *map(str, files)),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.parametrize("uid", ["../../x", "/some/dir/x", "1.2.3/../../../x", "1.2.3.a", "9" * 65])
def test_path_like_or_invalid_uid_is_refused_and_nothing_written(
    tmp_path: Path, inbound: Running, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pynetdicom import _config

    # The hostile peer sends what pynetdicom would refuse to send.
    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (True, ""))
    before = inbound.files()
    path = tmp_path / "bad.dcm"
    path.write_bytes(part10(uid, uid))
    status = pynetdicom_store(inbound.port, path)
    assert status == 0xC000
    assert inbound.outbox.objects() == []
    assert inbound.files() == before
    assert not (tmp_path / "x.dcm").exists() and not Path("/some/dir/x.dcm").exists()
    assert inbound.refusals and inbound.refusals[-1][0] == "MODALITY"
    # The port still serves the modality afterwards.
    uid_ok, data = small_object()
    good = tmp_path / "good.dcm"
    good.write_bytes(data)
    assert pynetdicom_store(inbound.port, good) == 0
    assert [o.sop_instance_uid for o in inbound.outbox.objects()] == [uid_ok]


def test_non_conformant_uid_is_kept_as_sent_under_a_name_of_ours(
    tmp_path: Path, inbound: Running
) -> None:
    """A leading zero (old devices make them): accepted, kept as sent; the
    file's name is ours, not the UID."""
    uid = "1.2.840.0099.1"
    path = tmp_path / "old.dcm"
    path.write_bytes(part10(uid, uid))
    assert pynetdicom_store(inbound.port, path) == 0
    (obj,) = inbound.outbox.objects()
    assert obj.sop_instance_uid == uid and uid not in obj.path.name
    assert obj.path.parent == inbound.config.queue.path / "objects"


def test_uid_mismatch_between_command_and_data_set_is_refused(
    tmp_path: Path, inbound: Running
) -> None:
    queued_uid, data = small_object()
    first = tmp_path / "first.dcm"
    first.write_bytes(data)
    assert pynetdicom_store(inbound.port, first) == 0
    before = inbound.files()
    # The command names a new UID, the data set an object we hold: an
    # overwrite by another name, refused.
    forged = tmp_path / "forged.dcm"
    forged.write_bytes(part10(generate_uid(), queued_uid))
    assert pynetdicom_store(inbound.port, forged) == 0xA900
    assert [o.sop_instance_uid for o in inbound.outbox.objects()] == [queued_uid]
    assert inbound.files() == before
    assert "is not the command's" in inbound.refusals[-1][2]


def test_deflate_is_refused(tmp_path: Path, inbound: Running) -> None:
    """Deflated Explicit VR Little Endian is not accepted for any context:
    a few kilobytes that inflate to gigabytes never reach zlib."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(SECONDARY_CAPTURE, ["1.2.840.10008.1.2.1.99"])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", inbound.port, ae_title="EDGE1")
    assert assoc.is_established
    try:
        deflated = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == SC]
        assert deflated == []
        from pydicom import dcmread

        ds = dcmread(DicomBytesIO(small_object()[1]))
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert inbound.outbox.objects() == []


def _raw_associated(port: int, calling: str = "MODALITY") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(associate_rq(calling, "EDGE1", [(SECONDARY_CAPTURE, [EXPLICIT_LE])]))
    answer = read_pdu(sock)
    assert answer is not None and answer[0] == 0x02, answer  # A-ASSOCIATE-AC
    return sock


def test_pdu_announcing_a_gigabyte_aborts_the_association(
    inbound: Running, caplog: pytest.LogCaptureFixture
) -> None:
    sock = _raw_associated(inbound.port)
    with caplog.at_level(logging.WARNING), sock:
        sock.sendall(pdu_header(0x04, 1 << 30) + bytes(64))
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == 0x07  # A-ABORT
        assert read_pdu(sock) is None  # and closed
        deadline = time.monotonic() + 5
        while not any("aborted" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the listener did not log the abort"
            time.sleep(0.02)
        time.sleep(0.2)  # pynetdicom's threads have seen the closed transport
    assert inbound.outbox.objects() == []
    assert inbound.refused_with("PDU of 1073741824 bytes")
    # One warning, ours, naming the peer and the reason; no ERROR from
    # pynetdicom for the read the breach failed (a hostile peer must not
    # write ERRORs to the journal at will).
    assert [r.levelname for r in caplog.records if r.name.startswith("pynetdicom")] == []
    ours = [r.getMessage() for r in caplog.records if r.name == "gateway.net.listener"]
    assert len(ours) == 1 and "PDU of 1073741824 bytes" in ours[0]


def test_request_and_a_gigabyte_pdu_in_one_write_is_aborted(tmp_path: Path) -> None:
    """The request and an oversized P-DATA header arriving together (read
    by the gate at once) abort the association and free its slot."""
    running = Running(tmp_path, max_associations=1)
    try:
        for _ in range(3):  # the one slot is free again each time
            with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
                rq = associate_rq("MODALITY", "EDGE1", [(SECONDARY_CAPTURE, [EXPLICIT_LE])])
                sock.sendall(rq + pdu_header(0x04, 1 << 30))
                answer = read_pdu(sock)
                assert answer is not None and answer[0] == 0x07  # A-ABORT
        assert running.refused_with("PDU of 1073741824 bytes")
        assert pynetdicom_store(running.port, _small(tmp_path)) == 0
    finally:
        running.close()


def _small(tmp_path: Path) -> Path:
    path = tmp_path / "small.dcm"
    path.write_bytes(small_object()[1])
    return path


def test_oversized_association_request_is_closed_unread(inbound: Running) -> None:
    """A 4 GiB A-ASSOCIATE-RQ is refused on its header: nothing is read."""
    with socket.create_connection(("127.0.0.1", inbound.port), timeout=10) as sock:
        sock.sendall(pdu_header(0x01, 0xFFFFFFF0) + bytes(1024))
        assert read_pdu(sock) is None
    assert inbound.refused_with("A-ASSOCIATE-RQ of")


def test_unknown_peer_is_refused_at_the_request(inbound: Running) -> None:
    with socket.create_connection(("127.0.0.1", inbound.port), timeout=10) as sock:
        sock.sendall(associate_rq("INTRUDER", "EDGE1", [(SECONDARY_CAPTURE, [EXPLICIT_LE])]))
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == 0x03  # A-ASSOCIATE-RJ
        assert answer[1][1:4] == bytes([1, 1, 3])  # permanent, calling AE not recognised
    assert inbound.refused_with("'INTRUDER' is not on the allow-list")  # reported after the RJ
    assert inbound.refusals[-1][:2] == ("INTRUDER", "127.0.0.1")


def test_data_set_above_the_cap_is_refused(tmp_path: Path) -> None:
    running = Running(tmp_path, max_object_mb=0.5)
    try:
        from pydicom import dcmread

        big = dcmread(DicomBytesIO(small_object()[1]))
        big.Rows = big.Columns = 1024
        big.PixelData = bytes(1024 * 1024)
        path = tmp_path / "big.dcm"
        big.save_as(path, enforce_file_format=True)
        assert pynetdicom_store(running.port, path) is None
        assert running.outbox.objects() == []
        assert running.refused_with("data set larger than")
        small = tmp_path / "small.dcm"
        small.write_bytes(small_object()[1])
        assert pynetdicom_store(running.port, small) == 0
    finally:
        running.close()


def test_association_count_is_bounded_and_freed(tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    running = Running(tmp_path, max_associations=2)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    try:
        held = [ae.associate("127.0.0.1", running.port, ae_title="EDGE1") for _ in range(2)]
        assert all(a.is_established for a in held)
        third = ae.associate("127.0.0.1", running.port, ae_title="EDGE1")
        assert third.is_rejected
        assert running.refused_with("slots are busy")
        for a in held:
            a.release()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            again = ae.associate("127.0.0.1", running.port, ae_title="EDGE1")
            if again.is_established:
                assert int(again.send_c_echo().Status) == 0
                again.release()
                break
            time.sleep(0.2)
        else:
            pytest.fail("the slots were not freed")
    finally:
        running.close()


def test_association_deadline_cuts_a_silent_allowed_peer(tmp_path: Path) -> None:
    running = Running(tmp_path, association_deadline_s=2, idle_timeout_s=30)
    try:
        sock = _raw_associated(running.port)
        start = time.monotonic()
        with sock:
            answer = read_pdu(sock, timeout=20)
        took = time.monotonic() - start
        assert answer is None or answer[0] == 0x07
        assert 1.5 < took < 15, took
    finally:
        running.close()


def test_slow_drip_inside_an_association_is_cut_off(tmp_path: Path) -> None:
    """An allowed peer that sends its P-DATA one byte every 1.5 s is cut at
    the idle time-out, not held for ever."""
    running = Running(tmp_path, idle_timeout_s=1)
    try:
        sock = _raw_associated(running.port)
        start = time.monotonic()
        cut_after: float | None = None
        with sock:
            pdata = pdu_header(0x04, 100) + struct.pack(">LBB", 96, 1, 0) + bytes(94)
            for byte in pdata:
                try:
                    sock.sendall(bytes([byte]))
                    sock.settimeout(1.5)
                    sock.recv(16)  # an A-ABORT or the end: cut off
                except TimeoutError:
                    continue  # still held: drip on
                except OSError:
                    pass
                cut_after = time.monotonic() - start
                break
        assert cut_after is not None and cut_after < 10, cut_after
        assert running.outbox.objects() == []
    finally:
        running.close()


def test_echo_answers_allowed_peers_only(inbound: Running) -> None:
    echoscu = require_tool("echoscu")
    ok = subprocess.run(
        [echoscu, "-aet", "MODALITY", "-aec", "EDGE1", "127.0.0.1", str(inbound.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    stranger = subprocess.run(
        [echoscu, "-aet", "STRANGER", "-aec", "EDGE1", "127.0.0.1", str(inbound.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert stranger.returncode != 0
    assert "Association Rejected" in stranger.stderr + stranger.stdout


def test_crowd_of_drippers_and_idle_connections_leaves_the_modality_storing(
    tmp_path: Path, inbound: Running
) -> None:
    """30 peers dripping one byte every 1.5 s and 300 idle connections held
    (reopened whenever closed): storescu's C-STOREs succeed 5 times out of 5,
    each within seconds, and only its objects are written."""
    files = []
    for i in range(5):
        _uid, data = small_object()
        files.append(tmp_path / f"in{i}.dcm")
        files[-1].write_bytes(data)
    threads_before = threading.active_count()
    crowd = Crowd(inbound.port).start()
    try:
        time.sleep(3)  # the crowd is in place
        took = []
        for f in files:
            start = time.monotonic()
            result = storescu(inbound.port, f)
            took.append(time.monotonic() - start)
            assert result.returncode == 0, result.stderr
        # The gate is one thread: the crowd costs no thread of the listener.
        listener_threads = [
            t.name for t in threading.enumerate() if t.name.startswith(("association-", "Acceptor"))
        ]
        assert len(listener_threads) <= 3 * 8
    finally:
        crowd.stop()
    print(
        f"storescu under the crowd: {', '.join(f'{t:.2f}' for t in took)} s;"
        f" crowd connects {crowd.connects}, closed by the listener {crowd.closed_by_listener}"
    )
    assert len(inbound.outbox.objects()) == 5
    assert max(took) < 15, took
    assert crowd.closed_by_listener > 0  # the crowd was cut off, not served
    assert threading.active_count() <= threads_before + 3 * 8


ONLY = "capture,forwarder"


def _usage(pid: int) -> tuple[int, int]:
    """Open file descriptors and threads of the process."""
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def _frames(metrics_port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("dicom_gateway_frames_captured_total") or line.startswith(
            "dicom_gateway_frames_captured "
        ):
            return float(line.split()[-1])
    raise AssertionError("no frames counter in /metrics")


def test_whole_service_keeps_capturing_and_storing_under_the_crowd(
    tmp_path: Path, pki: Any, storescp: Any
) -> None:
    """`dicom-gateway run --only capture,forwarder`, one process (capture,
    forwarder and the inbound port side by side — worse than the appliance,
    where capture is a process of its own): under the crowd, the modality's
    5 C-STOREs succeed and reach the PACS, and the test pattern's frame
    rate stays within 20% of what it was before."""
    import signal
    import sys

    from tests.support.gateway import gateway_config, write_config
    from tests.support.process import REPO

    storescp.start()
    port, metrics = free_port(), free_port()
    data = gateway_config(tmp_path, pki, storescp.port)
    data["capture"]["options"]["fps"] = 20
    data["inbound"] = {"enabled": True, "listen": f"127.0.0.1:{port}", "allowed": ALLOWED}
    data["metrics"] = {"listen": f"127.0.0.1:{metrics}"}
    data["forwarding"] = {"retry_base_s": 0.2, "retry_cap_s": 1.0}
    path = write_config(tmp_path / "gateway.toml", data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(path), "run", "--only", ONLY],
        cwd=REPO,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "service.log").open("wb"),
    )
    files = []
    for i in range(5):
        _uid, obj = small_object()
        files.append(tmp_path / f"in{i}.dcm")
        files[-1].write_bytes(obj)
    crowd = None
    try:
        wait_for_port(port, proc)
        wait_for_port(metrics, proc)
        time.sleep(2)
        start, t0 = _frames(metrics), time.monotonic()
        time.sleep(6)
        calm = (_frames(metrics) - start) / (time.monotonic() - t0)
        fds, threads = _usage(proc.pid)
        crowd = Crowd(port).start()
        time.sleep(3)
        start, t0 = _frames(metrics), time.monotonic()
        for f in files:
            result = storescu(port, f)
            assert result.returncode == 0, result.stderr
        time.sleep(max(0.0, 6 - (time.monotonic() - t0)))
        under = (_frames(metrics) - start) / (time.monotonic() - t0)
        fds_under, threads_under = _usage(proc.pid)
        print(
            f"capture: {calm:.1f} frames/s calm, {under:.1f} under the crowd;"
            f" fds {fds} -> {fds_under}, threads {threads} -> {threads_under}"
        )
        # Bounded by the limits (64 waiting, 8 associations of 3 threads),
        # not by the crowd's 330 connections.
        assert fds_under <= fds + 64 + 8 + 16, (fds, fds_under)
        assert threads_under <= threads + 3 * 8 + 4, (threads, threads_under)
        assert under >= 0.8 * calm, (calm, under)
        deadline = time.monotonic() + 30
        while len(storescp.received()) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(storescp.received()) == 5
    finally:
        if crowd is not None:
            crowd.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
