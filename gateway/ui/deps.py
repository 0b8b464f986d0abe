"""What every request of the touchscreen's API goes through, as FastAPI
dependencies rather than a hand-made guard: the application's state, the
session, login (only for clients not on loopback when the UI listens
beyond it), the CSRF token on every state change, and the PIN unlock for
settings. A refusal is an `ApiError`, answered as one line of JSON."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request

from drivers.stream import FrameStream
from gateway.acquire.exam import ExamService
from gateway.config import GatewayConfig, is_loopback_host
from gateway.queue.outbox import Outbox
from gateway.ris.model import WorklistEntry, WorklistQuery, WorklistResult
from gateway.ris.worklist import LinkState
from gateway.ui.desk import ExamDesk
from gateway.ui.live import Broadcaster, PreviewEncoder
from gateway.ui.security import (
    CSRF_HEADER,
    PRELOGIN_COOKIE,
    SESSION_COOKIE,
    PinGuard,
    PreLogin,
    Session,
    Sessions,
    client_key,
)
from gateway.ui.settings import SettingsStore
from gateway.ui.status import ForwarderStatus, StatusBoard


class ApiError(Exception):
    """A refusal: its status, a sentence for the screen, and what the screen
    may use besides (`fields`: form field → message; `code`; `extra` values
    such as the seconds to wait)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        fields: dict[str, str] | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.fields, self.code, self.extra = fields, code, extra or {}


CSRF_REFUSAL = "missing or wrong CSRF token (GET /api/session for one)"


class WorklistSource(Protocol):
    """What the worklist screen needs; `gateway.ris.worklist.WorklistService`
    (made with `background=True`) is the one."""

    def query(self, query: WorklistQuery, offline: bool = False) -> WorklistResult: ...

    def search(self, text: str, base: WorklistQuery, offline: bool = False) -> WorklistResult: ...

    def link_status(self) -> LinkState: ...

    def retry_now(self) -> None: ...

    def close(self) -> None: ...


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
    pins: PinGuard = field(default_factory=PinGuard)
    prelogin: PreLogin = field(default_factory=PreLogin)
    login_required: bool = False
    worklist_entries: OrderedDict[str, WorklistEntry] = field(default_factory=OrderedDict)
    # Set when the server is asked to stop, so open streams end by themselves.
    closing: threading.Event = field(default_factory=threading.Event)
    # This process's start: a screen that sees another one knows the service
    # restarted (its session and token are gone: it fetches new ones).
    boot: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def config(self) -> GatewayConfig:
        return self.settings.config


def client_is_loopback(request: Request) -> bool:
    return request.client is not None and is_loopback_host(request.client.host)


def pin_client(request: Request) -> str:
    """The key of this request's PIN back-off (see `security.client_key`)."""
    host = request.client.host if request.client is not None else None
    return client_key(host, client_is_loopback(request))


def client_host(request: Request) -> str | None:
    """The client's address, for the audit trail's network access point."""
    return request.client.host if request.client is not None else None


def who(request: Request) -> str:
    """Who did it, as the audit trail says: the box's screen or a LAN client."""
    return "touchscreen" if client_is_loopback(request) else f"ui-client {client_host(request)}"


def anonymous_remote(request: Request) -> bool:
    """A client beyond loopback that has not logged in: it gets no session."""
    state = ui_state(request)
    if not state.login_required or client_is_loopback(request):
        return False
    session = current_session(request)
    return not (session and session.logged_in)


def require_login_csrf(request: Request) -> Session | None:
    """The login's CSRF: a session's token, or the pre-login token of an
    anonymous remote client (no session is kept for it)."""
    session = current_session(request)
    token = request.headers.get(CSRF_HEADER)
    if session is not None and session.check_csrf(token):
        return session
    if ui_state(request).prelogin.check(request.cookies.get(PRELOGIN_COOKIE), token):
        return None
    raise ApiError(403, CSRF_REFUSAL, code="csrf")


def ui_state(request: Request) -> UIState:
    state: UIState = request.app.state.ui
    return state


def current_session(request: Request) -> Session | None:
    return ui_state(request).sessions.get(request.cookies.get(SESSION_COOKIE))


def require_login(request: Request) -> None:
    state = ui_state(request)
    session = current_session(request)
    remote = state.login_required and not client_is_loopback(request)
    if remote and not (session and session.logged_in):
        raise ApiError(401, "log in first (POST /api/login with the PIN)")


def require_csrf(request: Request) -> Session | None:
    session = current_session(request)
    changes_state = request.method not in ("GET", "HEAD")
    if changes_state and not (session and session.check_csrf(request.headers.get(CSRF_HEADER))):
        raise ApiError(403, CSRF_REFUSAL, code="csrf")
    return session


def require_session(session: Annotated[Session | None, Depends(require_csrf)]) -> Session:
    """A state change's session (the CSRF check needs one, so there is one)."""
    if session is None:
        raise ApiError(403, CSRF_REFUSAL, code="csrf")
    return session


def require_unlocked(request: Request) -> None:
    session = current_session(request)
    if not (session and session.settings_unlocked):
        raise ApiError(403, "settings are locked; enter the PIN")


GUARDS = [Depends(require_login), Depends(require_csrf)]
CurrentSession = Annotated[Session, Depends(require_session)]
