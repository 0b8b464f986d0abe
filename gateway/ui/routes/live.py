"""Status and the live channels: the status bar, Server-Sent Events and the
preview (MJPEG and single JPEG)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from gateway.ui.deps import GUARDS, ApiError, ui_state

router = APIRouter(prefix="/api", tags=["live"], dependencies=GUARDS)
MJPEG_BOUNDARY = "frame"


@router.get("/status")
def api_status(request: Request) -> dict[str, Any]:
    """Queue counts, PACS links, disk, clock and video, with plain-language messages."""
    return ui_state(request).board.current()


def _sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


@router.get("/events", response_class=StreamingResponse)
async def api_events(request: Request) -> StreamingResponse:
    """Server-Sent Events: `hello` first (the service's start time: a new one
    means the service restarted), `status` every second, plus `object`,
    `deleted`, `recording`, `record_limit`, `pedal`, `exam` and `notice` as
    they happen."""
    state = ui_state(request)
    queue = state.events.subscribe()

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 1000\n\n"
            yield _sse("hello", {"boot": state.boot})
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


@router.get("/preview.mjpg", response_class=StreamingResponse)
async def api_preview_mjpeg(request: Request) -> StreamingResponse:
    """The live picture as MJPEG (multipart/x-mixed-replace), one part per frame."""
    state = ui_state(request)
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
            # The frame's index and time travel with it: the screen knows
            # when the picture stops moving (a stalled preview is said, and
            # Capture waits), and tests know which frame they were shown.
            head = (
                f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(jpeg)}\r\nX-Frame-Index: {frame.index}\r\n"
                f"X-Frame-Time: {frame.timestamp:.3f}\r\n\r\n"
            )
            yield head.encode() + jpeg + b"\r\n"

    return StreamingResponse(
        parts(),
        media_type=f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}",
        headers={"Cache-Control": "no-store"},
    )


@router.get("/preview.jpg", response_class=Response)
def api_preview_jpeg(request: Request) -> Response:
    """The newest frame as one JPEG."""
    state = ui_state(request)
    stream_ = state.ctx.stream
    frame = stream_.latest() if stream_ else None
    if frame is None:
        raise ApiError(503, "no video yet")
    jpeg = state.preview.jpeg_for(frame)
    headers = {
        "Cache-Control": "no-store",
        "X-Frame-Index": str(frame.index),
        "X-Frame-Time": f"{frame.timestamp:.3f}",
    }
    return Response(jpeg, media_type="image/jpeg", headers=headers)
