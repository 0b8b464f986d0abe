"""Exams kept durably, so an exam that was in progress when the box lost
power (or the service restarted) can be finished or discontinued afterwards:
its images stay held in the queue and the RIS still gets its final MPPS.

An ExamService listener writing an `exams` table in the outbox's SQLite file;
an exam's images are the queue's own objects with its exam id, so nothing
captured can be missing from the restored exam."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.acquire.exam import Exam, ExamEvent, ExamState
from gateway.dicom.modules import Series, Study
from gateway.queue.db import SQLiteStore, claimer_alive, open_queue_db, this_process, transaction
from gateway.queue.outbox import Outbox
from gateway.ris.jsonform import (
    order_from_dict,
    order_to_dict,
    patient_from_dict,
    patient_to_dict,
)


def _exam_to_json(exam: Exam, review: bool) -> str:
    study, series = exam.study, exam.series
    data: dict[str, Any] = {
        # Who runs it: a reviewed exam (the touchscreen) comes back on screen
        # after a restart; a headless one whose process died is discontinued.
        "review": review,
        "owner": this_process(),
        "patient": patient_to_dict(exam.patient),
        "order": order_to_dict(exam.order) if exam.order else None,
        "study": {
            "instance_uid": study.instance_uid,
            "started": study.started.isoformat(),
            "accession_number": study.accession_number,
            "referring_physician": study.referring_physician,
            "study_id": study.study_id,
            "description": study.description,
        },
        "series": {
            "modality": series.modality,
            "number": series.number,
            "instance_uid": series.instance_uid,
            "description": series.description,
        },
    }
    return json.dumps(data, ensure_ascii=False)


class ExamStore(SQLiteStore):
    def __init__(self, root: Path, review: bool = True) -> None:
        self._db = open_queue_db(root)
        self.review = review

    def __call__(self, event: ExamEvent) -> None:
        exam = event.exam
        with transaction(self._db) as db:
            if event.kind == "started":
                db.execute(
                    "INSERT OR REPLACE INTO exams (id, state, data, started) VALUES (?, ?, ?, ?)",
                    (
                        exam.id,
                        exam.state.value,
                        _exam_to_json(exam, self.review),
                        exam.started.isoformat(),
                    ),
                )
            elif event.kind in ("completed", "discontinued"):
                db.execute(
                    "UPDATE exams SET state = ?, ended = ?, discontinue_reason = ? WHERE id = ?",
                    (
                        exam.state.value,
                        exam.ended.isoformat() if exam.ended else None,
                        exam.discontinue_reason,
                        exam.id,
                    ),
                )

    def _in_progress(self) -> list[tuple[sqlite3.Row, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT * FROM exams WHERE state = 'in_progress' ORDER BY started"
        ).fetchall()
        return [(row, json.loads(row["data"])) for row in rows]

    def unfinished(self, outbox: Outbox) -> list[Exam]:
        """Reviewed exams still in progress, oldest first, with the images the
        queue holds for them (the touchscreen takes them back)."""
        return [
            self._restore(row, outbox)
            for row, data in self._in_progress()
            if data.get("review", True)
        ]

    def abandoned(self, outbox: Outbox) -> list[Exam]:
        """Headless exams (`capture`, `import`) still in progress whose process
        is gone (killed, or the power failed): nobody can end them but us."""
        return [
            self._restore(row, outbox)
            for row, data in self._in_progress()
            if not data.get("review", True) and not claimer_alive(data.get("owner"))
        ]

    def _restore(self, row: sqlite3.Row, outbox: Outbox) -> Exam:
        data = json.loads(row["data"])
        st, se = data["study"], data["series"]
        exam = Exam(
            patient=patient_from_dict(data["patient"]),
            study=Study(
                instance_uid=st["instance_uid"],
                started=datetime.fromisoformat(st["started"]),
                accession_number=st["accession_number"],
                referring_physician=st["referring_physician"],
                study_id=st["study_id"],
                description=st["description"],
            ),
            series=Series(
                modality=se["modality"],
                number=se["number"],
                instance_uid=se["instance_uid"],
                description=se["description"],
            ),
            order=order_from_dict(data["order"]) if data["order"] else None,
            id=row["id"],
            state=ExamState(row["state"]),
            started=datetime.fromisoformat(row["started"]),
        )
        ids = [
            r[0]
            for r in self._db.execute(
                "SELECT id FROM objects WHERE exam_id = ? ORDER BY id", (exam.id,)
            )
        ]
        exam.images.extend(obj for i in ids if (obj := outbox.get(i)) is not None)
        return exam
