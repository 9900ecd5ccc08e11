"""Test kit for notifications: a real mosquitto broker, free ports, and a tracker (firmware server
+ status tracker + notices over HTTP, CoAP and MQTT) on a fixed port that can be restarted."""

from __future__ import annotations

import errno
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from serve_kit import start_process, stop_process
from suitkit.cli.notices import TrackerWiring, tracker_routes
from suitkit.core.verify import TrustAnchors
from suitkit.errors import StorageError
from suitkit.server.app import ServerConfig, create_app
from suitkit.server.background import UVICORN_OPTIONS
from suitkit.server.coap import CoapServer, create_coap_site
from suitkit.server.store import BlobStore
from suitkit.tracker.config import TrackerConfig

MOSQUITTO = "/usr/sbin/mosquitto"
ADMIN = "admin-token-for-notice-tests"
UPLOAD = "upload-token-for-notice-tests"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MIN_WAIT = 30.0
"""The least time ``wait_until`` allows: the suite runs on a busy machine (two runs of it at
once on two shared cores), where a start-up or a reconnection once took more than 10 s."""


def wait_until(predicate: Any, timeout: float = MIN_WAIT, what: str = "condition") -> None:
    """Wait until ``predicate()`` holds, for ``timeout`` s but never less than ``MIN_WAIT``
    (a wait that fails only costs time; one too short fails a correct test)."""
    timeout = max(timeout, MIN_WAIT)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@contextmanager
def mosquitto(tmp: Path, port: int | None = None) -> Iterator[tuple[str, int]]:
    """A real mosquitto on 127.0.0.1 (skips when it is not installed)."""
    if shutil.which(MOSQUITTO) is None:
        pytest.skip("install mosquitto (apt-get install mosquitto)")
    fixed = port is not None
    conf, log_path = tmp / "mosquitto.conf", tmp / "mosquitto.log"
    for attempt in range(5):  # a free port may be taken between the probe and the bind
        port = port if fixed else free_port()
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "log_dest stderr\nmax_queued_messages 0\nmax_inflight_messages 0\n")
        with log_path.open("wb") as log:
            proc = start_process([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        try:
            def up(port: int = port, proc: Any = proc) -> bool:
                with suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    return True
                return proc.poll() is not None  # exited: stop waiting, see below
            wait_until(up, 60.0, f"mosquitto to accept connections on 127.0.0.1:{port}")
        except BaseException:
            stop_process(proc)
            raise
        if proc.poll() is None:
            break
        stop_process(proc)
        text = log_path.read_text(errors="replace")
        assert ("Address already in use" in text and not fixed and attempt < 4), text
    try:
        yield "127.0.0.1", port
    finally:
        stop_process(proc)


_START_ATTEMPTS = 5


@dataclass
class Tracker:
    """One running server (HTTP on ``port``, CoAP on ``coap_port``) over ``data``."""

    data: Path
    anchors: TrustAnchors
    port: int = field(default_factory=free_port)
    coap_port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    mqtt: tuple[str, int] | None = None
    heartbeat: float = 0.5
    wiring: TrackerWiring | None = None
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _coap: CoapServer | None = None
    _sock: socket.socket | None = None
    _started_once: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def coap(self) -> str:
        return f"coap://127.0.0.1:{self.coap_port}"

    def start(self) -> None:
        """Start on ``port``/``coap_port``. Another process (a second test run on this machine)
        may take a probed port before it is bound: a first start then takes new ports; a restart
        keeps its ports (its devices reconnect to them) and tries again for up to 60 s."""
        deadline = time.monotonic() + 60.0
        for attempt in range(_START_ATTEMPTS):
            try:
                self._start()
                return
            except (OSError, StorageError) as e:
                cause = e.__cause__ if isinstance(e, StorageError) else e
                taken = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
                if not taken or attempt == _START_ATTEMPTS - 1:
                    raise
                if not self._started_once:
                    self.port, self.coap_port = free_port(), free_port(socket.SOCK_DGRAM)
                elif time.monotonic() > deadline:
                    raise
                else:
                    time.sleep(1.0)

    def _start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        wiring = tracker_routes(TrackerConfig(f"sqlite:///{self.data / 'tracker.db'}", ADMIN),
                                mqtt=self.mqtt, coap=True, heartbeat=self.heartbeat)
        self.wiring = wiring
        config = ServerConfig(data_dir=self.data, anchors=self.anchors, upload_token=UPLOAD,
                              routers=wiring.routers)
        store = BlobStore(self.data)
        self._coap = CoapServer(store, "127.0.0.1", self.coap_port, site=create_coap_site(
            store, extra_resources=wiring.coap_resources))
        try:
            self._coap.start()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM,
                                 socket.IPPROTO_TCP)  # Nagle off
            self._sock = sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning",
                                                   lifespan="off", timeout_graceful_shutdown=2,
                                                   **UVICORN_OPTIONS))  # type: ignore[arg-type]
            self._server = server
            self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                            daemon=True)
            self._thread.start()
            wait_until(lambda: server.started or not self._thread_alive(), 60.0,
                       f"uvicorn to serve {self.url}")
            assert server.started, f"uvicorn stopped before serving {self.url}"
            self._started_once = True
        except BaseException:
            self.stop()  # nothing half-started stays behind (CoAP, notices, the thread)
            raise

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self.wiring is not None:
            self.wiring.close()
        if self._server is not None:
            self._server.should_exit = True
        thread, self._thread = self._thread, None
        try:
            if thread is not None:
                thread.join(30)
                assert not thread.is_alive(), "uvicorn did not stop within 30 s"
        finally:
            if self._coap is not None:
                self._coap.stop()
            if self._sock is not None:
                self._sock.close()
            self.wiring, self._server, self._coap, self._sock = (None,) * 4

    def restart(self) -> None:
        self.stop()
        self.start()
