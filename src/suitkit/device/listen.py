"""How a device hears of updates without polling: notice sources for the agent's push and hybrid
modes (RFC 9019 §2.3, server-initiated).

Each source runs in its own daemon thread, keeps its connection up (reconnecting with a bounded,
jittered backoff after a network cut or a server restart) and hands every notice it receives to
``get(timeout)``. A notice is the tracker's JSON ``{"release", "envelope_url", ..., "serial"}``;
it is untrusted (it only says where to look: the device verifies the envelope).

- ``SseSource``: ``GET /device/v1/{id}/notifications`` with ``Accept: text/event-stream``
  (the server sends the current notice first, then changes and heartbeats);
- ``LongPollSource``: the same URL with ``?wait=N&after=<last serial>``, again and again (the
  first request, ``after=0``, answers the current notice at once);
- ``MqttSource``: subscribes to ``suitkit/devices/<id>/update`` (QoS 1; the retained message is the
  current notice), paho reconnects and subscribes again;
- ``CoapSource``: observes ``coap://host:port/notices/<id>`` (RFC 7641) and observes again when
  the observation ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import random
import ssl
import threading
from collections.abc import Callable
from typing import Any

import httpx

__all__ = ["DEVICE_API", "CoapSource", "LongPollSource", "MqttSource", "NoticeSource",
           "SseSource", "backoff_delay", "parse_notice"]

_MAX_NOTICE_BYTES = 16 * 1024
DEVICE_API = "/device/v1"
"""The tracker's device API: ``/device/v1/{id}/...`` (the tracker's ``web.DEVICE_API``; the
roles do not import each other)."""


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before reconnection ``attempt`` (1, 2, ...): exponential, capped at
    ``cap``, with jitter (half to all of it) so that devices do not come back all at once."""
    delay = min(cap, base * (2 ** min(attempt - 1, 16)))
    return float(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not secrecy


def parse_notice(data: bytes | str) -> dict[str, Any] | None:
    """A notice from JSON, or ``None`` when it is not one (ignored: notices are untrusted)."""
    if len(data) > _MAX_NOTICE_BYTES:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or type(doc.get("serial")) is not int:
        return None
    release, url = doc.get("release"), doc.get("envelope_url")
    if release is not None and (not isinstance(release, str) or not isinstance(url, str)):
        return None
    return doc


class NoticeSource:
    """The base of the sources: a queue of notices and a reconnecting thread.

    ``on_state(line)`` hears of connections and failures (for the agent's log).
    """

    name = "notices"

    def __init__(self, *, backoff: float = 0.5, max_backoff: float = 30.0,
                 on_state: Callable[[str], None] | None = None) -> None:
        self.backoff, self.max_backoff = backoff, max_backoff
        self._notices: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._on_state = on_state
        self._thread: threading.Thread | None = None
        self.connections = 0

    def _state(self, line: str) -> None:
        if self._on_state is not None:
            self._on_state(f"{self.name}: {line}")

    def put(self, notice: dict[str, Any] | None) -> None:
        if notice is not None:
            self._notices.put(notice)

    def get(self, timeout: float) -> dict[str, Any] | None:
        """The next notice, or ``None`` after ``timeout`` seconds."""
        try:
            return self._notices.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"suitkit-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                if self._session():
                    attempt = 0
            except Exception as e:  # noqa: BLE001 - every failure means: reconnect later
                if self._stop.is_set():
                    return
                self._state(f"{type(e).__name__}: {str(e)[:200]}")
            attempt += 1
            self._stop.wait(backoff_delay(attempt, self.backoff, self.max_backoff))

    def _session(self) -> bool:
        """One connection, until it ends; whether anything was received."""
        raise NotImplementedError

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    def _interrupt(self) -> None:
        """Unblock the session thread."""


class _HttpSource(NoticeSource):
    def __init__(self, server_url: str, credential: str, device_id: str, *,
                 tls: ssl.SSLContext | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        base = server_url.rstrip("/")
        self.url = f"{base}{DEVICE_API}/{device_id}/notifications"
        self.legacy_url = f"{base}/api/v1/devices/{device_id}/notifications"
        """Where a tracker older than the device API's prefix serves the notices: used from
        the first 404 of ``url`` on."""
        self.headers = {"Authorization": f"Bearer {credential}"}
        self.verify: ssl.SSLContext | bool = tls if tls is not None else True
        """The device's TLS context (CA bundle, client certificate), or the defaults."""
        self._client: httpx.Client | None = None

    def _older_server(self, status: int) -> None:
        """A 404 of the device API: the tracker predates its prefix; the next session asks
        the deprecated route (``/api/v1/devices/{id}/notifications``)."""
        if status == 404 and self.url != self.legacy_url:
            self.url = self.legacy_url

    def _interrupt(self) -> None:
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


class SseSource(_HttpSource):
    """Server-sent events; the read timeout (``idle``) must exceed the server's heartbeat."""

    name = "sse"

    def __init__(self, server_url: str, credential: str, device_id: str, *,
                 idle: float = 45.0, **kwargs: Any) -> None:
        super().__init__(server_url, credential, device_id, **kwargs)
        self.idle = idle

    def _session(self) -> bool:
        received = False
        with httpx.Client(timeout=httpx.Timeout(self.idle, connect=5.0),
                          verify=self.verify) as client:
            self._client = client
            if self._stop.is_set():
                return False
            headers = {**self.headers, "Accept": "text/event-stream"}
            with client.stream("GET", self.url, headers=headers) as response:
                if response.status_code != 200:
                    self._older_server(response.status_code)
                    raise ConnectionError(f"HTTP {response.status_code}")
                self.connections += 1
                self._state("connected")
                data: list[str] = []
                size = 0
                for line in response.iter_lines():
                    if self._stop.is_set():
                        break
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                        size += len(line)
                        if size > _MAX_NOTICE_BYTES:
                            raise ConnectionError("an event larger than a notice")
                    elif not line and data:
                        self.put(parse_notice("\n".join(data)))
                        received = True
                        data, size = [], 0
        self._state("stream ended")
        return received


class LongPollSource(_HttpSource):
    """Long-polls of ``wait`` seconds each."""

    name = "longpoll"

    def __init__(self, server_url: str, credential: str, device_id: str, *,
                 wait: float = 30.0, **kwargs: Any) -> None:
        super().__init__(server_url, credential, device_id, **kwargs)
        self.wait = wait
        self.after = 0  # the first request answers the current notice at once

    def close(self, timeout: float = 0.5) -> None:
        """Stop; a long-poll in flight cannot be interrupted: its daemon thread ends when the
        request does (at most ``wait`` seconds later) and sends no other."""
        super().close(min(timeout, 0.5))

    def _session(self) -> bool:
        received = False
        with httpx.Client(timeout=httpx.Timeout(self.wait + 10.0, connect=5.0),
                          headers=self.headers, verify=self.verify) as client:
            self._client = client
            while not self._stop.is_set():
                params = {"wait": f"{self.wait:g}", "after": str(self.after)}
                response = client.get(self.url, params=params)
                if not received and response.status_code in (200, 204):
                    self.connections += 1
                    self._state("connected")
                if response.status_code == 204:
                    received = True
                    continue
                if response.status_code != 200:
                    self._older_server(response.status_code)
                    raise ConnectionError(f"HTTP {response.status_code}")
                notice = parse_notice(response.content)
                if notice is None:
                    raise ConnectionError("the answer is not a notice")
                self.after = int(notice["serial"])
                self.put(notice)
                received = True
        return received


class MqttSource(NoticeSource):
    """MQTT subscription to the device's topic (paho-mqtt, MQTT v5, QoS 1)."""

    name = "mqtt"

    def __init__(self, host: str, port: int, device_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        import paho.mqtt.client as mqtt  # noqa: PLC0415 - only when MQTT is used
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        self.topic = f"suitkit/devices/{device_id}/update"
        self.host, self.port = host, port
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=f"suitkit-device-{device_id}",
                                   protocol=mqtt.MQTTv5)
        self._client.reconnect_delay_set(max(1, int(self.backoff)), int(self.max_backoff) or 1)
        self._client.on_connect = self._connected
        self._client.on_message = lambda client, userdata, message: self.put(
            parse_notice(bytes(message.payload)))
        self._client.on_disconnect = lambda *a: self._state("disconnected")

    def _connected(self, client: Any, userdata: Any, flags: Any, reason: Any,
                   properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            self._state(f"refused: {reason}")
            return
        self.connections += 1
        self._state("connected")
        client.subscribe(self.topic, qos=1)

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()  # paho's thread connects and reconnects

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()


class CoapSource(NoticeSource):
    """CoAP Observe of ``<base>/notices/<device-id>`` (``base`` such as coap://host:5683)."""

    name = "coap"

    def __init__(self, base: str, device_id: str, *, refresh: float = 120.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refresh = refresh
        self.uri = f"{base.rstrip('/')}/notices/{device_id}"
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[bool] | None = None

    def _session(self) -> bool:
        loop = asyncio.new_event_loop()
        self._event_loop = loop
        try:
            if self._stop.is_set():
                return False
            self._task = loop.create_task(self._observe())
            return loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            return False
        finally:
            self._event_loop, self._task = None, None
            loop.close()

    async def _observe(self) -> bool:
        import aiocoap  # type: ignore[import-untyped]  # noqa: PLC0415

        context = await aiocoap.Context.create_client_context()
        received = False
        try:
            request = context.request(aiocoap.Message(code=aiocoap.GET, uri=self.uri,
                                                      observe=0))
            first = await asyncio.wait_for(request.response, 10.0)
            if not first.code.is_successful():
                raise ConnectionError(f"CoAP {first.code}")
            self.connections += 1
            self._state("observing")
            self.put(parse_notice(first.payload))
            received = True
            notifications = aiter(request.observation)
            while True:  # RFC 7641 §3.3.1: register again when no notification came for long
                try:
                    response = await asyncio.wait_for(anext(notifications), self.refresh)
                except (StopAsyncIteration, TimeoutError):
                    break
                if response.code.is_successful():
                    self.put(parse_notice(response.payload))
            self._state("observation ended")
        finally:
            await context.shutdown()
        return received

    def _interrupt(self) -> None:
        loop, task = self._event_loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
