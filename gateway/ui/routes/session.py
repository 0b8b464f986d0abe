"""Sessions, login and the PIN."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from gateway.ops import audit
from gateway.ui import models as m
from gateway.ui.deps import (
    ApiError,
    CurrentSession,
    anonymous_remote,
    client_host,
    client_is_loopback,
    current_session,
    pin_client,
    require_csrf,
    require_login,
    require_login_csrf,
    ui_state,
    who,
)
from gateway.ui.security import (
    PRELOGIN_COOKIE,
    SESSION_COOKIE,
    UNLOCK_SECONDS,
    PinError,
    Session,
    verify_pin,
)

router = APIRouter(prefix="/api", tags=["session"])


def set_cookie(response: Response, session: Session, secure: bool = False) -> None:
    """The session cookie; `secure` on HTTPS (the kiosk's plain loopback
    listener, when there is one, gets cookies it can keep)."""
    response.set_cookie(
        SESSION_COOKIE, session.token, httponly=True, samesite="strict", path="/", secure=secure
    )


def https(request: Request) -> bool:
    return request.url.scheme == "https"


def issue_csrf(request: Request, response: Response) -> tuple[str, Session | None]:
    """This client's CSRF token: its session's; for the box's own screen a
    new session when it has none; for an anonymous remote client a pre-login
    token only, nothing kept on the server."""
    state = ui_state(request)
    session = current_session(request)
    if session is not None:
        set_cookie(response, session, https(request))
        return session.csrf, session
    if anonymous_remote(request):
        cookie = request.cookies.get(PRELOGIN_COOKIE)
        if not cookie or len(cookie) > 64:
            cookie = state.prelogin.new_cookie()
        response.set_cookie(
            PRELOGIN_COOKIE,
            cookie,
            httponly=True,
            samesite="strict",
            path="/",
            secure=https(request),
        )
        return state.prelogin.token(cookie), None
    session = state.sessions.new(local=client_is_loopback(request))
    set_cookie(response, session, https(request))
    return session.csrf, session


@router.get("/session", response_model=m.SessionInfo)
def api_session(request: Request, response: Response) -> m.SessionInfo:
    """The CSRF token for this client (creates the session cookie; an
    anonymous remote client gets a pre-login token and no session)."""
    state = ui_state(request)
    csrf, session = issue_csrf(request, response)
    logged_in = bool(session and session.logged_in)
    return m.SessionInfo(
        csrf=csrf,
        logged_in=logged_in or not state.login_required or client_is_loopback(request),
        login_required=state.login_required,
        settings_unlocked=bool(session and session.settings_unlocked),
        pin_set=bool(state.settings.pin_hash),
        pin_min_length=state.config.ui.pin_min_length,
    )


def check_pin(request: Request, pin: str) -> None:
    """The PIN, under the guard's lock and this client's back-off. The
    screen counts the wait down and says the tries left (wait_seconds, tries_left)."""
    state = ui_state(request)
    stored = state.settings.pin_hash
    if not stored:
        raise ApiError(409, "no PIN is set; set one in Settings on the box itself")
    verdict = state.pins.attempt(pin_client(request), lambda: verify_pin(pin, stored))
    if verdict.ok:
        return
    wait = verdict.wait_seconds
    source = client_host(request)
    if verdict.tries_left is not None:  # checked and wrong (not refused unchecked)
        audit.emit(lambda t: t.pin_failure(source))
    if verdict.locked_now:
        audit.emit(lambda t: t.pin_lockout(wait, verdict.failures, source))
    if verdict.tries_left is None:
        raise ApiError(
            429, f"too many wrong PINs; try again in {wait} s", extra={"wait_seconds": wait}
        )
    raise ApiError(
        403,
        "wrong PIN" + (f"; locked for {wait} s" if wait else ""),
        extra={"wait_seconds": wait, "tries_left": verdict.tries_left},
    )


@router.post("/login", response_model=m.LoggedIn)
def api_login(
    request: Request,
    response: Response,
    body: m.PinBody,
    old: Annotated[Session | None, Depends(require_login_csrf)],
) -> m.LoggedIn:
    """Log in with the PIN (needed only when the UI listens beyond localhost).
    The session token is always a new one."""
    state = ui_state(request)
    check_pin(request, body.pin)
    session = state.sessions.rotate(old, local=client_is_loopback(request))
    session.logged_in = True
    set_cookie(response, session, https(request))
    response.delete_cookie(PRELOGIN_COOKIE, path="/")
    return m.LoggedIn(logged_in=True, csrf=session.csrf)


_guarded = [Depends(require_login), Depends(require_csrf)]


@router.post("/pin/unlock", response_model=m.Unlocked, dependencies=_guarded)
def api_unlock(request: Request, body: m.PinBody, session: CurrentSession) -> m.Unlocked:
    """Unlock the settings for five minutes with the PIN."""
    check_pin(request, body.pin)
    session.unlocked_until = time.monotonic() + UNLOCK_SECONDS
    return m.Unlocked(unlocked=True, seconds=UNLOCK_SECONDS)


@router.post("/pin/lock", response_model=m.Unlocked, dependencies=_guarded)
def api_lock(session: CurrentSession) -> m.Unlocked:
    """Lock the settings again."""
    session.unlocked_until = 0.0
    return m.Unlocked(unlocked=False)


@router.post("/pin/setup", response_model=m.PinSet, dependencies=_guarded)
def api_pin_setup(request: Request, body: m.PinBody, session: CurrentSession) -> m.PinSet:
    """Choose the first PIN (only when none is set, and only at the box) or
    change it (settings unlocked)."""
    state = ui_state(request)
    if state.settings.pin_hash and not session.settings_unlocked:
        raise ApiError(403, "a PIN is already set; unlock the settings to change it")
    if not state.settings.pin_hash and not client_is_loopback(request):
        raise ApiError(403, "the first PIN can only be set at the box itself")
    try:
        state.settings.check_new_pin(body.pin)
    except PinError as exc:
        raise ApiError(422, str(exc)) from None
    state.settings.set_pin(body.pin)
    audit.emit(lambda t: t.settings_changed(who(request), "settings PIN set", client_host(request)))
    session.unlocked_until = time.monotonic() + UNLOCK_SECONDS
    return m.PinSet(pin_set=True)
