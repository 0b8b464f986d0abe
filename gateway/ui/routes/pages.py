"""The server-rendered pages (they use only the API beneath them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from gateway.ui.deps import anonymous_remote, ui_state
from gateway.ui.desk import DeskError
from gateway.ui.routes.session import issue_csrf

HERE = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


def _page(request: Request, name: str, **context: Any) -> Response:
    state = ui_state(request)
    if anonymous_remote(request) and name != "login.html":
        return RedirectResponse("/login", 303)
    cookies = Response()  # the token is needed to render the page; its cookie goes along
    csrf, _ = issue_csrf(request, cookies)
    response = templates.TemplateResponse(
        request, name, {"csrf": csrf, "station": state.config.station.station_name, **context}
    )
    response.raw_headers.extend(h for h in cookies.raw_headers if h[0] == b"set-cookie")
    return response


@router.get("/")
def page_worklist(request: Request) -> Response:
    state = ui_state(request)
    current = state.desk.open_exam()
    return _page(
        request,
        "worklist.html",
        current=state.desk.describe(current) if current else None,
        station_ae=state.config.station.ae_title,
    )


@router.get("/exam/{exam_id}")
def page_exam(request: Request, exam_id: str) -> Response:
    state = ui_state(request)
    try:
        exam = state.desk.exam(exam_id)
    except DeskError:
        return RedirectResponse("/", 303)
    return _page(
        request,
        "exam.html",
        exam=state.desk.describe(exam),
        save_last_seconds=f"{state.desk.save_last_seconds:g}",
    )


@router.get("/settings")
def page_settings(request: Request) -> Response:
    return _page(request, "settings.html")


@router.get("/login")
def page_login(request: Request) -> Response:
    return _page(request, "login.html")


@router.get("/api")
def page_api_docs() -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><title>API</title><h1>dicom-gateway UI API</h1>"
        '<p>The OpenAPI description is at <a href="/api/openapi.json">/api/openapi.json</a>.</p>'
    )
