"""Notices across replicas: PostgreSQL LISTEN/NOTIFY (design.md §5: several ``suitkit serve``
processes on one database).

Each change is NOTIFYed on ``store.NOTICE_CHANNEL`` in the transaction that makes it
(``store.Tx.announce``), so it reaches the other replicas when, and only if, it commits.
``NoticeRelay`` is one daemon thread per process on a dedicated connection
(``store.Store.open_listener``, not one of the pool's): every notification of another replica
becomes ``hub.changed(serials, local=False)``, which wakes the SSE streams, long-polls and CoAP
observers this process holds for those devices. A lost connection is opened again with a
backoff (``min_backoff`` doubling up to ``max_backoff`` seconds); once it listens again the hub
reads the serial of every watched device (``NotificationHub.resync``), so a change made while
it was away is not missed. A failure is logged once a minute, not once per attempt.

Deliberately not here: SQL (``tracker.store``), SQLite (one process: every change is heard
in-process), publishing to MQTT (the replica that made a change publishes it).
"""

from __future__ import annotations

import logging
import threading
import time

from suitkit.errors import StorageError
from suitkit.tracker.notices import NotificationHub
from suitkit.tracker.store import NoticeConnection, Store

__all__ = ["NoticeRelay"]

_log = logging.getLogger(__name__)
_LOG_EVERY = 60.0


class NoticeRelay:
    """Hears other replicas' notices and hands them to ``hub`` (see the module)."""

    def __init__(self, store: Store, hub: NotificationHub, *, poll: float = 1.0,
                 min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.store, self.hub = store, hub
        self.poll, self.min_backoff, self.max_backoff = poll, min_backoff, max_backoff
        self._stop = threading.Event()
        self.listening = threading.Event()
        """Set while the dedicated connection listens."""
        self._thread = threading.Thread(target=self._run, name="suitkit-notice-relay",
                                        daemon=True)
        self._logged = -_LOG_EVERY
        self.connections = 0
        """How many times the connection was opened (1 + reconnections)."""

    def start(self) -> None:
        self._thread.start()

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY:
            self._logged = now
            _log.warning(message, *args)

    def _run(self) -> None:
        delay = self.min_backoff
        while not self._stop.is_set():
            connection: NoticeConnection | None = None
            try:
                connection = self.store.open_listener()
                if connection is None:
                    return  # SQLite: nothing to hear
                self.connections += 1
                self.listening.set()
                if self.connections > 1:
                    _log.info("listening for other replicas' notices again")
                # a change committed while nobody listened: read the watched devices again
                self.hub.resync()
                delay = self.min_backoff
                while not self._stop.is_set():
                    for serials in connection.wait(self.poll):
                        self.hub.changed(serials, local=False)
            except StorageError as e:
                self.listening.clear()
                self._warn("not hearing other replicas' notices (trying again with a backoff "
                           "up to %g s): %s", self.max_backoff, e)
            except Exception:  # noqa: BLE001 - the relay thread must survive
                self.listening.clear()
                _log.exception("the notice relay failed; starting it again")
            finally:
                self.listening.clear()
                if connection is not None:
                    connection.close()
            if self._stop.wait(delay):
                return
            delay = min(self.max_backoff, delay * 2)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening (within about ``poll`` seconds) and close the connection."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
