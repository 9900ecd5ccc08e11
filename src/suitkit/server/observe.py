"""Request ids, request metrics, health and readiness of the HTTP app (issue #13).

``Observed`` is the outermost ASGI middleware of ``create_app`` (so it covers the firmware
server's routes and every router mounted on it, the status tracker's included):

- **request id**: the client's ``X-Request-Id`` when it is 1 to 128 characters of
  ``[A-Za-z0-9._:-]`` (anything else could forge log lines), else a new random one; it is in
  the response's ``X-Request-Id`` header and in ``request_id()`` (a context variable) for
  every log line the request causes, in worker threads too (Starlette copies the context);
- **an unexpected exception** is answered 500 (problem details, ``suitkit.problems``) with
  ``Connection: close`` and logged once, with its traceback, on ``suitkit.server``: uvicorn does
  not log it again;
- **metrics** (``Metrics``, a prometheus-client registry of its own per app): requests by
  route template (never the raw path: a client cannot make series), method and status,
  latency histograms, response and request body bytes, downloads.

``/healthz`` (the process answers) and ``/readyz`` (each readiness check passes) are answered
here, before the request limit and the routers; ``/metrics`` only on the listeners
``Metrics.ports`` names (a separate port, so that it need not be public).

Not here: what the checks and the fleet's gauges read (the CLI wires them from the roles).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from suitkit.problems import PROBLEM_MEDIA_TYPE, problem_bytes

__all__ = ["HEALTH_PATHS", "Gauges", "Metrics", "Observed", "ReadinessCheck", "request_id"]

_log = logging.getLogger("suitkit.server")

_REQUEST_ID: ContextVar[str | None] = ContextVar("suitkit_request_id", default=None)
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HEALTH_PATHS = ("/healthz", "/readyz", "/metrics")

ReadinessCheck = Callable[[], str | None]
"""A readiness check: ``None`` when ready, else one line saying what is not (it may block: it
runs in a worker thread)."""


def request_id() -> str | None:
    """The id of the request being served in this context (``None`` outside a request)."""
    return _REQUEST_ID.get()


_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Metrics:
    """The app's Prometheus registry and its request series; ``collectors`` (the fleet's
    gauges, built by the CLI) are registered on it; ``ports``: the local ports on which
    ``/metrics`` is served (empty: nowhere)."""

    ports: frozenset[int] = frozenset()
    collectors: tuple[Any, ...] = ()
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("suitkit_http_requests", "HTTP requests answered, by route "
                                "template, method and status", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram("suitkit_http_request_duration_seconds", "Time from a "
                                 "request's arrival to the end of its response, by route "
                                 "template and method", ["route", "method"], buckets=_BUCKETS,
                                 registry=r)
        self.sent = Counter("suitkit_http_response_bytes", "Response body bytes sent, by route "
                            "template", ["route"], registry=r)
        self.received = Counter("suitkit_http_request_bytes", "Request body bytes read (uploads "
                                "included), by route template", ["route"], registry=r)
        self.downloads = Counter("suitkit_downloads", "Blob downloads answered 200 or 206, by "
                                 "kind (firmware, envelope)", ["kind"], registry=r)
        self.download_bytes = Counter("suitkit_download_bytes", "Blob bytes sent, by kind",
                                      ["kind"], registry=r)
        self.upload_bytes = Counter("suitkit_upload_bytes", "Request body bytes of release "
                                    "uploads", registry=r)
        for collector in self.collectors:
            r.register(collector)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Gauges:
    """A Prometheus collector of gauges (or counters) read at each scrape from ``read``: one
    family ``name`` with ``labels``, ``read()`` giving ``(label values, value)`` pairs (the
    fleet's counts, read from the tracker's database by a function the CLI wires in). A read
    that fails leaves the family out of that scrape (and is logged at most once a minute)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 read: Callable[[], Iterable[tuple[Sequence[str], float]]], *,
                 kind: str = "gauge") -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.read = read
        self.kind = kind
        self._quiet_until = 0.0

    def describe(self) -> list[Any]:
        return []  # read at scrape time only (never at registration)

    def collect(self) -> Iterator[Any]:
        family_type = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = family_type(self.name, self.documentation, labels=self.labels)
        try:
            for values, value in self.read():
                family.add_metric([str(v) for v in values], value)
        except Exception as e:  # noqa: BLE001 - a scrape is not the place to fail the server
            now = time.monotonic()
            if now >= self._quiet_until:
                self._quiet_until = now + 60
                _log.warning("metrics: cannot read %s: %s: %s", self.name, type(e).__name__,
                             str(e).splitlines()[0][:200] if str(e) else "")
            return
        yield family


_DOWNLOAD_KINDS = {"/firmware/{digest}": "firmware", "/envelopes/{digest}": "envelope"}
_UPLOAD_ROUTE = "/api/v1/releases"


def _route(scope: Scope) -> str:
    """The template of the route that served the request (``unmatched`` for none)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class Observed:
    """ASGI middleware: request ids, metrics, the 500 of an unexpected exception, and
    ``/healthz``, ``/readyz``, ``/metrics`` (see the module docstring)."""

    def __init__(self, app: ASGIApp, metrics: Metrics,
                 checks: Iterable[ReadinessCheck] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.checks = tuple(checks)
        self._ready: tuple[float, list[str]] = (-1.0, [])
        self._checking: asyncio.Lock | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"")
        text = given.decode("latin-1")
        rid = text if _VALID_ID.fullmatch(text) else secrets.token_hex(16)
        _REQUEST_ID.set(rid)  # this request's task and what it starts (never reset: the
        # server's own lines about the request, after it returned, keep it)
        header = (b"x-request-id", rid.encode("ascii"))
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "started": False, "sent": 0, "received": 0}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message = {**message, "headers": [*message.get("headers", ()), header]}
                state["length"] = next((int(v) for k, v in message.get("headers", ())
                                        if k.lower() == b"content-length" and v.isdigit()), 0)
            elif message["type"] == "http.response.body":
                state["sent"] += len(message.get("body", b""))
            elif message["type"] == "http.response.pathsend":
                state["sent"] += state.get("length", 0)  # the whole file goes by sendfile
            await send(message)

        path = scope.get("path", "")
        server = scope.get("server")
        on_metrics_port = server is not None and server[1] in self.metrics.ports
        try:
            if on_metrics_port and path not in HEALTH_PATHS:
                await _not_found(send_with_id)  # the metrics listener serves nothing else
            elif path in HEALTH_PATHS and scope.get("method") in ("GET", "HEAD"):
                await self._health(scope, path, send_with_id)
                scope["route"] = _Named(path)
            else:
                await self.app(scope, counting_receive, send_with_id)
        except Exception:  # noqa: BLE001 - every unexpected error is a logged 500
            # logged once here, with the request's id; answered if nothing was sent yet
            _log.exception("%s %s -> 500 unexpected error", scope.get("method", "?"),
                           path[:200])
            if not state["started"]:
                await send_with_id({"type": "http.response.start", "status": 500,
                                    "headers": [(b"content-type", _PROBLEM),
                                                (b"connection", b"close")]})
                await send_with_id({"type": "http.response.body",
                                    "body": problem_bytes(500, "internal server error")})
        finally:
            self._observe(scope, state, time.perf_counter() - started)

    def _observe(self, scope: Scope, state: dict[str, Any], seconds: float) -> None:
        m = self.metrics
        route = _route(scope)
        method = str(scope.get("method", "?"))
        if method not in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            method = "other"  # a client must not make series
        m.requests.labels(route, method, str(state["status"])).inc()
        m.latency.labels(route, method).observe(seconds)
        m.sent.labels(route).inc(state["sent"])
        m.received.labels(route).inc(state["received"])
        kind = _DOWNLOAD_KINDS.get(route)
        if kind is not None and state["status"] in (200, 206):
            m.downloads.labels(kind).inc()
            m.download_bytes.labels(kind).inc(state["sent"])
        if route == _UPLOAD_ROUTE and method == "POST":
            m.upload_bytes.inc(state["received"])

    async def _health(self, scope: Scope, path: str, send: Send) -> None:
        status, body, media = 200, b'{"status":"ok"}', b"application/json"
        if path == "/readyz":
            problems = await self._problems()
            if problems:
                status = 503
                body = _json({"status": "not ready", "problems": problems})
            else:
                body = b'{"status":"ready"}'
        elif path == "/metrics":
            server = scope.get("server")
            if not server or server[1] not in self.metrics.ports:
                status, body, media = 404, _NOT_FOUND, _PROBLEM
            else:
                body = await run_in_threadpool(self.metrics.exposition)
                media = CONTENT_TYPE_LATEST.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body",
                    "body": b"" if scope.get("method") == "HEAD" else body})


    async def _problems(self) -> list[str]:
        """What is not ready; the checks run at most once a second, one run at a time
        (a client hammering /readyz cannot make the server hammer its database)."""
        if self._checking is None:
            self._checking = asyncio.Lock()
        async with self._checking:
            at, problems = self._ready
            if time.monotonic() - at >= _READY_CACHE:
                problems = [p for p in [await run_in_threadpool(_run_check, c)
                                        for c in self.checks] if p]
                self._ready = (time.monotonic(), problems)
            return problems


_READY_CACHE = 1.0


@dataclass(frozen=True, slots=True)
class _Named:
    path: str


_PROBLEM = PROBLEM_MEDIA_TYPE.encode()
_NOT_FOUND = problem_bytes(404, "not found")


async def _not_found(send: Send) -> None:
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", _PROBLEM)]})
    await send({"type": "http.response.body", "body": _NOT_FOUND})


def _run_check(check: ReadinessCheck) -> str | None:
    try:
        return check()
    except Exception as e:  # noqa: BLE001 - a check that fails is a problem to report, not a 500
        return f"{getattr(check, '__name__', 'check')}: {type(e).__name__}: {e}"[:300]


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()
