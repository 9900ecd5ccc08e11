"""Many idle push connections held open against one server, for capacity measurements.

``hold_in_process(url, devices, transport)`` starts a child process (its own event loop and
open-file limit, so that the process measuring the server does not share its interpreter
lock) that opens one notification connection per device
(``GET /device/v1/{id}/notifications``, RFC 9019 §2.3's server-initiated mode):

- ``sse``: ``Accept: text/event-stream``; a connection is held once the status line (200) and
  the device's current notice arrived; each later ``event: notice`` is a change;
- ``longpoll``: ``?wait=WAIT``; a connection counts as held once its request is sent (nothing
  comes back before the wait ends) until it is refused or closed; a 204 is polled again at once
  on the same connection, a 200 is a change (polled again with ``after=`` its serial). At most
  ``parallel`` long-polls are sent a second.

The connections are plain asyncio protocols on raw sockets (a few hundred bytes of client
state each: 10,000 of them fit in one client process); at most ``parallel`` are being opened at
once. ``Holder.status()`` says how many are held, what was refused (by status) or failed, and
when each device saw its first change; ``Holder.stop()`` closes them and ends the process (by
its pid; the process is killed if it does not end in time).

It reaches the server over HTTP only, like the rest of the simulator. Not here: TLS, proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from urllib.parse import urlsplit

__all__ = ["TRANSPORTS", "HoldStatus", "Holder", "hold_in_process", "raise_open_files"]

TRANSPORTS = ("sse", "longpoll")
_NOTICE = b"event: notice\n"


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (at most the hard
    limit); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True, slots=True)
class HoldStatus:
    """Where the held connections stand."""

    held: int
    """Connections open and answered as wanted (SSE: 200 and the first notice; long-poll: a
    request sent and not refused)."""
    opening: int
    """Connections not yet answered (or not yet connected)."""
    refused: dict[str, int]
    """Answers other than 200/204, by status (``"503"``), and failures by kind."""
    closed: int
    """Held connections the server closed later."""
    changes: dict[str, float]
    """Device id -> ``time.time()`` when its first change arrived after it was held."""
    open_files: int
    """The holder's soft limit of open files."""
    seconds: float
    """Since the holder started opening."""


class _Conn(asyncio.Protocol):
    """One notification connection (see the module docstring)."""

    def __init__(self, hold: _Hold, device_id: str, token: str) -> None:
        self.hold, self.device_id, self.token = hold, device_id, token
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.in_body = False
        self.body = b""
        self.length: int | None = None
        self.tail = b""
        self.notices = 0
        self.held = False
        self.answered = asyncio.get_running_loop().create_future()

    def request(self, after: int | None = None) -> bytes:
        path = f"/device/v1/{self.device_id}/notifications"
        accept = ""
        if self.hold.transport == "sse":
            accept = "Accept: text/event-stream\r\n"
        else:
            path += f"?wait={self.hold.wait:g}" + (f"&after={after}" if after else "")
        return (f"GET {path} HTTP/1.1\r\nHost: {self.hold.host}\r\n"
                f"Authorization: Bearer {self.token}\r\n{accept}\r\n").encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request())
        if self.hold.transport == "longpoll":  # nothing comes back before the wait is over
            self.held = True
            self.hold.held += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.held:
            self.hold.held -= 1
            self.hold.closed += 1
            self.held = False
        elif not self.answered.done():
            self.hold.refused["closed before an answer"] += 1
        if not self.answered.done():
            self.answered.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 16384:
                    self._refuse("an endless response head")
                return
            head, data = self.head[:end], self.head[end + 4:]
            self.head = b""
            parts = head.split(b" ", 2)
            status = parts[1].decode(errors="replace") if len(parts) > 1 else "?"
            if status not in ("200", "204"):
                self._refuse(status)
                return
            self.in_body = True
            self.length = 0 if status == "204" else None
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    value = line.split(b":", 1)[1].strip()
                    if not (value.isdigit() and len(value) < 10):
                        self._refuse("a bad Content-Length")
                        return
                    self.length = int(value)
            if self.hold.transport == "longpoll":
                self._become_held()
        if self.hold.transport == "sse":
            self._events(data)
        else:
            self._long_poll(data)

    def _refuse(self, why: str) -> None:
        self.hold.refused[why] += 1
        if self.held:
            self.held = False
            self.hold.held -= 1
        if not self.answered.done():
            self.answered.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def _become_held(self) -> None:
        if not self.held:
            self.held = True
            self.hold.held += 1
        if not self.answered.done():
            self.answered.set_result(None)

    def _events(self, data: bytes) -> None:
        seen = self.tail + data  # the tail is too short to hold a whole marker: no double count
        count = seen.count(_NOTICE)
        self.tail = seen[-(len(_NOTICE) - 1):]
        if not count:
            return
        self.notices += count
        self._become_held()
        if self.notices > 1 and self.device_id not in self.hold.changes:
            self.hold.changes[self.device_id] = time.time()

    def _long_poll(self, data: bytes) -> None:
        self.body += data
        if self.length is None or len(self.body) < self.length:
            return
        body, rest = self.body[:self.length], self.body[self.length:]
        self.in_body, self.body, self.head = False, b"", rest
        after = None
        if body:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                after = int(json.loads(body)["serial"])
            self.hold.changes.setdefault(self.device_id, time.time())
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.request(after))


@dataclass
class _Hold:
    host: str
    port: int
    transport: str
    wait: float
    held: int = 0
    closed: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    changes: dict[str, float] = field(default_factory=dict)
    conns: list[_Conn] = field(default_factory=list)


async def _hold(conn: Connection, url: str, devices: Sequence[tuple[str, str]],
                transport: str, *, wait: float, parallel: int) -> None:
    parts = urlsplit(url)
    hold = _Hold(parts.hostname or "127.0.0.1", parts.port or 80, transport, wait)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    gate = asyncio.Semaphore(parallel)
    open_files = raise_open_files(len(devices) + 256)

    async def open_one(device_id: str, token: str) -> None:
        async with gate:
            try:
                _, protocol = await loop.create_connection(
                    lambda: _Conn(hold, device_id, token), hold.host, hold.port)
            except OSError as e:
                hold.refused[f"connect: {e.strerror or type(e).__name__}"] += 1
                return
            hold.conns.append(protocol)
            # SSE: until the stream is answered; a long-poll is answered only when its wait
            # ends: a second for the server to take it (or refuse it) before the next ones
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(protocol.answered),
                                       120 if transport == "sse" else 1)

    def status() -> HoldStatus:
        opening = len(devices) - hold.held - hold.closed - sum(hold.refused.values())
        return HoldStatus(hold.held, max(opening, 0), dict(hold.refused), hold.closed,
                          dict(hold.changes), open_files, time.monotonic() - started)

    commands: asyncio.Queue[str] = asyncio.Queue()

    def readable() -> None:
        try:
            commands.put_nowait(conn.recv())
        except (EOFError, OSError):
            commands.put_nowait("stop")

    loop.add_reader(conn.fileno(), readable)
    opening = asyncio.ensure_future(asyncio.gather(
        *(open_one(device_id, token) for device_id, token in devices)))
    try:
        while (command := await commands.get()) != "stop":
            if command == "status":
                conn.send(status())
    finally:
        loop.remove_reader(conn.fileno())
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opening
        for protocol in hold.conns:
            if protocol.transport is not None:
                protocol.transport.abort()


def _child() -> None:
    """The child process's entry (``hold_in_process``): its arguments come over the pipe whose
    descriptor is its first argument."""
    conn = Connection(int(sys.argv[1]))
    url, devices, transport, wait, parallel = conn.recv()
    asyncio.run(_hold(conn, url, devices, transport, wait=wait, parallel=parallel))


class Holder:
    """The child process holding the connections (see ``hold_in_process``)."""

    def __init__(self, process: subprocess.Popen[bytes], conn: Connection) -> None:
        self.process = process
        self.conn = conn

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self, timeout: float = 60.0) -> HoldStatus:
        """Where the connections stand (the child answers between two reads).

        Raises:
            RuntimeError: the child ended, or did not answer within ``timeout`` seconds.
        """
        try:
            self.conn.send("status")
            if self.conn.poll(timeout):
                answer = self.conn.recv()
                assert isinstance(answer, HoldStatus)
                return answer
        except (OSError, EOFError) as e:
            raise RuntimeError(f"the push holder (pid {self.pid}) ended (exit status "
                               f"{self.process.poll()}): {e}") from e
        raise RuntimeError(f"the push holder (pid {self.pid}) did not answer within "
                           f"{timeout:g} s")

    def wait_opened(self, timeout: float) -> HoldStatus:
        """Poll ``status()`` until no connection is still being opened or ``timeout`` passed;
        the last status."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.status()
            if current.opening == 0 or time.monotonic() > deadline:
                return current
            time.sleep(0.5)

    def stop(self, timeout: float = 30.0) -> None:
        """Close every connection and end the process: asked first, then SIGKILL by its pid
        and its process group after ``timeout``."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send("stop")
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.conn.close()


def hold_in_process(url: str, devices: Sequence[tuple[str, str]], transport: str = "sse", *,
                    wait: float = 60.0, parallel: int = 200) -> Holder:
    """Start a child process (a new session) holding one ``transport`` connection per
    ``(device id, bearer token)`` against the server at ``url`` (``http://host:port``); stop it
    with ``Holder.stop()`` (in a ``finally``)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport: expected one of {', '.join(TRANSPORTS)}, got "
                         f"{transport!r}")
    ours, theirs = socket.socketpair()
    try:
        process = subprocess.Popen(  # noqa: S603 - this interpreter, our own module
            [sys.executable, "-c", "from suitkit.sim.push_hold import _child; _child()",
             str(theirs.fileno())], pass_fds=(theirs.fileno(),), start_new_session=True)
    finally:
        theirs.close()
    holder = Holder(process, Connection(ours.detach()))
    try:
        holder.conn.send((url, list(devices), transport, wait, parallel))
    except BaseException:
        holder.stop()
        raise
    return holder
