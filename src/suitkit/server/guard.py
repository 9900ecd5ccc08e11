"""Bounds on what a slow or idle client can make the HTTP server hold (issue #11 item 6).

uvicorn's own bound, ``limit_concurrency``, counts every open connection: a thousand sockets
that never send a byte made it answer 503 to everyone, and h11 has no timeout for a request
head. ``guarded_protocol(Guards(...))`` returns uvicorn's h11 protocol with:

- a **head timeout**: a connection that has not sent a complete request head within
  ``head_timeout`` seconds of opening (or of its previous response, on a kept-alive
  connection) is closed, however slowly it trickles bytes;
- a **body timeout**: a request whose body makes no progress for ``body_timeout`` seconds
  while the application waits for it is cut off (the application sees a disconnect);
- a **send timeout**: a response the client does not read for ``send_timeout`` seconds (the
  server's write buffer stays full) is aborted;
- a **connection cap**: beyond ``max_connections`` open connections, a new one evicts the
  connection that has waited longest for its request head; with none waiting, the new one
  is closed. Requests in progress are never evicted.

What runs at once is bounded by the application, not here: ordinary requests by
``server.app`` (``ServerConfig.max_requests``, 503), push streams per device and in total by
the tracker's push router (429/503).

How many connections and push streams one process can hold follows from its open-file limit:
``plan_capacity`` sizes the connection cap and the push cap so that push streams at their cap
still leave connections for check-ins, downloads and the operator (issue #12; ``suitkit
serve`` says the result when it starts). ``PUSH_STREAM_KIB`` is the server's memory per held
push stream as measured by ``benchmarks/bench_push.py``.

**Zero-copy file responses**: the protocol offers the ASGI ``http.response.pathsend``
extension, which Starlette's ``FileResponse`` uses for a whole file (not for ranges or HEAD):
the file is handed to the kernel with ``loop.sendfile`` (``os.sendfile``), in pieces of
``SENDFILE_PIECE`` bytes, no thread hop and no copy through Python. The send timeout holds
for each piece as it does for a full write buffer: a piece the client does not take within
``send_timeout`` seconds aborts the connection. h11 still frames the response (it counts the
bytes against ``Content-Length``: ``send_with_data_passthrough``).

Every close is logged at DEBUG on ``suitkit.server`` (never more: an attack must not flood
the log). Not here: a minimum transfer rate (a body that sends a byte just within every
``body_timeout`` keeps its request), TLS handshakes (``serve --tls-cert``: asyncio's own
60 s handshake timeout bounds them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

__all__ = ["DEFAULT_PUSH", "PATHSEND", "PUSH_STREAM_KIB", "RESERVED_FILES", "SENDFILE_PIECE",
           "Capacity", "Guards", "guarded_protocol", "plan_capacity"]

PATHSEND = "http.response.pathsend"
"""The ASGI extension (and message type) of a response body sent from a file by its path."""
SENDFILE_PIECE = 512 * 1024
"""Bytes handed to the kernel per ``sendfile`` call; each must go within the send timeout."""

_Message = MutableMapping[str, Any]
_Send = Callable[[_Message], Awaitable[None]]
_Receive = Callable[[], Awaitable[_Message]]
_App = Callable[[_Message, _Receive, _Send], Awaitable[None]]

_log = logging.getLogger("suitkit.server")


@dataclass(frozen=True, slots=True)
class Guards:
    """Timeouts in seconds and the connection cap (see the module docstring)."""

    head_timeout: float = 10.0
    body_timeout: float = 30.0
    send_timeout: float = 60.0
    max_connections: int = 10_000


DEFAULT_PUSH = 10_000
"""Push streams (SSE and long-polls) of all devices at once when the operator names no number
and the open-file limit allows it: what one process was measured to hold while serving
check-ins (benchmarks/README.md, bench_push.py)."""
PUSH_STREAM_KIB = 40
"""The server's resident memory per held SSE stream, KiB, rounded up from what bench_push.py
measured (35-41 KiB with 1,000 and 10,000 streams; a long-poll costs about as much). Python
objects nearly all of it: the connection's h11 state and uvicorn protocol, the request's
scope, the ASGI tasks and their coroutine frames, the response and the hub watcher."""
RESERVED_FILES = 256
"""Open files kept for what is not a client connection: the listening sockets, the database,
uploads being spooled, the log, the thread pool, the MQTT connection. Downloads in progress
(each holds its blob open beside its connection) get files of their own (``Capacity``)."""


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one server process can hold, from ``plan_capacity``."""

    open_files: int
    """The soft limit of open files in force."""
    connections: int
    """The connection cap (``Guards.max_connections``)."""
    push: int
    """The push cap: SSE streams and long-polls of all devices at once."""
    downloads: int = 1000
    """Blob downloads in progress at once (``ServerConfig.max_downloads``): each holds one more
    file, its blob, open."""
    lowered: tuple[str, ...] = ()
    """Options asked for more than the open-file limit allows, each with what it got."""

    @property
    def push_mib(self) -> int:
        """Memory the push streams take at their cap (``PUSH_STREAM_KIB`` each), MiB."""
        return -(-self.push * PUSH_STREAM_KIB // 1024)


def plan_capacity(open_files: int, *, max_connections: int | None = None,
                  max_push: int | None = None, max_requests: int = 1000,
                  max_downloads: int = 1000) -> Capacity:
    """The connection and push caps for a process with ``open_files`` open files.

    Downloads in progress get ``max_downloads`` files for their blobs, at most a quarter of
    what ``RESERVED_FILES`` leaves (a download beyond is 503, not a failed ``open``);
    connections get the rest. Beside the push streams they keep
    room for twice ``max_requests`` (the ordinary requests in progress and as many downloads or
    kept-alive connections), or half of them when fewer files are left: a push fleet at its cap
    never takes the connections check-ins, downloads and the operator need (a new connection
    beyond the cap evicts only one idle before its request head). Unnamed, the push cap is
    ``DEFAULT_PUSH`` and the connection cap the push cap plus that room, both lowered to what
    the open files allow; a number named above what they allow is lowered too, and said in
    ``Capacity.lowered``.
    """
    spare = max(16, open_files - RESERVED_FILES)
    downloads = max(1, min(max_downloads, spare // 4))
    usable = max(16, spare - downloads)
    room = 2 * max(1, max_requests)
    wanted_push = max_push if max_push is not None else DEFAULT_PUSH
    wanted = max_connections if max_connections is not None else wanted_push + room
    connections = min(wanted, usable)
    push = max(1, min(wanted_push, connections - min(room, connections // 2)))
    lowered = []
    if max_connections is not None and connections < max_connections:
        lowered.append(f"--max-connections {max_connections} lowered to {connections} (the "
                       f"open-file limit is {open_files})")
    if max_push is None and push < DEFAULT_PUSH and connections == usable < wanted:
        lowered.append(f"push streams below {DEFAULT_PUSH:,}: the open-file limit is "
                       f"{open_files:,} (raise its hard limit for more: ulimit -Hn, systemd "
                       "LimitNOFILE=)")
    if max_push is not None and push < max_push:
        lowered.append(f"--max-push {max_push} lowered to {push} (it leaves "
                       f"{connections - push} of {connections} connections to other requests)")
    return Capacity(open_files, connections, push, downloads, tuple(lowered))


# Connections waiting for a request head, oldest first, per running server (uvicorn's
# ServerState is shared by the protocols of one server).
_waiting: weakref.WeakKeyDictionary[object, OrderedDict[GuardedH11Protocol, None]] = (
    weakref.WeakKeyDictionary())


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the timeouts and the cap of ``guards``."""

    guards = Guards()
    # in slots, not in the instance's dict: uvicorn's attributes fill that dict to the brim,
    # and five more doubled it (1.7 KiB per connection, measured with tracemalloc)
    __slots__ = ("_body_timer", "_head_timer", "_last_body", "_queue", "_send_timer")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue = _waiting.setdefault(self.server_state, OrderedDict())
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._last_body = 0.0
        self.app = self._offering_pathsend(self.app)

    # ------------------------------------------------------------------ zero copy

    def _offering_pathsend(self, app: _App) -> _App:
        """``app`` with the ``http.response.pathsend`` extension in each HTTP request's scope
        (on a plain socket, where ``sendfile`` works) and its ``send`` taking that message."""

        async def offering(scope: _Message, receive: _Receive, send: _Send) -> None:
            cycle = self.cycle
            if (scope["type"] == "http" and isinstance(cycle, RequestResponseCycle)
                    and getattr(send, "__self__", None) is cycle and hasattr(os, "sendfile")
                    and self.transport.get_extra_info("socket") is not None
                    and self.transport.get_extra_info("sslcontext") is None):
                scope["extensions"] = {**(scope.get("extensions") or {}), PATHSEND: {}}
                plain = send

                async def send_with_path(message: _Message) -> None:
                    if message["type"] == PATHSEND:
                        await self._send_path(cycle, plain, str(message["path"]))
                    else:
                        await plain(message)

                send = send_with_path
            await app(scope, receive, send)

        return offering

    async def _send_path(self, cycle: RequestResponseCycle, send: _Send, path: str) -> None:
        """The body of the response ``cycle`` started: the whole file at ``path``."""
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"unexpected ASGI message {PATHSEND!r}: the response is "
                               f"{'complete' if cycle.response_complete else 'not started'}")
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected:
            return
        with open(path, "rb") as file:  # a local open; the bytes go by sendfile
            size = os.fstat(file.fileno()).st_size
            if cycle.scope["method"] != "HEAD" and size:
                # h11 frames the bytes and checks them against Content-Length
                pieces = self.conn.send_with_data_passthrough(h11.Data(data=_Span(size)))  # type: ignore[arg-type]
                for piece in pieces or ():
                    if not isinstance(piece, _Span):
                        self.transport.write(piece)
                    elif not await self._sendfile(file, size):
                        cycle.disconnected = True  # aborted: nothing more to send
                        return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _sendfile(self, file: BinaryIO, size: int) -> bool:
        """Send ``size`` bytes of ``file`` from its start; False if the connection was lost
        or aborted (the client stopped reading for the send timeout, or went away)."""
        offset = 0
        while offset < size:
            count = min(SENDFILE_PIECE, size - offset)
            if self.transport.is_closing():
                return False
            try:
                async with asyncio.timeout(self.guards.send_timeout):
                    await self.loop.sendfile(self.transport, file, offset, count)
            except TimeoutError:
                _log.debug("%s aborted: the response was not read for %g s",
                           _peer(self.client), self.guards.send_timeout)
                self._cancel_all()
                self.transport.abort()
                return False
            except (OSError, RuntimeError):  # reset, broken pipe, closed meanwhile
                self.transport.abort()
                return False
            offset += count
        return True

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.guards.max_connections:
            oldest = next(iter(self._queue), None)
            if oldest is None:
                self._close("the server is at its connection cap")
                return
            oldest._close("evicted: the server is at its connection cap")
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_all()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.SEND_BODY:
            self._last_body = self.loop.time()
        self._follow_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_state()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.guards.send_timeout, self._send_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # ------------------------------------------------------------------ state

    def _follow_state(self) -> None:
        """Arm or cancel the timers for where the request on this connection stands."""
        if self.transport.is_closing():
            self._cancel_all()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self._await_head()
        else:
            self._head_received()
        if state is h11.SEND_BODY:
            if self._body_timer is None:
                self._last_body = self.loop.time()
                self._body_timer = self.loop.call_later(self.guards.body_timeout,
                                                        self._body_stalled)
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _await_head(self) -> None:
        """Start the head timer (once per request: trickled bytes do not restart it)."""
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.guards.head_timeout, self._head_late)
            self._queue[self] = None

    def _head_received(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._queue.pop(self, None)

    def _cancel_all(self) -> None:
        self._head_received()
        for timer in (self._body_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._body_timer = self._send_timer = None

    def _close(self, why: str) -> None:
        _log.debug("%s closed: %s", _peer(self.client), why)
        self._cancel_all()
        self.transport.close()

    # ------------------------------------------------------------------ timers

    def _head_late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._close(f"no complete request head within {self.guards.head_timeout:g} s")

    def _body_stalled(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        quiet = self.loop.time() - self._last_body
        not_asked = self.cycle is not None and self.cycle.waiting_for_100_continue
        if self.flow.read_paused or not_asked or quiet < self.guards.body_timeout:
            # the application is not reading, or has not yet sent the "100 Continue" the
            # client waits for (not the client's fault), or bytes came lately
            self._body_timer = self.loop.call_later(
                max(self.guards.body_timeout - quiet, 0.1), self._body_stalled)
            return
        self._close(f"no request body bytes for {self.guards.body_timeout:g} s")

    def _send_stalled(self) -> None:
        self._send_timer = None
        if self.flow.write_paused and not self.transport.is_closing():
            _log.debug("%s aborted: the response was not read for %g s", _peer(self.client),
                       self.guards.send_timeout)
            self._cancel_all()
            self.transport.abort()


class _Span:
    """The file's bytes in h11's output (``send_with_data_passthrough``): only a length."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def guarded_protocol(guards: Guards) -> type[GuardedH11Protocol]:
    """uvicorn's h11 protocol with ``guards`` (pass it as ``uvicorn.Config(http=...)``)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guards": guards})
