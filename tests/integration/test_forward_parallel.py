"""A second association to the same PACS (`destinations.associations`, 2 by
default): two associations share a batch, each taking the next object when
it is free, each object sent exactly once; one that breaks leaves the rest to
the other; a PACS that takes one at a time (refusing the second, or serving
it only once the first is done) gets everything, over one association from
then on."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from gateway.config import DestinationConfig
from gateway.net.ul import Timeouts
from gateway.queue.model import QueuedObject
from gateway.send.forwarder import Forwarder
from tests.support.dcmtk import StoreSCP
from tests.support.peers import destination, mutual_tls, queue_objects
from tests.support.pki import PKI
from tests.support.process import free_port
from tests.support.queue import new_outbox

FAST = Timeouts(connect=3, acse=5, dimse=5, network=5)


class CountingSCP:
    """pynetdicom Storage SCP counting every object received and the most
    associations open at once; `limit` associations at most (more are
    rejected, as pynetdicom does: transient, local limit exceeded)."""

    def __init__(self, pki: PKI, limit: int, abort_after: int = 0) -> None:
        self.pki, self.limit = pki, limit
        # The first association to receive this many objects is aborted by
        # us at the next one, before its response (0: none is).
        self.abort_after = abort_after
        self.per_association: Counter[int] = Counter()
        self.port = free_port()
        self.received: Counter[str] = Counter()
        self.open = 0
        self.most = 0
        self.lock = threading.Lock()
        self.server: Any = None

    def __enter__(self) -> CountingSCP:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title="PACS")
        ae.maximum_associations = self.limit
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian])

        def store(event: Any) -> int:
            with self.lock:
                self.received[str(event.request.AffectedSOPInstanceUID)] += 1
                seen = self.per_association[id(event.assoc)]
                self.per_association[id(event.assoc)] += 1
                abort = self.abort_after and seen == self.abort_after
                if abort:
                    self.abort_after = 0
            if abort:
                event.assoc.abort()
            return 0

        def opened(_event: Any) -> None:
            with self.lock:
                self.open += 1
                self.most = max(self.most, self.open)

        def closed(_event: Any) -> None:
            with self.lock:
                self.open -= 1

        handlers = [
            (evt.EVT_C_STORE, store),
            (evt.EVT_ESTABLISHED, opened),
            (evt.EVT_RELEASED, closed),
            (evt.EVT_ABORTED, closed),
        ]
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=mutual_tls(self.pki),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def _dest(pki: PKI, port: int, associations: int) -> DestinationConfig:
    return destination(pki, port).model_copy(update={"associations": associations})


def _stored_once(scp: StoreSCP, objs: Sequence[QueuedObject], files: int) -> None:
    """storescp wrote `files` files, one of them for each of `objs`."""
    names = sorted(p.name for p in scp.received())
    assert len(names) == files
    assert all(any(o.sop_instance_uid in n for n in names) for o in objs)


def test_two_associations_at_once_each_object_once(tmp_path: Path, pki: PKI) -> None:
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox, CountingSCP(pki, limit=4) as scp:
        objs = queue_objects(outbox, 80)
        fwd = Forwarder(outbox, [_dest(pki, scp.port, 2)], "EDGE1", timeouts=FAST)
        report = fwd.flush(timeout=60)
        assert report.sent == 80
        assert scp.received == Counter({o.sop_instance_uid: 1 for o in objs})
        assert scp.most == 2
        assert {d.state.value for d in outbox.deliveries()} == {"sent"}


def test_a_pacs_that_takes_one_at_a_time(
    tmp_path: Path, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    with new_outbox(tmp_path / "q", ["pacs"]) as outbox, CountingSCP(pki, limit=1) as scp:
        objs = queue_objects(outbox, 20)
        fwd = Forwarder(outbox, [_dest(pki, scp.port, 2)], "EDGE1", timeouts=FAST, retry_base=0.01)
        with caplog.at_level(logging.WARNING):
            report = fwd.flush(timeout=60)
        assert report.sent == 20
        assert scp.received == Counter({o.sop_instance_uid: 1 for o in objs})
        assert scp.most == 1
        assert "one at a time" in caplog.text
        # From then on one association: a new batch goes without a refusal.
        caplog.clear()
        more = queue_objects(outbox, 6)
        with caplog.at_level(logging.WARNING):
            assert fwd.flush(timeout=60).sent == 6
        assert "failed" not in caplog.text
        assert all(scp.received[o.sop_instance_uid] == 1 for o in more)


def test_dcmtk_storescp_forking_takes_both(tmp_path: Path, pki: PKI) -> None:
    """DCMTK's storescp with --fork: one process per association."""
    scp = StoreSCP(tmp_path / "pacs", pki.server, pki.ca.cert, extra=("--fork",)).start()
    try:
        with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
            objs = queue_objects(outbox, 16)
            fwd = Forwarder(outbox, [_dest(pki, scp.port, 2)], "EDGE1", timeouts=FAST)
            assert fwd.flush(timeout=60).sent == 16
        _stored_once(scp, objs, 16)
    finally:
        scp.stop()


def test_an_association_that_breaks_leaves_the_rest_to_the_other(tmp_path: Path, pki: PKI) -> None:
    """The PACS aborts one association at its 4th object, before answering:
    that object is retried later; the one it had already read ahead goes to
    the other association, which sends everything else in the same round."""
    with (
        new_outbox(tmp_path / "q", ["pacs"]) as outbox,
        CountingSCP(pki, limit=4, abort_after=3) as scp,
    ):
        objs = queue_objects(outbox, 40)
        dest = _dest(pki, scp.port, 2)
        fwd = Forwarder(outbox, [dest], "EDGE1", timeouts=FAST, retry_base=30)
        report = fwd.send_batch(fwd.destinations[0])
        assert (report.sent, report.retried, report.failed) == (39, 1, 0)
        states = Counter(d.state.value for d in outbox.deliveries())
        assert states == Counter({"sent": 39, "pending": 1})
        # Each sent object arrived once; the aborted one arrived without an answer.
        assert set(scp.received) == {o.sop_instance_uid for o in objs}
        assert sorted(scp.received.values()) == [1] * 40


def test_dcmtk_storescp_serving_one_at_a_time(
    tmp_path: Path, pki: PKI, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DCMTK's storescp without --fork takes the second association only once
    the first is released: the first sends the whole batch, nothing waits out
    a time-out, and the next batches go over one association."""
    from gateway.send import dimse

    monkeypatch.setattr(dimse, "SERIAL_EVIDENCE_S", 0.0)  # the batch here is short
    timeouts = Timeouts(connect=20, acse=20, dimse=20, network=20)
    scp = StoreSCP(tmp_path / "pacs", pki.server, pki.ca.cert).start()
    try:
        with new_outbox(tmp_path / "q", ["pacs"]) as outbox:
            objs = queue_objects(outbox, 30)
            fwd = Forwarder(outbox, [destination(pki, scp.port)], "EDGE1", timeouts=timeouts)
            started = time.monotonic()
            with caplog.at_level(logging.INFO):
                assert fwd.flush(timeout=60).sent == 30
            assert time.monotonic() - started < timeouts.connect
            assert "serves one association at a time" in caplog.text
            assert "failed" not in caplog.text
            sender = fwd.senders["pacs"]
            assert isinstance(sender, dimse.DimseSender)
            assert sender._single_until > time.monotonic()
            queue_objects(outbox, 6)
            assert fwd.flush(timeout=60).sent == 6
        _stored_once(scp, objs, 36)
    finally:
        scp.stop()
