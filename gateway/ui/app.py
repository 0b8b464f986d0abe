"""The touchscreen web application: server-rendered pages, a JSON API beneath
them (the page uses nothing else, so scripts can do what the screen does),
live status over Server-Sent Events and the preview as MJPEG.

FastAPI on Starlette does the plumbing that used to be written here by hand:
request bodies validated by the models in `gateway.ui.models`, login, CSRF
and PIN as dependencies (`gateway.ui.deps`), and the OpenAPI description with
its response models. Routes live one module per resource in `routes/`.
Every refusal is one line of JSON, `{"error": "..."}`, with its 4xx status.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__
from gateway.config import listen_is_loopback
from gateway.dicom.modules import ModuleError
from gateway.paths import resolve_settings_path
from gateway.ui import models as m
from gateway.ui.deps import (
    ApiError,
    UIContext,
    UIState,
    WorklistSource,
)
from gateway.ui.desk import DeskError, ExamDesk
from gateway.ui.live import Broadcaster
from gateway.ui.routes import exams, live, pages, session, settings, worklist
from gateway.ui.settings import SettingsError, SettingsStore
from gateway.ui.status import StatusBoard

__all__ = ["UIContext", "UIState", "WorklistSource", "app_state", "create_app"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MAX_BODY = 16 * 1024


class BodyLimit:
    """Request bodies are capped before the application reads them: a
    Content-Length over the limit is refused from the headers alone, and a
    body without one (chunked) is taken in here, at most `max_bytes` of it,
    and refused the moment it grows past that; only a body within the limit
    is handed on (it is small: 16 KiB). Raising into the application instead
    would be swallowed by FastAPI's body parsing as a 400 while the server
    went on reading whatever the client sent; refusing here ends the request,
    and uvicorn closes a connection whose body was not read to the end."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._refuse(send, f"request body is {value.decode('latin-1')} bytes")
                return
        parts: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            part = message.get("body", b"")
            seen += len(part)
            if seen > self.max_bytes:
                await self._refuse(send, "request body is longer")
                return
            parts.append(part)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, for streaming responses

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, what: str) -> None:
        # Connection: close, or uvicorn would go on reading (and dropping)
        # whatever the client still sends, for as long as it sends.
        body = JSONResponse(
            {"error": f"{what}; at most {self.max_bytes}"}, 413, headers={"connection": "close"}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(k.encode(), v.encode()) for k, v in body.headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": body.body})


def _problem(status: int, message: str, **more: Any) -> JSONResponse:
    body = {"error": message, **{k: v for k, v in more.items() if v is not None}}
    return JSONResponse(body, status)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError | DeskError)
    return _problem(exc.status, exc.message, fields=exc.fields, code=exc.code, **exc.extra)


async def _settings_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SettingsError)
    return _problem(422, str(exc), fields=exc.fields)


async def _module_error(request: Request, exc: Exception) -> Response:
    return _problem(422, str(exc))  # e.g. a worklist entry DICOM would not accept


_NOT_AN_OBJECT = {"model_attributes_type", "dict_type", "model_type"}


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return _problem(400, "request body is not JSON")
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in _NOT_AN_OBJECT:
        return _problem(400, "request body must be a JSON object")
    return _problem(422, m.first_problem(errors), fields=m.field_problems(errors) or None)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        text = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        return _problem(exc.status_code, text)
    return HTMLResponse(f"<h1>{exc.status_code}</h1><p>{exc.detail}</p>", exc.status_code)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("UI request failed: %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return _problem(500, "internal error; see the gateway's log")


_REFUSAL = {"4XX": {"model": m.Problem, "description": "refused, with a one-line reason"}}


def create_app(ctx: UIContext) -> FastAPI:
    config = ctx.config
    events = Broadcaster()
    desk = ExamDesk(ctx.exams, ctx.stream, events, config.ui.max_record_seconds)
    state = UIState(
        ctx=ctx,
        desk=desk,
        board=StatusBoard(
            config,
            ctx.status_outbox,
            ctx.forwarder_status,
            ctx.stream,
            ris_status=ctx.worklist.link_status if ctx.worklist is not None else None,
        ),
        settings=SettingsStore(ctx.config_path, config, resolve_settings_path(ctx.config_path)),
        events=events,
        login_required=ctx.login_required
        if ctx.login_required is not None
        else not listen_is_loopback(config.ui.listen),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.closing.clear()
        yield
        state.closing.set()

    app = FastAPI(
        title="dicom-edge-gateway touchscreen API",
        version=__version__,
        description=(
            "What the touchscreen does, for scripts. Get a session cookie and CSRF token "
            "from GET /api/session; send the token as X-CSRF-Token on every "
            "POST/PUT/DELETE. Patient data travels only in bodies, never in URLs."
        ),
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        responses=_REFUSAL,  # type: ignore[arg-type]
    )
    app.state.ui = state
    handlers: dict[Any, Any] = {
        ApiError: _api_error,
        DeskError: _api_error,
        SettingsError: _settings_error,
        ModuleError: _module_error,
        RequestValidationError: _validation_error,
        HTTPException: _http_error,
        Exception: _server_error,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
    for router in (session, live, worklist, exams, settings, pages):
        app.include_router(router.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY)
    return app


def app_state(app: FastAPI) -> UIState:
    state: UIState = app.state.ui
    return state
