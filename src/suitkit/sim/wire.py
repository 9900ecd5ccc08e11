"""A small HTTP/1.1 client on asyncio streams, for the light fleet (``sim.swarm``).

Why not httpx: a fleet of thousands of devices in one process makes hundreds of requests a
second, and holds thousands of push connections open. httpx's ``AsyncClient`` cost about
1.4 ms of CPU per GET, this client about 0.1 ms (benchmarks/README.md, bench_fleet.py: the
same GET from 16 concurrent callers, measured in the same run), which at 11.5 requests per
update was half of what the server itself spent per update; and its connection pool's
bookkeeping walks the pool at each request, held streams included. What the fleet needs is
much less: plain HTTP/1.1 with keep-alive to a few known servers, ``Content-Length`` or
chunked answers, and reading a server-sent-event stream line by line. That is all this module
does.

``Pool(url, size)`` keeps at most ``size`` connections to one server (``http://`` or
``https://``); ``request`` waits for a free one (the bound is the back-pressure: a fleet never
opens more connections than its ``--concurrency``), reuses idle ones (dropped after
``IDLE_SECONDS``, below uvicorn's keep-alive of 5 s), and asks once more on a fresh connection
when a reused one turns out closed before any byte of the answer came (the server closed it
while idle). ``Held`` is a device's own connection for long-polls and SSE streams, outside the
pool. Every answer is bounded (``max_bytes``) and every exchange is bounded in time; failures
are ``WireError`` with one line.

Deliberately not here: redirects, proxies, HTTP/2, cookies, request bodies that stream,
``Expect: 100-continue``, anything a server we do not run would need.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["IDLE_SECONDS", "Answer", "Held", "Pool", "WireError", "parse_server_url"]

IDLE_SECONDS = 3.0
"""A pooled connection idle longer than this is closed rather than reused (uvicorn closes
keep-alive connections after 5 s)."""
_MAX_HEAD = 16 * 1024
_MAX_HEADERS = 100
_READ_LIMIT = 64 * 1024


class WireError(Exception):
    """The exchange failed: connection refused or lost, timeout, malformed or too large answer."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    """Lower-case names; a repeated header keeps its last value."""
    body: bytes


def parse_server_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, base path)`` of an ``http(s)://host[:port][/base]`` URL.

    Raises:
        ValueError: not an http(s) URL with a host (one line).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {url[:80]!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"the port of {url[:80]!r} is not a number from 0 to 65535") from None
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


class _Conn:
    __slots__ = ("reader", "used", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Server:
    """Where one server is and how to open a connection to it."""

    def __init__(self, url: str) -> None:
        scheme, self.host, self.port, self.base = parse_server_url(url)
        self.tls = ssl.create_default_context() if scheme == "https" else None
        default = 443 if scheme == "https" else 80
        self.host_header = self.host if self.port == default else f"{self.host}:{self.port}"

    async def connect(self) -> _Conn:
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.tls, limit=_READ_LIMIT,
                server_hostname=self.host if self.tls else None)
        except (OSError, ssl.SSLError) as e:
            raise WireError(f"connect to {self.host}:{self.port}: {type(e).__name__}: "
                            f"{e}") from None
        return _Conn(reader, writer)

    def head(self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
             ) -> bytes:
        lines = [f"{method} {self.base}{path} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body or b'')}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readline()
    if not line:
        raise _Closed
    size = len(line)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise WireError(f"not an HTTP/1.x status line: {line[:60]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    lines = 0
    while True:
        line = await reader.readline()
        size, lines = size + len(line), lines + 1
        if size > _MAX_HEAD or lines > _MAX_HEADERS + 1:
            raise WireError(f"the answer's head is over {_MAX_HEAD} bytes or "
                            f"{_MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n"):
            return status, headers
        if not line.endswith(b"\n"):
            raise WireError("the connection closed in the middle of the answer's head")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise WireError(f"malformed header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()


async def _chunks(reader: asyncio.StreamReader, max_bytes: int) -> AsyncIterator[bytes]:
    """The data of a chunked body (RFC 9112 §7.1), at most ``max_bytes`` in all."""
    total = 0
    while True:
        line = await reader.readline()
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            # RFC 9112 §7.1: 1*HEXDIG (int(.., 16) also takes a sign, 0x and underscores)
            raise WireError(f"malformed chunk size {line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        total += size
        if total > max_bytes:
            raise WireError(f"the answer is over {max_bytes} bytes")
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


async def _body(reader: asyncio.StreamReader, status: int, headers: Mapping[str, str],
                method: str, max_bytes: int) -> tuple[bytes, bool]:
    """The body and whether the connection may be reused."""
    reusable = headers.get("connection", "").lower() != "close"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b"", reusable
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return b"".join([c async for c in _chunks(reader, max_bytes)]), reusable
    length = headers.get("content-length")
    if length is not None:
        if not length.isascii() or not length.isdigit():
            raise WireError(f"malformed Content-Length {length[:20]!r}")
        if int(length) > max_bytes:
            raise WireError(f"the answer is {length} bytes, over {max_bytes}")
        return await reader.readexactly(int(length)), reusable
    data = await reader.read(max_bytes + 1)  # until the server closes
    if len(data) > max_bytes:
        raise WireError(f"the answer is over {max_bytes} bytes")
    return data, False


class _Closed(Exception):
    """The connection was closed before any byte of the answer."""


async def _exchange(server: _Server, conn: _Conn, method: str, path: str, *,
                    headers: Mapping[str, str], body: bytes | None, max_bytes: int
                    ) -> tuple[Answer, bool]:
    conn.writer.write(server.head(method, path, headers, body) + (body or b""))
    await conn.writer.drain()
    status, answer_headers = await _read_head(conn.reader)
    data, reusable = await _body(conn.reader, status, answer_headers, method, max_bytes)
    return Answer(status, answer_headers, data), reusable


class Pool:
    """At most ``size`` keep-alive connections to the server at ``url``."""

    def __init__(self, url: str, size: int) -> None:
        if size < 1:
            raise ValueError(f"a connection pool needs at least 1 connection, got {size}")
        self.server = _Server(url)
        self.url = url.rstrip("/")
        self._slots = asyncio.Semaphore(size)
        self._idle: deque[_Conn] = deque()

    async def request(self, method: str, path: str, *, headers: Mapping[str, str] = {},
                      body: bytes | None = None, timeout: float = 30.0,
                      max_bytes: int = 1024 * 1024) -> Answer:
        """One exchange on a pooled connection.

        Raises:
            WireError: it failed (one line).
        """
        async with self._slots:
            for _ in range(2):
                conn, reused = self._take()
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(self.server.connect(), timeout)
                    answer, reusable = await asyncio.wait_for(
                        _exchange(self.server, conn, method, path, headers=headers, body=body,
                                  max_bytes=max_bytes),
                        timeout)
                except (_Closed, ConnectionError, asyncio.IncompleteReadError) as e:
                    if conn is not None:
                        conn.close()
                    if reused:
                        continue  # closed by the server while idle: once more, on a new one
                    raise WireError(f"{method} {path}: the connection was lost "
                                    f"({type(e).__name__})") from None
                except TimeoutError:
                    if conn is not None:
                        conn.close()
                    raise WireError(f"{method} {path}: no answer within {timeout:g} s"
                                    ) from None
                except BaseException:
                    if conn is not None:
                        conn.close()
                    raise
                if reusable:
                    conn.used = time.monotonic()
                    self._idle.append(conn)
                else:
                    conn.close()
                return answer
            raise WireError(f"{method} {path}: the connection was lost twice")

    def _take(self) -> tuple[_Conn | None, bool]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.used < IDLE_SECONDS and not conn.reader.at_eof():
                return conn, True
            conn.close()
        return None, False

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class Held:
    """One device's own connection for long-polls and server-sent events (outside the pool)."""

    def __init__(self, pool: Pool) -> None:
        self.server = pool.server
        self._conn: _Conn | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _open(self, timeout: float) -> tuple[_Conn, bool]:
        """The held connection (``True``) or a new one (``False``): one idle longer than
        ``IDLE_SECONDS`` (the device was busy updating) is not reused."""
        conn = self._conn
        if (conn is not None and not conn.reader.at_eof()
                and time.monotonic() - conn.used < IDLE_SECONDS):
            return conn, True
        self.close()
        self._conn = await asyncio.wait_for(self.server.connect(), timeout)
        return self._conn, False

    async def request(self, method: str, path: str, *, headers: Mapping[str, str] = {},
                      timeout: float = 60.0, max_bytes: int = 64 * 1024) -> Answer:
        """One exchange (a long-poll) on the held connection, opened again when needed; asked
        once more on a new connection when the held one turns out closed before any byte of
        the answer came (as ``Pool.request``).

        Raises:
            WireError: it failed (one line); the connection is closed.
        """
        for _ in range(2):
            reused = False
            try:
                conn, reused = await self._open(min(timeout, 10.0))
                answer, reusable = await asyncio.wait_for(
                    _exchange(self.server, conn, method, path, headers=headers, body=None,
                              max_bytes=max_bytes), timeout)
            except (_Closed, ConnectionError, asyncio.IncompleteReadError) as e:
                self.close()
                if reused:
                    continue
                raise WireError(f"{method} {path}: the connection was lost "
                                f"({type(e).__name__})") from None
            except TimeoutError:
                self.close()
                raise WireError(f"{method} {path}: no answer within {timeout:g} s") from None
            except BaseException:
                self.close()
                raise
            if reusable:
                conn.used = time.monotonic()
            else:
                self.close()
            return answer
        raise WireError(f"{method} {path}: the connection was lost twice")

    async def events(self, path: str, *, headers: Mapping[str, str] = {},
                     idle_timeout: float = 60.0, max_event: int = 64 * 1024
                     ) -> AsyncIterator[tuple[int, str]]:
        """Open a server-sent-event stream: first ``(status, "")``, then with status 200
        ``(200, data)`` for each event's data, until the stream ends (then it returns).
        ``idle_timeout``: seconds without a byte (heartbeats count) before giving up.

        Raises:
            WireError: it failed (one line); the connection is closed.
        """
        self.close()  # a stream owns its connection to the end
        try:
            conn, _ = await self._open(min(idle_timeout, 10.0))
            conn.writer.write(self.server.head("GET", path, {
                **headers, "Accept": "text/event-stream"}, None))
            await conn.writer.drain()
            status, answer_headers = await asyncio.wait_for(_read_head(conn.reader),
                                                            idle_timeout)
            yield status, ""
            if status != 200:
                return
            if "chunked" not in answer_headers.get("transfer-encoding", "").lower():
                raise WireError("the event stream is not chunked")
            buffer = b""
            data: list[str] = []
            size = 0  # of the event being read: its lines so far and the unfinished one
            chunks = _chunks(conn.reader, 1 << 62)
            while True:
                chunk = await asyncio.wait_for(anext(chunks, None), idle_timeout)
                if chunk is None:
                    return
                buffer += chunk
                size += len(chunk)
                if size > max_event:
                    raise WireError(f"an event is over {max_event} bytes")
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.rstrip(b"\r").decode("utf-8", "replace")
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line:
                        if data:
                            yield 200, "\n".join(data)
                        data, size = [], len(buffer)
        except (_Closed, ConnectionError, asyncio.IncompleteReadError) as e:
            raise WireError(f"GET {path}: the stream was lost ({type(e).__name__})") from None
        except TimeoutError:
            raise WireError(f"GET {path}: nothing for {idle_timeout:g} s") from None
        finally:
            self.close()
