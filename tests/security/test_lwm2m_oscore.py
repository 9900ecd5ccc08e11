"""Attacks on LwM2M over OSCORE (RFC 8613): suitkit's LwM2M server edge and suitkit's LwM2M
client on loopback, real aiocoap, a UDP proxy of the test between them where the wire is
looked at.

- a client without a context, with the wrong secret, or claiming another device's endpoint
  name under its own context is refused, and nothing is registered;
- a replayed OSCORE registration is refused (the replay window);
- NoSec requests cannot touch an OSCORE registration (update, de-register, a NoSec
  re-registration of the same endpoint) on a server that also accepts NoSec;
- the device serves its objects only under its context;
- the server's requests to the device and the device's requests are unreadable on the wire
  (no Package URI, no envelope bytes, no links, no endpoint parameter in plain text).
"""

from __future__ import annotations

import asyncio
import re
import selectors
import socket
import threading
from pathlib import Path
from typing import Any

import aiocoap  # type: ignore[import-untyped]
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]

from lwm2m.lwm2m_kit import World, world
from lwm2m.test_suitkit_client import WAIT, lwm2m_client
from notice_kit import wait_until
from suitkit import lwm2m_oscore


class UdpProxy:
    """Relays datagrams between one client (on ``port``) and the server at ``target``,
    keeping each: ``upstream`` (client -> server) and ``downstream`` (server -> client)."""

    def __init__(self, target: int) -> None:
        self.target = ("127.0.0.1", target)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.port = int(self.front.getsockname()[1])
        self.client: Any = None
        self.upstream: list[bytes] = []
        self.downstream: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> UdpProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.front.close()
        self.back.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.front, selectors.EVENT_READ)
            selector.register(self.back, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(0.1):
                    data, sender = key.fileobj.recvfrom(65536)  # type: ignore[union-attr]
                    if key.fileobj is self.front:
                        self.client = sender
                        self.upstream.append(data)
                        self.back.sendto(data, self.target)
                    elif self.client is not None:
                        self.downstream.append(data)
                        self.front.sendto(data, self.client)


async def _request(port: int, code: Any, path: tuple[str, ...], query: tuple[str, ...] = (),
                   payload: bytes = b"", *, oscore: Any = None) -> Any:
    """The response (or the exception) of one request, protected with ``oscore`` if given."""
    ctx = await aiocoap.Context.create_client_context()
    if oscore is not None:
        ctx.client_credentials[f"coap://127.0.0.1:{port}/*"] = oscore
    try:
        message = aiocoap.Message(code=code, uri=f"coap://127.0.0.1:{port}", payload=payload)
        message.opt.uri_path = path
        message.opt.uri_query = query
        return await asyncio.wait_for(ctx.request(message).response, 30)
    except Exception as e:  # noqa: BLE001 - an unprotected error answer is one outcome
        return e
    finally:
        await ctx.shutdown()


def _register(w: World, endpoint: str, *, oscore: Any = None) -> Any:
    return asyncio.run(_request(w.lwm2m.port, Code.POST, ("rd",),
                                (f"ep={endpoint}", "lt=60", "b=U"), b"</3/0>,</5/0>",
                                oscore=oscore))


def _context(tmp: Path, name: str, device_id: str, secret: bytes) -> Any:
    return lwm2m_oscore.open_context(tmp / name, device_id=device_id, secret=secret,
                                     server=False)


def _secret(w: World, device_id: str) -> bytes:
    return lwm2m_oscore.master_secret(lwm2m_oscore.credential_digest(w.tokens[device_id]))


def test_a_nosec_registration_is_refused_by_an_oscore_server(tmp_path: Path) -> None:
    with world(tmp_path, nosec=False) as w:
        _, device_id = w.device()
        response = _register(w, device_id)
        assert response.code == Code.UNAUTHORIZED, response
        assert b"expected an OSCORE-protected request" in response.payload
        assert w.lwm2m.registered() == {}
        assert "lwm2m.security" not in w.record(device_id)["hardware"]


def test_a_registration_with_the_wrong_secret_is_refused(tmp_path: Path) -> None:
    with world(tmp_path, nosec=False) as w:
        _, device_id = w.device()
        wrong = _context(tmp_path, "wrong", device_id, b"\x07" * 32)
        try:
            response = _register(w, device_id, oscore=wrong)
        finally:
            lwm2m_oscore.close_context(wrong)
        assert isinstance(response, Exception) or not response.code.is_successful(), response
        assert w.lwm2m.registered() == {}
        assert "lwm2m.security" not in w.record(device_id)["hardware"]


def test_a_device_cannot_register_as_another_under_its_own_context(tmp_path: Path) -> None:
    with world(tmp_path, nosec=False) as w:
        _, mine = w.device()
        _, other = w.device()
        own = _context(tmp_path, "own", mine, _secret(w, mine))
        try:
            claimed = _register(w, other, oscore=own)
            assert claimed.code == Code.FORBIDDEN, claimed
            assert b"is not the device of this OSCORE context" in claimed.payload
            assert w.lwm2m.registered() == {}
            # the same context registers as itself (the refusal was the name, not the key)
            assert _register(w, mine, oscore=own).code == Code.CREATED
        finally:
            lwm2m_oscore.close_context(own)
        assert list(w.lwm2m.registered()) == [mine]
        assert "lwm2m.security" not in w.record(other)["hardware"]


def test_a_replayed_oscore_registration_is_refused(tmp_path: Path) -> None:
    with world(tmp_path, nosec=False) as w:
        folder, device_id = w.device()
        with UdpProxy(w.lwm2m.port) as proxy, lwm2m_client(
                w, folder, device_id, server=f"coap://127.0.0.1:{proxy.port}") as client:
            assert client.said("registered with")
            registration = proxy.upstream[0]
        wait_until(lambda: device_id not in w.lwm2m.registered(), WAIT,
                   "the client to de-register on exit")
        replayer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            replayer.settimeout(30)
            replayer.bind(("127.0.0.1", 0))
            replayer.sendto(registration, ("127.0.0.1", w.lwm2m.port))
            answer = aiocoap.Message.decode(replayer.recv(65536))
        finally:
            replayer.close()
        assert answer.code == Code.UNAUTHORIZED and b"Replay" in answer.payload, answer
        assert w.lwm2m.registered() == {}


def test_the_wire_is_unreadable_without_the_context(tmp_path: Path) -> None:
    """Every request either way is an OSCORE message (outer POST/FETCH, no Uri-Path): the
    Package URI the server writes, the links and the endpoint parameter the device sends are
    nowhere in plain text; neither is the envelope the server pushes."""
    with world(tmp_path, nosec=False) as w:
        for delivery in ("pull", "push"):
            folder, device_id = w.device()
            release = w.release()
            url = w.tracker.url + release["envelope"]["url"]
            with w.client() as c:
                envelope = c.get(url).content
            with UdpProxy(w.lwm2m.port) as proxy, lwm2m_client(
                    w, folder, device_id, delivery=delivery,
                    server=f"coap://127.0.0.1:{proxy.port}"):
                w.deploy(release, device_id)
                wait_until(lambda d=device_id: w.record(d)["state"] in ("succeeded", "failed"),
                           WAIT, f"the {delivery} update through the proxy to end")
            assert w.record(device_id)["state"] == "succeeded", w.history(device_id)
            wire = proxy.upstream + proxy.downstream
            requests = [m for m in map(aiocoap.Message.decode, wire) if m.code.is_request()]
            assert len(requests) > 5
            for message in requests:
                assert message.opt.oscore is not None, message
                assert message.opt.uri_path == () and message.opt.uri_query == (), message
            for plain in (url.encode(), b"</5/0>", f"ep={device_id}".encode(), b"5/0/3",
                          envelope[200:232]):
                assert not any(plain in datagram for datagram in wire), (delivery, plain)


def test_nosec_requests_cannot_touch_an_oscore_registration(tmp_path: Path) -> None:
    """On a server that accepts NoSec too: a NoSec update or de-registration of the OSCORE
    registration's location, and a NoSec registration of the same endpoint from another
    address, are refused; the device's objects answer NoSec requests 4.01."""
    with world(tmp_path) as w:
        folder, device_id = w.device()
        with lwm2m_client(w, folder, device_id) as client:
            wait_until(lambda: "lwm2m.manufacturer" in w.record(device_id)["hardware"], WAIT,
                       "the LwM2M server to read Object 3 over OSCORE")
            line = next(line for line in client.lines if line.startswith("registered with"))
            location = re.search(r"\(/(rd/[0-9a-f]+),", line)
            assert location is not None, line
            path = tuple(location.group(1).split("/"))
            port = w.lwm2m.port
            deleted = asyncio.run(_request(port, Code.DELETE, path))
            assert deleted.code == Code.FORBIDDEN, deleted
            updated = asyncio.run(_request(port, Code.POST, path, ("lt=1",)))
            assert updated.code == Code.FORBIDDEN, updated
            again = _register(w, device_id)
            assert again.code == Code.FORBIDDEN, again
            assert w.lwm2m.registered()[device_id]["lifetime"] == 60
            assert w.record(device_id)["hardware"]["lwm2m.security"] == "oscore (authenticated)"
            # the device's objects: a NoSec request from anywhere is refused
            device_port = int(w.lwm2m.registered()[device_id]["address"].rpartition(":")[2])
            read = asyncio.run(_request(device_port, Code.GET, ("5", "0", "3")))
            assert read.code == Code.UNAUTHORIZED and b"OSCORE" in read.payload, read
            wrote = asyncio.run(_request(device_port, Code.PUT, ("5", "0", "1"), (),
                                         b"http://127.0.0.1:1/evil.suit"))
            assert wrote.code == Code.UNAUTHORIZED, wrote
            assert not client.said("downloading http://127.0.0.1:1/")


def test_the_device_over_oscore_replaces_a_nosec_registration_of_its_name(
        tmp_path: Path) -> None:
    """On a server that accepts NoSec too, anyone may register a device's name without
    security first; the device, proving itself with its context, takes its name back."""
    with world(tmp_path) as w:
        folder, device_id = w.device()
        squatter = _register(w, device_id)
        assert squatter.code == Code.CREATED, squatter
        assert w.record(device_id)["hardware"]["lwm2m.security"] == "nosec (unauthenticated)"
        with lwm2m_client(w, folder, device_id) as client:
            wait_until(lambda: client.said("registered with") or client.said("4.03"), WAIT,
                       "the device's own registration to be answered")
            assert client.said("registered with"), client.lines
            assert w.record(device_id)["hardware"]["lwm2m.security"] == "oscore (authenticated)"
