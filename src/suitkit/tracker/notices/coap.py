"""Update notices over CoAP Observe (RFC 7641): ``coap://host/notices/<device-id>``.

A GET answers the device's current notice (``notices.NotificationHub.current``) as JSON
(Content-Format 50); with ``Observe: 0`` the device also gets a notification after each change
of its assignment. The CLI adds ``NoticeResource`` to the firmware server's CoAP site
(``server.coap.create_coap_site(extra_resources=...)``), so the CoAP server does not import the
tracker.

Notices carry no secrets and are not authenticated here (plain UDP): the device trusts only the
envelope's signatures. Protect the path with OSCORE in production: as it is, anyone may observe
whether a device id has an update pending.

Observations are bounded, like the HTTP push connections: at most ``max_per_device`` (8) per
device id and ``max_total`` (10000) in all. Beyond them the GET is still answered, once,
without Observe (the notice's Max-Age tells the device when to ask again), so a flood of
registrations, spoofed or for made-up ids, cannot grow the server's memory.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

# aiocoap ships no type information (no py.typed): the imports below are the untyped seam.
import aiocoap  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]

from suitkit.errors import StorageError
from suitkit.tracker.notices import NotificationHub, is_record_id

__all__ = ["CONTENT_FORMAT_JSON", "NOTICES_PATH", "NOTICE_MAX_AGE", "NoticeResource"]

CONTENT_FORMAT_JSON = 50
NOTICES_PATH = ("notices",)
_MAX_DEVICE_ID = 36
NOTICE_MAX_AGE = 60
"""Seconds a notice is fresh: an observer hearing nothing for longer registers again."""


def _text(code: Any, text: str) -> Any:
    return aiocoap.Message(code=code, payload=text.encode()[:200], content_format=0)


class NoticeResource(aiocoap.resource.ObservableResource,  # type: ignore[misc]
                     aiocoap.resource.PathCapable):  # type: ignore[misc]
    """``/notices/<device-id>``: the device's notice, observable."""

    def __init__(self, hub: NotificationHub, *, max_per_device: int = 8,
                 max_total: int = 10_000) -> None:
        super().__init__()
        self.hub = hub
        self.max_per_device = max_per_device
        self.max_total = max_total
        self._by_device: dict[str, set[Any]] = {}
        self._stops: dict[str, Any] = {}
        self._total = 0

    @staticmethod
    def _device(request: Any) -> str | None:
        path = tuple(request.opt.uri_path)
        if len(path) != 1 or not 0 < len(path[0]) <= _MAX_DEVICE_ID:
            return None
        device_id = str(path[0])
        # the ids the HTTP routes accept (web.check_path_ids): a NUL made PostgreSQL fail
        # (5.00); '+', '#' or '/' made the hub remember, and the MQTT publisher publish, a
        # topic with wildcards or more levels for anyone who asked over plain UDP
        return device_id if is_record_id(device_id, _MAX_DEVICE_ID) else None

    async def add_observation(self, request: Any, serverobservation: Any) -> None:
        """Register the observer of one device; it is triggered after each change."""
        device_id = self._device(request)
        if device_id is None:
            return  # not accepted: the response is sent once, without Observe
        if (self._total >= self.max_total
                or len(self._by_device.get(device_id, ())) >= self.max_per_device):
            return  # over a cap: answered once, without Observe
        loop = asyncio.get_running_loop()
        observers = self._by_device.setdefault(device_id, set())
        observers.add(serverobservation)
        self._total += 1
        if device_id not in self._stops:
            def changed(_: str, __: int, device_id: str = device_id) -> None:
                loop.call_soon_threadsafe(self._trigger, device_id)
            self._stops[device_id] = self.hub.watch(device_id, changed)

        def cancel() -> None:
            if serverobservation in observers:
                observers.discard(serverobservation)
                self._total -= 1
            if not observers:
                self._by_device.pop(device_id, None)
                stop = self._stops.pop(device_id, None)
                if stop is not None:
                    stop()
        serverobservation.accept(cancel)

    def _trigger(self, device_id: str) -> None:
        for observation in list(self._by_device.get(device_id, ())):
            observation.trigger()

    async def render_get(self, request: Any) -> Any:
        """The device's current notice as JSON."""
        device_id = self._device(request)
        if device_id is None:
            return _text(Code.NOT_FOUND, "expected /notices/<device-id>")
        try:
            notice = await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(self.hub.current, device_id))
        except StorageError:
            return _text(Code.INTERNAL_SERVER_ERROR, "the tracker could not read its database")
        response = aiocoap.Message(code=Code.CONTENT, content_format=CONTENT_FORMAT_JSON,
                                   payload=json.dumps(notice, separators=(",", ":")).encode())
        response.opt.max_age = NOTICE_MAX_AGE
        return response
