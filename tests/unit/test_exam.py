"""The exam lifecycle: held until finished, deletable before, released after."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import create_driver
from gateway.acquire.capture import Capturer
from gateway.acquire.exam import ExamError, ExamService, ExamState
from gateway.config import parse_config
from gateway.dicom.modules import Order, Patient
from gateway.queue.model import DeliveryState
from tests.support.queue import new_outbox


@pytest.fixture
def service(tmp_path: Path) -> ExamService:
    config = parse_config({"queue": {"path": str(tmp_path), "min_free_mb": 0}})
    outbox = new_outbox(tmp_path, ["pacs"])
    return ExamService(config, outbox, Capturer(config, outbox, "synthetic"))


def _frames(n: int) -> list:  # type: ignore[type-arg]
    driver = create_driver("testpattern", {"width": 64, "height": 48, "realtime": False})
    with driver:
        return list(driver.frames(n))


def test_delete_before_finish_then_release(service: ExamService) -> None:
    exam = service.start(Patient(name="Doe^John", id="1"))
    images = [service.capture(exam, f) for f in _frames(3)]
    assert {d.state for d in service.outbox.deliveries()} == {DeliveryState.HELD}
    service.delete(exam, images[1].id)
    assert not images[1].path.exists()
    assert service.finish(exam) == 2
    assert exam.state is ExamState.COMPLETED
    assert {d.state for d in service.outbox.deliveries()} == {DeliveryState.PENDING}
    with pytest.raises(ExamError):
        service.delete(exam, images[0].id)
    with pytest.raises(ExamError):
        service.capture(exam, _frames(1)[0])


def test_scheduled_exam_takes_study_from_order(service: ExamService) -> None:
    order = Order(
        study_instance_uid="1.2.3.4", accession_number="ACC1", requested_procedure_id="RP1"
    )
    exam = service.start(Patient(name="Doe^John", id="1"), order)
    assert exam.study.instance_uid == "1.2.3.4"
    assert exam.study.accession_number == "ACC1"
    unscheduled = service.start(Patient(name="Doe^John", id="1"))
    assert unscheduled.study.accession_number == ""
    assert unscheduled.study.instance_uid != "1.2.3.4"


def test_discontinue_keeps_what_was_captured(service: ExamService) -> None:
    exam = service.start(Patient(name="Doe^John", id="1"))
    service.capture(exam, _frames(1)[0])
    assert service.discontinue(exam, "patient left") == 1
    assert exam.state is ExamState.DISCONTINUED and exam.discontinue_reason == "patient left"
