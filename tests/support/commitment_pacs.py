"""A PACS that stores and commits (pynetdicom): C-STORE SCP and Storage
Commitment SCP, answering on the same association or on a new one to the
gateway's port; `fail` UIDs are reported as failed. Every data set received
is remembered by a hash, so a duplicate that differs shows."""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
from typing import Any

from pydicom.dataset import Dataset

from gateway.send.commitment import PUSH_MODEL, PUSH_MODEL_INSTANCE
from tests.support.peers import mutual_tls
from tests.support.pki import PKI
from tests.support.process import free_port


class CommitmentPACS:
    """A PACS that stores and commits; `fail` UIDs are reported as failed."""

    def __init__(self, pki: PKI, answer: str, fail: set[str]) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.pki, self.answer, self.fail = pki, answer, fail
        self.port = free_port()
        self.stored: set[str] = set()
        # SOP Instance UID → hashes of every data set received under it.
        self.received: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self.transactions: list[str] = []
        self.gateway_port = 0
        ae = AE(ae_title="PACS")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
        ae.add_supported_context(PUSH_MODEL, scu_role=True, scp_role=True)
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._action)]
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=mutual_tls(pki),
        )

    def _store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        digest = hashlib.sha256(bytes(event.request.DataSet.getvalue())).hexdigest()
        with self._lock:
            self.stored.add(uid)
            self.received.setdefault(uid, set()).add(digest)
        return 0

    def _report(self, request: Dataset) -> Dataset:
        ds = Dataset()
        ds.TransactionUID = request.TransactionUID
        ok, failed = [], []
        for item in request.ReferencedSOPSequence:
            ref = Dataset()
            ref.ReferencedSOPClassUID = item.ReferencedSOPClassUID
            ref.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
            if item.ReferencedSOPInstanceUID in self.fail:
                ref.FailureReason = 0x0112
                failed.append(ref)
            else:
                ok.append(ref)
        ds.ReferencedSOPSequence = ok
        if failed:
            ds.FailedSOPSequence = failed
        return ds

    def _action(self, event: Any) -> tuple[int, None]:
        request = event.action_information
        self.transactions.append(str(request.TransactionUID))
        if self.answer == "never":
            return 0x0000, None
        report = self._report(request)
        event_type = 2 if "FailedSOPSequence" in report else 1
        if self.answer == "same":
            assoc = event.assoc

            def later() -> None:
                time.sleep(0.2)
                if assoc.is_established:  # the gateway may be gone (a power cut)
                    assoc.send_n_event_report(report, event_type, PUSH_MODEL, PUSH_MODEL_INSTANCE)

        else:

            def later() -> None:
                time.sleep(0.2)
                self._report_on_new_association(report, event_type)

        threading.Thread(target=later, daemon=True).start()
        return 0x0000, None

    def _report_on_new_association(self, report: Dataset, event_type: int) -> None:
        assoc = associate_as_pacs(self.pki, self.gateway_port)
        if assoc.is_established:
            assoc.send_n_event_report(report, event_type, PUSH_MODEL, PUSH_MODEL_INSTANCE)
            assoc.release()

    def stop(self) -> None:
        self.server.shutdown()


def associate_as_pacs(pki: PKI, port: int, ae_title: str = "PACS", timeout: float = 10) -> Any:
    """A PACS (certificate from our CA) associating to the gateway's
    commitment port to send a report (SCP role of the push model)."""
    from pynetdicom import AE
    from pynetdicom.presentation import build_role

    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = timeout
    ae.add_requested_context(PUSH_MODEL)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca.cert)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    return ae.associate(
        "127.0.0.1",
        port,
        ae_title="EDGE1",
        ext_neg=[build_role(PUSH_MODEL, scp_role=True)],
        tls_args=(ctx, "localhost"),
    )
