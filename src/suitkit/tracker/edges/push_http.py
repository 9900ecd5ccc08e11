"""Server-initiated notices over HTTP (RFC 9019 §2.3): server-sent events and long-polling.

``create_push_router(db, hub)`` adds one route, for the device itself (device credential only):

``GET /device/v1/{id}/notifications`` (the device API, ``web.DEVICE_API``; the deprecated
``GET /api/v1/devices/{id}/notifications`` still answers the same)

- with ``Accept: text/event-stream``: a server-sent-event stream. The device's current notice
  comes first, then one ``event: notice`` per change (``id:`` is the notice's serial, ``data:``
  the notice as JSON), and a ``: heartbeat`` comment every ``heartbeat`` seconds so that proxies
  and the device see a live connection. A stream ends after ``max_stream`` seconds (the device
  reconnects) or when the server shuts down (``hub.close()``).
- otherwise a long-poll, ``?wait=N`` (seconds, 0 to ``max_wait``, default 30) and
  ``?after=SERIAL``: 200 with the current notice as soon as its serial is greater than
  ``after`` (at once for an ``after`` above it: a cursor this database never gave); without
  ``after``, at once when a release is pending, else at the next change. Serials are the
  database's: a cursor from one replica means the same on another.
  204 when nothing happened within the wait.
- at most ``max_per_device`` (4) streams and long-polls of one device at once: 429 beyond;
  at most ``max_total`` of all devices together: 503 beyond (both with ``Retry-After``).
  These caps are apart from the server's bound on ordinary requests in progress: once a
  device's credential is checked and its push slot taken, the request leaves that count (the
  scope's ``suitkit.leave_request_limit``, server/app.py), so a push fleet at its cap never
  starves check-ins, downloads or the operator.
- a long-poll whose client goes away gives its slot back at once (it does not wait out its
  ``wait``); an SSE stream too (Starlette ends a streaming response on a disconnect).

The notice is a nudge or an instruction (see ``tracker.notices``); either way the device
verifies the envelope it fetches, so a notice carries no secret and is not trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from suitkit.errors import StorageError
from suitkit.problems import problem_responses
from suitkit.tracker.auth import Authenticator
from suitkit.tracker.notices import NotificationHub
from suitkit.tracker.schemas import Notice
from suitkit.tracker.web import LEGACY_DEVICE_API, serve_device_api

__all__ = ["EVENT_STREAM", "PushClients", "create_push_router", "sse_event"]

EVENT_STREAM = "text/event-stream"
_DEVICES = LEGACY_DEVICE_API  # and web.DEVICE_API (serve_device_api)
_DEFAULT_WAIT = 30.0
LEAVE_REQUEST_LIMIT = "suitkit.leave_request_limit"
"""The firmware server's scope key (server/app.py ``LEAVE_REQUEST_LIMIT``; same string, the
roles do not import each other): called, it takes a request out of the ordinary count."""


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


async def _gone(request: Request) -> None:
    """Return once the client has closed its connection (the request has no body to read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class PushClients:
    """Devices connected for push right now, per transport (``sse``, ``longpoll``): what
    ``/metrics`` shows. Changed on the event loop only; read from anywhere."""

    def __init__(self) -> None:
        self._open = {"sse": 0, "longpoll": 0}

    def counts(self) -> dict[str, int]:
        return dict(self._open)

    def opened(self, transport: str) -> None:
        self._open[transport] += 1

    def closed(self, transport: str) -> None:
        self._open[transport] -= 1


def create_push_router(auth: Authenticator, hub: NotificationHub, *, heartbeat: float = 15.0,
                       max_wait: float = 60.0, max_stream: float = 3600.0,
                       max_per_device: int = 4, max_total: int = 10_000,
                       retry_after: int = 5, clients: PushClients | None = None) -> APIRouter:
    """The notification route: ``auth`` checks the device credential, ``hub`` has the
    notices; at most ``max_per_device`` streams and long-polls per device at once (429) and
    ``max_total`` in all (503), each refusal saying ``Retry-After: retry_after``; ``clients``
    counts the connected ones per transport."""
    router = APIRouter(tags=["status tracker"])
    clients = clients if clients is not None else PushClients()
    active: dict[str, int] = {}  # open streams and long-polls per device (event loop only)
    total = 0
    again = {"Retry-After": str(retry_after)}

    def take(request: Request, device_id: str, transport: str) -> Callable[[], None]:
        nonlocal total
        if active.get(device_id, 0) >= max_per_device:
            raise HTTPException(429, f"at most {max_per_device} notification connections per "
                                     "device at once; close one first", headers=again)
        if total >= max_total:
            raise HTTPException(503, f"the server holds its most notification connections "
                                     f"({max_total}); try again later", headers=again)
        active[device_id] = active.get(device_id, 0) + 1
        total += 1
        clients.opened(transport)
        leave = request.scope.get(LEAVE_REQUEST_LIMIT)
        if callable(leave):  # counted by the push caps from now on, not as a request
            leave()
        given: list[bool] = []

        def release() -> None:
            nonlocal total
            if given:
                return
            given.append(True)
            total -= 1
            clients.closed(transport)
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

    @router.get(f"{_DEVICES}/{{device_id}}/notifications", response_model=Notice,
                summary="Update notices: a server-sent-event stream or a long-poll (the "
                        "device itself)",
                responses={
                    200: {"description": "the notice as JSON (long-poll), or with Accept: "
                                         "text/event-stream a stream of notices",
                          "content": {EVENT_STREAM: {"schema": {"type": "string"}}}},
                    204: {"description": "nothing happened within the wait"},
                    **problem_responses(400, 401, 403, 429, 503,
                                        s429="the device's push streams are at their cap",
                                        s503="all push streams are in use, or the server "
                                             "is busy")},
                openapi_extra={"parameters": [
                    {"name": "wait", "in": "query", "required": False,
                     "description": "long-poll: seconds to wait for a notice",
                     "schema": {"type": "number", "minimum": 0}},
                    {"name": "after", "in": "query", "required": False,
                     "description": "long-poll: the serial of the last notice seen",
                     "schema": {"type": "integer", "minimum": 0}}]})
    async def notifications(request: Request, device_id: str) -> Response:
        """The device's update notices: SSE stream or long-poll (the device only)."""
        await auth.require_device(request, device_id)
        accept = request.headers.get("accept", "")
        if EVENT_STREAM in accept.lower():
            return _CountedStream(stream(device_id), take(request, device_id, "sse"),
                                  media_type=EVENT_STREAM,
                                  headers={"Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        wait = _number(request.query_params.get("wait"), "wait", min(_DEFAULT_WAIT, max_wait),
                       0.0, max_wait)
        after_text = request.query_params.get("after")
        after: int | None = None
        if after_text is not None:
            # ASCII digits only: "²" is a digit to isdigit() and int() refuses it (a 500)
            if not (after_text.isascii() and after_text.isdigit()) or len(after_text) > 20:
                raise HTTPException(400, "after: expected the serial of a notice (digits)")
            after = int(after_text)
        release = take(request, device_id, "longpoll")
        try:
            notice = await current(device_id)
            serial = int(notice["serial"])
            # a cursor above the serial is not this database's (a server before serials were
            # the database's handed out milliseconds): answered at once, never waited on
            ready = serial != after if after is not None else notice.get("release") is not None
            if not ready and await _changed_unless_gone(
                    request, hub.next_change(device_id, serial, wait)):
                notice, ready = await current(device_id), True
        finally:
            release()
        if not ready:
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        return JSONResponse(notice, headers={"Cache-Control": "no-store"})

    serve_device_api(router, {("GET", "/notifications")})
    return router


async def _changed_unless_gone(request: Request, change: Coroutine[Any, Any, bool]) -> bool:
    """``await change``, unless the client goes away first (then False, at once: a long-poll
    nobody waits for must not hold its device's slot for its whole wait)."""
    waiting = asyncio.ensure_future(change)
    gone = asyncio.ensure_future(_gone(request))
    try:
        await asyncio.wait((waiting, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, gone):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return waiting.done() and not waiting.cancelled() and waiting.result()
