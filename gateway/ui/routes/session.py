"""Sessions, login and the PIN."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response

from gateway.ui import models as m
from gateway.ui.deps import (
    ApiError,
    CurrentSession,
    UIState,
    client_is_loopback,
    current_session,
    require_csrf,
    require_login,
    ui_state,
)
from gateway.ui.security import (
    SESSION_COOKIE,
    UNLOCK_SECONDS,
    PinError,
    Session,
    verify_pin,
)

router = APIRouter(prefix="/api", tags=["session"])


def set_cookie(response: Response, session: Session) -> None:
    response.set_cookie(SESSION_COOKIE, session.token, httponly=True, samesite="strict", path="/")


@router.get("/session", response_model=m.SessionInfo)
def api_session(request: Request, response: Response) -> m.SessionInfo:
    """The CSRF token for this client (creates the session cookie)."""
    state = ui_state(request)
    session = current_session(request) or state.sessions.new()
    set_cookie(response, session)
    return m.SessionInfo(
        csrf=session.csrf,
        logged_in=session.logged_in or not state.login_required or client_is_loopback(request),
        login_required=state.login_required,
        settings_unlocked=session.settings_unlocked,
        pin_set=bool(state.settings.pin_hash),
        pin_min_length=state.config.ui.pin_min_length,
    )


def check_pin(state: UIState, pin: str) -> None:
    # The screen counts the wait down and says the tries left (wait_seconds, tries_left).
    wait = state.pins.wait_seconds()
    if wait:
        raise ApiError(
            429, f"too many wrong PINs; try again in {wait} s", extra={"wait_seconds": wait}
        )
    stored = state.settings.pin_hash
    if not stored:
        raise ApiError(409, "no PIN is set; set one in Settings on the box itself")
    if not verify_pin(pin, stored):
        state.pins.failed()
        wait = state.pins.wait_seconds()
        left = max(0, state.pins.free - state.pins.failures)
        raise ApiError(
            403,
            "wrong PIN" + (f"; locked for {wait} s" if wait else ""),
            extra={"wait_seconds": wait, "tries_left": left},
        )
    state.pins.succeeded()


@router.post("/login", response_model=m.LoggedIn, dependencies=[Depends(require_csrf)])
def api_login(request: Request, body: m.PinBody, session: CurrentSession) -> m.LoggedIn:
    """Log in with the PIN (needed only when the UI listens beyond localhost)."""
    check_pin(ui_state(request), body.pin)
    session.logged_in = True
    return m.LoggedIn(logged_in=True)


_guarded = [Depends(require_login), Depends(require_csrf)]


@router.post("/pin/unlock", response_model=m.Unlocked, dependencies=_guarded)
def api_unlock(request: Request, body: m.PinBody, session: CurrentSession) -> m.Unlocked:
    """Unlock the settings for five minutes with the PIN."""
    check_pin(ui_state(request), body.pin)
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
    session.unlocked_until = time.monotonic() + UNLOCK_SECONDS
    return m.PinSet(pin_set=True)
