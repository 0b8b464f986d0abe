"""Images a digital device sends on its own (serial XMODEM) are captures:
into the open exam at once, or kept until the next exam starts — never only
shown in the preview, never dropped."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from drivers import create_driver
from gateway.config import load_config
from gateway.dicom.modules import Patient
from gateway.queue.model import DeliveryState
from gateway.ui.app import app_state
from gateway.ui.desk import MAX_WAITING_IMAGES, DeskError
from gateway.ui.server import UIServer
from tests.support.gateway import gateway_config, write_config
from tests.support.pki import PKI


def test_device_images_go_into_the_exam_or_wait_for_one(tmp_path: Path, pki: PKI) -> None:
    config = load_config(write_config(tmp_path / "g.toml", gateway_config(tmp_path, pki, 11112)))
    driver = create_driver("testpattern", {"width": 64, "height": 48, "realtime": False})
    ui = UIServer(config, threading.Event(), stream=None)
    try:
        desk = app_state(ui.app).desk
        with driver:
            frames = list(driver.frames(MAX_WAITING_IMAGES + 3))
        # No exam open: kept, not queued under a guessed patient.
        assert desk.receive(frames[0]) is None and desk.receive(frames[1]) is None
        assert ui.outbox.objects() == []
        exam = desk.start(Patient(name="Serial^Sent", id="S1"))
        assert [s.kind for s in desk.shots[exam.id]] == ["image", "image"]
        assert desk.waiting == []
        # Exam open: straight in, held until Finish like any capture.
        shot = desk.receive(frames[2])
        assert shot is not None and len(desk.shots[exam.id]) == 3
        assert {d.state for d in ui.outbox.deliveries()} == {DeliveryState.HELD}
        assert desk.finish(exam) == 3
        # A bound on what waits in memory, said plainly.
        for frame in frames[3 : 3 + MAX_WAITING_IMAGES]:
            desk.receive(frame)
        with pytest.raises(DeskError, match="waiting for an exam"):
            desk.receive(frames[-1])
    finally:
        ui.station.close()
        ui.outbox.close()
        ui.status_outbox.close()
