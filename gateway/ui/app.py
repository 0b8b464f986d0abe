"""The touchscreen web application: server-rendered pages, a JSON API beneath
them (the page uses nothing else, so scripts can do what the screen does),
live status over Server-Sent Events and the preview as MJPEG.

Starlette is the ASGI core (small, typed, well kept, no build step) and
uvicorn serves it; see the README's "Touchscreen" section.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from drivers.stream import FrameStream
from gateway.config import GatewayConfig
from gateway.dicom.modules import ModuleError, Patient
from gateway.exam import Exam, ExamService
from gateway.net.echo import echo
from gateway.queue.outbox import Outbox
from gateway.ui import api_models as m
from gateway.ui.desk import DeskError, ExamDesk
from gateway.ui.live import Broadcaster, PreviewEncoder
from gateway.ui.security import (
    CSRF_HEADER,
    SESSION_COOKIE,
    UNLOCK_SECONDS,
    PinError,
    PinLimiter,
    Session,
    Sessions,
    check_pin_format,
    verify_pin,
)
from gateway.ui.settings import SettingsError, SettingsStore
from gateway.ui.status import ForwarderStatus, StatusBoard
from gateway.worklist.model import WorklistEntry, WorklistQuery, WorklistResult

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MAX_BODY = 16 * 1024
MJPEG_BOUNDARY = "frame"

B = TypeVar("B", bound=BaseModel)


class WorklistSource(Protocol):
    """What the worklist screen needs; `gateway.worklist.service.WorklistService` fits."""

    def query(self, query: WorklistQuery, offline: bool = False) -> WorklistResult: ...


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class UIContext:
    """Everything the application is built on, handed in by `service.run`
    (or a test), so the app itself opens nothing."""

    config: GatewayConfig
    exams: ExamService
    status_outbox: Outbox  # its own connection: status reads never meet exam writes
    stream: FrameStream | None = None
    forwarder_status: ForwarderStatus | None = None
    worklist: WorklistSource | None = None
    config_path: Path | None = None
    # Overrides the bind address's verdict (tests of the remote login).
    login_required: bool | None = None


@dataclass
class UIState:
    ctx: UIContext
    desk: ExamDesk
    board: StatusBoard
    settings: SettingsStore
    events: Broadcaster
    preview: PreviewEncoder = field(default_factory=PreviewEncoder)
    sessions: Sessions = field(default_factory=Sessions)
    pins: PinLimiter = field(default_factory=PinLimiter)
    login_required: bool = False
    worklist_entries: dict[str, WorklistEntry] = field(default_factory=dict)
    # Set when the server is asked to stop, so open streams end by themselves.
    closing: threading.Event = field(default_factory=threading.Event)

    @property
    def config(self) -> GatewayConfig:
        return self.settings.config


def _is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client_is_loopback(request: Request) -> bool:
    return request.client is not None and _is_loopback_host(request.client.host)


# -- request helpers -----------------------------------------------------------


def _state(request: Request) -> UIState:
    state: UIState = request.app.state.ui
    return state


def _session(request: Request) -> Session | None:
    return _state(request).sessions.get(request.cookies.get(SESSION_COOKIE))


async def _body(request: Request, model: type[B]) -> B:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body is {len(raw)} bytes; at most {MAX_BODY}")
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "request body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, m.first_problem(exc)) from None


Handler = Callable[[Request], Awaitable[Response]]


def guarded(
    *, csrf: bool = True, unlock: bool = False, login: bool = True
) -> Callable[[Handler], Handler]:
    """Login (when remote), CSRF on every state change, PIN unlock for settings;
    and errors turned into one-line JSON with the right status."""

    def wrap(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            state = _state(request)
            try:
                session = _session(request)
                if (
                    login
                    and state.login_required
                    and not _client_is_loopback(request)
                    and not (session and session.logged_in)
                ):
                    raise ApiError(401, "log in first (POST /api/login with the PIN)")
                changes_state = csrf and request.method not in ("GET", "HEAD")
                token = request.headers.get(CSRF_HEADER)
                if changes_state and (session is None or not session.check_csrf(token)):
                    raise ApiError(403, "missing or wrong CSRF token (GET /api/session for one)")
                if unlock and not (session and session.settings_unlocked):
                    raise ApiError(403, "settings are locked; enter the PIN")
                return await handler(request)
            except ApiError as exc:
                return JSONResponse({"error": exc.message}, exc.status)
            except DeskError as exc:
                return JSONResponse({"error": exc.message}, exc.status)
            except SettingsError as exc:
                return JSONResponse({"error": str(exc)}, 422)
            except ModuleError as exc:  # e.g. a worklist entry DICOM would not accept
                return JSONResponse({"error": str(exc)}, 422)

        endpoint.__doc__ = handler.__doc__
        endpoint.__name__ = handler.__name__
        return endpoint

    return wrap


def _exam(request: Request) -> Exam:
    return _state(request).desk.exam(request.path_params["exam_id"])


def _object_id(request: Request) -> int:
    raw = request.path_params["object_id"]
    if not raw.isdigit() or len(raw) > 12:
        raise ApiError(404, f"object {raw[:20]!r} is not part of this exam")
    return int(raw)


# -- session, login, PIN ---------------------------------------------------------


@guarded(csrf=False, login=False)
async def api_session(request: Request) -> Response:
    """The CSRF token for this client (creates the session cookie)."""
    state = _state(request)
    session = _session(request) or state.sessions.new()
    response = JSONResponse(
        {
            "csrf": session.csrf,
            "logged_in": session.logged_in
            or not state.login_required
            or _client_is_loopback(request),
            "login_required": state.login_required,
            "settings_unlocked": session.settings_unlocked,
            "pin_set": bool(state.config.ui.pin_hash),
        }
    )
    _set_cookie(response, session)
    return response


def _set_cookie(response: Response, session: Session) -> None:
    response.set_cookie(SESSION_COOKIE, session.token, httponly=True, samesite="strict", path="/")


def _check_pin(state: UIState, pin: str) -> None:
    wait = state.pins.wait_seconds()
    if wait:
        raise ApiError(429, f"too many wrong PINs; try again in {wait} s")
    stored = state.config.ui.pin_hash
    if not stored:
        raise ApiError(409, "no PIN is set; set one in Settings on the box itself")
    if not verify_pin(pin, stored):
        state.pins.failed()
        wait = state.pins.wait_seconds()
        raise ApiError(403, "wrong PIN" + (f"; locked for {wait} s" if wait else ""))
    state.pins.succeeded()


@guarded(login=False)
async def api_login(request: Request) -> Response:
    """Log in with the PIN (needed only when the UI listens beyond localhost)."""
    body = await _body(request, m.PinBody)
    state = _state(request)
    await run_in_threadpool(_check_pin, state, body.pin)
    session = _session(request)
    assert session is not None  # the CSRF check needs one
    session.logged_in = True
    return JSONResponse({"logged_in": True})


@guarded()
async def api_unlock(request: Request) -> Response:
    """Unlock the settings for five minutes with the PIN."""
    body = await _body(request, m.PinBody)
    state = _state(request)
    await run_in_threadpool(_check_pin, state, body.pin)
    session = _session(request)
    assert session is not None
    session.unlocked_until = time.monotonic() + UNLOCK_SECONDS
    return JSONResponse({"unlocked": True, "seconds": UNLOCK_SECONDS})


@guarded()
async def api_lock(request: Request) -> Response:
    """Lock the settings again."""
    session = _session(request)
    assert session is not None
    session.unlocked_until = 0.0
    return JSONResponse({"unlocked": False})


@guarded()
async def api_pin_setup(request: Request) -> Response:
    """Choose the first PIN (only when none is set, and only at the box) or
    change it (settings unlocked)."""
    body = await _body(request, m.PinBody)
    state = _state(request)
    session = _session(request)
    assert session is not None
    if state.config.ui.pin_hash and not session.settings_unlocked:
        raise ApiError(403, "a PIN is already set; unlock the settings to change it")
    if not state.config.ui.pin_hash and not _client_is_loopback(request):
        raise ApiError(403, "the first PIN can only be set at the box itself")
    try:
        check_pin_format(body.pin)
    except PinError as exc:
        raise ApiError(422, str(exc)) from None
    await run_in_threadpool(state.settings.set_pin, body.pin)
    session.unlocked_until = time.monotonic() + UNLOCK_SECONDS
    return JSONResponse({"pin_set": True})


# -- status and live channels ----------------------------------------------------------


@guarded()
async def api_status(request: Request) -> Response:
    """Queue counts, PACS links, disk, clock and video, with plain-language messages."""
    return JSONResponse(await run_in_threadpool(_state(request).board.current))


def _sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


@guarded()
async def api_events(request: Request) -> Response:
    """Server-Sent Events: `status` every second, plus `object`, `deleted`,
    `recording`, `record_limit`, `pedal` and `exam` as they happen."""
    state = _state(request)
    queue = state.events.subscribe()

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 1000\n\n"
            yield _sse("status", await run_in_threadpool(state.board.current))
            last_status = time.monotonic()
            while not state.closing.is_set():
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=1.0)
                    yield _sse(str(event.get("type", "message")), event)
                except TimeoutError:
                    pass
                if time.monotonic() - last_status >= 1.0:
                    yield _sse("status", await run_in_threadpool(state.board.current))
                    last_status = time.monotonic()
        finally:
            state.events.unsubscribe(queue)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@guarded()
async def api_preview_mjpeg(request: Request) -> Response:
    """The live picture as MJPEG (multipart/x-mixed-replace), one part per frame."""
    state = _state(request)
    stream_ = state.ctx.stream
    if stream_ is None:
        raise ApiError(503, "no video source in this process")

    async def parts() -> AsyncIterator[bytes]:
        last: int | None = None
        while not state.closing.is_set():
            frame = await run_in_threadpool(stream_.wait_frame, last, 1.0)
            if frame is None:
                continue
            last = frame.index
            jpeg = await run_in_threadpool(state.preview.jpeg_for, frame)
            yield (
                (
                    f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n"
                ).encode()
                + jpeg
                + b"\r\n"
            )

    return StreamingResponse(
        parts(),
        media_type=f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}",
        headers={"Cache-Control": "no-store"},
    )


@guarded()
async def api_preview_jpeg(request: Request) -> Response:
    """The newest frame as one JPEG."""
    state = _state(request)
    stream_ = state.ctx.stream
    frame = stream_.latest() if stream_ else None
    if frame is None:
        raise ApiError(503, "no video yet")
    jpeg = await run_in_threadpool(state.preview.jpeg_for, frame)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


# -- worklist -------------------------------------------------------------------------


def _entry_json(entry: WorklistEntry) -> dict[str, Any]:
    p, o = entry.patient, entry.order
    return {
        "key": entry.key,
        "patient_name": p.name,
        "patient_id": p.id,
        "birth_date": p.birth_date.isoformat() if p.birth_date else None,
        "sex": p.sex,
        "accession_number": o.accession_number,
        "procedure": o.requested_procedure_description or o.scheduled_procedure_step_description,
        "scheduled": entry.scheduled_start.isoformat(timespec="minutes")
        if entry.scheduled_start
        else None,
        "modality": entry.modality,
        "location": entry.location,
        "performed": entry.performed,
        "warnings": list(entry.warnings),
    }


def _matches(entry: WorklistEntry, text: str) -> bool:
    if not text:
        return True
    hay = " ".join(
        (
            entry.patient.name.replace("^", " "),
            entry.patient.id,
            entry.order.accession_number,
            entry.order.requested_procedure_description,
        )
    ).lower()
    return all(word in hay for word in text.lower().split())


async def _worklist(state: UIState, text: str) -> dict[str, Any]:
    source = state.ctx.worklist
    if source is None:
        return {
            "configured": False,
            "entries": [],
            "cached_at": None,
            "error": "No worklist server is configured — use “Unscheduled patient”.",
            "warnings": [],
        }
    today = date.today()
    query = WorklistQuery(date_from=today, date_to=today)
    try:
        result = await run_in_threadpool(source.query, query, False)
    except Exception as exc:  # the worklist backend failing must not break the screen
        log.warning("worklist query failed: %s", type(exc).__name__)
        return {
            "configured": True,
            "entries": [],
            "cached_at": None,
            "error": f"Worklist unavailable ({type(exc).__name__})",
            "warnings": [],
        }
    state.worklist_entries = {e.key: e for e in result.entries}
    return {
        "configured": True,
        "entries": [_entry_json(e) for e in result.entries if _matches(e, text)],
        "cached_at": result.cached_at.isoformat(timespec="minutes") if result.cached_at else None,
        "error": result.error,
        "warnings": list(result.warnings),
    }


@guarded()
async def api_worklist(request: Request) -> Response:
    """Today's worklist (live, or the cache with `cached_at` when offline)."""
    return JSONResponse(await _worklist(_state(request), ""))


@guarded()
async def api_worklist_search(request: Request) -> Response:
    """Search today's worklist. POST, so names typed never end up in a URL or log."""
    body = await _body(request, m.WorklistSearch)
    return JSONResponse(await _worklist(_state(request), body.text.strip()))


# -- exams --------------------------------------------------------------------------


def _patient_from(form: m.UnscheduledPatient) -> Patient:
    name = form.family_name.strip()
    if form.given_name.strip():
        name += "^" + form.given_name.strip()
    try:
        return Patient(name=name, id=form.id.strip(), birth_date=form.birth_date, sex=form.sex)
    except ModuleError as exc:
        raise ApiError(422, str(exc)) from None


@guarded()
async def api_start_exam(request: Request) -> Response:
    """Start an exam from a worklist entry (`worklist_key`) or an unscheduled patient."""
    body = await _body(request, m.StartExam)
    state = _state(request)
    if (body.worklist_key is None) == (body.patient is None):
        raise ApiError(422, "give either worklist_key or patient, not both or neither")
    if body.worklist_key is not None:
        entry = state.worklist_entries.get(body.worklist_key)
        if entry is None:
            raise ApiError(404, "that worklist entry is not in the current list; refresh")
        exam = await run_in_threadpool(state.desk.start, entry.patient, entry.order)
    else:
        assert body.patient is not None
        exam = await run_in_threadpool(state.desk.start, _patient_from(body.patient))
    return JSONResponse(state.desk.describe(exam), 201)


@guarded()
async def api_current_exam(request: Request) -> Response:
    """The exam in progress, or 404."""
    desk = _state(request).desk
    if desk.current is None:
        raise ApiError(404, "no exam in progress")
    return JSONResponse(desk.describe(desk.current))


@guarded()
async def api_get_exam(request: Request) -> Response:
    """One exam: patient, state and its objects."""
    return JSONResponse(_state(request).desk.describe(_exam(request)))


@guarded()
async def api_capture(request: Request) -> Response:
    """Capture the current frame as an image; durable when this answers."""
    state = _state(request)
    shot = await run_in_threadpool(state.desk.capture, _exam(request))
    return JSONResponse(shot.as_json(request.path_params["exam_id"]), 201)


@guarded()
async def api_record_start(request: Request) -> Response:
    """Start recording a clip."""
    await run_in_threadpool(_state(request).desk.record_start, _exam(request))
    return JSONResponse({"recording": True})


@guarded()
async def api_record_stop(request: Request) -> Response:
    """Stop recording and store the clip as one multi-frame object."""
    shot = await run_in_threadpool(_state(request).desk.record_stop, _exam(request))
    return JSONResponse(shot.as_json(request.path_params["exam_id"]), 201)


@guarded()
async def api_save_last(request: Request) -> Response:
    """Store the last seconds of video (capture.buffer_seconds, default 10)
    as one multi-frame object."""
    shot = await run_in_threadpool(_state(request).desk.save_last, _exam(request))
    return JSONResponse(shot.as_json(request.path_params["exam_id"]), 201)


@guarded()
async def api_delete_object(request: Request) -> Response:
    """Delete an object of the exam before it is finished."""
    exam = _exam(request)
    await run_in_threadpool(_state(request).desk.delete, exam, _object_id(request))
    return JSONResponse({"deleted": True})


async def _object_jpeg(request: Request, which: str) -> Response:
    exam = _exam(request)
    shot = _state(request).desk.shot(exam.id, _object_id(request))
    return Response(
        shot.thumb if which == "thumb" else shot.full,
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@guarded()
async def api_object_thumb(request: Request) -> Response:
    """Thumbnail of a captured object (while the exam is open)."""
    return await _object_jpeg(request, "thumb")


@guarded()
async def api_object_image(request: Request) -> Response:
    """Large view of a captured object (while the exam is open)."""
    return await _object_jpeg(request, "full")


@guarded()
async def api_finish(request: Request) -> Response:
    """Finish: the objects are released to the queue and sent."""
    released = await run_in_threadpool(_state(request).desk.finish, _exam(request))
    return JSONResponse({"state": "completed", "queued": released})


@guarded()
async def api_discontinue(request: Request) -> Response:
    """Discontinue with a reason; objects already captured are still sent."""
    body = await _body(request, m.Discontinue)
    if not body.reason.strip():
        raise ApiError(422, "reason: give a reason")
    desk = _state(request).desk
    released = await run_in_threadpool(desk.discontinue, _exam(request), body.reason.strip())
    return JSONResponse({"state": "discontinued", "queued": released})


@guarded()
async def api_pedal(request: Request) -> Response:
    """Same as a foot-pedal press ("capture" or "record") on the current exam."""
    body = await _body(request, m.PedalPress)
    event = await run_in_threadpool(_state(request).desk.trigger, body.action)
    if not event["ok"]:
        raise ApiError(409, str(event.get("message", "refused")))
    return JSONResponse(event)


# -- settings ------------------------------------------------------------------------


@guarded(unlock=True)
async def api_settings(request: Request) -> Response:
    """Destinations, worklist server and capture source (settings unlocked)."""
    return JSONResponse(_state(request).settings.view())


@guarded(unlock=True)
async def api_settings_update(request: Request) -> Response:
    """Change destinations / worklist / capture; validated, written atomically.
    The running service picks them up on restart; nothing queued is touched."""
    body = await _body(request, m.SettingsUpdate)
    state = _state(request)
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise ApiError(422, "nothing to change")
    await run_in_threadpool(state.settings.update, changes)
    return JSONResponse({"saved": True, "restart_needed": True, **state.settings.view()})


@guarded(unlock=True)
async def api_echo(request: Request) -> Response:
    """Test connection: C-ECHO a destination, with TLS version and cipher."""
    body = await _body(request, m.EchoRequest)
    config = _state(request).settings.config
    try:
        dest = next(d for d in config.destinations if d.name == body.name)
    except StopIteration:
        raise ApiError(404, f"no destination named {body.name!r}") from None
    result = await run_in_threadpool(echo, config.station.ae_title, dest)
    return JSONResponse(result.as_json())


# -- pages ----------------------------------------------------------------------------


templates = Jinja2Templates(directory=str(HERE / "templates"))


def _page(request: Request, name: str, **context: Any) -> Response:
    state = _state(request)
    session = _session(request)
    fresh = session is None
    if session is None:
        session = state.sessions.new()
    locked_out = state.login_required and not _client_is_loopback(request)
    if locked_out and not session.logged_in and name != "login.html":
        response: Response = RedirectResponse("/login", 303)
        _set_cookie(response, session)
        return response
    response = templates.TemplateResponse(
        request,
        name,
        {"csrf": session.csrf, "station": state.config.station.station_name, **context},
    )
    if fresh:
        _set_cookie(response, session)
    return response


async def page_worklist(request: Request) -> Response:
    desk = _state(request).desk
    return _page(request, "worklist.html", current=desk.current)


async def page_exam(request: Request) -> Response:
    state = _state(request)
    try:
        exam = state.desk.exam(request.path_params["exam_id"])
    except DeskError:
        return RedirectResponse("/", 303)
    return _page(
        request,
        "exam.html",
        exam=state.desk.describe(exam),
        save_last_seconds=f"{state.desk.save_last_seconds:g}",
    )


async def page_settings(request: Request) -> Response:
    return _page(request, "settings.html")


async def page_login(request: Request) -> Response:
    return _page(request, "login.html")


async def page_api_docs(request: Request) -> Response:
    return HTMLResponse(
        "<!doctype html><title>API</title><h1>dicom-gateway UI API</h1>"
        '<p>The OpenAPI description is at <a href="/api/openapi.json">/api/openapi.json</a>.</p>'
    )


# -- OpenAPI -------------------------------------------------------------------------

API: list[tuple[str, str, Handler, type[BaseModel] | None]] = [
    ("GET", "/api/session", api_session, None),
    ("POST", "/api/login", api_login, m.PinBody),
    ("POST", "/api/pin/unlock", api_unlock, m.PinBody),
    ("POST", "/api/pin/lock", api_lock, None),
    ("POST", "/api/pin/setup", api_pin_setup, m.PinBody),
    ("GET", "/api/status", api_status, None),
    ("GET", "/api/events", api_events, None),
    ("GET", "/api/preview.mjpg", api_preview_mjpeg, None),
    ("GET", "/api/preview.jpg", api_preview_jpeg, None),
    ("GET", "/api/worklist", api_worklist, None),
    ("POST", "/api/worklist/search", api_worklist_search, m.WorklistSearch),
    ("POST", "/api/exams", api_start_exam, m.StartExam),
    ("GET", "/api/exams/current", api_current_exam, None),
    ("GET", "/api/exams/{exam_id}", api_get_exam, None),
    ("POST", "/api/exams/{exam_id}/capture", api_capture, None),
    ("POST", "/api/exams/{exam_id}/record/start", api_record_start, None),
    ("POST", "/api/exams/{exam_id}/record/stop", api_record_stop, None),
    ("POST", "/api/exams/{exam_id}/save-last", api_save_last, None),
    ("DELETE", "/api/exams/{exam_id}/objects/{object_id}", api_delete_object, None),
    ("GET", "/api/exams/{exam_id}/objects/{object_id}/thumb.jpg", api_object_thumb, None),
    ("GET", "/api/exams/{exam_id}/objects/{object_id}/image.jpg", api_object_image, None),
    ("POST", "/api/exams/{exam_id}/finish", api_finish, None),
    ("POST", "/api/exams/{exam_id}/discontinue", api_discontinue, m.Discontinue),
    ("POST", "/api/pedal", api_pedal, m.PedalPress),
    ("GET", "/api/settings", api_settings, None),
    ("PUT", "/api/settings", api_settings_update, m.SettingsUpdate),
    ("POST", "/api/settings/echo", api_echo, m.EchoRequest),
]


ERROR_REF = {"$ref": "#/components/schemas/Error"}


def openapi_schema() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, handler, model in API:
        doc = " ".join((handler.__doc__ or "").split())
        op: dict[str, Any] = {
            "summary": doc.split(". ")[0].rstrip("."),
            "description": doc,
            "operationId": handler.__name__,
            "responses": {
                "200": {"description": "OK"},
                "4XX": {
                    "description": "refused, with a one-line reason",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
            },
        }
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        if method not in ("GET", "HEAD"):
            op.setdefault("parameters", []).append(
                {
                    "name": "X-CSRF-Token",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "from GET /api/session",
                }
            )
        if model is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": model.model_json_schema()}},
            }
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "dicom-edge-gateway touchscreen API",
            "version": "1",
            "description": "What the touchscreen does, for scripts. Get a session cookie and "
            "CSRF token from GET /api/session; send the token as X-CSRF-Token on every "
            "POST/PUT/DELETE. Patient data travels only in bodies, never in URLs.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                }
            }
        },
    }


async def api_openapi(request: Request) -> Response:
    return JSONResponse(openapi_schema())


# -- the application -------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        text = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": text}, exc.status_code)
    return HTMLResponse(f"<h1>{exc.status_code}</h1><p>{exc.detail}</p>", exc.status_code)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("UI request failed: %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return JSONResponse({"error": "internal error; see the gateway's log"}, 500)


def create_app(ctx: UIContext) -> Starlette:
    config = ctx.config
    events = Broadcaster()
    desk = ExamDesk(ctx.exams, ctx.stream, events, config.ui.max_record_seconds)
    host = config.ui.listen.rpartition(":")[0]
    state = UIState(
        ctx=ctx,
        desk=desk,
        board=StatusBoard(config, ctx.status_outbox, ctx.forwarder_status, ctx.stream),
        settings=SettingsStore(ctx.config_path, config),
        events=events,
        login_required=ctx.login_required
        if ctx.login_required is not None
        else not _is_loopback_host(host),
    )
    routes: list[Route | Mount] = [
        Route("/", page_worklist),
        Route("/exam/{exam_id}", page_exam),
        Route("/settings", page_settings),
        Route("/login", page_login),
        Route("/api", page_api_docs),
        Route("/api/openapi.json", api_openapi),
        *[Route(path, handler, methods=[method]) for method, path, handler, _ in API],
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.closing.clear()
        yield
        state.closing.set()

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.ui = state
    return app


def app_state(app: Starlette) -> UIState:
    state: UIState = app.state.ui
    return state
