"""Forged Storage Commitment reports against our commitment port: without
TLS, from a peer not on the allow-list, with a Transaction UID we never
issued, with one issued to another destination, with too many references.
Each marks nothing committed (so no purge can delete what the PACS never
had) and is reported for the audit trail; the Transaction UID is never logged."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from gateway.config import ConfigError, parse_config
from gateway.dicom.uids import new_uid
from gateway.net.ul import Timeouts
from gateway.queue.outbox import Outbox
from gateway.send.commitment import PUSH_MODEL, PUSH_MODEL_INSTANCE, CommitmentService
from tests.support.commitment_pacs import associate_as_pacs
from tests.support.hostile import associate_rq, read_pdu, refused_with
from tests.support.peers import SC, queue_objects
from tests.support.pki import PKI
from tests.support.process import free_port, wait_for_port
from tests.support.queue import new_outbox

FAST = Timeouts(connect=3, acse=5, dimse=5, network=5)


def config(tmp_path: Path, pki: PKI, listen: int, **commitment: Any) -> Any:
    tls = {"ca": str(pki.ca.cert), "cert": str(pki.client.cert), "key": str(pki.client.key)}
    dest = {"host": "localhost", "port": 1, "storage_commitment": True, "tls": tls}
    return parse_config(
        {
            "station": {"ae_title": "EDGE1"},
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", **dest},
                {"name": "other", "ae_title": "OTHER", **dest},
            ],
            "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0},
            "commitment": {
                "listen": f"127.0.0.1:{listen}",
                "tls": tls,
                "handshake_timeout_s": 2,
                **commitment,
            },
        }
    )


class Port:
    """Our commitment listener with two objects sent to `pacs` and asked
    about under a Transaction UID we issued."""

    def __init__(self, tmp_path: Path, pki: PKI, **commitment: Any) -> None:
        self.pki = pki
        self.port = free_port()
        self.config = config(tmp_path, pki, self.port, **commitment)
        self.outbox: Outbox = new_outbox(tmp_path / "q", ["pacs", "other"], commitment=["pacs"])
        self.objects = queue_objects(self.outbox, 2)
        for dest in ("pacs", "other"):
            self.outbox.claim(dest)
            self.outbox.mark_sent_many([o.id for o in self.objects], dest)
        self.tx = new_uid()
        self.outbox.mark_commit_requested("pacs", self.tx, [o.id for o in self.objects])
        self.refusals: list[tuple[str, str, str]] = []
        self.service = CommitmentService(self.outbox, self.config, FAST)
        self.service.on_refused.append(lambda *r: self.refusals.append(r))
        self.service.start_listener()
        wait_for_port(self.port)

    def committed(self) -> int:
        return sum(s["committed"] for s in self.outbox.stats().values())

    def report(self, tx: str, *, aet: str = "PACS", refs: int | None = None) -> int | None:
        """A pynetdicom PACS with a certificate from our CA sends a report;
        the status it gets, or None when it could not associate."""
        ds = Dataset()
        ds.TransactionUID = tx
        items = []
        for obj in self.objects if refs is None else [self.objects[0]] * refs:
            item = Dataset()
            item.ReferencedSOPClassUID = SC
            item.ReferencedSOPInstanceUID = obj.sop_instance_uid
            items.append(item)
        ds.ReferencedSOPSequence = items
        assoc = associate_as_pacs(self.pki, self.port, aet)
        if not assoc.is_established:
            return None
        try:
            status, _ = assoc.send_n_event_report(ds, 1, PUSH_MODEL, PUSH_MODEL_INSTANCE)
            return int(status.Status) if "Status" in status else None
        finally:
            assoc.release()

    def refused_with(self, words: str, timeout: float = 10.0) -> bool:
        return refused_with(self.refusals, words, timeout)

    def close(self) -> None:
        self.service.stop()
        self.outbox.close()


@pytest.fixture
def port(tmp_path: Path, pki: PKI, caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG)
    running = Port(tmp_path, pki)
    yield running
    running.close()
    assert running.tx not in caplog.text  # the Transaction UID is never logged


def test_listener_without_tls_is_refused_by_config_check(tmp_path: Path, pki: PKI) -> None:
    data = config(tmp_path, pki, free_port()).model_dump(mode="json")
    del data["commitment"]["tls"]
    with pytest.raises(ConfigError, match=r"listen needs \[commitment\.tls\]"):
        parse_config(data)


def test_forged_report_in_clear_marks_nothing(port: Port) -> None:
    """A raw peer speaking plain DICOM to the TLS port: no association, nothing committed."""
    with socket.create_connection(("127.0.0.1", port.port), timeout=10) as sock:
        sock.sendall(associate_rq("PACS", "EDGE1", [(PUSH_MODEL, ["1.2.840.10008.1.2"])]))
        answer = read_pdu(sock, timeout=10)
        assert answer is None or answer[0] != 0x02  # never an A-ASSOCIATE-AC
    assert port.refused_with("TLS handshake failed")
    assert port.committed() == 0


def test_report_from_a_peer_not_allowed_is_refused(port: Port) -> None:
    assert port.report(port.tx, aet="EVIL") is None
    assert port.refused_with("'EVIL' is not on the allow-list")
    assert port.committed() == 0


def test_unknown_transaction_is_refused_before_any_write(port: Port) -> None:
    status = port.report(new_uid())
    assert status is not None and status != 0
    assert port.refused_with("unknown Transaction UID")
    assert port.committed() == 0
    # The real answer still counts afterwards.
    assert port.report(port.tx) == 0
    assert port.outbox.stats()["pacs"]["committed"] == 2


def test_transaction_of_another_destination_is_refused(tmp_path: Path, pki: PKI) -> None:
    """`other` is allowed to report (its own transactions), not `pacs`'s."""
    running = Port(
        tmp_path,
        pki,
        allowed=[
            {"ae_title": "PACS", "address": "127.0.0.1"},
            {"ae_title": "OTHER", "address": "127.0.0.1"},
        ],
    )
    try:
        status = running.report(running.tx, aet="OTHER")
        assert status is not None and status != 0
        assert running.refused_with("transaction of pacs reported by another AE title")
        assert running.committed() == 0
    finally:
        running.close()


def test_report_with_too_many_references_is_refused(tmp_path: Path, pki: PKI) -> None:
    running = Port(tmp_path, pki, max_references=5)
    try:
        assert running.report(running.tx, refs=6) == 0x0213
        assert running.refused_with("6 references (at most 5)")
        assert running.committed() == 0
    finally:
        running.close()


def test_report_with_a_path_like_uid_is_refused(port: Port) -> None:
    from pydicom import config as pydicom_config

    with pydicom_config.disable_value_validation():
        status = port.report("../../x")
    assert status is not None and status != 0
    assert port.refused_with("has characters other than digits and dots")
    assert port.committed() == 0
