"""Attacks on suitkit's LwM2M CLIENT (``device.lwm2m``) by a hostile LwM2M server and by strangers
on the network (NoSec): garbage registration answers, malformed writes, an oversized package,
blocks out of order, a package that is no envelope, Update in the wrong state, and every
resource asked by an address other than the server's (the client's authorization walk).
Each gets a clear CoAP error or the right Update Result, and the device folder is unchanged:
nothing installed, the client still serves its server.

The hostile server is an aiocoap context of the test (a peer that lies, not one of our
servers); the client runs in a thread of the test, stopped in a ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]
from aiocoap.optiontypes import BlockOption  # type: ignore[import-untyped]

from device.device_kit import Author, boot, confirm, firmware_server, install, new_device
from notice_kit import wait_until
from serve_kit import free_port
from suitkit.device.config import load_config
from suitkit.device.fetch import HttpFetcher, RoutingFetcher
from suitkit.device.lwm2m import Lwm2mOptions, run_lwm2m

WAIT = 60.0
RESOURCES = ("3/0/0", "3/0/1", "3/0/2", "3/0/3", "5/0/0", "5/0/1", "5/0/2", "5/0/3", "5/0/5",
             "5/0/6", "5/0/7", "5/0/8", "5/0/9")


class Hostile:
    """A CoAP endpoint on its own loop thread: ``/rd`` answered by ``answer`` (default: a
    proper 2.01 with ``rd/x``), the client's address kept; ``ask`` sends the client a
    request from this endpoint."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.context: Any = None
        self.client: str | None = None
        self.registrations = 0
        self.answer: Any = None
        self.port = 0

    def start(self) -> None:
        self.thread.start()
        hostile = self

        class Rd(aiocoap.resource.Resource):  # type: ignore[misc]
            def __init__(self, registry: bool) -> None:
                super().__init__()
                self.registry = registry

            async def render(self, request: Any) -> Any:
                hostile.client = request.remote.hostinfo
                hostile.registrations += 1
                if hostile.answer is not None:
                    return hostile.answer
                if request.code == Code.POST and self.registry:
                    return aiocoap.Message(code=Code.CREATED, location_path=("rd", "x"))
                return aiocoap.Message(code=Code.CHANGED if request.code == Code.POST
                                       else Code.DELETED)

        async def run() -> None:
            site = aiocoap.resource.Site()
            site.add_resource(("rd",), Rd(True))
            site.add_resource(("rd", "x"), Rd(False))
            self.context = await aiocoap.Context.create_server_context(
                site, bind=("127.0.0.1", self.port), transports=["udp6"])
        self.port = free_port(socket.SOCK_DGRAM)
        asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def ask(self, code: Any, path: str, payload: bytes = b"", **options: Any) -> Any:
        async def run() -> Any:
            message = aiocoap.Message(code=code, uri=f"coap://{self.client}/{path}",
                                      payload=payload, **options)
            return await asyncio.wait_for(
                self.context.request(message, handle_blockwise=False).response, 30)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(60)

    def stop(self) -> None:
        if self.context is not None:
            asyncio.run_coroutine_threadsafe(self.context.shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@contextmanager
def hostile_world(tmp: Path, **options: Any) -> Iterator[tuple[Hostile, Path, list[str]]]:
    """The hostile server, and suitkit's client of a device running release 1 registered with
    it: (server, folder, what the client said)."""
    author = Author.create(tmp / "author")
    folder = new_device(tmp / "device", [author.anchor])
    base, _ = author.release(1, "base")
    assert install(folder, base).installed
    boot(folder)
    confirm(folder)
    server = Hostile()
    lines: list[str] = []
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:
        server.start()
        credential = f"{load_config(folder).device_id}.secret"
        opts = Lwm2mOptions(server=f"coap://127.0.0.1:{server.port}",
                            **{"lifetime": 60, "backoff": 0.2, "max_backoff": 1.0, **options})
        thread = threading.Thread(target=lambda: run_lwm2m(
            folder, credential, opts, fetcher=RoutingFetcher(HttpFetcher()),
            say=lines.append, stop=stop), daemon=True)
        thread.start()
        wait_until(lambda: server.client is not None, WAIT, "the client to register")
        wait_until(lambda: any(line.startswith("registered") for line in lines)
                   or server.answer is not None, WAIT, "the client to take its registration")
        yield server, folder, lines
    finally:
        stop.set()
        if thread is not None:
            thread.join(WAIT)
        server.stop()
    assert thread is not None and not thread.is_alive(), "the LwM2M client did not stop"


def _text(response: Any) -> str:
    return bytes(response.payload).decode("utf-8", "replace")


def _value(server: Hostile, path: str) -> str:
    response = server.ask(Code.GET, path)
    assert response.code == Code.CONTENT, response
    return _text(response)


def _untouched(folder: Path) -> None:
    assert [i.sequence_number for i in boot(folder).images] == [1]


def test_lwm2m_client_walk_only_the_registered_server_may_use_its_resources(
        tmp_path: Path) -> None:
    with hostile_world(tmp_path) as (server, folder, _):
        stranger = Hostile()
        stranger.start()
        try:
            stranger.client = server.client
            for path in RESOURCES:
                for code in (Code.GET, Code.PUT, Code.POST, Code.DELETE):
                    seen = stranger.ask(code, path, b"coap://evil/x")
                    assert seen.code == Code.FORBIDDEN, (path, code, seen)
                    assert "registered with" in _text(seen)
                # the registered server reads every resource
                assert server.ask(Code.GET, path).code in (Code.CONTENT,
                                                           Code.METHOD_NOT_ALLOWED), path
            observe = stranger.ask(Code.GET, "5/0/3", observe=0)
            assert observe.code == Code.FORBIDDEN and observe.opt.observe is None
        finally:
            stranger.stop()
        assert _value(server, "5/0/3") == "0" and _value(server, "5/0/5") == "0"
        for path in ("3/0/0", "5/0/3", "5/0/5", "5/0/9"):  # read-only resources
            assert server.ask(Code.PUT, path, b"1").code == Code.METHOD_NOT_ALLOWED
        _untouched(folder)


def test_lwm2m_client_refuses_malformed_writes_with_clear_errors(tmp_path: Path) -> None:
    with hostile_world(tmp_path) as (server, folder, _):
        bad_utf8 = server.ask(Code.PUT, "5/0/1", b"\xff\xfe", content_format=0)
        assert bad_utf8.code == Code.BAD_REQUEST and "UTF-8" in _text(bad_utf8)
        too_long = server.ask(Code.PUT, "5/0/1", b"http://x/" + b"a" * 3000)
        assert too_long.code == Code.REQUEST_ENTITY_TOO_LARGE
        wrong_format = server.ask(Code.PUT, "5/0/1", b"http://x/e", content_format=60)
        assert wrong_format.code == Code.UNSUPPORTED_CONTENT_FORMAT
        # Update before anything was downloaded
        early = server.ask(Code.POST, "5/0/2")
        assert early.code == Code.METHOD_NOT_ALLOWED and "Downloaded" in _text(early)
        assert server.ask(Code.GET, "5/0/2").code == Code.METHOD_NOT_ALLOWED
        # a URI the client cannot use: Update Result 9 (scheme) and 7 (not a URI)
        assert server.ask(Code.PUT, "5/0/1", b"ftp://127.0.0.1/e.suit").code == Code.CHANGED
        assert (_value(server, "5/0/3"), _value(server, "5/0/5")) == ("0", "9")
        assert server.ask(Code.PUT, "5/0/1", b"no uri at all").code == Code.CHANGED
        assert (_value(server, "5/0/3"), _value(server, "5/0/5")) == ("0", "7")
        # a URI that answers 404: Update Result 7
        with firmware_server() as (url, _):
            assert server.ask(Code.PUT, "5/0/1", f"{url}/missing".encode()).code == Code.CHANGED
            wait_until(lambda: _value(server, "5/0/5") != "0", WAIT, "the download to fail")
            assert (_value(server, "5/0/3"), _value(server, "5/0/5")) == ("0", "7")
        # an empty Package URI resets the object
        assert server.ask(Code.PUT, "5/0/1", b"").code == Code.CHANGED
        assert (_value(server, "5/0/3"), _value(server, "5/0/5")) == ("0", "0")
        _untouched(folder)


def _block(server: Hostile, number: int, more: bool, data: bytes) -> Any:
    return server.ask(Code.PUT, "5/0/0", data, content_format=42,
                      block1=BlockOption.BlockwiseTuple(number, more, 6))


def test_lwm2m_client_refuses_an_oversized_or_garbled_package(tmp_path: Path) -> None:
    with hostile_world(tmp_path, max_package=3000) as (server, folder, lines):
        # over the bound, block-wise: refused at the block that crosses it, Update Result 2
        assert _block(server, 0, True, os.urandom(1024)).code == Code.CONTINUE
        assert _block(server, 1, True, os.urandom(1024)).code == Code.CONTINUE
        over = _block(server, 2, True, os.urandom(1024))
        assert over.code == Code.REQUEST_ENTITY_TOO_LARGE and over.opt.size1 == 3000
        assert (_value(server, "5/0/3"), _value(server, "5/0/5")) == ("0", "2")
        # a block the client never got the start of, or out of order
        assert _block(server, 5, False, b"x").code == Code.REQUEST_ENTITY_INCOMPLETE
        assert _block(server, 0, True, os.urandom(1024)).code == Code.CONTINUE
        gap = _block(server, 2, False, b"x")
        assert gap.code == Code.REQUEST_ENTITY_INCOMPLETE and "expected block" in _text(gap)
        # a short block that says more follow
        assert _block(server, 0, True, b"short").code == Code.BAD_REQUEST
        # over the bound in one message
        whole = server.ask(Code.PUT, "5/0/0", os.urandom(3001), content_format=42)
        assert whole.code == Code.REQUEST_ENTITY_TOO_LARGE
        # a package that is no SUIT envelope: Update Result 6, State back to Idle
        garbage = server.ask(Code.PUT, "5/0/0", b"\xa1\x02garbage", content_format=42)
        assert garbage.code == Code.CHANGED
        assert (_value(server, "5/0/3"), _value(server, "5/0/5")) == ("0", "6")
        assert server.ask(Code.POST, "5/0/2").code == Code.METHOD_NOT_ALLOWED
        assert server.ask(Code.PUT, "5/0/0", b"x", content_format=0).code == \
            Code.UNSUPPORTED_CONTENT_FORMAT
        assert not (folder / "agent" / "lwm2m-package.suit").exists()
        assert not any("updating" in line for line in lines)
        _untouched(folder)


def test_lwm2m_client_survives_garbage_registration_answers(tmp_path: Path) -> None:
    with hostile_world(tmp_path, lifetime=2) as (server, folder, lines):
        # the registration update (each second) gets garbage: the client registers again,
        # and gets garbage again
        server.answer = aiocoap.Message(code=Code.CREATED)  # no Location-Path
        first = server.registrations
        wait_until(lambda: server.registrations > first + 1, WAIT,
                   "the client to try again after a garbled answer")
        server.answer = aiocoap.Message(code=Code.BAD_REQUEST, payload=b"\xff" * 2000)
        count = server.registrations
        wait_until(lambda: server.registrations > count + 1, WAIT,
                   "the client to try again after a refusal")
        assert any("expected a Location-Path" in line for line in lines), lines
        assert any("expected 2.01 Created, got 4.00" in line for line in lines), lines
        assert all(len(line) < 400 for line in lines)
        server.answer = None
        wait_until(lambda: sum(line.startswith("registered") for line in lines) >= 2, WAIT,
                   "the client to register again once the server answers properly")
        _untouched(folder)


def test_lwm2m_client_stops_at_once_while_a_silent_server_holds_its_registration(
        tmp_path: Path) -> None:
    """A server that takes the registration and never answers (a black hole): the client
    stops when asked, not after its request timeout (20 s)."""
    author = Author.create(tmp_path / "author")
    folder = new_device(tmp_path / "device", [author.anchor])
    lines: list[str] = []
    stop = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        options = Lwm2mOptions(server=f"coap://127.0.0.1:{silent.getsockname()[1]}",
                               request_timeout=20.0)
        thread = threading.Thread(target=lambda: run_lwm2m(
            folder, f"{load_config(folder).device_id}.secret", options,
            fetcher=RoutingFetcher(HttpFetcher()), say=lines.append, stop=stop), daemon=True)
        thread.start()
        try:
            silent.settimeout(WAIT)
            assert silent.recvfrom(2048)[0], "no registration arrived"  # it is waiting now
        finally:
            asked = time.monotonic()
            stop.set()
            thread.join(WAIT)
        assert not thread.is_alive(), "the LwM2M client did not stop"
        assert time.monotonic() - asked < 10.0, lines
    assert not any(line.startswith("registered") for line in lines)
