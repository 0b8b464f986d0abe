"""A worklist server that misbehaves, written with pynetdicom: broken
responses become warnings on their entry (the rest of the list still shows),
and a server that never stops sending is cut off and told to cancel."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from gateway.config import DestinationConfig, parse_config
from gateway.net.association import PeerError
from gateway.ris.find import FindLimits, WorklistFind
from gateway.ris.model import WorklistQuery
from gateway.ris.mwl import build_identifier, parse_entry
from gateway.ris.worklist import WorklistService
from tests.support.process import free_port

Handler = Callable[[Any], Iterator[tuple[int, Dataset | None]]]


class FakeRIS:
    """A pynetdicom worklist SCP whose C-FIND handler the test supplies."""

    def __init__(
        self, handler: Handler, ignore_cancel: bool = False, syntaxes: list[str] | None = None
    ) -> None:
        self.ignore_cancel = ignore_cancel
        self.port = free_port()
        self.cancelled = threading.Event()
        self.handler = handler
        ae = AE(ae_title="RIS")
        if syntaxes:
            ae.add_supported_context(ModalityWorklistInformationFind, syntaxes)
        else:
            ae.add_supported_context(ModalityWorklistInformationFind)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_FIND, self._on_find)],
        )

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        try:
            for status, ds in self.handler(event):
                if event.is_cancelled and not self.ignore_cancel:
                    self.cancelled.set()
                    yield 0xFE00, None
                    return
                yield status, ds
        finally:
            # pynetdicom may see the C-CANCEL first and stop asking for more;
            # the generator is then closed here.
            if event.is_cancelled and not self.ignore_cancel:
                self.cancelled.set()

    def stop(self) -> None:
        self.server.shutdown()

    @property
    def peer(self) -> DestinationConfig:
        return DestinationConfig(name="ris", ae_title="RIS", host="127.0.0.1", port=self.port)


@pytest.fixture
def ris() -> Iterator[Callable[[Handler], FakeRIS]]:
    started: list[FakeRIS] = []

    def start(handler: Handler) -> FakeRIS:
        server = FakeRIS(handler)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _entry(name: Any, pid: str, accession: str, uid: str, **extra: Any) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = extra.pop("charset", "ISO_IR 100")
    if isinstance(name, bytes):
        ds.add(DataElement(0x00100010, "PN", name))
    elif name is not None:
        ds.PatientName = name
    if pid:
        ds.PatientID = pid
    ds.AccessionNumber = accession
    if uid:
        ds.StudyInstanceUID = uid
    ds.PatientSex = extra.pop("sex", "F")
    ds.PatientBirthDate = extra.pop("birth", "19800101")
    step = Dataset()
    step.Modality = "US"
    step.ScheduledStationAETitle = "EDGE1"
    step.ScheduledProcedureStepStartDate = "20240101"
    step.ScheduledProcedureStepStartTime = extra.pop("time", "101010")
    step.ScheduledProcedureStepID = "S1"
    step.ScheduledProcedureStepLocation = extra.pop("location", "ROOM 2")
    ds.ScheduledProcedureStepSequence = Sequence([step])
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def _config(tmp_path: Path, port: int, **worklist: Any) -> Any:
    return parse_config(
        {
            "queue": {"path": str(tmp_path / "queue"), "min_free_mb": 0},
            "worklist": {"ae_title": "RIS", "host": "127.0.0.1", "port": port, **worklist},
        }
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # the fake RIS writes bad values on purpose
def test_broken_entries_become_warnings(tmp_path: Path, ris: Callable[[Handler], FakeRIS]) -> None:
    def handler(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, _entry("GOOD^ENTRY", "P1", "A1", "1.2.3.1")
        yield 0xFF00, _entry(None, "", "A2", "")  # no name, no ID, no Study UID
        yield (
            0xFF00,
            _entry("X" * 80 + "^" + "Y" * 10, "P3" * 40, "A3-TOO-LONG-ACCESSION", "1.2.3.3"),
        )
        yield 0xFF00, _entry(b"M\xfcller^Hans", "P4", "A4", "1.2.3.4", charset="ISO_IR 999")
        yield 0xFF00, _entry("BAD^\x01CTRL", "P\x07", "A5", "1.2.3.5", sex="X", birth="19801399")
        yield 0xFF00, _entry("ODD^TIME", "P6", "A6", "not-a-uid", time="99xx")
        yield 0x0000, None

    server = ris(handler)
    with WorklistService(_config(tmp_path, server.port)) as service:
        result = service.query(WorklistQuery())
    assert result.error is None
    assert len(result.entries) == 6
    by_acc = {e.order.accession_number[:2]: e for e in result.entries}
    assert by_acc["A1"].warnings == ()
    assert by_acc["A1"].patient.name == "GOOD^ENTRY"
    missing = by_acc["A2"].warnings
    assert "Patient's Name is missing" in missing
    assert "Patient ID is missing" in missing
    assert any("Study Instance UID is missing or invalid" in w for w in missing)
    long = by_acc["A3"]
    assert any("Patient's Name: 91 characters, cut to 64" in w for w in long.warnings)
    assert any("Patient ID: 80 characters, cut to 64" in w for w in long.warnings)
    assert any("Accession Number: 21 characters, cut to 16" in w for w in long.warnings)
    assert len(long.patient.name) == 64 and long.order.accession_number == "A3-TOO-LONG-ACCE"
    unknown = by_acc["A4"]
    assert any("unknown character set 'ISO_IR 999'" in w for w in unknown.warnings)
    assert unknown.patient.name.startswith("M") and unknown.patient.name.endswith("^Hans")
    ctrl = by_acc["A5"]
    assert "Patient's Name: illegal characters removed" in ctrl.warnings
    assert "Patient ID: illegal control characters removed" in ctrl.warnings
    assert any("Patient's Sex: 'X'" in w for w in ctrl.warnings)
    assert any("Patient's Birth Date: '19801399' is not a date" in w for w in ctrl.warnings)
    assert ctrl.patient.name == "BAD^CTRL" and ctrl.patient.id == "P"
    odd = by_acc["A6"]
    assert any("Scheduled Start Time" in w for w in odd.warnings)
    assert odd.order.study_instance_uid.startswith("2.25.")
    assert "5 entries have problems" in result.warnings


def test_implicit_vr_only_server() -> None:
    """A RIS that accepts only Implicit VR Little Endian: the query goes out
    and the answers are read in that syntax (no VRs on the wire)."""

    def handler(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        assert event.identifier.ScheduledProcedureStepSequence[0].Modality == ""
        yield 0xFF00, _entry("IMPLICIT^ONE", "P1", "A1", "1.2.3.1", charset="ISO_IR 100")
        yield 0xFF00, _entry("Ørsted^Åse", "P2", "A2", "1.2.3.2", charset="ISO_IR 100")
        yield 0x0000, None

    server = FakeRIS(handler, syntaxes=[ImplicitVRLittleEndian])
    try:
        find = WorklistFind("EDGE1", server.peer, build_identifier(WorklistQuery()))
        entries = [parse_entry(item) for item in find]
    finally:
        server.stop()
    assert find.status == 0x0000 and find.stopped is None
    assert [e.patient.name for e in entries] == ["IMPLICIT^ONE", "Ørsted^Åse"]
    assert entries[1].order.specific_character_set == "ISO_IR 100"
    assert entries[0].order.scheduled_procedure_step_id == "S1" and entries[0].warnings == ()


def _endless(event: Any) -> Iterator[tuple[int, Dataset | None]]:
    """Pending responses without end (bounded in count and time even if we fail)."""
    started = time.monotonic()
    n = 0
    while n < 200_000 and time.monotonic() - started < 60:
        n += 1
        # A breath per answer: pynetdicom's reader thread must get the GIL to
        # take our C-CANCEL off the wire while this generator floods it.
        time.sleep(0.001)
        yield 0xFF00, _entry(f"LOOP^{n}", f"P{n}", f"A{n}", f"1.2.3.{n}")


def _paced(event: Any) -> Iterator[tuple[int, Dataset | None]]:
    """500 entries, paced, so the list is still being sent when the consumer stops."""
    for n in range(500):
        yield 0xFF00, _entry(f"MANY^{n}", f"P{n}", f"A{n}", f"1.2.3.{n}")
        time.sleep(0.01)
    yield 0x0000, None


def test_endless_pending_is_cut_off_and_cancelled(ris: Callable[[Handler], FakeRIS]) -> None:
    server = ris(_endless)
    find = WorklistFind(
        "EDGE1",
        server.peer,
        build_identifier(WorklistQuery()),
        limits=FindLimits(max_matches=40, seconds=20),
    )
    got = list(find)
    assert len(got) == 40
    assert find.stopped is not None and "stopped after 40 entries" in find.stopped
    assert server.cancelled.wait(5), "the server never saw a C-CANCEL"


def test_slow_endless_pending_hits_the_time_limit(ris: Callable[[Handler], FakeRIS]) -> None:
    def slow(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for n in range(600):  # 60 s at most
            time.sleep(0.1)
            yield 0xFF00, _entry(f"SLOW^{n}", f"P{n}", f"A{n}", f"1.2.3.{n}")

    server = ris(slow)
    find = WorklistFind(
        "EDGE1",
        server.peer,
        build_identifier(WorklistQuery()),
        limits=FindLimits(max_matches=10_000, seconds=1.0),
    )
    got = list(find)
    assert 0 < len(got) < 100
    assert find.stopped is not None and "stopped after 1 s" in find.stopped
    assert server.cancelled.wait(5)


def test_consumer_stopping_sends_c_cancel(ris: Callable[[Handler], FakeRIS]) -> None:
    server = ris(_paced)
    find = WorklistFind("EDGE1", server.peer, build_identifier(WorklistQuery()))
    names = []
    for item in find:
        names.append(parse_entry(item).patient.name)
        if len(names) == 3:
            break  # the technician pressed Stop
    del find  # closes the generator → C-CANCEL
    assert names == ["MANY^0", "MANY^1", "MANY^2"]
    assert server.cancelled.wait(5)


def test_service_stream_stops_early_with_c_cancel(
    tmp_path: Path, ris: Callable[[Handler], FakeRIS]
) -> None:
    server = ris(_paced)
    with WorklistService(_config(tmp_path, server.port)) as service:
        stream = service.stream(WorklistQuery())
        first = [next(stream) for _ in range(5)]
        stream.close()  # the technician pressed Stop
        assert [e.patient.name for e in first] == [f"MANY^{n}" for n in range(5)]
        assert server.cancelled.wait(5)
        assert service.cache.lookup(WorklistQuery()) == ([], None)


def test_failure_status_falls_back_to_cache(
    tmp_path: Path, ris: Callable[[Handler], FakeRIS]
) -> None:
    def fails(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xC001, None

    server = ris(fails)
    find = WorklistFind("EDGE1", server.peer, build_identifier(WorklistQuery()))
    with pytest.raises(PeerError, match="could not process the query"):
        list(find)
    with WorklistService(_config(tmp_path, server.port)) as service:
        result = service.query(WorklistQuery())
    assert result.error is not None and "0xC001" in result.error
    assert result.entries == [] and "no cached worklist yet" in result.warnings


def test_endless_server_through_service_shows_partial_list(
    tmp_path: Path, ris: Callable[[Handler], FakeRIS]
) -> None:
    server = ris(_endless)
    with WorklistService(_config(tmp_path, server.port, max_entries=25)) as service:
        result = service.query(WorklistQuery())
        assert len(result.entries) == 25
        assert any("list incomplete" in w and "max_entries" in w for w in result.warnings)
        # An incomplete answer is not cached as if it were the whole list.
        cached, when = service.cache.lookup(WorklistQuery())
        assert cached == [] and when is None


def test_server_ignoring_c_cancel_is_aborted(ris: Callable[[Handler], FakeRIS]) -> None:
    server = ris(_endless)
    server.ignore_cancel = True
    find = WorklistFind(
        "EDGE1",
        server.peer,
        build_identifier(WorklistQuery()),
        limits=FindLimits(max_matches=10, seconds=20, cancel_grace=0.5),
    )
    assert len(list(find)) == 10  # returns: the association is aborted after the grace
    assert find.stopped is not None and "stopped after 10 entries" in find.stopped
    assert find.status is None  # no final status: we aborted


def test_server_going_silent_keeps_what_arrived(ris: Callable[[Handler], FakeRIS]) -> None:
    def silent(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, _entry("FIRST^ONE", "P1", "A1", "1.2.3.1")
        yield 0xFF00, _entry("SECOND^ONE", "P2", "A2", "1.2.3.2")
        time.sleep(2.5)  # then nothing for longer than our limit
        yield 0x0000, None

    server = ris(silent)
    find = WorklistFind(
        "EDGE1",
        server.peer,
        build_identifier(WorklistQuery()),
        limits=FindLimits(seconds=1.0),
    )
    names = [parse_entry(item).patient.name for item in find]
    assert names == ["FIRST^ONE", "SECOND^ONE"]
    assert find.stopped is not None and "stopped answering after 2 entries" in find.stopped
