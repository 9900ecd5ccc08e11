"""Update notices for the server-initiated and hybrid modes (RFC 9019 §2.3).

A **notice** tells one device that its assignment changed: the tracker's pending-update document
(``{"release", "envelope_url", "action", ...}``, or ``{"release": null}`` when nothing is
pending) plus a ``serial`` that grows with every change. ``NotificationHub`` is fed by
``TrackerDB.add_listener``: a change only bumps the device's serial and wakes whoever watches
that device (SSE streams, long-polls, CoAP observers, the MQTT publisher); the document itself is
read from the database by the watcher (``current``), never in the thread that made the change, so
a deployment to many devices is not slowed down by its notices.

Serials start at the wall-clock time in milliseconds when the hub is created, so a restarted
server hands out larger serials than the one before it (a device can keep ``after=<serial>``).

Notices carry no secrets and are not trusted by devices: a device acts only on an envelope whose
signatures it verifies. On MQTT and CoAP the topic / path is per device id; protect them with
broker ACLs (MQTT) or OSCORE (CoAP) in production.

The channels: ``notices.mqtt`` (MQTT, retained per device), ``notices.coap`` (CoAP observe), and
the SSE and long-poll routes of ``edges.push_http``; each watches this hub. Deliberately not
here: reading the database (the hub calls the ``pending`` function it is given, the service's
``TrackerDB.pending_update``), any protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import string
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ID_CHARACTERS", "MAX_ID", "NotificationHub", "Watcher", "is_record_id"]

Watcher = Callable[[str, int], None]
"""Called with ``(device_id, serial)`` after a change; must not block (it runs in the thread
that changed the assignment)."""

_log = logging.getLogger(__name__)
_MAX_CACHED = 100_000


ID_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_.~:")
MAX_ID = 64


def is_record_id(value: str, max_length: int = MAX_ID) -> bool:
    """Whether ``value`` can be the id of a device, token or campaign: 1 to ``max_length``
    letters, digits or ``-_.~:``. Ids from a client are checked with it before any query or
    notice: no control, wildcard (MQTT ``+`` and ``#``), separator (``/``) or non-ASCII
    character can reach the database, the log or an MQTT topic."""
    return 0 < len(value) <= max_length and ID_CHARACTERS.issuperset(value)


def _settle(future: asyncio.Future[None]) -> None:
    """Wake whoever awaits ``future`` (once: a later wake-up finds it done)."""
    if not future.done():
        future.set_result(None)


class NotificationHub:
    """Per device, the serial of its latest notice and its document; thread-safe.

    ``pending(device_id)`` is the tracker's ``TrackerDB.pending_update``.
    """

    def __init__(self, pending: Callable[[str], Mapping[str, Any] | None], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._pending = pending
        self._lock = threading.Lock()
        self._serial = int(clock() * 1000)
        self._latest: dict[str, int] = {}
        self._announced: dict[str, None] = {}  # changed, or asked about by the device itself
        self._watchers: dict[str, set[Watcher]] = {}
        self._all: set[Watcher] = set()
        self._closers: set[Callable[[], None]] = set()
        self._closed = False
        self._made = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def notices_made(self) -> int:
        """Notices made since the hub started: one per device whose assignment changed
        (each then goes to its SSE streams, long-polls, MQTT and CoAP observers)."""
        return self._made

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    def changed(self, device_ids: Any) -> None:
        """The ``TrackerDB`` listener: these devices' assignments changed."""
        woken: list[tuple[Watcher, str, int]] = []
        with self._lock:
            for device_id in device_ids:
                serial = self._next()
                self._made += 1
                if len(self._latest) >= _MAX_CACHED and device_id not in self._latest:
                    self._latest.pop(next(iter(self._latest)))
                self._latest[device_id] = serial
                self._announce(device_id)
                woken += [(w, device_id, serial) for w in self._watchers.get(device_id, ())]
                woken += [(w, device_id, serial) for w in self._all]
        for watcher, device_id, serial in woken:
            try:
                watcher(device_id, serial)
            except Exception:  # noqa: BLE001 - one broken watcher must not stop the others
                _log.exception("notice watcher %r failed", watcher)

    def serial(self, device_id: str) -> int | None:
        """The serial of the device's latest notice, if the hub has one (no database read)."""
        with self._lock:
            return self._latest.get(device_id)

    def _announce(self, device_id: str) -> None:
        """Remember the device for ``known`` (under the lock; bounded like ``_latest``)."""
        if len(self._announced) >= _MAX_CACHED and device_id not in self._announced:
            self._announced.pop(next(iter(self._announced)))
        self._announced[device_id] = None

    def current(self, device_id: str, *, authenticated: bool = True) -> dict[str, Any]:
        """The device's notice ``{..pending update.., "serial"}``: the document is read from the
        database each time (so it is never stale, also after a final event that was not
        announced); call it from a worker thread in async code. ``authenticated=False``: the
        asker was not the device (CoAP, anyone over UDP): the id gets a serial but is not one
        ``known`` returns (the MQTT publisher would publish a retained notice for every id
        anyone made up, again at each reconnection).

        Raises:
            StorageError: the database fails.
        """
        with self._lock:
            serial = self._latest.get(device_id)
            if serial is None:  # any id can be asked about (CoAP is unauthenticated): bounded
                if len(self._latest) >= _MAX_CACHED:
                    self._latest.pop(next(iter(self._latest)))
                serial = self._latest[device_id] = self._next()
            if authenticated:
                self._announce(device_id)
        found = self._pending(device_id)
        doc = dict(found) if found is not None else {"release": None}
        return {**doc, "serial": serial}

    def known(self) -> list[str]:
        """The devices changed, or asked about by themselves, since the hub started."""
        with self._lock:
            return list(self._announced)

    def watch(self, device_id: str | None, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher`` after each change of ``device_id`` (``None``: of every device);
        returns the function that stops watching."""
        with self._lock:
            (self._all if device_id is None else
             self._watchers.setdefault(device_id, set())).add(watcher)

        def stop() -> None:
            with self._lock:
                if device_id is None:
                    self._all.discard(watcher)
                    return
                watchers = self._watchers.get(device_id)
                if watchers is not None:
                    watchers.discard(watcher)
                    if not watchers:
                        del self._watchers[device_id]
        return stop

    async def next_change(self, device_id: str, after: int, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until the device's serial passes ``after``;
        whether it did. Returns at once when the hub is closed.

        One future and one timer per wait, woken by the watcher, the timer or ``close()``
        (not an ``asyncio.Event`` under ``wait_for``, which made a task and a queue of waiters
        for each of them: every held SSE stream waits here between two heartbeats)."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def wake(_: str, serial: int) -> None:
            if serial > after:
                loop.call_soon_threadsafe(_settle, woken)

        def closing() -> None:
            loop.call_soon_threadsafe(_settle, woken)

        stop = self.watch(device_id, wake)
        with self._lock:
            self._closers.add(closing)
        timer = None
        try:
            known = self.serial(device_id)
            if self._closed or (known is not None and known > after):
                return not self._closed
            timer = loop.call_later(timeout, _settle, woken)
            await woken
            return not self._closed and (self.serial(device_id) or 0) > after
        finally:
            if timer is not None:
                timer.cancel()
            stop()
            with self._lock:
                self._closers.discard(closing)

    def close(self) -> None:
        """Wake every waiter for good (server shutdown: SSE streams and long-polls end)."""
        self._closed = True
        with self._lock:
            closers = list(self._closers)
        for closer in closers:
            with contextlib.suppress(Exception):
                closer()
