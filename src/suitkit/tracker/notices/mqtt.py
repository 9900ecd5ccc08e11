"""The MQTT channel of update notices (RFC 9019 §2.3, server-initiated and hybrid modes).

``MqttPublisher`` publishes each device's latest notice (``notices.NotificationHub.current``)
to ``suitkit/devices/<id>/update`` (QoS 1, retained) from its own thread; paho reconnects with a
bounded backoff, and a request never waits for the broker. The retained messages hold the
state: a notice is published when it changes, never all of them again at a reconnection (that
was one publication per device known, at each of the once-a-second evictions of replicas that
shared one client id). An id no device can have is never published (its topic could hold MQTT
wildcards or levels).

Several replicas: each connects with a client id of its own (``process_client_id()``: host,
pid and a random part; a shared id made the broker evict one for the other, again and again),
and only
the replica that made a change publishes it (the hub's ``local`` changes): a change is
published once, not once per replica. The notice is read from the database when it is sent,
with its serial, so a later publication carries the later state; a replica killed between a
commit and its publication leaves that device's retained notice one change behind until its
next change (its SSE, long-poll and CoAP notices, and its check-ins, are not affected).

Deliberately not here: subscribing (the device's side), broker ACLs (protect the per-device
topics in the broker).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import secrets
import socket
import threading
from collections.abc import Callable
from typing import Any

from suitkit.tracker.notices import NotificationHub, is_record_id

__all__ = ["TOPIC_FORMAT", "MqttPublisher", "process_client_id", "topic_for"]

TOPIC_FORMAT = "suitkit/devices/{device_id}/update"
_log = logging.getLogger(__name__)


def process_client_id() -> str:
    """``suitkit-tracker-<host>-<pid>-<random>``: one per process, so that replicas (and a
    restarted process whose old session the broker still holds) never take each other's."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:32] or "host"
    return f"suitkit-tracker-{host}-{os.getpid()}-{secrets.token_hex(4)}"


def topic_for(device_id: str) -> str:
    """The MQTT topic of ``device_id``'s notices."""
    return TOPIC_FORMAT.format(device_id=device_id)


class MqttPublisher:
    """Publishes notices to an MQTT broker: ``suitkit/devices/<id>/update``, QoS 1, retained.

    ``start()`` connects in the background (paho's network thread; reconnects with a backoff of
    1 to ``max_backoff`` seconds) and starts the publishing thread; a notice published while the
    broker is away is queued by paho and sent after the reconnection. ``stop()`` ends both.
    ``client_id``: default ``process_client_id()``, one of this process's own.
    """

    def __init__(self, hub: NotificationHub, host: str, port: int, *,
                 client_id: str | None = None, max_backoff: int = 30) -> None:
        import paho.mqtt.client as mqtt  # noqa: PLC0415 - only when MQTT is configured
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        self.hub, self.host, self.port = hub, host, port
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._queued: set[str] = set()  # ids in the queue: each at most once (bounded queue)
        self._queued_lock = threading.Lock()
        self.client_id = client_id if client_id is not None else process_client_id()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                   protocol=mqtt.MQTTv5)
        self._client.reconnect_delay_set(1, max_backoff)
        self._client.max_queued_messages_set(0)
        self._connected = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *a: self._connected.clear()
        self._thread = threading.Thread(target=self._run, name="suitkit-mqtt-publisher",
                                        daemon=True)
        self._stop_watch: Callable[[], None] | None = None
        self.connections = 0
        """How many times the broker accepted the connection."""

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            _log.warning("the MQTT broker %s:%s refused the connection: %s", self.host,
                         self.port, reason)
            return
        self._connected.set()
        self.connections += 1
        if self.connections > 1:
            _log.info("connected to the MQTT broker %s:%s again", self.host, self.port)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect (asynchronously) and start publishing every change."""
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        self._stop_watch = self.hub.watch(None, lambda device_id, _: self.publish(device_id))
        self._thread.start()

    def publish(self, device_id: str) -> None:
        """Queue the device's current notice for publication (returns at once); a device
        already waiting in the queue is not queued again (its notice is read when sent). An id
        no device can have is not published: its topic could hold MQTT wildcards or levels."""
        if not is_record_id(device_id):
            return
        with self._queued_lock:
            if device_id in self._queued:
                return
            self._queued.add(device_id)
        self._queue.put(device_id)

    def _run(self) -> None:
        import json  # noqa: PLC0415

        while True:
            device_id = self._queue.get()
            if device_id is None:
                return
            with self._queued_lock:  # a change from now on queues it again
                self._queued.discard(device_id)
            try:
                notice = self.hub.current(device_id)
                self._client.publish(topic_for(device_id), json.dumps(notice), qos=1,
                                     retain=True)
            except Exception:  # noqa: BLE001 - the publisher thread must survive
                _log.exception("cannot publish the notice of %s", device_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching, publish what is queued (bounded), disconnect."""
        if self._stop_watch is not None:
            self._stop_watch()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()
