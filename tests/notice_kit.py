"""Test kit for notifications: a real mosquitto broker, free ports, and a tracker (firmware server
+ status tracker + notices over HTTP, CoAP and MQTT) on a fixed port that can be restarted."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from suitkit.cli.notices import TrackerWiring, tracker_routes
from suitkit.core.verify import TrustAnchors
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


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
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
    port = port or free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "log_dest stderr\nmax_queued_messages 0\nmax_inflight_messages 0\n")
    with (tmp / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
    try:
        def up() -> bool:
            with suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return True
            assert proc.poll() is None, (tmp / "mosquitto.log").read_text()
            return False
        wait_until(up, 10.0, "mosquitto")
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def coap(self) -> str:
        return f"coap://127.0.0.1:{self.coap_port}"

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        wiring = tracker_routes(TrackerConfig(f"sqlite:///{self.data / 'tracker.db'}", ADMIN),
                                mqtt=self.mqtt, coap=True, heartbeat=self.heartbeat)
        self.wiring = wiring
        config = ServerConfig(data_dir=self.data, anchors=self.anchors, upload_token=UPLOAD,
                              routers=wiring.routers)
        store = BlobStore(self.data)
        self._coap = CoapServer(store, "127.0.0.1", self.coap_port, site=create_coap_site(
            store, extra_resources=wiring.coap_resources))
        self._coap.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # Nagle off
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning",
                                               lifespan="off", timeout_graceful_shutdown=2,
                                               **UVICORN_OPTIONS))  # type: ignore[arg-type]
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        daemon=True)
        self._thread.start()
        self._sock = sock
        wait_until(lambda: server.started, 10.0, "uvicorn")

    def stop(self) -> None:
        if self.wiring is not None:
            self.wiring.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive(), "uvicorn did not stop"
        if self._coap is not None:
            self._coap.stop()
        if self._sock is not None:
            self._sock.close()
        self.wiring, self._server, self._thread, self._coap, self._sock = (None,) * 5

    def restart(self) -> None:
        self.stop()
        self.start()
