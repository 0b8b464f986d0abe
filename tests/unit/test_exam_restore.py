"""An exam cut short by a restart comes back: on the touchscreen as the
current exam with its held images, which Finish then releases for sending."""

from __future__ import annotations

import threading
from pathlib import Path

from drivers import create_driver
from gateway.acquire.capture import Capturer
from gateway.acquire.exam import ExamService, ExamState
from gateway.acquire.listeners import attach
from gateway.config import load_config
from gateway.dicom.modules import Patient
from gateway.queue.model import DeliveryState
from gateway.ui.app import app_state
from gateway.ui.server import UIServer
from tests.support.gateway import gateway_config, write_config
from tests.support.pki import PKI
from tests.support.queue import new_outbox


def test_unfinished_exam_is_adopted_by_the_ui_and_finished(tmp_path: Path, pki: PKI) -> None:
    config = load_config(write_config(tmp_path / "g.toml", gateway_config(tmp_path, pki, 11112)))
    driver = create_driver("testpattern", {"width": 64, "height": 48, "realtime": False})
    with new_outbox(config.queue.path, ["pacs"]) as outbox, driver:
        exams = ExamService(config, outbox, Capturer(config, outbox, driver.source))
        listeners = attach(config, exams, outbox)
        exam = exams.start(Patient(name="Power^Cut", id="PC1"))
        held = [exams.capture(exam, f).id for f in driver.frames(2)]
        listeners.close()  # the process "dies" here: no finish

    ui = UIServer(config, threading.Event(), stream=None)
    try:
        desk = app_state(ui.app).desk
        assert desk.current is not None and desk.current.id == exam.id
        assert [s.object_id for s in desk.shots[exam.id]] == held
        assert all(s.thumb.startswith(b"\xff\xd8") for s in desk.shots[exam.id])
        assert desk.finish(desk.current) == 2
        assert desk.exam(exam.id).state is ExamState.COMPLETED
        states = {d.state for d in ui.outbox.deliveries()}
        assert states == {DeliveryState.PENDING}
    finally:
        ui.station.close()
        ui.outbox.close()
        ui.status_outbox.close()
    # Finished exams are not restored again.
    ui2 = UIServer(config, threading.Event(), stream=None)
    try:
        assert app_state(ui2.app).desk.current is None
    finally:
        ui2.station.close()
        ui2.outbox.close()
        ui2.status_outbox.close()
