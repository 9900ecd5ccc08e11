"""Update notices for the server-initiated and hybrid modes (RFC 9019 §2.3).

A **notice** tells one device that its assignment changed: the tracker's pending-update document
(``{"release", "envelope_url", "action", ...}``, or ``{"release": null}`` when nothing is
pending) plus a ``serial`` that grows with every change. The serial is the database's
(``model.DeviceNotice``, bumped in the transaction of the change, ``store.Tx.announce``), so
every replica hands out the same serial for the same change and a device's ``after=<serial>``
means the same on each; a cursor above the device's serial (one of a server before serials were
the database's: those were milliseconds since 1970) is answered at once, never waited on.

``NotificationHub`` hears committed changes (``changed({device id: serial})``): from this
process after each commit (``TrackerDB.add_listener``) and, on PostgreSQL, from every other
replica through ``notices.pg`` (LISTEN/NOTIFY). A change only wakes whoever watches that device
(SSE streams, long-polls, CoAP observers; the MQTT publisher watches this process's own changes
only, ``local``); the document itself is read from the database by the watcher (``current``),
never in the thread that made the change, so a deployment to many devices is not slowed down by
its notices.

Notices carry no secrets and are not trusted by devices: a device acts only on an envelope whose
signatures it verifies. On MQTT and CoAP the topic / path is per device id; protect them with
broker ACLs (MQTT) or OSCORE (CoAP) in production.

The channels: ``notices.mqtt`` (MQTT, retained per device), ``notices.coap`` (CoAP observe), and
the SSE and long-poll routes of ``edges.push_http``; each watches this hub. ``notices.pg``
carries changes between replicas. Deliberately not here: reading the database (the hub calls
the ``notice`` function it is given, the service's ``TrackerDB.notice``), any protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import string
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ID_CHARACTERS", "MAX_ID", "Notice", "NotificationHub", "Watcher", "is_record_id"]

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


Notice = Callable[[str], tuple[Mapping[str, Any] | None, int]]
"""The service's ``TrackerDB.notice``: (pending-update document or ``None``, serial)."""


def _settle(future: asyncio.Future[None]) -> None:
    """Wake whoever awaits ``future`` (once: a later wake-up finds it done)."""
    if not future.done():
        future.set_result(None)


class NotificationHub:
    """Per device, the serial of its latest notice heard, and who watches it; thread-safe.

    ``notice(device_id)`` is the tracker's ``TrackerDB.notice``; ``serials(ids)`` (optional)
    reads the serials of many devices at once (``store.Store.serials``), for ``resync``.
    """

    def __init__(self, notice: Notice, *,
                 serials: Callable[[list[str]], Mapping[str, int]] | None = None) -> None:
        self._notice = notice
        self._serials = serials
        self._lock = threading.Lock()
        self._latest: dict[str, int] = {}
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
        """Notices made by this process since the hub started: one per device whose assignment
        a change committed here changed (each then goes to its SSE streams, long-polls, MQTT and
        CoAP observers; another replica's changes are counted by that replica)."""
        return self._made

    def _remember(self, device_id: str, serial: int) -> int:
        """Keep the larger of the known and ``serial`` (under the lock; bounded)."""
        known = self._latest.get(device_id)
        if known is not None and known >= serial:
            return known
        if known is None and len(self._latest) >= _MAX_CACHED:
            self._latest.pop(next(iter(self._latest)))
        self._latest[device_id] = serial
        return serial

    def changed(self, serials: Mapping[str, int], *, local: bool = True) -> None:
        """Committed changes: ``{device id: serial}``. ``local``: made by this process (the
        watchers of every device, the MQTT publisher, hear only these; another replica's
        changes are published by that replica)."""
        woken: list[tuple[Watcher, str, int]] = []
        with self._lock:
            for device_id, serial in serials.items():
                self._remember(device_id, int(serial))
                if local:
                    self._made += 1
                woken += [(w, device_id, serial) for w in self._watchers.get(device_id, ())]
                if local:
                    woken += [(w, device_id, serial) for w in self._all]
        for watcher, device_id, serial in woken:
            try:
                watcher(device_id, serial)
            except Exception:  # noqa: BLE001 - one broken watcher must not stop the others
                _log.exception("notice watcher %r failed", watcher)

    def resync(self) -> None:
        """Read again the serial of every watched device and wake its watchers (after the
        connection that hears other replicas was lost: a change made meanwhile is not
        missed). Raises ``StorageError`` when the database fails."""
        if self._serials is None:
            return
        with self._lock:
            watched = list(self._watchers)
        if watched:
            self.changed(dict(self._serials(watched)), local=False)

    def serial(self, device_id: str) -> int | None:
        """The serial of the device's latest notice heard (no database read)."""
        with self._lock:
            return self._latest.get(device_id)

    def current(self, device_id: str) -> dict[str, Any]:
        """The device's notice ``{..pending update.., "serial"}``, read from the database each
        time (so it is never stale, also after a final event that was not announced); call it
        from a worker thread in async code.

        Raises:
            StorageError: the database fails.
        """
        found, serial = self._notice(device_id)
        with self._lock:
            if device_id in self._latest or self._watchers.get(device_id):
                self._remember(device_id, serial)
        doc = dict(found) if found is not None else {"release": None}
        return {**doc, "serial": serial}

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
