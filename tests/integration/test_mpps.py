"""MPPS through the durable queue against an MPPS SCP written with pynetdicom:
the exact N-CREATE and N-SET attributes, discontinuation reasons, an exam done
fully offline and reported later in order, and refusals that must not be
overtaken."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from drivers import create_driver
from gateway.acquire.exam import Exam, ExamService
from gateway.acquire.station import Station
from gateway.config import GatewayConfig, mpps_peer, parse_config
from gateway.dicom.modules import Code, Order, Patient
from gateway.queue.messages import MppsQueue
from gateway.queue.outbox import Outbox
from gateway.ris.mpps_sender import MppsSender
from tests.support.process import free_port
from tests.support.queue import new_outbox


@dataclass
class MppsSCP:
    """Keeps the instances it was sent, like a RIS: N-SET on an unknown
    instance is refused (0x0112), a second N-CREATE is a duplicate (0x0111),
    and a step no longer IN PROGRESS cannot be changed (0x0110)."""

    port: int = field(default_factory=free_port)
    received: list[tuple[str, str, Dataset]] = field(default_factory=list)
    instances: dict[str, Dataset] = field(default_factory=dict)
    refuse_set: bool = False
    refuse_create: bool = False
    server: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> MppsSCP:
        ae = AE(ae_title="RIS")
        ae.add_supported_context(ModalityPerformedProcedureStep)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_CREATE, self._create), (evt.EVT_N_SET, self._set)],
        )
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _create(self, event: Any) -> tuple[int, Dataset | None]:
        uid = str(event.request.AffectedSOPInstanceUID)
        ds = event.attribute_list
        with self.lock:
            self.received.append(("create", uid, ds))
            if self.refuse_create:
                return 0x0120, None
            if uid in self.instances:
                return 0x0111, None
            self.instances[uid] = copy.deepcopy(ds)
        return 0x0000, ds

    def _set(self, event: Any) -> tuple[int, Dataset | None]:
        uid = str(event.request.RequestedSOPInstanceUID)
        mod = event.modification_list
        with self.lock:
            self.received.append(("set", uid, mod))
            current = self.instances.get(uid)
            if current is None:
                return 0x0112, None
            if self.refuse_set or current.PerformedProcedureStepStatus != "IN PROGRESS":
                return 0x0110, None
            current.update(mod)
        return 0x0000, current


@pytest.fixture
def scp() -> Iterator[MppsSCP]:
    server = MppsSCP()
    yield server
    server.stop()


@dataclass
class Rig:
    config: GatewayConfig
    exams: ExamService
    queue: MppsQueue
    sender: MppsSender


@pytest.fixture
def rig(tmp_path: Path, scp: MppsSCP) -> Iterator[Rig]:
    config = parse_config(
        {
            "station": {"ae_title": "EDGE1", "station_name": "US-ROOM-1", "modality": "US"},
            "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0},
            "mpps": {"ae_title": "RIS", "host": "127.0.0.1", "port": scp.port},
        }
    )
    outbox = new_outbox(config.queue.path, ["pacs"])
    station = Station(config, outbox, "synthetic", review=True)
    queue = MppsQueue(config.queue.path)
    peer = mpps_peer(config)
    assert peer is not None
    yield Rig(config, station.exams, queue, MppsSender(queue, peer, "EDGE1"))
    station.close()
    queue.close()
    outbox.close()


def _capture(rig: Rig, exam: Exam, n: int) -> None:
    driver = create_driver("testpattern", {"width": 32, "height": 24, "realtime": False})
    with driver:
        for frame in driver.frames(n):
            rig.exams.capture(exam, frame)


ORDER = Order(
    study_instance_uid="1.2.826.0.1.3680043.10.543.77",
    accession_number="ACC77",
    referring_physician="REF^ERRING",
    requested_procedure_id="RP77",
    requested_procedure_description="US abdomen",
    scheduled_procedure_step_id="SPS77",
    scheduled_procedure_step_description="Abdomen",
    scheduled_protocol_codes=(Code("P1", "99LOCAL", "Abdomen protocol"),),
    specific_character_set="ISO_IR 192",
)
PATIENT = Patient(name="Müller^Jürgen", id="P77", birth_date=date(1970, 1, 2), sex="M")


def _elements(ds: Dataset) -> dict[str, Any]:
    """keyword → value, sequences as lists of such dicts: compared exactly."""
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.VR == "SQ":
            out[elem.keyword] = [_elements(item) for item in elem.value]
        else:
            value = elem.value
            out[elem.keyword] = "" if value is None else str(value)
    return out


def test_completed_exam_exact_attributes(rig: Rig, scp: MppsSCP) -> None:
    scp.start()
    exam = rig.exams.start(PATIENT, ORDER)
    _capture(rig, exam, 2)
    rig.exams.finish(exam)
    report = rig.sender.flush(timeout=20)
    assert (report.sent, report.failed) == (2, 0)
    assert [kind for kind, _, _ in scp.received] == ["create", "set"]
    (_, create_uid, created), (_, set_uid, modified) = scp.received
    assert create_uid == set_uid and create_uid.startswith("2.25.")
    started = exam.started
    assert _elements(created) == {
        "SpecificCharacterSet": "ISO_IR 192",
        "Modality": "US",
        "StudyID": "RP77",
        "PatientName": "Müller^Jürgen",
        "PatientID": "P77",
        "IssuerOfPatientID": "",
        "PatientBirthDate": "19700102",
        "PatientSex": "M",
        "ReferencedPatientSequence": [],
        "ScheduledStepAttributesSequence": [
            {
                "AccessionNumber": "ACC77",
                "ReferencedStudySequence": [],
                "StudyInstanceUID": ORDER.study_instance_uid,
                "RequestedProcedureDescription": "US abdomen",
                "ScheduledProcedureStepDescription": "Abdomen",
                "ScheduledProtocolCodeSequence": [
                    {
                        "CodeValue": "P1",
                        "CodingSchemeDesignator": "99LOCAL",
                        "CodeMeaning": "Abdomen protocol",
                    }
                ],
                "ScheduledProcedureStepID": "SPS77",
                "RequestedProcedureID": "RP77",
            }
        ],
        "PerformedStationAETitle": "EDGE1",
        "PerformedStationName": "US-ROOM-1",
        "PerformedLocation": "",
        "PerformedProcedureStepStartDate": started.strftime("%Y%m%d"),
        "PerformedProcedureStepStartTime": started.strftime("%H%M%S"),
        "PerformedProcedureStepEndDate": "",
        "PerformedProcedureStepEndTime": "",
        "PerformedProcedureStepStatus": "IN PROGRESS",
        "PerformedProcedureStepID": started.strftime("%y%m%d%H%M%S") + exam.id[:4].upper(),
        "PerformedProcedureStepDescription": "US abdomen",
        "PerformedProcedureTypeDescription": "",
        "ProcedureCodeSequence": [],
        "PerformedProtocolCodeSequence": [
            {
                "CodeValue": "P1",
                "CodingSchemeDesignator": "99LOCAL",
                "CodeMeaning": "Abdomen protocol",
            }
        ],
        "PerformedSeriesSequence": [],
    }
    assert exam.ended is not None
    assert _elements(modified) == {
        "SpecificCharacterSet": "ISO_IR 192",
        "PerformedProcedureStepEndDate": exam.ended.strftime("%Y%m%d"),
        "PerformedProcedureStepEndTime": exam.ended.strftime("%H%M%S"),
        "PerformedProcedureStepStatus": "COMPLETED",
        "PerformedSeriesSequence": [
            {
                "PerformingPhysicianName": "",
                "ProtocolName": "Abdomen",
                "OperatorsName": "",
                "SeriesInstanceUID": exam.series.instance_uid,
                "SeriesDescription": "",
                "RetrieveAETitle": "",
                "ReferencedImageSequence": [
                    {
                        "ReferencedSOPClassUID": image.sop_class_uid,
                        "ReferencedSOPInstanceUID": image.sop_instance_uid,
                    }
                    for image in exam.images
                ],
                "ReferencedNonImageCompositeSOPInstanceSequence": [],
            }
        ],
    }
    assert len(exam.images) == 2
    assert rig.queue.counts() == {"pending": 0, "in_flight": 0, "sent": 2, "failed": 0}


def test_discontinued_with_reason_codes(rig: Rig, scp: MppsSCP) -> None:
    scp.start()
    coded = rig.exams.start(PATIENT, ORDER)
    _capture(rig, coded, 1)
    rig.exams.discontinue(coded, "110505")
    unscheduled = rig.exams.start(Patient(name="Doe^Jane", id="U1"))
    rig.exams.discontinue(unscheduled, "Sonde defekt – Patient hat sich bewegt")
    assert rig.sender.flush(timeout=20).sent == 4
    sets = [ds for kind, _, ds in scp.received if kind == "set"]
    first, second = sets
    assert first.PerformedProcedureStepStatus == "DISCONTINUED"
    reason = first.PerformedProcedureStepDiscontinuationReasonCodeSequence[0]
    assert (reason.CodeValue, reason.CodingSchemeDesignator, reason.CodeMeaning) == (
        "110505",
        "DCM",
        "Patient refused to continue procedure",
    )
    assert "CommentsOnThePerformedProcedureStep" not in first
    refs = first.PerformedSeriesSequence[0].ReferencedImageSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [coded.images[0].sop_instance_uid]
    free = second.PerformedProcedureStepDiscontinuationReasonCodeSequence[0]
    assert (free.CodeValue, free.CodeMeaning) == ("110513", "Discontinued for unspecified reason")
    assert second.CommentsOnThePerformedProcedureStep == "Sonde defekt – Patient hat sich bewegt"
    assert len(second.PerformedSeriesSequence) == 0
    creates = [ds for kind, _, ds in scp.received if kind == "create"]
    unscheduled_step = creates[1].ScheduledStepAttributesSequence[0]
    assert unscheduled_step.StudyInstanceUID == unscheduled.study.instance_uid
    assert unscheduled_step.AccessionNumber == ""
    assert unscheduled_step.ScheduledProcedureStepID == ""


def test_offline_exams_are_reported_later_in_order(rig: Rig, scp: MppsSCP) -> None:
    first = rig.exams.start(PATIENT, ORDER)
    _capture(rig, first, 2)
    rig.exams.finish(first)
    second = rig.exams.start(Patient(name="Doe^Jane", id="U1"))
    _capture(rig, second, 1)
    rig.exams.discontinue(second, "110501")
    # No RIS: every message stays queued with a back-off and a reason.
    report = rig.sender.send_due(now=float("inf"))
    assert report.sent == 0 and report.error is not None
    assert "connection refused" in report.error
    assert rig.queue.counts()["pending"] == 4
    assert all(m.last_error for m in rig.queue.messages() if m.kind == "create")
    # A restart in between: the queue is in the SQLite file, not in memory.
    rig.queue.close()
    queue = MppsQueue(rig.config.queue.path)
    peer = mpps_peer(rig.config)
    assert peer is not None
    sender = MppsSender(queue, peer, "EDGE1")
    scp.start()
    try:
        assert sender.flush(timeout=20).sent == 4
    finally:
        queue.close()
    rig.queue = MppsQueue(rig.config.queue.path)
    per_exam: dict[str, list[tuple[str, str]]] = {}
    for kind, uid, ds in scp.received:
        per_exam.setdefault(uid, []).append((kind, ds.PerformedProcedureStepStatus))
    # In order per exam (an N-SET never before its N-CREATE), nothing refused.
    assert list(per_exam.values()) == [
        [("create", "IN PROGRESS"), ("set", "COMPLETED")],
        [("create", "IN PROGRESS"), ("set", "DISCONTINUED")],
    ]
    uids = list(per_exam)
    completed = scp.instances[uids[0]]
    assert len(completed.PerformedSeriesSequence[0].ReferencedImageSequence) == 2


def test_refused_create_blocks_its_set_until_retried(rig: Rig, scp: MppsSCP) -> None:
    scp.refuse_create = True
    scp.start()
    exam = rig.exams.start(PATIENT, ORDER)
    rig.exams.finish(exam)
    report = rig.sender.send_due(now=float("inf"))
    assert (report.sent, report.failed) == (0, 1)
    create, final = rig.queue.messages()
    assert create.state == "failed" and "0x0120 missing attribute" in (create.last_error or "")
    assert final.state == "pending"  # never sent ahead of its N-CREATE
    assert rig.sender.send_due(now=float("inf")).sent == 0
    assert [kind for kind, _, _ in scp.received] == ["create"]
    # The RIS had in fact stored it (as when only its answer is lost): the
    # retried N-CREATE is answered "duplicate", which counts as delivered.
    scp.refuse_create = False
    scp.instances[create.mpps_uid] = create.dataset()
    assert rig.queue.retry() == 2
    assert rig.sender.flush(timeout=20).sent == 2
    assert [kind for kind, _, _ in scp.received] == ["create", "create", "set"]
    assert scp.instances[create.mpps_uid].PerformedProcedureStepStatus == "COMPLETED"


def test_refused_set_is_failed_not_retried_forever(rig: Rig, scp: MppsSCP) -> None:
    scp.refuse_set = True
    scp.start()
    exam = rig.exams.start(PATIENT, ORDER)
    rig.exams.finish(exam)
    report = rig.sender.flush(timeout=20)
    assert (report.sent, report.failed) == (1, 1)
    failed = [m for m in rig.queue.messages() if m.state == "failed"]
    assert len(failed) == 1 and "0x0110" in (failed[0].last_error or "")
    scp.refuse_set = False
    assert rig.queue.retry() == 1
    assert rig.sender.flush(timeout=20).sent == 1
    assert rig.queue.counts()["sent"] == 2


def test_unfinished_exam_survives_a_restart(tmp_path: Path, scp: MppsSCP) -> None:
    from gateway.acquire.exam_store import ExamStore

    config = parse_config(
        {
            "station": {"ae_title": "EDGE1", "modality": "US"},
            "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0},
            "mpps": {"ae_title": "RIS", "host": "127.0.0.1", "port": scp.port},
        }
    )

    def service() -> tuple[ExamService, Outbox, MppsQueue, ExamStore]:
        outbox = new_outbox(config.queue.path, ["pacs"])
        station = Station(config, outbox, "synthetic", review=True)
        queue, store = MppsQueue(config.queue.path), ExamStore(config.queue.path)
        return station.exams, outbox, queue, store

    exams, outbox, queue, store = service()
    exam = exams.start(PATIENT, ORDER)
    driver = create_driver("testpattern", {"width": 32, "height": 24, "realtime": False})
    with driver:
        for frame in driver.frames(2):
            exams.capture(exam, frame)
    done = exams.start(Patient(name="Doe^Jane", id="U1"))
    exams.finish(done)
    for closeable in (outbox, queue, store):
        closeable.close()  # power cut: only what is on disk remains

    exams, outbox, queue, store = service()
    try:
        (restored,) = store.unfinished(outbox)
        assert restored.id == exam.id and restored.state.value == "in_progress"
        assert (restored.patient, restored.order) == (PATIENT, ORDER)
        assert restored.study.instance_uid == ORDER.study_instance_uid
        assert restored.series.instance_uid == exam.series.instance_uid
        assert [i.sop_instance_uid for i in restored.images] == [
            i.sop_instance_uid for i in exam.images
        ]
        assert exams.finish(restored) == 2  # the held images are released
        assert store.unfinished(outbox) == []
        peer = mpps_peer(config)
        assert peer is not None
        scp.start()
        assert MppsSender(queue, peer, "EDGE1").flush(timeout=20).sent == 4
        final = scp.instances[queue.messages(exam.id)[0].mpps_uid]
        assert final.PerformedProcedureStepStatus == "COMPLETED"
        refs = final.PerformedSeriesSequence[0].ReferencedImageSequence
        assert [r.ReferencedSOPInstanceUID for r in refs] == [
            i.sop_instance_uid for i in exam.images
        ]
    finally:
        for closeable in (outbox, queue, store):
            closeable.close()


def test_mpps_peer_defaults_to_the_worklist_server(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    base = {"queue": {"path": str(tmp_path)}}
    worklist = {"ae_title": "RIS", "host": "ris.example", "port": 104}
    assert mpps_peer(parse_config(base)) is None
    peer = mpps_peer(parse_config({**base, "worklist": worklist}))
    assert peer is not None and (peer.ae_title, peer.host, peer.port) == ("RIS", "ris.example", 104)
    own = {"ae_title": "MPPS", "host": "mpps.example", "port": 11112}
    peer = mpps_peer(parse_config({**base, "worklist": worklist, "mpps": own}))
    assert peer is not None and (peer.ae_title, peer.port) == ("MPPS", 11112)
    cfg = parse_config({**base, "worklist": {**worklist, "cache_days": 3, "timeout": 5}})
    assert cfg.worklist is not None and (cfg.worklist.cache_days, cfg.worklist.timeout) == (3, 5)
    with pytest.raises(ConfigError, match=r"mpps\.port: .*less than or equal to 65535"):
        parse_config({**base, "mpps": {**own, "port": 70000}})
    with pytest.raises(ConfigError, match=r"worklist\.cache_day: unknown key"):
        parse_config({**base, "worklist": {**worklist, "cache_day": 3}})


def test_japanese_order_keeps_its_character_set(rig: Rig, scp: MppsSCP) -> None:
    scp.start()
    order = Order(
        study_instance_uid="1.2.826.0.1.3680043.10.543.88",
        accession_number="ACC88",
        scheduled_procedure_step_description="腹部",
        specific_character_set="\\ISO 2022 IR 87",
    )
    patient = Patient(name="Yamada^Tarou=山田^太郎=やまだ^たろう", id="J88")
    exam = rig.exams.start(patient, order)
    _capture(rig, exam, 1)
    rig.exams.finish(exam)
    assert rig.sender.flush(timeout=20).sent == 2
    (_, _, created), (_, _, modified) = scp.received
    assert list(created.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert str(created.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert created.ScheduledStepAttributesSequence[0].ScheduledProcedureStepDescription == "腹部"
    assert modified.PerformedSeriesSequence[0].ProtocolName == "腹部"


def test_queue_stats_show_mpps_messages(tmp_path: Path) -> None:
    """An exam done with the RIS unreachable: `queue stats` shows its MPPS
    messages waiting beside the images."""
    import json

    from tests.support.gateway import Gateway, write_config

    config = write_config(
        tmp_path / "gateway.toml",
        {
            "capture": {"driver": "testpattern", "options": {"width": 64, "height": 48}},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "localhost", "port": 1}],
            "mpps": {"ae_title": "RIS", "host": "127.0.0.1", "port": free_port()},
            "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0},
        },
    )
    gateway = Gateway(config)
    gateway("capture", "--patient-id", "P1", "--patient-name", "A^B", check=True)
    stats = json.loads(gateway("queue", "stats", "--json", check=True).stdout)
    assert stats["pacs"]["pending"] == 1
    assert stats["mpps:RIS"] == {"pending": 2, "in_flight": 0, "sent": 0, "failed": 0}
    text = gateway("queue", "stats", check=True).stdout
    assert "mpps:RIS: pending=2" in text


def test_an_import_failing_on_its_second_batch_leaves_no_open_exam(
    tmp_path: Path, scp: MppsSCP
) -> None:
    """`import` of 64 files (two batches of 32) onto a queue whose disk the
    first batch fills up to the reserve: the second batch is refused, and
    the exam is discontinued with that reason, its MPPS DISCONTINUED naming
    the 32 images queued before (they were acknowledged). Nothing is left
    in progress for the touchscreen to adopt. As root (as `make test` runs)
    the queue is a real 8 MiB tmpfs."""
    import os
    import shutil
    import subprocess

    import cv2
    import numpy as np

    from gateway.acquire.importer import BATCH_FILES
    from gateway.dicom.procedure_step import DISCONTINUED
    from tests.support.gateway import Gateway, assert_one_line_error, write_config

    scp.start()
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0
    if mounted:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        rng = np.random.default_rng(7)
        files = []
        for i in range(2 * BATCH_FILES):  # each ~100 KB as an uncompressed object
            path = tmp_path / "files" / f"scan{i:02d}.png"
            path.parent.mkdir(exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 255, (170, 200, 3), dtype=np.uint8))
            files.append(str(path))
        # 8 MiB free at the start, 4 kept in reserve: the first batch (3 MB) fits.
        reserve = 4 if mounted else shutil.disk_usage(tmp_path).free // 2**20 - 4
        data: dict[str, Any] = {
            "station": {"ae_title": "EDGE1", "station_name": "US-ROOM-1", "modality": "OT"},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "localhost", "port": 1}],
            "mpps": {"ae_title": "RIS", "host": "127.0.0.1", "port": scp.port},
            "queue": {"path": str(disk / "q"), "min_free_mb": reserve},
        }
        gateway = Gateway(write_config(tmp_path / "gateway.toml", data))
        result = gateway("import", "--patient-id", "IMP1", "--patient-name", "Batch^Two", *files)
        line = assert_one_line_error(result)
        assert "disk nearly full" in line, line

        config = parse_config(data)
        outbox = new_outbox(config.queue.path, ["pacs"])
        try:
            assert len(outbox.objects()) == BATCH_FILES  # the first batch stays queued
            exams = outbox._db.execute("SELECT state, discontinue_reason FROM exams").fetchall()
            assert [tuple(r) for r in exams] == [("discontinued", exams[0]["discontinue_reason"])]
            assert exams[0]["discontinue_reason"].startswith("import failed: disk nearly full")
            # The touchscreen, starting now, finds nothing to adopt.
            with Station(config, outbox, "synthetic", review=True, restore=True) as station:
                assert station.restored == []
            queue = MppsQueue(config.queue.path)
            try:
                peer = mpps_peer(config)
                assert peer is not None
                assert MppsSender(queue, peer, "EDGE1").flush(timeout=20).sent == 2
            finally:
                queue.close()
        finally:
            outbox.close()
        (kind1, _, created), (kind2, _, modified) = scp.received
        assert (kind1, kind2) == ("create", "set")
        assert created.PerformedProcedureStepStatus == "IN PROGRESS"
        assert modified.PerformedProcedureStepStatus == DISCONTINUED
        reason = modified.PerformedProcedureStepDiscontinuationReasonCodeSequence[0]
        assert reason.CodeValue == "110513"  # unspecified; the words in the comments
        assert "disk nearly full" in modified.CommentsOnThePerformedProcedureStep
        images = modified.PerformedSeriesSequence[0].ReferencedImageSequence
        assert len(images) == BATCH_FILES
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_capture_killed_mid_exam_is_discontinued_at_the_next_start(
    tmp_path: Path, scp: MppsSCP
) -> None:
    """`capture` killed (SIGKILL) while its exam runs: nobody will end that
    exam, so the service's next start discontinues it (MPPS DISCONTINUED),
    and the touchscreen does not take it for its own."""
    import signal
    import subprocess
    import time

    from gateway.dicom.procedure_step import DISCONTINUED
    from tests.support.gateway import write_config
    from tests.support.process import GATEWAY, REPO

    scp.start()
    data: dict[str, Any] = {
        "station": {"ae_title": "EDGE1", "station_name": "US-ROOM-1", "modality": "OT"},
        "capture": {
            "driver": "testpattern",
            "options": {"width": 64, "height": 48, "fps": 5, "realtime": True},
        },
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "localhost", "port": 1}],
        "mpps": {"ae_title": "RIS", "host": "127.0.0.1", "port": scp.port},
        "queue": {"path": str(tmp_path / "q"), "min_free_mb": 0},
    }
    path = write_config(tmp_path / "gateway.toml", data)
    proc = subprocess.Popen(
        [
            *GATEWAY,
            "--config",
            str(path),
            "capture",
            "--patient-id",
            "K1",
            "--patient-name",
            "Killed^Midway",
            "--frames",
            "1000",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "captured" in proc.stdout.readline()  # the exam runs: one image is queued
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    config = parse_config(data)
    outbox = new_outbox(config.queue.path, ["pacs"])
    try:
        with Station(config, outbox, "synthetic", review=True, restore=True) as station:
            assert station.restored == []  # not the touchscreen's to adopt
        (state,) = outbox._db.execute("SELECT state FROM exams").fetchall()
        assert state[0] == "discontinued"
        queue = MppsQueue(config.queue.path)
        try:
            peer = mpps_peer(config)
            assert peer is not None
            sender = MppsSender(queue, peer, "EDGE1")
            deadline = time.monotonic() + 20
            while len(scp.received) < 2 and time.monotonic() < deadline:
                sender.flush(timeout=5)
        finally:
            queue.close()
    finally:
        outbox.close()
    (_, _, created), (_, _, modified) = scp.received
    assert created.PerformedProcedureStepStatus == "IN PROGRESS"
    assert modified.PerformedProcedureStepStatus == DISCONTINUED
    assert "interrupted" in modified.CommentsOnThePerformedProcedureStep
    assert len(modified.PerformedSeriesSequence[0].ReferencedImageSequence) >= 1
