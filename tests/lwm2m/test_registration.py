"""The LwM2M registration interface of the tracker's LwM2M edge (OMA LwM2M Core §6.2.1-6.2.3),
driven by a plain aiocoap client on loopback: register, update, de-register, lifetime expiry,
the endpoint name tied to the tracker's device record, NoSec devices marked unauthenticated."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiocoap  # type: ignore[import-untyped]
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]

from lwm2m.lwm2m_kit import World, world
from notice_kit import wait_until


async def request(w: World, code: Any, path: str, query: tuple[str, ...] = (),
                  payload: bytes = b"", *, context: Any = None) -> Any:
    own = context is None
    ctx = context if context is not None else await aiocoap.Context.create_client_context()
    try:
        message = aiocoap.Message(code=code, uri=f"coap://127.0.0.1:{w.lwm2m.port}{path}",
                                  payload=payload)
        message.opt.uri_query = query
        return await asyncio.wait_for(ctx.request(message).response, 30)
    finally:
        if own:
            await ctx.shutdown()


def register(w: World, endpoint: str, *, lifetime: int = 60, context: Any = None,
             links: bytes = b"</3/0>,</5/0>") -> Any:
    return asyncio.run(request(w, Code.POST, "/rd", (f"ep={endpoint}", f"lt={lifetime}",
                                                   "lwm2m=1.0", "b=U"), links, context=context))


def test_register_update_deregister(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        _, device_id = w.device()

        async def scenario() -> list[Any]:
            ctx = await aiocoap.Context.create_client_context()
            try:
                created = await request(w, Code.POST, "/rd", (f"ep={device_id}", "lt=60", "b=U"),
                                        b"</1/0>,</3/0>,</5/0>", context=ctx)
                location = "/" + "/".join(created.opt.location_path)
                updated = await request(w, Code.POST, location, ("lt=120",), b"", context=ctx)
                lifetime = w.lwm2m.registered()[device_id]["lifetime"]
                deleted = await request(w, Code.DELETE, location, (), b"", context=ctx)
                gone = await request(w, Code.POST, location, ("lt=120",), b"", context=ctx)
                return [created, updated, lifetime, deleted, gone]
            finally:
                await ctx.shutdown()

        created, updated, lifetime, deleted, gone = asyncio.run(scenario())
        assert created.code == Code.CREATED and created.opt.location_path[0] == "rd"
        assert updated.code == Code.CHANGED and lifetime == 120
        assert deleted.code == Code.DELETED
        assert gone.code == Code.NOT_FOUND
        assert device_id not in w.lwm2m.registered()
        # recorded before the registration was answered
        assert w.record(device_id)["hardware"]["lwm2m.security"] == "nosec (unauthenticated)"


def test_a_registration_expires_after_its_lifetime(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        _, device_id = w.device()
        assert register(w, device_id, lifetime=1).code == Code.CREATED
        wait_until(lambda: device_id not in w.lwm2m.registered(), 30,
                   "the registration with a 1 s lifetime to be forgotten")


def test_unknown_endpoint_is_refused(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        response = register(w, "00000000-0000-4000-8000-000000000000")
        assert response.code == Code.FORBIDDEN
        assert b"no device" in response.payload
        assert w.lwm2m.registered() == {}
