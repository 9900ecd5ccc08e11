"""Attacks on the tracker's LwM2M server edge over plain UDP (NoSec): malformed CoAP and LwM2M
messages, unknown endpoints, another device's endpoint name, oversized bodies. Each gets a
clear error (a CoAP error code with a one-line diagnostic) and changes nothing: no
registration, no tracker record touched, the server still serves the next device."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiocoap  # type: ignore[import-untyped]
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]

from lwm2m.lwm2m_kit import World, world
from lwm2m.test_registration import register, request
from notice_kit import wait_until


def _unchanged(w: World, device_id: str, before: dict[str, Any]) -> None:
    after = w.record(device_id)
    assert after["hardware"] == before["hardware"] and after["state"] == before["state"]


def test_lwm2m_malformed_registrations_are_refused_and_change_nothing(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        _, device_id = w.device()
        before = w.record(device_id)
        cases: list[tuple[tuple[str, ...], bytes, Any, bytes]] = [
            ((f"ep={device_id}", "lt=abc"), b"</5/0>", Code.BAD_REQUEST, b"lt: expected"),
            ((f"ep={device_id}", "lt=0"), b"</5/0>", Code.BAD_REQUEST, b"lt: expected"),
            ((f"ep={device_id}", "lt=99999999999"), b"</5/0>", Code.BAD_REQUEST, b"lt:"),
            ((f"ep={device_id}", "b=T"), b"</5/0>", Code.BAD_REQUEST, b"b: only binding U"),
            (("lt=60",), b"</5/0>", Code.BAD_REQUEST, b"endpoint name (ep=) is missing"),
            ((f"ep={device_id}", f"ep={device_id}"), b"</5/0>", Code.BAD_REQUEST, b"distinct"),
            (("ep=../../etc", "lt=60"), b"</5/0>", Code.BAD_REQUEST, b"ep: expected"),
            (("ep=" + "a" * 60,), b"</5/0>", Code.BAD_REQUEST, b"ep: expected"),
            (("ep=\x00nul",), b"</5/0>", Code.BAD_REQUEST, b"ep: expected"),
            ((f"ep={device_id}",), b"\xff\xfe</5/0>", Code.BAD_REQUEST, b"body: expected"),
            ((f"ep={device_id}",), b"5/0,<<>>", Code.BAD_REQUEST, b"body: expected links"),
            ((f"ep={device_id}",), b"</5/0>," * 200, Code.REQUEST_ENTITY_TOO_LARGE, b"body:"),
            (tuple(f"x{i}=1" for i in range(40)), b"", Code.BAD_REQUEST, b"query: at most"),
        ]
        for query, payload, code, message in cases:
            response = asyncio.run(request(w, Code.POST, "/rd", query, payload))
            assert response.code == code, (query, payload[:20], response)
            assert message in response.payload, (query, response.payload)
            assert len(response.payload) <= 200
        for code, path in ((Code.GET, "/rd"), (Code.PUT, "/rd"), (Code.POST, "/rd/nope"),
                           (Code.DELETE, "/rd/nope"), (Code.POST, "/bs"),
                           (Code.GET, "/rd/a/b/c")):
            response = asyncio.run(request(w, code, path))
            assert not response.code.is_successful(), (code, path, response)
        assert w.lwm2m.registered() == {}
        _unchanged(w, device_id, before)


def test_lwm2m_unknown_endpoint_is_refused(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        response = register(w, "11111111-2222-4333-8444-555555555555")
        assert response.code == Code.FORBIDDEN and b"no device" in response.payload
        assert w.lwm2m.registered() == {}


def test_lwm2m_another_devices_endpoint_name_is_refused_while_it_is_registered(
        tmp_path: Path) -> None:
    with world(tmp_path) as w:
        _, device_id = w.device()

        async def scenario() -> tuple[Any, Any, Any]:
            owner = await aiocoap.Context.create_client_context()
            thief = await aiocoap.Context.create_client_context()
            try:
                first = await request(w, Code.POST, "/rd", (f"ep={device_id}", "lt=300"),
                                      b"</5/0>", context=owner)
                stolen = await request(w, Code.POST, "/rd", (f"ep={device_id}", "lt=300"),
                                       b"</5/0>", context=thief)
                # the location is not guessable: a made-up one is not the device's
                update = await request(w, Code.DELETE, "/rd/0000000000000000",
                                       context=thief)
                return first, stolen, update
            finally:
                await thief.shutdown()
                await owner.shutdown()

        first, stolen, update = asyncio.run(scenario())
        assert first.code == Code.CREATED
        assert stolen.code == Code.FORBIDDEN and b"another address" in stolen.payload
        assert update.code == Code.NOT_FOUND
        registered = w.lwm2m.registered()[device_id]
        assert registered["lifetime"] == 300


def test_lwm2m_garbage_datagrams_do_not_stop_the_server(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        _, device_id = w.device()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            for datagram in (b"", b"\x00", b"\xff" * 64, b"\x40\x02\x00\x01\xb2rd\xff",
                             b"\x44\x02\x00\x01" + b"\xee" * 1400, bytes(range(256))):
                raw.sendto(datagram, ("127.0.0.1", w.lwm2m.port))
        assert register(w, device_id).code == Code.CREATED
        assert list(w.lwm2m.registered()) == [device_id]


def _raw_request(sock: socket.socket, mid: int, path: tuple[str, ...],
                 query: tuple[str, ...], payload: bytes = b"") -> Any:
    """Send a CON request from a plain UDP socket (a device that never answers the server's
    own requests) and return the response to it (the server's requests are skipped)."""
    from aiocoap.numbers.types import Type  # type: ignore[import-untyped]

    message = aiocoap.Message(code=Code.POST, uri_path=path, uri_query=query,
                              payload=payload)
    message.mtype, message.mid, message.token = Type.CON, mid, mid.to_bytes(2, "big")
    sock.send(message.encode())
    while True:
        answer = aiocoap.Message.decode(sock.recv(2048))
        if answer.mid == mid and not answer.code.is_request():
            return answer


def test_lwm2m_registration_updates_in_a_loop_run_one_delivery_at_a_time(
        tmp_path: Path) -> None:
    with world(tmp_path, request_timeout=30.0) as w:
        _, device_id = w.device()
        w.deploy(w.release(), device_id)  # something to deliver, to a client that never answers
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.settimeout(30)
            raw.connect(("127.0.0.1", w.lwm2m.port))
            created = _raw_request(raw, 1, ("rd",), (f"ep={device_id}", "lt=300"), b"</5/0>")
            assert created.code == Code.CREATED
            location = tuple(created.opt.location_path)
            for mid in range(2, 52):
                assert _raw_request(raw, mid, location, ("lt=300",)).code == Code.CHANGED
            tasks = int(w.lwm2m.registered()[device_id]["tasks"])
        # the start-up (Object 3 reads, observations) and one delivery: not one per update
        assert tasks <= 4, tasks


def test_lwm2m_a_device_answering_with_garbage_changes_no_state_and_stores_bounded_facts(
        tmp_path: Path) -> None:
    from lwm2m.test_push import PushDevice, push_device

    class Hostile(PushDevice):
        def _site(self) -> Any:
            site = super()._site()
            for path, value in ((("3", "0", "0"), "\udcff" * 3000),
                                (("3", "0", "1"), "m" * 5000)):
                site.add_resource(path, _Garbage(value))
            self.state.value, self.result.value = "99999999", "-1"
            return site

    with world(tmp_path) as w:
        folder, device_id = w.device()
        before = w.record(device_id)
        with push_device(folder) as device:
            device.__class__ = Hostile
            assert device.register(w, device_id).code == Code.CREATED
            wait_until(lambda: "lwm2m.model" in w.record(device_id)["hardware"], 60,
                       "the server to read Object 3 from the hostile device")
        hardware = w.record(device_id)["hardware"]
        assert len(hardware["lwm2m.model"]) == 256
        assert all(len(v) <= 256 for v in hardware.values())
        assert w.record(device_id)["state"] == before["state"]


class _Garbage(aiocoap.resource.Resource):  # type: ignore[misc]
    def __init__(self, value: str) -> None:
        super().__init__()
        self.value = value

    async def render_get(self, request: Any) -> Any:
        return aiocoap.Message(payload=self.value.encode("utf-8", "surrogateescape"),
                               content_format=0)
