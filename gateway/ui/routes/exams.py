"""The exam: start, capture, record, save the last seconds, review, delete,
finish, discontinue, and the foot pedal."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from gateway.acquire.exam import Exam
from gateway.acquire.subject import UnscheduledPatientError, unscheduled_patient
from gateway.dicom.modules import Order, Patient
from gateway.ui import models as m
from gateway.ui.deps import GUARDS, ApiError, UIState, ui_state
from gateway.ui.people import patient_view

router = APIRouter(prefix="/api", tags=["exams"], dependencies=GUARDS)


def _exam(request: Request, exam_id: str) -> Exam:
    return ui_state(request).desk.exam(exam_id)


def _object_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 12:
        raise ApiError(404, f"object {raw[:20]!r} is not part of this exam")
    return int(raw)


# The one rule's fields ("name", ...) as the form calls them.
_FORM_FIELD = {"name": "family_name", "id": "id", "birth_date": "birth_date", "sex": "sex"}


def _patient_from(form: m.UnscheduledPatient) -> Patient:
    """The form's fields by the one unscheduled-patient check the command
    line uses too (future birth dates refused, every bad field named)."""
    family, given = form.family_name.strip(), form.given_name.strip()
    if "^" in family or "^" in given:
        field = "family_name" if "^" in family else "given_name"
        message = "a name may not contain ^"
        raise ApiError(422, message, fields={field: message})
    name = family + ("^" + given if given else "")
    born = form.birth_date.isoformat() if form.birth_date else ""
    try:
        return unscheduled_patient(name, form.id, born, form.sex)
    except UnscheduledPatientError as exc:
        fields = {_FORM_FIELD.get(p.field, p.field): _words(p.message) for p in exc.problems}
        raise ApiError(422, str(exc), fields=fields) from None


def _words(message: str) -> str:
    """The rule's message as the form says it ("patient name: 70
    characters, at most 64 allowed" → about family and given together)."""
    if message.startswith("patient name:") and "characters" in message:
        return "family and given name together: " + message.split(":", 1)[1].strip()
    return message[0].upper() + message[1:]


def _subject(state: UIState, body: m.StartExam) -> tuple[Patient, Order | None]:
    if (body.worklist_key is None) == (body.patient is None):
        raise ApiError(422, "give either worklist_key or patient, not both or neither")
    if body.worklist_key is not None:
        entry = state.worklist_entries.get(body.worklist_key)
        if entry is None:
            raise ApiError(404, "that worklist entry is not in the current list; refresh")
        return entry.patient, entry.order
    assert body.patient is not None
    return _patient_from(body.patient), None


@router.post("/exams/check", response_model=m.ConfirmView)
def api_check_exam(request: Request, body: m.StartExam) -> dict[str, Any]:
    """What Start would start, checked by the same rules, for the confirm
    dialog: the patient as every screen shows it, and the exam already open
    on this box (Start is refused while one is)."""
    state = ui_state(request)
    patient, order = _subject(state, body)
    entry = state.worklist_entries.get(body.worklist_key or "")
    open_exam = state.desk.open_exam()
    return {
        "patient": patient_view(patient),
        "accession_number": order.accession_number if order else "",
        "procedure": (
            order.requested_procedure_description or order.scheduled_procedure_step_description
        )
        if order
        else "",
        "scheduled": entry.scheduled_start.isoformat(timespec="minutes")
        if entry and entry.scheduled_start
        else None,
        "open_exam": {
            "id": open_exam.id,
            "patient": patient_view(open_exam.patient),
            "accession_number": open_exam.study.accession_number,
            "started": open_exam.started.isoformat(timespec="seconds"),
        }
        if open_exam
        else None,
    }


@router.post("/exams", status_code=201, response_model=m.ExamView)
def api_start_exam(request: Request, body: m.StartExam) -> dict[str, Any]:
    """Start an exam from a worklist entry (`worklist_key`) or an unscheduled patient."""
    state = ui_state(request)
    patient, order = _subject(state, body)
    exam = state.desk.start(patient, order)
    return state.desk.describe(exam)


@router.get("/exams/current", response_model=m.ExamView)
def api_current_exam(request: Request) -> dict[str, Any]:
    """The exam in progress, or 404."""
    desk = ui_state(request).desk
    if desk.current is None:
        raise ApiError(404, "no exam in progress")
    return desk.describe(desk.current)


@router.get("/exams/{exam_id}", response_model=m.ExamView)
def api_get_exam(request: Request, exam_id: str) -> dict[str, Any]:
    """One exam: patient, state and its objects."""
    return ui_state(request).desk.describe(_exam(request, exam_id))


@router.post("/exams/{exam_id}/capture", status_code=201, response_model=m.ShotView)
def api_capture(request: Request, exam_id: str) -> dict[str, Any]:
    """Capture the current frame as an image; durable when this answers."""
    return ui_state(request).desk.capture(_exam(request, exam_id)).as_json(exam_id)


@router.post("/exams/{exam_id}/record/start", response_model=m.Recording)
def api_record_start(request: Request, exam_id: str) -> m.Recording:
    """Start recording a clip."""
    ui_state(request).desk.record_start(_exam(request, exam_id))
    return m.Recording(recording=True)


@router.post("/exams/{exam_id}/record/stop", status_code=201, response_model=m.ShotView)
def api_record_stop(request: Request, exam_id: str) -> dict[str, Any]:
    """Stop recording and store the clip as one multi-frame object."""
    return ui_state(request).desk.record_stop(_exam(request, exam_id)).as_json(exam_id)


@router.post("/exams/{exam_id}/save-last", status_code=201, response_model=m.ShotView)
def api_save_last(request: Request, exam_id: str) -> dict[str, Any]:
    """Store the last seconds of video (capture.buffer_seconds, default 10)
    as one multi-frame object."""
    return ui_state(request).desk.save_last(_exam(request, exam_id)).as_json(exam_id)


@router.delete("/exams/{exam_id}/objects/{object_id}", response_model=m.Deleted)
def api_delete_object(request: Request, exam_id: str, object_id: str) -> m.Deleted:
    """Delete an object of the exam before it is finished."""
    exam = _exam(request, exam_id)
    ui_state(request).desk.delete(exam, _object_id(object_id))
    return m.Deleted(deleted=True)


def _object_jpeg(request: Request, exam_id: str, object_id: str, which: str) -> Response:
    exam = _exam(request, exam_id)
    shot = ui_state(request).desk.shot(exam.id, _object_id(object_id))
    return Response(
        shot.thumb if which == "thumb" else shot.full,
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get("/exams/{exam_id}/objects/{object_id}/thumb.jpg", response_class=Response)
def api_object_thumb(request: Request, exam_id: str, object_id: str) -> Response:
    """Thumbnail of a captured object (while the exam is open)."""
    return _object_jpeg(request, exam_id, object_id, "thumb")


@router.get("/exams/{exam_id}/objects/{object_id}/image.jpg", response_class=Response)
def api_object_image(request: Request, exam_id: str, object_id: str) -> Response:
    """Large view of a captured object (while the exam is open)."""
    return _object_jpeg(request, exam_id, object_id, "full")


@router.get("/exams/{exam_id}/objects/{object_id}/frames/{number}.jpg", response_class=Response)
def api_object_frame(request: Request, exam_id: str, object_id: str, number: str) -> Response:
    """One of a clip's review frames (`preview_urls`), spread over its length."""
    exam = _exam(request, exam_id)
    shot = ui_state(request).desk.shot(exam.id, _object_id(object_id))
    if not number.isdigit() or int(number) >= len(shot.previews):
        raise ApiError(404, f"the object has no review frame {number[:8]!r}")
    return Response(
        shot.previews[int(number)],
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get("/exams/{exam_id}/objects/{object_id}/clip.mp4", response_class=Response)
def api_object_clip(request: Request, exam_id: str, object_id: str) -> Response:
    """An H.264 clip as MP4 (`video_url`): the queued stream remuxed, not
    re-encoded, for the browser's own video player."""
    from gateway.dicom.video import VideoError, to_mp4

    exam = _exam(request, exam_id)
    shot = ui_state(request).desk.shot(exam.id, _object_id(object_id))
    if shot.video_path is None:
        raise ApiError(404, "the object is not an H.264 clip")
    try:
        data = to_mp4(shot.video_path)
    except (VideoError, OSError) as exc:
        raise ApiError(404, f"the clip cannot be played here: {exc}") from None
    return Response(
        data, media_type="video/mp4", headers={"Cache-Control": "private, max-age=3600"}
    )


@router.post("/exams/{exam_id}/finish", response_model=m.Ended)
def api_finish(request: Request, exam_id: str) -> m.Ended:
    """Finish: the objects are released to the queue and sent."""
    released = ui_state(request).desk.finish(_exam(request, exam_id))
    return m.Ended(state="completed", queued=released)


@router.post("/exams/{exam_id}/discontinue", response_model=m.Ended)
def api_discontinue(request: Request, exam_id: str, body: m.Discontinue) -> m.Ended:
    """Discontinue with a reason; objects already captured are still sent —
    except for the wrong patient ("Wrong patient", CID 9300 code 110514):
    then `images` must say "delete" or "send" (409 `confirm_images` until it does)."""
    exam = _exam(request, exam_id)
    if not body.reason.strip():
        raise ApiError(422, "reason: give a reason", fields={"reason": "Give a reason"})
    released = ui_state(request).desk.discontinue(exam, body.reason.strip(), body.images)
    return m.Ended(state="discontinued", queued=released)


@router.post("/pedal")
def api_pedal(request: Request, body: m.PedalPress) -> dict[str, Any]:
    """Same as a foot-pedal press ("capture" or "record") on the current exam."""
    event = ui_state(request).desk.trigger(body.action)
    if not event["ok"]:
        raise ApiError(409, str(event.get("message", "refused")))
    return event
