"""Hostile firmware servers on loopback for the attack suite: raw HTTP (asyncio) and CoAP (aiocoap).

Both serve honest bytes by default and misbehave on demand, per path, the way a compromised
firmware server or an on-path attacker would (RFC 9124 §4.2, the TUF/Uptane attack lists):

HTTP (``HostileHttp``, a raw asyncio server so that it can break HTTP itself):

- ``serve(path, body)``: 200, Content-Length, ETag, Range honoured;
- ``endless(path)``: 200 with ``Transfer-Encoding: chunked`` and no end (endless data);
- ``endless_headers(path)``: 200, then header lines forever (the body never starts);
- ``unannounced(path, body)``: no Content-Length, the body ends when the connection closes;
- ``trickle(path, body, delay)``: headers at once, then one byte every ``delay`` seconds (slow
  retrieval);
- ``redirect(path, location)``: 302 to another location (NET.REDIRECT at the HTTP layer);
- ``encoded(path, body, encoding)``: a Content-Encoding the device did not ask for.

CoAP (``HostileCoap``, an aiocoap site on ``suitkit.server.coap.CoapServer``):

- ``serve(path, body)``: honest Block2 blocks (``render_blob_block``'s rules) with ETag and Size2;
- ``endless(path)``: every block says "more", forever (endless data), without Size2;
- ``silent(path)``: never answers (slow retrieval: the device's deadline must end it);
- ``trickle(path, body, delay)``: honest blocks, each answered after ``delay`` seconds.

Every request is recorded (``requests``), so tests can prove what the device asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiocoap
import aiocoap.resource
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from suitkit.errors import StorageError
from suitkit.server.coap import CoapServer

WAIT = 5.0  # every start/stop wait is bounded


# ============================================================================ HTTP


@dataclass
class _Route:
    kind: str
    body: bytes = b""
    delay: float = 0.0
    location: str = ""
    encoding: str = ""


@dataclass
class HostileHttp:
    """A raw HTTP/1.1 server on 127.0.0.1; ``url`` is its base URL once started."""

    routes: dict[str, _Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""
    sent: dict[str, int] = field(default_factory=dict)
    """Body bytes written per path (endless and trickle routes: how far the device let it go)."""

    def serve(self, path: str, body: bytes) -> str:
        self.routes[path] = _Route("serve", body)
        return self.url + path

    def unannounced(self, path: str, body: bytes) -> str:
        self.routes[path] = _Route("unannounced", body)
        return self.url + path

    def endless(self, path: str) -> str:
        self.routes[path] = _Route("endless")
        return self.url + path

    def endless_headers(self, path: str) -> str:
        self.routes[path] = _Route("endless-headers")
        return self.url + path

    def trickle(self, path: str, body: bytes, delay: float) -> str:
        self.routes[path] = _Route("trickle", body, delay)
        return self.url + path

    def redirect(self, path: str, location: str) -> str:
        self.routes[path] = _Route("redirect", location=location)
        return self.url + path

    def encoded(self, path: str, body: bytes, encoding: str) -> str:
        self.routes[path] = _Route("encoded", body, encoding=encoding)
        return self.url + path

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._respond(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the device hung up: that is what it should do to a hostile server
        except asyncio.CancelledError:
            pass  # the server stops (3.11's start_server logs a handler that re-raises)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        self.requests.append((path, headers))
        route = self.routes.get(path)
        if route is None:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        if route.kind == "redirect":
            writer.write(f"HTTP/1.1 302 Found\r\nLocation: {route.location}\r\n"
                         "Content-Length: 0\r\n\r\n".encode())
            await writer.drain()
            return
        if route.kind == "endless-headers":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            while True:
                writer.write(b"X-Filler: " + b"f" * 1000 + b"\r\n")
                await writer.drain()
                self.sent[path] = self.sent.get(path, 0) + 1012
                await asyncio.sleep(0)
        if route.kind == "endless":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"\xee" * 4096
            while True:
                writer.write(b"1000\r\n" + chunk + b"\r\n")
                await writer.drain()
                self.sent[path] = self.sent.get(path, 0) + len(chunk)
                await asyncio.sleep(0)
        body, status, extra = route.body, "200 OK", ""
        wanted = headers.get("range", "")
        if wanted.startswith("bytes=") and route.kind == "serve":
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            extra = f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}\r\n"
            body, status = body[start:], "206 Partial Content"
        if route.kind == "encoded":
            extra += f"Content-Encoding: {route.encoding}\r\n"
        if route.kind != "unannounced":
            extra += f"Content-Length: {len(body)}\r\n"
        writer.write(f'HTTP/1.1 {status}\r\nETag: "1"\r\nConnection: close\r\n{extra}\r\n'
                     .encode())
        await writer.drain()
        if route.kind == "trickle":
            for i in range(len(body)):
                writer.write(body[i:i + 1])
                await writer.drain()
                self.sent[path] = i + 1
                await asyncio.sleep(route.delay)
        else:
            writer.write(body)
            await writer.drain()
            self.sent[path] = len(body)


@contextlib.contextmanager
def hostile_http() -> Iterator[HostileHttp]:
    """A ``HostileHttp`` serving on a free port, in its own event loop thread."""
    server = HostileHttp()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: list[asyncio.Server] = []

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            holder.append(await asyncio.start_server(server._handle, "127.0.0.1", 0))
            ready.set()

        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(WAIT), "the hostile HTTP server did not start"
    server.url = f"http://127.0.0.1:{holder[0].sockets[0].getsockname()[1]}"
    try:
        yield server
    finally:
        async def stop() -> None:
            holder[0].close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(WAIT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


# ============================================================================ CoAP


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _HostileResource(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc]
    def __init__(self, owner: HostileCoap) -> None:
        super().__init__()
        self.owner = owner

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        return False  # every block is answered by hand, as the attack needs

    async def render_get(self, request: Any) -> Any:
        path = "/fw/" + "/".join(request.opt.uri_path)
        asked = request.opt.block2
        number, szx = (0, 6) if asked is None else (asked.block_number, min(asked.size_exponent, 6))
        self.owner.requests.append((path, number))
        route = self.owner.routes.get(path)
        if route is None:
            return aiocoap.Message(code=Code.NOT_FOUND)
        size = 1 << (szx + 4)
        if route.kind == "silent":
            await asyncio.sleep(3600)  # the device's deadline must end the wait
        if route.kind == "endless":
            response = aiocoap.Message(code=Code.CONTENT, payload=b"\xee" * size)
            response.opt.block2 = BlockOption.BlockwiseTuple(number, True, szx)
            response.opt.etag = b"endless!"
            return response
        if route.kind == "trickle":
            await asyncio.sleep(route.delay)
        body = route.body
        payload = body[number * size:(number + 1) * size]
        more = (number + 1) * size < len(body)
        response = aiocoap.Message(code=Code.CONTENT, payload=payload)
        response.opt.block2 = BlockOption.BlockwiseTuple(number, more, szx)
        response.opt.etag = b"etag0001"
        response.opt.size2 = len(body)
        return response


@dataclass
class HostileCoap:
    """A CoAP server on 127.0.0.1 whose paths misbehave on demand; ``url``: its base URL."""

    url: str = ""
    routes: dict[str, _Route] = field(default_factory=dict)
    requests: list[tuple[str, int]] = field(default_factory=list)

    def serve(self, path: str, body: bytes) -> str:
        self.routes[path] = _Route("serve", body)
        return self.url + path

    def endless(self, path: str) -> str:
        self.routes[path] = _Route("endless")
        return self.url + path

    def silent(self, path: str) -> str:
        self.routes[path] = _Route("silent")
        return self.url + path

    def trickle(self, path: str, body: bytes, delay: float) -> str:
        self.routes[path] = _Route("trickle", body, delay)
        return self.url + path


@contextlib.contextmanager
def hostile_coap() -> Iterator[HostileCoap]:
    """A ``HostileCoap`` on a free UDP port (suitkit's own ``CoapServer`` runs the site)."""
    hostile = HostileCoap()
    site = aiocoap.resource.Site()
    site.add_resource(["fw"], _HostileResource(hostile))
    for attempt in range(5):  # another test may take the free port before we bind it
        port = free_udp_port()
        server = CoapServer(None, "127.0.0.1", port, site=site, timeout=WAIT)  # type: ignore[arg-type]
        try:
            server.start()
            break
        except StorageError:
            if attempt == 4:
                raise
    hostile.url = f"coap://127.0.0.1:{port}"
    try:
        yield hostile
    finally:
        server.stop()
