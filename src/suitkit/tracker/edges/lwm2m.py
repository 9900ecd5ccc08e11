"""The LwM2M server edge (OMA LwM2M 1.0/1.1 Core, on aiocoap): registration interface and the
Firmware Update object (Object 5), translated to and from ``tracker.service`` calls.

What it implements:

- the registration interface (Core §6.2.1-6.2.3, §8.2.3): ``POST /rd?ep=..&lt=..&b=..`` with a
  link-format body (answered ``2.01 Created``, ``Location-Path: rd/<id>``), update
  (``POST /rd/<id>``), de-register (``DELETE /rd/<id>``), lifetime expiry. The endpoint name
  is the device's tracker record id: a name the tracker does not know is refused (4.03).
- Object 3 (Device): manufacturer, model, serial number and firmware version (3/0/0..3) are
  read after each registration into the device's hardware facts (``lwm2m.*``).
- Object 5 (Firmware Update), pull: the device's pending assignment is written to resource 1
  (Package URI: the firmware server's envelope URL); State (5/0/3) and Update Result (5/0/5)
  are observed (and read again while an update is under way, so a lost notification only
  delays it); when State is Downloaded and the assignment is to be installed now, resource 2
  (Update) is executed: the campaign's install trigger. States and results become tracker
  events (``STATE_EVENTS``, ``RESULT_EVENTS``), walked along the tracker's state machine.
- Object 5, push: a device whose Firmware Update Delivery Method (5/0/9, LwM2M 1.1) is 1 (push
  only) gets the envelope itself written into resource 0 (Package, Content-Format 42,
  block-wise: aiocoap's Block1), read from the envelope URL over HTTP; an envelope over
  ``max_package`` bytes (1 MiB) fails the update with the reason, unsent.
- Delivery starts on registration and on each change of the device's assignment (the notices
  hub's watcher of each registered device), like every other push channel. The hub hears the
  changes of this process and, on PostgreSQL, those committed on every other replica
  (``notices.pg``): a deployment made through any replica reaches the devices registered here.

Security: only NoSec is implemented, and only when the operator turns it on
(``nosec=True``; ``suitkit serve --lwm2m-nosec``); each device that registers over it is
marked ``lwm2m.security: nosec (unauthenticated)`` in the tracker. The installed aiocoap has
OSCORE (a server-side security context per device could be derived from its tracker
credential) and a DTLS *client* (tinydtls) but no DTLS-PSK server transport usable here:
DTLS-PSK would need a server-side DTLS stack; OSCORE is the next step. With NoSec anyone on
the network can claim an endpoint name: the device still trusts only the envelope's
signatures, and the tracker shows the device as unauthenticated. A live registration is
bound to the address it came from: a second registration of the same endpoint name from
another address is refused (4.03) until the first de-registers or expires; update and
de-register need the registration's unguessable location.

Deliberately not here: TLV and SenML content formats (plain text is what lwm2m-node-lib
speaks), bootstrap, queue mode.
Registrations live in this process (a LwM2M registration is bound to one server's UDP
association): with replicas, each device registers with one of them, and hears the changes
made on any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# aiocoap ships no type information (no py.typed): the imports below are the untyped seam.
import aiocoap  # type: ignore[import-untyped]
import aiocoap.error  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
import httpx
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]

from suitkit.errors import StorageError
from suitkit.tracker.model import FINAL_STATES, TRANSITIONS
from suitkit.tracker.notices import NotificationHub, is_record_id
from suitkit.tracker.service import NotAssigned, TrackerDB, TransitionRefused

__all__ = [
    "RESULT_EVENTS",
    "STATE_EVENTS",
    "Lwm2mConfig",
    "Lwm2mServer",
    "RegistrationError",
    "parse_registration",
]

_log = logging.getLogger(__name__)

STATE_EVENTS: Mapping[int, str | None] = {0: None, 1: "downloading", 2: "downloaded",
                                          3: "installing"}
"""Object 5 State (5/0/3) -> tracker state (0 Idle says nothing by itself)."""

RESULT_EVENTS: Mapping[int, tuple[str, str] | None] = {
    0: None,
    1: ("succeeded", "firmware updated successfully"),
    2: ("failed", "not enough flash memory for the new firmware package"),
    3: ("failed", "out of RAM during the download"),
    4: ("failed", "connection lost during the download"),
    5: ("failed", "integrity check failure for the new firmware package"),
    6: ("failed", "unsupported package type"),
    7: ("failed", "invalid URI"),
    8: ("failed", "firmware update failed"),
    9: ("failed", "unsupported protocol"),
}
"""Object 5 Update Result (5/0/5) -> (tracker state, the spec's wording), Core Appendix E.6."""

OBJECT3_FACTS = {0: "lwm2m.manufacturer", 1: "lwm2m.model", 2: "lwm2m.serial",
                 3: "lwm2m.firmware_version"}

_MAX_BODY = 1024
_MAX_ENDPOINT = 36
_LINK = re.compile(r"<(/[0-9A-Za-z_./-]{0,64})>(;[^,]{0,128})?")
_CONTENT_TEXT = 0
_CONTENT_OCTETS = 42


class RegistrationError(Exception):
    """A registration request the server refuses: ``code`` and a one-line reason."""

    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Lwm2mConfig:
    """The LwM2M server's settings. ``nosec`` must be set: it is the only transport there is
    (see the module docstring)."""

    host: str = "127.0.0.1"
    port: int = 5683
    nosec: bool = False
    min_lifetime: int = 1
    max_lifetime: int = 7 * 24 * 3600
    default_lifetime: int = 86400
    max_registrations: int = 10_000
    poll_interval: float = 1.0
    """Seconds between reads of State and Update Result while an update is under way."""
    request_timeout: float = 20.0
    max_package: int = 1024 * 1024
    """Largest envelope pushed into 5/0/0 (bytes); a larger one fails the update, unsent."""


@dataclass(frozen=True)
class Registration:
    """One parsed registration request."""

    endpoint: str
    lifetime: int
    binding: str
    version: str
    objects: tuple[str, ...]


def parse_registration(query: list[str], payload: bytes, config: Lwm2mConfig, *,
                       update: bool = False) -> dict[str, Any]:
    """The registration's parameters from its Uri-Query options and link-format body.

    Raises:
        RegistrationError: a parameter or the body is malformed or out of bounds.
    """
    params: dict[str, str] = {}
    for item in query:
        name, sep, value = str(item).partition("=")
        if not sep or name in params or len(value) > 64:
            raise RegistrationError(Code.BAD_REQUEST,
                                    f"query: expected distinct name=value pairs, got {item[:40]!r}")
        params[name] = value
    out: dict[str, Any] = {}
    if not update:
        ep = params.get("ep")
        if ep is None:
            raise RegistrationError(Code.BAD_REQUEST, "query: the endpoint name (ep=) is missing")
        if not is_record_id(ep, _MAX_ENDPOINT):
            raise RegistrationError(Code.BAD_REQUEST, f"ep: expected a tracker device id, got "
                                                      f"{ep[:40]!r}")
        out["endpoint"] = ep
    elif "ep" in params:
        raise RegistrationError(Code.BAD_REQUEST,
                                "query: an update cannot change the endpoint name")
    if "lt" in params:
        lt = params["lt"]
        if not lt.isdigit() or not config.min_lifetime <= int(lt) <= config.max_lifetime:
            raise RegistrationError(Code.BAD_REQUEST, f"lt: expected {config.min_lifetime} to "
                                    f"{config.max_lifetime} seconds, got {lt[:20]!r}")
        out["lifetime"] = int(lt)
    if "b" in params and params["b"] != "U":
        raise RegistrationError(Code.BAD_REQUEST, f"b: only binding U (UDP) is served, got "
                                                  f"{params['b'][:8]!r}")
    if len(payload) > _MAX_BODY:
        raise RegistrationError(Code.REQUEST_ENTITY_TOO_LARGE,
                                f"body: at most {_MAX_BODY} bytes of links, got {len(payload)}")
    if payload or not update:
        try:
            text = payload.decode("ascii")
        except UnicodeDecodeError:
            raise RegistrationError(Code.BAD_REQUEST, "body: expected CoRE link format "
                                    "(ASCII), got other bytes") from None
        links = text.split(",") if text else []
        objects = []
        for link in links:
            match = _LINK.fullmatch(link.strip())
            if match is None:
                raise RegistrationError(Code.BAD_REQUEST, f"body: expected links like </5/0>, "
                                        f"got {link[:40]!r}")
            objects.append(match.group(1))
        out["objects"] = tuple(objects)
    return out


@dataclass
class _Device:
    endpoint: str
    location: str
    remote: Any
    address: str
    lifetime: int
    expires: float
    objects: tuple[str, ...]
    state: int | None = None
    result: int | None = None
    written: str | None = None  # the Package URI last written (or whose envelope was pushed)
    push: bool = False  # 5/0/9 (Firmware Update Delivery Method) said push only
    executed: str | None = None  # the Package URI whose Update was executed
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    delivering: bool = False  # a delivery runs: a new reason to deliver only marks ``again``
    again: bool = False
    unwatch: Callable[[], None] | None = None  # stops hearing the device's notices


class _Registry(aiocoap.resource.Resource):  # type: ignore[misc]
    """``/rd`` and ``/rd/<location>``."""

    def __init__(self, server: Lwm2mServer) -> None:
        super().__init__()
        self.server = server

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        return False  # a registration body is small: a Block1 upload is refused

    async def render(self, request: Any) -> Any:
        try:
            return await self.server.handle(request)
        except RegistrationError as e:
            return aiocoap.Message(code=e.code, payload=str(e).encode()[:200],
                                   content_format=_CONTENT_TEXT)


class Lwm2mServer:
    """The LwM2M server on its own event loop thread (``start``/``stop``), over ``db`` and
    ``hub``."""

    def __init__(self, db: TrackerDB, hub: NotificationHub, config: Lwm2mConfig,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        if not config.nosec:
            raise StorageError("LwM2M: only NoSec is available (no DTLS-PSK server transport "
                               "in aiocoap; OSCORE not wired yet): turn it on explicitly")
        self.db, self.hub, self.config, self.clock = db, hub, config, clock
        self.port = config.port
        self._by_location: dict[str, _Device] = {}
        self._by_endpoint: dict[str, _Device] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._context: Any = None
        self._sweeper: asyncio.Task[Any] | None = None

    # ---- life cycle

    def start(self) -> None:
        """Bind and serve in a background thread; ``self.port`` is the port bound.

        Raises:
            StorageError: the UDP port cannot be bound.
        """
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except (OSError, ValueError, aiocoap.error.Error) as e:
                failure.append(e)
            finally:
                ready.set()
            if not failure:
                loop.run_forever()
            _drain(loop)
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="suitkit-lwm2m-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise StorageError(f"the LwM2M server on {self.config.host}:{self.port} did not start")
        if failure:
            self._thread.join(10)
            raise StorageError(f"cannot start the LwM2M server on {self.config.host}:"
                               f"{self.port} (UDP): {failure[0]}") from failure[0]

    async def _start(self) -> None:
        if self.port == 0:
            self.port = _free_udp_port(self.config.host)
        self._context = await aiocoap.Context.create_server_context(
            _PathSite(_Registry(self)), bind=(self.config.host, self.port),
            transports=["udp6"])  # LwM2M 1.0 over UDP only: no TCP/TLS listener on the port
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep())

    def stop(self) -> None:
        """Shut the server down and join its thread (idempotent)."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            tasks = [t for d in self._by_endpoint.values() for t in d.tasks]
            for device in list(self._by_endpoint.values()):
                self._forget(device)
            if self._sweeper is not None:
                self._sweeper.cancel()
                tasks.append(self._sweeper)
            await asyncio.wait(tasks, timeout=5) if tasks else None
            if self._context is not None:
                await self._context.shutdown()
        if not loop.is_closed():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    def registered(self) -> dict[str, dict[str, Any]]:
        """The live registrations: endpoint -> {address, lifetime, objects, state, result}."""
        return {ep: {"address": d.address, "lifetime": d.lifetime, "objects": list(d.objects),
                     "state": d.state, "result": d.result, "tasks": len(d.tasks)}
                for ep, d in list(self._by_endpoint.items())}

    # ---- registration interface

    async def _db(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(function, *args, **kwargs))

    async def handle(self, request: Any) -> Any:
        """One request to ``/rd`` or ``/rd/<location>``."""
        path = tuple(request.opt.uri_path)
        query = list(request.opt.uri_query)
        if request.opt.block1 is not None:
            raise RegistrationError(Code.REQUEST_ENTITY_TOO_LARGE, f"body: at most {_MAX_BODY} "
                                    "bytes in one message (no block-wise registration)")
        if len(query) > 16:
            raise RegistrationError(Code.BAD_REQUEST, f"query: at most 16 parameters, got "
                                    f"{len(query)}")
        if path == ("rd",):
            if request.code != Code.POST:
                raise RegistrationError(Code.METHOD_NOT_ALLOWED, "/rd: expected POST (register)")
            return await self._register(request, query)
        if len(path) == 2 and path[0] == "rd":
            device = self._by_location.get(path[1])
            if device is None:
                raise RegistrationError(Code.NOT_FOUND, "no such registration (expired, "
                                        "de-registered, or never made): register again")
            if request.code == Code.DELETE:
                self._forget(device)
                return aiocoap.Message(code=Code.DELETED)
            if request.code != Code.POST:
                raise RegistrationError(Code.METHOD_NOT_ALLOWED,
                                        "/rd/<id>: expected POST (update) or DELETE")
            params = parse_registration(query, request.payload, self.config, update=True)
            device.lifetime = params.get("lifetime", device.lifetime)
            device.objects = params.get("objects", device.objects)
            device.remote = request.remote
            device.address = str(request.remote.hostinfo)
            device.expires = self.clock() + device.lifetime
            self._kick(device)
            return aiocoap.Message(code=Code.CHANGED)
        raise RegistrationError(Code.NOT_FOUND, "expected /rd or /rd/<registration>")

    async def _register(self, request: Any, query: list[str]) -> Any:
        params = parse_registration(query, request.payload, self.config)
        endpoint: str = params["endpoint"]
        address = str(request.remote.hostinfo)
        try:
            known = await self._db(self.db.exists, endpoint)
        except StorageError:
            raise RegistrationError(Code.INTERNAL_SERVER_ERROR,
                                    "the tracker could not read its database") from None
        if not known:
            raise RegistrationError(Code.FORBIDDEN, f"ep: no device {endpoint!r} in the tracker "
                                    "(register the device there first)")
        old = self._by_endpoint.get(endpoint)
        if old is not None and old.address != address and old.expires > self.clock():
            raise RegistrationError(Code.FORBIDDEN, f"ep: {endpoint} is registered from another "
                                    "address; de-register it or wait for its lifetime to end")
        if old is not None:
            self._forget(old)
        if len(self._by_endpoint) >= self.config.max_registrations:
            raise RegistrationError(Code.SERVICE_UNAVAILABLE, "the LwM2M server holds as many "
                                    "registrations as it may; try again later")
        try:  # marked before it is registered: no NoSec device is ever shown as authenticated
            await self._db(self.db.merge_facts, endpoint, {
                "lwm2m.security": "nosec (unauthenticated)", "lwm2m.address": address})
        except StorageError:
            raise RegistrationError(Code.INTERNAL_SERVER_ERROR,
                                    "the tracker could not record the registration") from None
        lifetime = params.get("lifetime", self.config.default_lifetime)
        device = _Device(endpoint=endpoint, location=secrets.token_hex(8), remote=request.remote,
                         address=address, lifetime=lifetime,
                         expires=self.clock() + lifetime, objects=params["objects"])
        self._by_endpoint[endpoint] = device
        self._by_location[device.location] = device
        # the device's own notices, from this process and (PostgreSQL) from every other
        # replica: a watcher of every device (``watch(None, ...)``) hears this process's only
        loop = asyncio.get_running_loop()

        def changed(device_id: str, _: int) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed during a shutdown
                loop.call_soon_threadsafe(self._changed, device_id)
        device.unwatch = self.hub.watch(endpoint, changed)
        self._spawn(device, self._start_device(device))
        return aiocoap.Message(code=Code.CREATED, location_path=("rd", device.location))

    def _forget(self, device: _Device) -> None:
        if device.unwatch is not None:
            device.unwatch()
            device.unwatch = None
        if self._by_endpoint.get(device.endpoint) is device:
            del self._by_endpoint[device.endpoint]
        self._by_location.pop(device.location, None)
        for task in list(device.tasks):
            task.cancel()

    def _spawn(self, device: _Device, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        device.tasks.add(task)
        task.add_done_callback(device.tasks.discard)

    async def _sweep(self) -> None:
        """Forget registrations whose lifetime ended (Core §6.2.1: the client must update
        before it does)."""
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            for device in list(self._by_endpoint.values()):
                if device.expires <= now:
                    _log.info("LwM2M: registration of %s expired", device.endpoint)
                    self._forget(device)

    def _changed(self, device_id: str) -> None:
        device = self._by_endpoint.get(device_id)
        if device is not None:
            self._kick(device)

    # ---- talking to the client

    def _uri(self, device: _Device, path: str) -> str:
        host = device.remote.hostinfo
        return f"coap://{host}{path}"

    async def _request(self, device: _Device, code: Any, path: str, payload: bytes = b"",
                       **options: Any) -> Any:
        for attempt in range(3):  # a client may open its listener just after registering
            message = aiocoap.Message(code=code, uri=self._uri(device, path), payload=payload,
                                      **options)
            # a read takes the first block only (at most 1024 bytes): aiocoap would assemble
            # a Block2 answer of any size the device makes; a push sends its Block1 blocks
            blockwise = code != Code.GET
            try:
                return await asyncio.wait_for(
                    self._context.request(message, handle_blockwise=blockwise).response,
                    self.config.request_timeout)
            except aiocoap.error.NetworkError:
                if attempt == 2:
                    raise
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def _read_int(self, device: _Device, path: str) -> int | None:
        response = await self._request(device, Code.GET, path)
        return _int_of(response)

    async def _start_device(self, device: _Device) -> None:
        """After a registration: mark how it connected, read Object 3, observe State and
        Update Result, deliver what is pending."""
        facts: dict[str, str] = {}
        for resource, name in OBJECT3_FACTS.items():
            if not any(o.startswith("/3/0") or o == "/3" for o in device.objects):
                break
            with contextlib.suppress(Exception):
                response = await self._request(device, Code.GET, f"/3/0/{resource}")
                if response.code == Code.CONTENT:
                    facts[name] = _text_of(response)
        if facts:
            try:
                await self._db(self.db.merge_facts, device.endpoint, facts)
            except StorageError as e:
                _log.warning("LwM2M: %s: Object 3 not stored: %s", device.endpoint, e)
        if any(o.startswith("/5") for o in device.objects):
            with contextlib.suppress(Exception):  # LwM2M 1.1; a 1.0 client may not have it
                device.push = await self._read_int(device, "/5/0/9") == 1
            for resource in (3, 5):
                self._spawn(device, self._observe(device, f"/5/0/{resource}"))
            self._kick(device)

    async def _observe(self, device: _Device, path: str) -> None:
        message = aiocoap.Message(code=Code.GET, uri=self._uri(device, path), observe=0)
        request = self._context.request(message, handle_blockwise=False)
        try:
            first = await asyncio.wait_for(request.response, self.config.request_timeout)
            await self._seen(device, path, _int_of(first))
            async for notification in request.observation:
                await self._seen(device, path, _int_of(notification))
        except (TimeoutError, aiocoap.error.Error) as e:
            _log.info("LwM2M: %s: observation of %s ended: %s", device.endpoint, path, e)
        finally:
            with contextlib.suppress(Exception):
                request.observation.cancel()

    async def _seen(self, device: _Device, path: str, value: int | None) -> None:
        if value is None:
            return
        if path.endswith("/3"):
            if value == device.state:
                return
            device.state = value
        else:
            if value == device.result:
                return
            device.result = value
        await self._advance(device)

    def _kick(self, device: _Device) -> None:
        """Deliver the device's pending assignment: one delivery at a time per device (a
        client sending registration updates in a loop, or a burst of assignment changes,
        cannot make the server run many), run again once if asked meanwhile."""
        if device.delivering:
            device.again = True
            return
        device.delivering = True

        async def deliveries() -> None:
            try:
                while True:
                    device.again = False
                    await self._deliver(device)
                    if not device.again:
                        return
            except (TimeoutError, aiocoap.error.Error) as e:
                _log.info("LwM2M: %s: delivery stopped: %s", device.endpoint, e)
            finally:
                device.delivering = False
        self._spawn(device, deliveries())

    async def _deliver(self, device: _Device) -> None:
        """Write the Package URI of the pending assignment; execute Update when it is
        downloaded and to be installed; poll State and Update Result while under way."""
        try:
            pending = await self._db(self.db.pending_update, device.endpoint)
        except StorageError as e:
            _log.warning("LwM2M: %s: cannot read the assignment: %s", device.endpoint, e)
            return
        if pending is None:
            return
        uri = str(pending["envelope_url"])
        if device.written != uri and device.push:
            envelope = await self._fetch(device, uri)
            if envelope is None:
                return
            response = await self._request(device, Code.PUT, "/5/0/0", envelope,
                                           content_format=_CONTENT_OCTETS)
            if not response.code.is_successful():
                _log.warning("LwM2M: %s refused the Package: %s", device.endpoint,
                             response.code)
                return
            device.written, device.executed = uri, None
        elif device.written != uri:
            response = await self._request(device, Code.PUT, "/5/0/1", uri.encode(),
                                           content_format=_CONTENT_TEXT)
            if not response.code.is_successful():
                _log.warning("LwM2M: %s refused the Package URI: %s", device.endpoint,
                             response.code)
                return
            device.written, device.executed = uri, None
        await self._advance(device)
        while device.written == uri and self._by_endpoint.get(device.endpoint) is device:
            await asyncio.sleep(self.config.poll_interval)
            still = await self._db(self.db.pending_update, device.endpoint)
            if still is None or str(still["envelope_url"]) != uri:
                device.again = still is not None  # another assignment: deliver it
                return
            try:
                state = await self._read_int(device, "/5/0/3")
                result = await self._read_int(device, "/5/0/5")
            except (TimeoutError, aiocoap.error.Error):
                continue
            if state is not None:
                await self._seen(device, "/5/0/3", state)
            if result is not None:
                await self._seen(device, "/5/0/5", result)

    async def _fetch(self, device: _Device, uri: str) -> bytes | None:
        """The envelope to push, read from the firmware server's URL (at most
        ``max_package`` bytes); ``None`` after failing the update with the reason."""
        limit = self.config.max_package
        problem: str
        try:
            async with httpx.AsyncClient(timeout=self.config.request_timeout) as client, \
                    client.stream("GET", uri) as response:
                if response.status_code != 200:
                    problem = f"the envelope URL answered HTTP {response.status_code}"
                else:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > limit:
                            break
                    if len(body) <= limit:
                        return bytes(body)
                    problem = (f"the envelope is over the push limit of {limit} bytes "
                               "(5/0/0); deliver it by Package URI (pull)")
        except httpx.HTTPError as e:
            problem = f"cannot read the envelope to push: {type(e).__name__}"
        _log.warning("LwM2M: %s: %s", device.endpoint, problem)
        try:
            await self._db(self.db.add_event, device.endpoint, "failed", f"LwM2M: {problem}")
        except (StorageError, NotAssigned, TransitionRefused) as e:
            _log.warning("LwM2M: %s: failure not stored: %s", device.endpoint, e)
        return None

    async def _advance(self, device: _Device) -> None:
        """Map the device's State and Update Result onto the tracker; execute Update when
        the package is downloaded and the assignment says install."""
        if device.written is None:
            return
        target: tuple[str, str] | None = None
        if device.result is not None and RESULT_EVENTS.get(device.result) is not None:
            target = RESULT_EVENTS[device.result]
        elif device.result is not None and device.result not in RESULT_EVENTS:
            target = ("failed", f"unknown Update Result {device.result}")
        elif device.state is not None and STATE_EVENTS.get(device.state) is not None:
            wanted = STATE_EVENTS[device.state]
            assert wanted is not None
            target = (wanted, f"LwM2M State {device.state}")
        if target is not None:
            try:
                await self._db(walk_to, self.db, device.endpoint, target[0],
                               f"LwM2M: {target[1]}")
            except StorageError as e:
                _log.warning("LwM2M: %s: event not stored: %s", device.endpoint, e)
                return
        if device.state == 2 and device.executed != device.written:
            pending = await self._db(self.db.pending_update, device.endpoint)
            if (pending is not None and str(pending["envelope_url"]) == device.written
                    and pending.get("action", "install") == "install"):
                device.executed = device.written
                response = await self._request(device, Code.POST, "/5/0/2")
                if not response.code.is_successful():
                    device.executed = None
                    _log.warning("LwM2M: %s refused Update: %s", device.endpoint, response.code)


class _PathSite(aiocoap.resource.Resource):  # type: ignore[misc]
    """The server's root: every path under ``/rd`` to the registry, anything else 4.04
    (aiocoap's Site would match whole paths only)."""

    def __init__(self, registry: _Registry) -> None:
        super().__init__()
        self._registry = registry

    async def render(self, request: Any) -> Any:
        path = tuple(request.opt.uri_path)
        if path and path[0] == "rd" and len(path) <= 2:
            return await self._registry.render(request)
        return aiocoap.Message(code=Code.NOT_FOUND, payload=b"expected /rd or /rd/<registration>",
                               content_format=_CONTENT_TEXT)

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        return False


def walk_to(db: TrackerDB, device_id: str, state: str, detail: str) -> None:
    """Move the device to ``state`` along the tracker's state machine, through the states
    the device passed without saying so (a notification may be lost, or a client may go from
    Downloading to Idle with Update Result 1 at once). Nothing when the device is already
    there, or its update is not pending."""
    path = _path(db.device(device_id), state)
    for step in path:
        try:
            db.add_event(device_id, step, detail if step == state else
                         f"{detail} (passed through)", by_device=True)
        except (NotAssigned, TransitionRefused):
            return


def _path(device: Mapping[str, Any] | None, target: str) -> list[str]:
    current = device.get("state") if device is not None else None
    if current == target or current in FINAL_STATES or current is None:
        return []
    # breadth-first over TRANSITIONS, failure is reachable from every running state
    frontier: list[list[str]] = [[current]]
    seen = {current}
    while frontier:
        route = frontier.pop(0)
        for nxt in sorted(TRANSITIONS.get(route[-1], frozenset())):
            if nxt == target:
                return [*route[1:], nxt]
            if nxt not in seen and nxt not in FINAL_STATES and nxt != "notified":
                seen.add(nxt)
                frontier.append([*route, nxt])
    return []


def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and finish what is still pending on the stopped ``loop`` (as ``asyncio.run``
    does): a request that arrived during the shutdown left a coroutine never awaited."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                       socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _text_of(response: Any) -> str:
    return bytes(response.payload[:256]).decode("utf-8", "replace").strip()


def _int_of(response: Any) -> int | None:
    if not response.code.is_successful():
        return None
    text = _text_of(response)
    return int(text) if text.isdigit() and len(text) <= 3 else None
