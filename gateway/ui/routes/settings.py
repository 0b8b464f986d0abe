"""Settings behind the PIN: destinations, worklist server, capture source,
and "Test connection" (a C-ECHO on the stack that forwards)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from gateway.ops import audit
from gateway.send.protocols import echo_destination
from gateway.ui import models as m
from gateway.ui.deps import GUARDS, ApiError, client_host, require_unlocked, ui_state, who

router = APIRouter(
    prefix="/api/settings", tags=["settings"], dependencies=[*GUARDS, Depends(require_unlocked)]
)


@router.get("")
def api_settings(request: Request) -> dict[str, Any]:
    """Destinations, worklist server and capture source (settings unlocked)."""
    return ui_state(request).settings.view()


@router.put("")
def api_settings_update(request: Request, body: m.SettingsUpdate) -> dict[str, Any]:
    """Change destinations / worklist / capture; validated, written atomically.
    The running service picks them up on restart; nothing queued is touched."""
    state = ui_state(request)
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise ApiError(422, "nothing to change")
    state.settings.update(changes)
    what = "settings changed: " + ", ".join(sorted(changes))
    audit.emit(lambda t: t.settings_changed(who(request), what, client_host(request)))
    return {"saved": True, "restart_needed": True, **state.settings.view()}


@router.post("/echo", response_model=m.EchoView)
def api_echo(request: Request, body: m.EchoRequest) -> dict[str, Any]:
    """Test connection (C-ECHO, or QIDO-RS for DICOMweb), with TLS version and cipher."""
    config = ui_state(request).settings.config
    try:
        dest = next(d for d in config.destinations if d.name == body.name)
    except StopIteration:
        raise ApiError(404, f"no destination named {body.name!r}") from None
    return echo_destination(config.station.ae_title, dest).as_json()
