"""Storage Commitment against a commitment SCP written with pynetdicom: answers
on the same association and on a new one to our own TLS port, successes and
failures; failed references are sent again; an unanswered request is asked
again; only committed objects are ever purged."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.net.ul import Timeouts
from gateway.queue.model import QueueFull
from gateway.send.commitment import CommitmentService
from gateway.send.forwarder import Forwarder
from tests.support.commitment_pacs import CommitmentPACS, associate_as_pacs
from tests.support.peers import queue_objects
from tests.support.pki import PKI
from tests.support.process import free_port, wait_for_port
from tests.support.queue import new_outbox

FAST = Timeouts(connect=3, acse=5, dimse=5, network=5)


def gateway(tmp_path: Path, pki: PKI, pacs_port: int, listen_port: int, **commitment: Any) -> Any:
    tls = {"ca": str(pki.ca.cert), "cert": str(pki.client.cert), "key": str(pki.client.key)}
    return parse_config(
        {
            "station": {"ae_title": "EDGE1"},
            "destinations": [
                {
                    "name": "pacs",
                    "ae_title": "PACS",
                    "host": "localhost",
                    "port": pacs_port,
                    "storage_commitment": True,
                    "tls": tls,
                }
            ],
            "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0},
            "commitment": {
                "listen": f"127.0.0.1:{listen_port}",
                "tls": {
                    "ca": str(pki.ca.cert),
                    "cert": str(pki.client.cert),
                    "key": str(pki.client.key),
                },
                "wait_on_association_s": 1,
                **commitment,
            },
        }
    )


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.mark.parametrize("answer", ["same", "new"])
def test_commitment_success_and_failure_requeues(tmp_path: Path, pki: PKI, answer: str) -> None:
    listen = free_port()
    outbox = new_outbox(tmp_path / "q", ["pacs"], commitment=["pacs"])
    objs = queue_objects(outbox, 4)
    bad = objs[2].sop_instance_uid
    pacs = CommitmentPACS(pki, answer, fail={bad})
    pacs.gateway_port = listen
    config = gateway(tmp_path, pki, pacs.port, listen)
    service = CommitmentService(outbox, config, FAST)
    service.start_listener()
    try:
        wait_for_port(listen)
        fwd = Forwarder(outbox, list(config.destinations), "EDGE1", timeouts=FAST)
        assert fwd.flush(timeout=30).sent == 4
        assert service.request_due() == 1
        assert wait_until(lambda: outbox.stats()["pacs"]["committed"] == 3)
        states = {d.object.sop_instance_uid: d for d in outbox.deliveries()}
        assert states[bad].state.value == "pending"
        assert "Storage Commitment failed: no such object instance" in str(states[bad].last_error)
        # Sent again, committed this time.
        pacs.fail.clear()
        assert fwd.flush(timeout=30).sent == 1
        assert service.request_due() == 1
        assert wait_until(lambda: outbox.stats()["pacs"]["committed"] == 4)
        assert len(set(pacs.transactions)) == 2  # a fresh Transaction UID each time
        assert pacs.stored == {o.sop_instance_uid for o in objs}
    finally:
        service.stop()
        pacs.stop()
        outbox.close()


def test_unanswered_commitment_is_asked_again(tmp_path: Path, pki: PKI) -> None:
    outbox = new_outbox(tmp_path / "q", ["pacs"], commitment=["pacs"])
    queue_objects(outbox, 2)
    pacs = CommitmentPACS(pki, "never", fail=set())
    config = gateway(
        tmp_path, pki, pacs.port, free_port(), ask_again_after_s=0.5, wait_on_association_s=0
    )
    service = CommitmentService(outbox, config, FAST)
    try:
        Forwarder(outbox, list(config.destinations), "EDGE1", timeouts=FAST).flush(timeout=30)
        assert service.request_due() == 1
        assert service.request_due() == 0  # asked, waiting for the answer
        time.sleep(0.6)
        assert service.request_due() == 1
        assert len(pacs.transactions) == 2 and pacs.transactions[0] != pacs.transactions[1]
        assert outbox.stats()["pacs"]["sent"] == 2  # nothing committed, nothing purged
        assert outbox.purge() == 0
    finally:
        pacs.stop()
        outbox.close()


def test_purge_only_committed_or_retained_oldest_first(tmp_path: Path) -> None:
    outbox = new_outbox(tmp_path / "q", ["a", "b"], commitment=["a"], retention_days=1)
    objs = queue_objects(outbox, 4)
    now = time.time()
    for _obj in objs:
        outbox.claim("a")
        outbox.claim("b")
    outbox.mark_sent_many([o.id for o in objs], "a")
    outbox.mark_sent_many([o.id for o in objs], "b")
    # a (with commitment): 0, 1 committed, 2 only sent; b: all sent, 0-2 long ago.
    outbox.mark_commit_requested("a", "1.2.9", [objs[0].id, objs[1].id])
    outbox.apply_commitment("1.2.9", [objs[0].sop_instance_uid, objs[1].sop_instance_uid], [])
    outbox._db.execute(
        "UPDATE deliveries SET sent_at = ? WHERE destination = 'b' AND object_id != ?",
        (now - 2 * 86400, objs[3].id),
    )
    assert [o.id for o in outbox.purgeable()] == [objs[0].id, objs[1].id]
    outbox.policy = replace(outbox.policy, min_free_mb=10**9)  # no amount of purging is enough
    with pytest.raises(QueueFull, match="capture refused, nothing queued was removed"):
        outbox.check_space()
    assert [o.id for o in outbox.objects()] == [objs[2].id, objs[3].id]
    assert not objs[0].path.exists() and objs[2].path.exists()
    outbox.close()


def test_the_capture_process_purges_by_the_same_policy(tmp_path: Path) -> None:
    """The touchscreen's process makes room on a full disk too: it must not
    drop an object the PACS has been sent but has not committed, however old."""

    from gateway.ui.server import UIServer

    config = parse_config(
        {
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "localhost", "port": 1}
                | {"storage_commitment": True}
            ],
            "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0, "retention_days": 1},
            "ui": {"listen": f"127.0.0.1:{free_port()}"},
        }
    )
    ui = UIServer(config, threading.Event(), stream=None)
    try:
        outbox = ui.outbox
        (obj,) = queue_objects(outbox, 1)
        outbox.claim("pacs")
        outbox.mark_sent(obj.id, "pacs")
        outbox._db.execute("UPDATE deliveries SET sent_at = ?", (time.time() - 30 * 86400,))
        assert outbox.purgeable() == []
        assert outbox.purge(10**15) == 0 and obj.path.exists()
    finally:
        ui.station.close()
        ui.outbox.close()
        ui.status_outbox.close()


def test_idle_connection_cannot_block_our_commitment_port(tmp_path: Path, pki: PKI) -> None:
    """A client that connects and never starts TLS holds only its own thread;
    a real PACS associates meanwhile, and the idle one is dropped."""
    import socket

    listen = free_port()
    outbox = new_outbox(tmp_path / "q", ["pacs"], commitment=["pacs"])
    config = gateway(tmp_path, pki, free_port(), listen, handshake_timeout_s=1)
    service = CommitmentService(outbox, config, FAST)
    service.start_listener()
    idle = socket.create_connection(("127.0.0.1", listen), timeout=10)
    try:
        assoc = associate_as_pacs(pki, listen, timeout=5)
        assert assoc.is_established
        assoc.release()
        assert idle.recv(1) == b""  # the silent client was hung up on
    finally:
        idle.close()
        service.stop()
        outbox.close()
