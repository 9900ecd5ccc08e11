"""Server-initiated notices over HTTP (RFC 9019 §2.3): server-sent events and long-polling.

``create_push_router(db, hub)`` adds one route, for the device itself (device credential only):

``GET /api/v1/devices/{id}/notifications``

- with ``Accept: text/event-stream``: a server-sent-event stream. The device's current notice
  comes first, then one ``event: notice`` per change (``id:`` is the notice's serial, ``data:``
  the notice as JSON), and a ``: heartbeat`` comment every ``heartbeat`` seconds so that proxies
  and the device see a live connection. A stream ends after ``max_stream`` seconds (the device
  reconnects) or when the server shuts down (``hub.close()``).
- otherwise a long-poll, ``?wait=N`` (seconds, 0 to ``max_wait``, default 30) and
  ``?after=SERIAL``: 200 with the current notice as soon as its serial is greater than
  ``after``; without ``after``, at once when a release is pending, else at the next change.
  204 when nothing happened within the wait.
- at most ``max_per_device`` (4) streams and long-polls of one device at once: 429 beyond.

The notice is a nudge or an instruction (see ``notify``); either way the device verifies the
envelope it fetches, so a notice carries no secret and is not trusted.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from suitkit.errors import StorageError
from suitkit.tracker.auth import Authenticator
from suitkit.tracker.notify import NotificationHub

__all__ = ["EVENT_STREAM", "create_push_router", "sse_event"]

EVENT_STREAM = "text/event-stream"
_DEVICES = "/api/v1/devices"
_DEFAULT_WAIT = 30.0


def sse_event(notice: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``notice``."""
    return (f"event: notice\nid: {notice['serial']}\n"
            f"data: {json.dumps(notice, separators=(',', ':'))}\n\n").encode()


def _number(value: str | None, name: str, default: float, low: float, high: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise HTTPException(400, f"{name}: expected a number of seconds, got "
                                 f"{value[:20]!r}") from None
    if not low <= number <= high:
        raise HTTPException(400, f"{name}: expected {low:g} to {high:g}, got {number:g}")
    return number


class _CountedStream(StreamingResponse):
    """A stream that gives its connection slot back however it ends (even unsent)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def create_push_router(auth: Authenticator, hub: NotificationHub, *, heartbeat: float = 15.0,
                       max_wait: float = 60.0, max_stream: float = 3600.0,
                       max_per_device: int = 4) -> APIRouter:
    """The notification route: ``auth`` checks the device credential, ``hub`` has the
    notices; at most ``max_per_device`` streams and long-polls per device at once (429)."""
    router = APIRouter(tags=["status tracker"])
    active: dict[str, int] = {}  # open streams and long-polls per device (event loop only)

    def take(device_id: str) -> Callable[[], None]:
        if active.get(device_id, 0) >= max_per_device:
            raise HTTPException(429, f"at most {max_per_device} notification connections per "
                                     "device at once; close one first")
        active[device_id] = active.get(device_id, 0) + 1
        given: list[bool] = []

        def release() -> None:
            if given:
                return
            given.append(True)
            left = active.get(device_id, 0) - 1
            if left > 0:
                active[device_id] = left
            else:
                active.pop(device_id, None)
        return release

    async def current(device_id: str) -> dict[str, Any]:
        try:
            notice: dict[str, Any] = await run_in_threadpool(hub.current, device_id)
        except StorageError:
            raise HTTPException(500, "the tracker could not read its database") from None
        return notice

    async def stream(device_id: str) -> AsyncIterator[bytes]:
        notice = await current(device_id)
        last = int(notice["serial"])
        yield sse_event(notice)
        ends = time.monotonic() + max_stream
        while not hub.closed and time.monotonic() < ends:
            if await hub.next_change(device_id, last, heartbeat):
                notice = await current(device_id)
                if int(notice["serial"]) > last:
                    last = int(notice["serial"])
                    yield sse_event(notice)
            elif not hub.closed:
                yield b": heartbeat\n\n"

    @router.get(f"{_DEVICES}/{{device_id}}/notifications")
    async def notifications(request: Request, device_id: str) -> Response:
        """The device's update notices: SSE stream or long-poll (the device only)."""
        await auth.require_device(request, device_id)
        accept = request.headers.get("accept", "")
        if EVENT_STREAM in accept.lower():
            return _CountedStream(stream(device_id), take(device_id), media_type=EVENT_STREAM,
                                  headers={"Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        wait = _number(request.query_params.get("wait"), "wait", min(_DEFAULT_WAIT, max_wait),
                       0.0, max_wait)
        after_text = request.query_params.get("after")
        after: int | None = None
        if after_text is not None:
            if not after_text.isdigit() or len(after_text) > 20:
                raise HTTPException(400, "after: expected the serial of a notice (digits)")
            after = int(after_text)
        release = take(device_id)
        try:
            notice = await current(device_id)
            serial = int(notice["serial"])
            ready = serial > after if after is not None else notice.get("release") is not None
            if not ready and await hub.next_change(device_id, max(serial, after or 0), wait):
                notice, ready = await current(device_id), True
        finally:
            release()
        if not ready:
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        return JSONResponse(notice, headers={"Cache-Control": "no-store"})

    return router
