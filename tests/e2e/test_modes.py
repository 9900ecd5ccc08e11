"""End to end: the real device agent updates simulated devices in each RFC 9019 operating mode
(poll, push, hybrid) and each delivery mode (image bundled in the envelope, detached image), with
envelope and image fetched over HTTP or over CoAP.

One server for the module (uvicorn: firmware server + status tracker + notices; aiocoap: blobs
and notice observation; a real mosquitto for MQTT when installed), one new mcu device per test.
Push and hybrid notices cover the four transports: SSE, long-poll, MQTT and CoAP observe. The
agent also survives a server restart (same data directory and port) and resumes an update it was
in the middle of.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import Author, boot, confirm, image_bytes, install, new_device
from notice_kit import ADMIN, MOSQUITTO, UPLOAD, Tracker, mosquitto, wait_until
from suitkit.core.verify import TrustAnchors
from suitkit.device.agent import AgentOptions, AgentResult, run_agent, run_once
from suitkit.device.fetch import CoapFetcher, HttpFetcher, RoutingFetcher
from suitkit.device.wiring import open_device

FINAL = ("succeeded", "failed", "rolled-back")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class World:
    tracker: Tracker
    author: Author
    tmp: Path
    broker: tuple[str, int] | None
    sequence: int = 1

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.tracker.url, timeout=15)

    def device(self) -> tuple[Path, dict[str, Any]]:
        """A registered mcu device running a confirmed base release."""
        folder = new_device(self.tmp / f"dev-{len(list(self.tmp.glob('dev-*')))}",
                            [self.author.anchor])
        envelope, _ = self.author.release(1, "base")
        assert install(folder, envelope).installed
        boot(folder)
        confirm(folder)
        with self.client() as c:
            response = c.post("/api/v1/devices", json={"name": "e2e"}, headers=auth(ADMIN))
        assert response.status_code == 201, response.text
        return folder, dict(response.json())

    def release(self, delivery: str, fetch: str) -> tuple[dict[str, Any], int]:
        """Upload a new release; (its server record, its sequence number)."""
        self.sequence += 1
        base = self.tracker.url if fetch == "http" else self.tracker.coap
        image = image_bytes(f"app-{self.sequence}-", 3000)
        uri = (f"{base}/firmware/{hashlib.sha256(image).hexdigest()}"
               if delivery == "detached" else None)
        envelope, built = self.author.release(self.sequence, uri=uri, size=3000)
        assert built == image
        files: list[tuple[str, tuple[str, bytes, str]]] = [
            ("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))]
        if delivery == "detached":
            files.append(("image", ("app.bin", image, "application/octet-stream")))
        with self.client() as c:
            response = c.post("/api/v1/releases", files=files, headers=auth(UPLOAD))
        assert response.status_code == 201, response.text
        return dict(response.json()), self.sequence

    def deploy(self, release: dict[str, Any], device_id: str, fetch: str) -> None:
        base = self.tracker.url if fetch == "http" else self.tracker.coap
        with self.client() as c:
            response = c.post("/api/v1/deployments", headers=auth(ADMIN), json={
                "release": release["id"], "envelope_url": base + release["envelope"]["url"],
                "devices": [device_id]})
        assert response.status_code == 201, response.text

    def history(self, device_id: str) -> list[dict[str, Any]]:
        with self.client() as c:
            response = c.get(f"/api/v1/devices/{device_id}/history", headers=auth(ADMIN))
        return list(response.json()["history"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("modes")
    author = Author.create(tmp / "author")
    anchors = TrustAnchors.of(author.key.public_key())
    if shutil.which(MOSQUITTO) is None:
        tracker = Tracker(tmp / "data", anchors)
        tracker.start()
        try:
            yield World(tracker, author, tmp, None)
        finally:
            tracker.stop()
        return
    with mosquitto(tmp) as broker:
        tracker = Tracker(tmp / "data", anchors, mqtt=broker)
        tracker.start()
        try:
            yield World(tracker, author, tmp, broker)
        finally:
            tracker.stop()


def running(folder: Path) -> tuple[int, bool]:
    """(sequence number of the running app, whether it is confirmed)."""
    opened = open_device(folder)
    (check,) = opened.bootloader.observe().primary  # type: ignore[attr-defined]
    sequence = check.info.sequence_number
    return sequence, opened.bootloader.read_counters()["app"] == sequence


def states(history: list[dict[str, Any]]) -> list[str]:
    return [h["state"] for h in history if h["kind"] == "event"]


class Agent:
    """The real agent in a thread, until a final outcome (bounded by ``duration``)."""

    def __init__(self, world: World, folder: Path, token: str, options: AgentOptions) -> None:
        self.lines: list[str] = []
        self.result: AgentResult | None = None
        self.stop = threading.Event()
        fetcher = RoutingFetcher(HttpFetcher(timeout=5, deadline=30),
                                 coap=CoapFetcher(timeout=2, deadline=30))

        def run() -> None:
            self.result = run_agent(folder, world.tracker.url, token, fetcher=fetcher,
                                    options=options, say=self.lines.append, stop=self.stop,
                                    until=lambda r: r.outcome in FINAL)
        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> Agent:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the agent did not stop"

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def finish(self, timeout: float = 60) -> AgentResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the agent did not finish: {self.lines[-20:]}"
        assert self.result is not None
        return self.result


# (mode, delivery, fetch) -> the notice transport: every transport in both push and hybrid
TRANSPORT = {
    ("push", "bundled", "http"): "sse", ("push", "detached", "http"): "longpoll",
    ("push", "bundled", "coap"): "coap", ("push", "detached", "coap"): "mqtt",
    ("hybrid", "bundled", "http"): "longpoll", ("hybrid", "detached", "http"): "sse",
    ("hybrid", "bundled", "coap"): "mqtt", ("hybrid", "detached", "coap"): "coap",
}


def options_for(world: World, mode: str, transport: str) -> AgentOptions:
    return AgentOptions(mode=mode, transport=transport,
                        interval=0.3 if mode == "poll" else 3600.0, duration=60.0,
                        mqtt=world.broker, coap=world.tracker.coap, wait=5.0, backoff=0.1,
                        max_backoff=1.0)


@pytest.mark.parametrize("fetch", ["http", "coap"])
@pytest.mark.parametrize("delivery", ["bundled", "detached"])
@pytest.mark.parametrize("mode", ["poll", "push", "hybrid"])
def test_an_update_in_each_operating_and_delivery_mode(world: World, mode: str, delivery: str,
                                                       fetch: str) -> None:
    transport = TRANSPORT.get((mode, delivery, fetch), "sse")
    if transport == "mqtt" and world.broker is None:
        pytest.skip("install mosquitto (apt-get install mosquitto)")
    folder, dev = world.device()
    release, sequence = world.release(delivery, fetch)
    with Agent(world, folder, dev["token"], options_for(world, mode, transport)) as agent:
        # the agent is up (inventory sent, nothing assigned) and, in push and hybrid modes,
        # listening: the update must come through the mode under test
        wait_until(lambda: agent.saw("up-to-date: no update assigned"), 20, "the first run")
        if mode != "poll":
            wait_until(lambda: agent.saw(f"{transport}: connected")
                       or agent.saw(f"{transport}: observing"), 20, f"{transport} connection")
        world.deploy(release, dev["id"], fetch)
        result = agent.finish()
    assert result.outcome == "succeeded", agent.lines
    assert result.release == release["id"]
    assert running(folder) == (sequence, True)
    if mode != "poll":
        assert agent.saw(f"({transport}): release {release['id']}"), agent.lines
    assert agent.saw("by the pushed notice") == (mode == "push")
    history = world.history(dev["id"])
    assert states(history) == ["notified", "downloading", "downloaded", "installing",
                               "rebooting", "succeeded"]
    (report,) = [h for h in history if h["kind"] == "report"]
    assert report["summary"]["succeeded"] is True
    assert report["summary"]["manifest_digest"]["value"] == release["id"]
    scheme = "coap://" if fetch == "coap" else "http://"
    assert history[1]["detail"].startswith(scheme)  # the envelope URL the device fetched


def test_an_interrupted_update_is_resumed_not_refused(world: World) -> None:
    """The agent died after it reported downloading: the next run continues the update."""
    folder, dev = world.device()
    release, sequence = world.release("detached", "http")
    world.deploy(release, dev["id"], "http")
    with world.client() as c:
        moved = c.post(f"/api/v1/devices/{dev['id']}/events", headers=auth(dev["token"]),
                       json={"state": "downloading", "detail": "before the crash"})
    assert moved.status_code == 201
    result = run_once(folder, world.tracker.url, dev["token"], fetcher=HttpFetcher())
    assert result.outcome == "succeeded", result.steps
    assert "resuming: the tracker has the device downloading" in result.steps
    assert running(folder) == (sequence, True)
    assert states(world.history(dev["id"])) == ["notified", "downloading", "downloaded",
                                                "installing", "rebooting", "succeeded"]


def test_download_now_install_later(world: World) -> None:
    """A notice with action download stops at downloaded; the install uses the kept envelope."""
    folder, dev = world.device()
    release, sequence = world.release("bundled", "http")
    world.deploy(release, dev["id"], "http")
    notice = {"release": release["id"], "action": "download", "serial": 1,
              "envelope_url": world.tracker.url + release["envelope"]["url"]}
    first = run_once(folder, world.tracker.url, dev["token"], fetcher=HttpFetcher(),
                     assigned=notice)
    assert first.outcome == "downloaded" and first.ok, first.steps
    assert running(folder) == (1, True)
    assert list((folder / "agent").glob("*.suit"))
    second = run_once(folder, world.tracker.url, dev["token"], fetcher=HttpFetcher())
    assert second.outcome == "succeeded", second.steps
    assert not any(s.startswith("downloaded ") for s in second.steps)  # not fetched again
    assert running(folder) == (sequence, True)
    assert not list((folder / "agent").glob("*.suit"))
    assert states(world.history(dev["id"])) == ["notified", "downloading", "downloaded",
                                                "installing", "rebooting", "succeeded"]


def test_a_stale_pushed_notice_changes_nothing(world: World) -> None:
    folder, dev = world.device()
    release, _ = world.release("bundled", "http")
    world.deploy(release, dev["id"], "http")
    assert run_once(folder, world.tracker.url, dev["token"],
                    fetcher=HttpFetcher()).outcome == "succeeded"
    count = len(world.history(dev["id"]))
    old = {"release": release["id"], "serial": 5,
           "envelope_url": world.tracker.url + release["envelope"]["url"]}
    again = run_once(folder, world.tracker.url, dev["token"], fetcher=HttpFetcher(),
                     assigned=old)
    assert again.outcome == "up-to-date" and "old notice" in again.reason
    assert len(world.history(dev["id"])) == count


def test_the_agent_survives_a_server_restart(world: World) -> None:
    """Push mode over SSE: the server stops (the agent cannot connect and backs off) and a new
    one starts on the same data directory and port; the agent reconnects and installs what the
    new server deploys."""
    folder, dev = world.device()
    release, sequence = world.release("detached", "http")
    with Agent(world, folder, dev["token"], options_for(world, "push", "sse")) as agent:
        wait_until(lambda: agent.saw("sse: connected"), 20, "the SSE connection")
        world.tracker.stop()
        try:
            wait_until(lambda: agent.saw("sse: ConnectError"), 20, "a failed reconnection")
        finally:
            world.tracker.start()
        wait_until(lambda: sum("sse: connected" in line for line in list(agent.lines)) >= 2,
                   20, "the SSE reconnection")
        world.deploy(release, dev["id"], "http")
        result = agent.finish()
    assert result.outcome == "succeeded", agent.lines
    assert running(folder) == (sequence, True)


class _RestartingFetcher:
    """Restarts the server when the device starts fetching the payload (mid-update), then
    fetches: the download retries until the new server answers."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.inner = HttpFetcher(timeout=5, retries=8, backoff=0.2, deadline=60)
        self.restarted = False

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        if not self.restarted:
            self.restarted = True
            self.world.tracker.stop()
            threading.Timer(0.5, self.world.tracker.start).start()
        return self.inner.fetch(uri, max_bytes=max_bytes, offset=offset)


def test_an_update_finishes_across_a_server_restart_mid_update(world: World) -> None:
    """Poll mode: the tracker and firmware server go away while the device downloads its
    payload and come back on the same port; the update completes and every state and the
    report reach the new server."""
    folder, dev = world.device()
    release, sequence = world.release("detached", "http")
    world.deploy(release, dev["id"], "http")
    fetcher = _RestartingFetcher(world)
    result = run_agent(folder, world.tracker.url, dev["token"], fetcher=fetcher,
                       options=AgentOptions(interval=0.2, duration=60, backoff=0.1,
                                            max_backoff=1),
                       until=lambda r: r.outcome in FINAL)
    wait_until(lambda: world.tracker.wiring is not None, 10, "the server's restart")
    assert fetcher.restarted
    assert result is not None and result.outcome == "succeeded", result
    assert running(folder) == (sequence, True)
    history = world.history(dev["id"])
    assert states(history) == ["notified", "downloading", "downloaded", "installing",
                               "rebooting", "succeeded"]
    assert [h["summary"]["succeeded"] for h in history if h["kind"] == "report"] == [True]
