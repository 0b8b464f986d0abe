"""Peers that misbehave, PACS outages and queue files damaged behind the
gateway's back: every case ends with a clear reason and nothing lost."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from gateway.config import DestinationConfig
from gateway.net.ul import Timeouts
from gateway.queue.model import DeliveryState
from gateway.queue.outbox import Outbox
from gateway.send.forwarder import Forwarder
from tests.support.dcmtk import StoreSCP
from tests.support.peers import StoreSCPy, destination, mutual_tls, queue_objects, raw_peer
from tests.support.pki import PKI
from tests.support.queue import new_outbox

FAST = Timeouts(connect=3, acse=5, dimse=5, network=5)


def forwarder(outbox: Outbox, dest: DestinationConfig) -> Forwarder:
    return Forwarder(outbox, [dest], "EDGE1", timeouts=FAST, retry_base=0.01, retry_cap=0.02)


def states(outbox: Outbox) -> dict[str, str]:
    return {d.object.sop_instance_uid: d.state.value for d in outbox.deliveries()}


def test_one_object_rejected_permanently_the_rest_delivered(tmp_path: Path, pki: PKI) -> None:
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
        objs = queue_objects(outbox, 4)
        bad = objs[1].sop_instance_uid
        scp = StoreSCPy(tls=mutual_tls(pki), status_for=lambda u: 0xA900 if u == bad else 0)
        scp.start()
        try:
            report = forwarder(outbox, destination(pki, scp.port)).flush(timeout=30)
        finally:
            scp.stop()
        assert (report.sent, report.failed) == (3, 1)
        got = states(outbox)
        assert got.pop(bad) == "failed"
        assert set(got.values()) == {"sent"}
        assert set(scp.received) == set(got)
        failed = outbox.deliveries(state=DeliveryState.FAILED)[0]
        assert failed.last_error and "0xA900" in failed.last_error
        # The operator fixes the cause and retries: it goes out again.
        assert outbox.retry(failed.object.id) == 1
        assert outbox.delivery(failed.object.id, "pacs").state is DeliveryState.PENDING  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("status", "expected"),
    [(0xA700, "pending"), (0x0122, "failed"), (0xC123, "failed"), (0x1234, "pending")],
)
def test_status_classes(tmp_path: Path, pki: PKI, status: int, expected: str) -> None:
    """Out of resources and unknown statuses: try again later; refused,
    SOP class not supported, cannot understand: failed list."""
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
        queue_objects(outbox, 1)
        scp = StoreSCPy(tls=mutual_tls(pki), status_for=lambda u: status).start()
        try:
            report = forwarder(outbox, destination(pki, scp.port)).send_batch(
                destination(pki, scp.port)
            )
        finally:
            scp.stop()
        assert report.sent == 0
        [delivery] = outbox.deliveries()
        assert delivery.state.value == expected
        assert delivery.last_error and f"0x{status:04X}" in delivery.last_error


def test_peer_aborting_mid_transfer_keeps_objects_queued(tmp_path: Path, pki: PKI) -> None:
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
        queue_objects(outbox, 3)
        scp = StoreSCPy(tls=mutual_tls(pki), abort_after_pdus=3).start()
        try:
            dest = destination(pki, scp.port)
            report = forwarder(outbox, dest).send_batch(dest)
        finally:
            scp.stop()
        assert report.sent <= 1
        assert "aborted" in str(report.error) or "closed" in str(report.error), report.error
        assert {d.state.value for d in outbox.deliveries()} <= {"pending", "sent"}
        assert len(outbox.deliveries(state=DeliveryState.PENDING)) >= 2


def _garbage(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"\x99\x00GARBAGE-NOT-A-PDU" * 10)


def _huge_length(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(struct.pack(">BBI", 0x02, 0, 0x7FFFFFFF))


def _silent(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.recv(65536)  # never answers; our ACSE time-out must end the wait


@pytest.mark.parametrize(
    ("peer", "words"),
    [(_garbage, "garbage"), (_huge_length, "implausible"), (_silent, "timed out")],
)
def test_garbage_and_silent_peers(tmp_path: Path, pki: PKI, peer: object, words: str) -> None:
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
        queue_objects(outbox, 2)
        with raw_peer(peer, tls=mutual_tls(pki)) as port:  # type: ignore[arg-type]
            dest = destination(pki, port)
            fwd = Forwarder(
                outbox, [dest], "EDGE1", timeouts=Timeouts(connect=2, acse=1, dimse=2, network=2)
            )
            report = fwd.send_batch(dest)
        assert report.sent == 0 and report.error and words in report.error, report.error
        assert {d.state.value for d in outbox.deliveries()} == {"pending"}


def test_queue_file_deleted_or_corrupted_is_isolated(
    tmp_path: Path, pki: PKI, storescp: StoreSCP
) -> None:
    storescp.start()
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
        objs = queue_objects(outbox, 4)
        os.unlink(objs[0].path)
        objs[1].path.write_bytes(b"\0" * 50)
        with open(objs[2].path, "r+b") as f:
            f.truncate(objs[2].size // 2)  # the data set is cut short
        report = forwarder(outbox, destination(pki, storescp.port)).flush(timeout=30)
        got = states(outbox)
        assert got[objs[3].sop_instance_uid] == "sent"
        for obj in objs[:3]:
            assert got[obj.sop_instance_uid] == "failed"
        errors = [d.last_error or "" for d in outbox.deliveries(state=DeliveryState.FAILED)]
        assert any("No such file" in e for e in errors), errors
        assert any("not a DICOM Part 10 file" in e for e in errors), errors
        assert any("changed behind the gateway's back" in e for e in errors), errors
        assert [p.name for p in storescp.received()] == [f"SC.{objs[3].sop_instance_uid}"]
        assert report.sent == 1


def test_pacs_down_then_up(tmp_path: Path, pki: PKI) -> None:
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
        objs = queue_objects(outbox, 3)
        scp = StoreSCPy(tls=mutual_tls(pki))
        dest = destination(pki, scp.port)
        fwd = forwarder(outbox, dest)
        down = fwd.send_batch(dest)
        assert down.retried == 3 and down.error and "refused" in down.error
        assert {d.state.value for d in outbox.deliveries()} == {"pending"}
        assert all(d.attempts == 1 for d in outbox.deliveries())
        scp.start()
        try:
            up = fwd.flush(timeout=30)
        finally:
            scp.stop()
        assert up.sent == 3
        assert sorted(scp.received) == sorted(o.sop_instance_uid for o in objs)
        stats = outbox.stats()["pacs"]
        assert stats["pending"] == 0 and stats["sent"] == 3 and stats["last_success"]


def test_pacs_back_after_an_outage_the_waiting_objects_go_at_once(tmp_path: Path, pki: PKI) -> None:
    """Objects that waited out an outage with a long back-off are due as soon
    as one object gets through again, not minutes later; one the PACS
    refuses for now (0xA700) in that same round keeps its back-off."""
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
        old = queue_objects(outbox, 3)
        busy: set[str] = set()
        scp = StoreSCPy(tls=mutual_tls(pki), status_for=lambda u: 0xA700 if u in busy else 0)
        dest = destination(pki, scp.port)
        fwd = Forwarder(outbox, [dest], "EDGE1", timeouts=FAST, retry_base=600, retry_cap=600)
        assert fwd.send_batch(dest).retried == 3  # down: each waits 10 min
        due = outbox.next_due("pacs")
        assert due is not None and due > time.time() + 300
        scp.start()
        try:
            new = queue_objects(outbox, 2)  # captured after: due now
            busy.add(new[1].sop_instance_uid)
            first = fwd.send_batch(dest)
            assert (first.sent, first.retried) == (1, 1)
            again = fwd.send_batch(dest)  # the three no longer wait; the refused one does
            assert (again.sent, again.retried) == (3, 0)
        finally:
            scp.stop()
        assert sorted(scp.received) == sorted(o.sop_instance_uid for o in [*old, new[0]])
        refused = outbox.delivery(new[1].id, "pacs")
        assert refused is not None and refused.state is DeliveryState.PENDING
        assert refused.next_attempt_at > time.time() + 300  # its own wait stands
        assert refused.attempts == 1


def test_pacs_back_after_a_long_outage_is_tried_within_the_probe_interval(
    tmp_path: Path, pki: PKI
) -> None:
    """Every object waits out a long back-off from the outage and nothing new
    is captured: the link is still tried every `probe_cap` seconds with one
    of them, and once that one gets through the rest go too."""
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
        objs = queue_objects(outbox, 3)
        scp = StoreSCPy(tls=mutual_tls(pki))
        dest = destination(pki, scp.port)
        fwd = Forwarder(
            outbox, [dest], "EDGE1", timeouts=FAST, retry_base=600, retry_cap=600, probe_cap=0.3
        )
        assert fwd.send_batch(dest).retried == 3  # down: each waits 10 min
        time.sleep(0.35)
        assert fwd.send_batch(dest).retried == 1  # still down: one tried the link
        next_try = fwd.status["pacs"].next_try
        assert next_try is not None and next_try < time.time() + 1  # the probe's, not 10 min
        assert fwd.send_batch(dest).retried == 0  # not before the probe's time
        scp.start()
        try:
            time.sleep(0.35)
            assert fwd.send_batch(dest).sent == 1  # the probe gets through
            assert fwd.send_batch(dest).sent == 2  # and the waits are over
        finally:
            scp.stop()
        assert sorted(scp.received) == sorted(o.sop_instance_uid for o in objs)


def test_backoff_grows_with_jitter_and_cap() -> None:
    from gateway.queue.deliveries import backoff_delay

    delays = [backoff_delay(n, base=1.0, cap=8.0) for n in range(1, 8) for _ in range(20)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100  # jittered
    assert max(backoff_delay(30, base=1.0, cap=8.0) for _ in range(50)) <= 8.0
    assert min(backoff_delay(4, base=1.0, cap=8.0) for _ in range(50)) >= 4.0


def test_compressed_object_falls_back_to_explicit_little_endian(tmp_path: Path, pki: PKI) -> None:
    """The PACS accepts only Explicit VR Little Endian: the RLE object is
    decompressed on the way and arrives with identical pixels."""
    import numpy as np
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import RLELossless

    from tests.support.peers import SC, small_object

    uid, data = small_object()
    ds = dcmread(DicomBytesIO(data))
    pixels = ds.pixel_array.copy()
    ds.compress(RLELossless, generate_instance_uid=False)
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
        outbox.add(
            out.getvalue(),
            sop_instance_uid=uid,
            sop_class_uid=SC,
            transfer_syntax_uid=RLELossless,
            study_instance_uid="1.2.3.4",
        )
        scp = StoreSCPy(tls=mutual_tls(pki)).start()  # Explicit VR Little Endian only
        try:
            report = forwarder(outbox, destination(pki, scp.port)).flush(timeout=30)
        finally:
            scp.stop()
        assert report.sent == 1
        got = scp.datasets[uid]
        assert np.array_equal(got.pixel_array, pixels)
        assert not list((tmp_path / "q" / "convert").glob("*"))  # no leftovers


def test_cli_stats_and_operator_retry(tmp_path: Path, pki: PKI) -> None:
    from tests.support.gateway import Gateway, gateway_config, write_config

    rejected: set[str] = set()
    scp = StoreSCPy(tls=mutual_tls(pki), status_for=lambda u: 0xA900 if u in rejected else 0)
    gw = Gateway(write_config(tmp_path / "gw.toml", gateway_config(tmp_path, pki, scp.port)))
    with new_outbox(tmp_path / "queue", ["pacs"]) as outbox:
        objs = queue_objects(outbox, 3)
    rejected.add(objs[0].sop_instance_uid)
    scp.start()
    try:
        flushed = gw("queue", "flush", "--timeout", "20")
        assert flushed.returncode != 0 and "1 failed" in flushed.stderr
        stats = json.loads(gw("queue", "stats", "--json", check=True).stdout)["pacs"]
        assert (stats["pending"], stats["failed"], stats["sent"]) == (0, 1, 2)
        assert stats["last_success"] and stats["oldest_pending_age_s"] is None
        text = gw("queue", "stats", check=True).stdout
        assert "pacs:" in text and "failed=1" in text
        retried = json.loads(gw("queue", "retry", "--all", "--json", check=True).stdout)
        assert retried == {"retried": 1}
        rejected.clear()
        gw("queue", "flush", "--timeout", "20", check=True)
    finally:
        scp.stop()
    assert sorted(scp.received) == sorted(o.sop_instance_uid for o in objs)


def test_each_destination_has_its_own_queue_state(tmp_path: Path, pki: PKI) -> None:
    up = StoreSCPy(tls=mutual_tls(pki)).start()
    down = destination(pki, StoreSCPy().port).model_copy(update={"name": "archive"})
    try:
        with new_outbox(tmp_path / "q", ["pacs", "archive"]) as outbox:
            objs = queue_objects(outbox, 3)
            dests = [destination(pki, up.port), down]
            Forwarder(outbox, dests, "EDGE1", timeouts=FAST).flush(timeout=3)
            stats = outbox.stats()
            assert (stats["pacs"]["sent"], stats["pacs"]["pending"]) == (3, 0)
            assert (stats["archive"]["sent"], stats["archive"]["pending"]) == (0, 3)
            assert stats["archive"]["oldest_pending_age_s"] is not None
            assert stats["archive"]["last_success"] is None
            assert sorted(up.received) == sorted(o.sop_instance_uid for o in objs)
    finally:
        up.stop()
