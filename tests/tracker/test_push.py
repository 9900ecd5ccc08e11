"""Notices (server-initiated mode): the hub, SSE and long-poll over real uvicorn, CoAP observe over
real aiocoap, MQTT through a real mosquitto; the device's notice sources against them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from device.device_kit import Author, new_device
from notice_kit import ADMIN, Tracker, mosquitto, wait_until
from serve_kit import serving
from suitkit.cli.main import app as cli
from suitkit.core.verify import TrustAnchors
from suitkit.device.listen import CoapSource, LongPollSource, MqttSource, SseSource
from suitkit.tracker.notices import NotificationHub
from suitkit.tracker.notices.mqtt import topic_for

RELEASE = "ab" * 32


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracker]:
    tmp = tmp_path_factory.mktemp("push")
    author = Author.create(tmp / "author")
    server = Tracker(tmp / "data", TrustAnchors.of(author.key.public_key()), heartbeat=0.2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(tracker: Tracker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tracker.url, timeout=15) as c:
        yield c


def register(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/api/v1/devices", json={"name": "n"}, headers=auth(ADMIN))
    assert response.status_code == 201, response.text
    return dict(response.json())


def deploy(client: httpx.Client, device_id: str, release: str = RELEASE) -> None:
    response = client.post("/api/v1/deployments", headers=auth(ADMIN), json={
        "release": release, "envelope_url": f"http://example.invalid/envelopes/{release}",
        "devices": [device_id]})
    assert response.status_code == 201, response.text


def later(action: Any, delay: float = 0.3) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


# ---------------------------------------------------------------------------- the hub


def test_the_hub_wakes_watchers_with_the_databases_serials_and_reads_the_document() -> None:
    pending: dict[str, dict[str, Any]] = {}
    serials: dict[str, int] = {}
    hub = NotificationHub(lambda d: (pending.get(d), serials.get(d, 0)))
    seen: list[tuple[str, int]] = []
    stop = hub.watch("a", lambda d, s: seen.append((d, s)))
    assert hub.current("a") == {"release": None, "serial": 0}
    pending["a"] = {"release": "r1", "envelope_url": "http://x/e"}
    serials.update(a=1, b=1)
    hub.changed({"a": 1, "b": 1})
    assert seen == [("a", 1)]
    assert hub.current("a") == {"release": "r1", "envelope_url": "http://x/e", "serial": 1}
    hub.changed({"a": 3}, local=False)  # another replica's change
    assert seen == [("a", 1), ("a", 3)] and hub.serial("a") == 3
    hub.changed({"a": 2}, local=False)  # heard late: the serial never goes back
    assert hub.serial("a") == 3
    stop()
    hub.changed({"a": 4})
    assert len(seen) == 3 and hub.serial("a") == 4


# ---------------------------------------------------------------------------- HTTP


def test_long_poll_returns_the_deploys_notice_within_the_wait(
        tracker: Tracker, client: httpx.Client) -> None:
    dev = register(client)
    url = f"/api/v1/devices/{dev['id']}/notifications"
    assert client.get(url, params={"wait": 0}, headers=auth(dev["token"])).status_code == 204
    timer = later(lambda: deploy(client, dev["id"]))
    got = client.get(url, params={"wait": 10}, headers=auth(dev["token"]))
    timer.join()
    assert got.status_code == 200, got.text
    notice = got.json()
    assert notice["release"] == RELEASE and notice["action"] == "install"
    # after that serial: nothing new within a short wait, then the next deploy's notice
    after = {"wait": 0.2, "after": notice["serial"]}
    assert client.get(url, params=after, headers=auth(dev["token"])).status_code == 204
    timer = later(lambda: deploy(client, dev["id"], "cd" * 32))
    second = client.get(url, params={"wait": 10, "after": notice["serial"]},
                        headers=auth(dev["token"]))
    timer.join()
    assert second.status_code == 200 and second.json()["release"] == "cd" * 32
    assert second.json()["serial"] > notice["serial"]
    # a pending release is answered at once to a device that gives no serial
    assert client.get(url, params={"wait": 0}, headers=auth(dev["token"])).json()[
        "release"] == "cd" * 32


def test_notifications_are_for_the_device_itself(tracker: Tracker, client: httpx.Client) -> None:
    a, b = register(client), register(client)
    url = f"/api/v1/devices/{a['id']}/notifications"
    assert client.get(url, params={"wait": 0}).status_code == 401
    assert client.get(url, params={"wait": 0}, headers=auth(a["id"] + ".x")).status_code == 401
    assert client.get(url, params={"wait": 0}, headers=auth(b["token"])).status_code == 403
    assert client.get(url, params={"wait": 0}, headers=auth(ADMIN)).status_code == 403
    # "²" and "٣" are digits to str.isdigit, and int("²") raised: a 500
    for bad in ({"wait": 61}, {"wait": -1}, {"wait": "x"}, {"after": "-3"},
                {"after": "\u00b2"}, {"after": "1\u00b2"}, {"after": "\u0663"}):
        refused = client.get(url, params=bad, headers=auth(a["token"]))
        assert refused.status_code == 400 and refused.json()["error"]


def test_server_sent_events_send_the_current_notice_heartbeats_and_changes(
        tracker: Tracker, client: httpx.Client) -> None:
    dev = register(client)
    headers = {**auth(dev["token"]), "Accept": "text/event-stream"}
    events: list[str] = []
    heartbeats = 0
    with client.stream("GET", f"/api/v1/devices/{dev['id']}/notifications",
                       headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        deployed = False
        for line in response.iter_lines():
            if line.startswith(": heartbeat"):
                heartbeats += 1
                if not deployed:  # the stream is live: now deploy
                    deploy(client, dev["id"])
                    deployed = True
            elif line.startswith("data:"):
                events.append(line)
                if RELEASE in line:
                    break
    assert heartbeats >= 1 and len(events) == 2
    assert '"release":null' in events[0] and RELEASE in events[1]


def test_the_devices_http_sources_hear_a_deploy(tracker: Tracker, client: httpx.Client) -> None:
    for kind in (SseSource, LongPollSource):
        dev = register(client)
        source = kind(tracker.url, dev["token"], dev["id"], backoff=0.1, max_backoff=0.5)
        source.start()
        try:
            wait_until(lambda s=source: s.connections > 0, 10, f"{source.name} connection")
            deploy(client, dev["id"])
            for _ in range(3):
                notice = source.get(10)
                assert notice is not None, source.name
                if notice["release"] is not None:
                    break
            assert notice["release"] == RELEASE and notice["envelope_url"].endswith(RELEASE)
        finally:
            source.close()


# ---------------------------------------------------------------------------- CoAP observe


def test_coap_observe_delivers_the_current_notice_and_each_change(
        tracker: Tracker, client: httpx.Client) -> None:
    dev = register(client)
    source = CoapSource(tracker.coap, dev["id"], backoff=0.1, max_backoff=0.5)
    source.start()
    try:
        first = source.get(10)
        assert first is not None and first["release"] is None
        deploy(client, dev["id"])
        second = source.get(10)
        assert second is not None and second["release"] == RELEASE
        assert second["serial"] > first["serial"]
        deploy(client, dev["id"], "ef" * 32)
        third = source.get(10)
        assert third is not None and third["release"] == "ef" * 32
    finally:
        source.close()


# ---------------------------------------------------------------------------- MQTT


def _one_notice(broker: tuple[str, int], device_id: str) -> dict[str, Any] | None:
    """The first notice a new subscriber of ``device_id``'s topic gets."""
    source = MqttSource(*broker, device_id, backoff=0.1, max_backoff=1)
    source.start()
    try:
        notice = source.get(10)
        assert source.topic == topic_for(device_id)
        return notice
    finally:
        source.close()


def test_mqtt_notices_are_published_retained_and_survive_a_broker_restart(
        tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    server: Tracker | None = None
    try:
        with mosquitto(tmp_path) as broker:
            server = Tracker(tmp_path / "data", TrustAnchors.of(author.key.public_key()),
                             mqtt=broker)
            server.start()
            assert server.wiring is not None
            publisher = server.wiring.publisher
            wait_until(lambda: publisher.connected, 10, "the publisher's connection")
            with httpx.Client(base_url=server.url, timeout=10) as c:
                dev = register(c)
                live = MqttSource(*broker, dev["id"], backoff=0.1, max_backoff=1)
                live.start()
                try:
                    wait_until(lambda: live.connections > 0, 10, "the device's connection")
                    deploy(c, dev["id"])
                    notice = live.get(10)
                    assert notice is not None and notice["release"] == RELEASE
                finally:
                    live.close()
            # a device that connects later gets the retained notice
            retained = _one_notice(broker, dev["id"])
            assert retained is not None and retained["release"] == RELEASE
        # the broker restarts without persistence (retained notices lost): the publisher
        # reconnects and publishes nothing again by itself (issue #12: replicas republished
        # every device at each reconnection); the next change is published, retained
        wait_until(lambda: not publisher.connected, 10, "the publisher to see the broker go")
        with mosquitto(tmp_path, broker[1]):
            wait_until(lambda: publisher.connected, 15, "the publisher's reconnection")
            with httpx.Client(base_url=server.url, timeout=10) as c:
                deploy(c, dev["id"])
            republished = _one_notice(broker, dev["id"])
            assert republished is not None and republished["release"] == RELEASE
    finally:
        if server is not None:
            server.stop()


# ---------------------------------------------------------------------------- the CLI


def test_serve_with_mqtt_and_coap_pushes_notices_and_stops_with_a_stream_open(
        tmp_path: Path) -> None:
    with mosquitto(tmp_path) as broker:
        author = Author.create(tmp_path / "author")
        (tmp_path / "admin.token").write_text(ADMIN + "\n")
        argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
                "--admin-token-file", str(tmp_path / "admin.token"),
                "--mqtt", f"{broker[0]}:{broker[1]}"]
        sources: list[Any] = []
        with serving(argv, coap=True) as served:  # stopped by its pid whatever happens
            url, process = served.url, served.process
            try:
                with httpx.Client(base_url=url, timeout=30) as c:
                    dev = register(c)
                    envelope, image = author.release(1)  # serve deploys only what it holds
                    uploaded = c.post("/api/v1/releases", headers=auth(ADMIN), files=[
                        ("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
                        ("image", ("app.bin", image, "application/octet-stream"))])
                    assert uploaded.status_code == 201, uploaded.text
                    release = uploaded.json()["id"]
                    sources = [MqttSource(*broker, dev["id"], backoff=0.1, max_backoff=1),
                               CoapSource(f"coap://127.0.0.1:{served.coap_port}", dev["id"],
                                          backoff=0.1, max_backoff=1),
                               SseSource(url, dev["token"], dev["id"], backoff=0.1,
                                         max_backoff=1)]
                    for source in sources:
                        source.start()
                    wait_until(lambda: all(s.connections for s in sources), 60,
                               "the MQTT, CoAP and SSE sources to connect")
                    deployed = c.post("/api/v1/deployments", headers=auth(ADMIN), json={
                        "release": release, "devices": [dev["id"]]})
                    assert deployed.status_code == 201, deployed.text
                    for source in sources:
                        for _ in range(3):
                            notice = source.get(30)
                            assert notice is not None, f"{source.name}: no notice in 30 s"
                            if notice["release"] is not None:
                                break
                        assert notice["release"] == release, source.name
                        assert notice["envelope_url"] == url + uploaded.json()["envelope"]["url"]
                started = time.monotonic()
                process.terminate()  # an SSE stream is still open: the server stops anyway
                process.wait(timeout=30)
                assert time.monotonic() - started < 15
            finally:
                for source in sources:
                    source.close()


def test_device_run_usage_errors_and_one_hybrid_run(tracker: Tracker, client: httpx.Client,
                                                    tmp_path: Path) -> None:
    dev = register(client)
    credential = tmp_path / "dev.cred"
    credential.write_text(dev["token"] + "\n")
    folder = new_device(tmp_path / "dev", [Author.create(tmp_path / "a").anchor])
    base = ["device", "run", str(folder), "--server", tracker.url, "--credential-file",
            str(credential)]
    for extra, message in ((["--mode", "push", "--transport", "mqtt"], "--mqtt HOST:PORT"),
                           (["--mode", "sideways"], "mode must be one of"),
                           (["--transport", "mqtt", "--mqtt", "nohost"], "HOST:PORT"),
                           (["--mode", "push", "--transport", "coap"], "--coap")):
        done = CliRunner().invoke(cli, [*base, *extra])
        assert done.exit_code == 2, (extra, done.output)
        assert message in done.output, done.output
    ran = CliRunner().invoke(cli, [*base, "--mode", "hybrid", "--transport", "longpoll",
                                   "--max-runs", "1"])
    assert ran.exit_code == 0, ran.output
    assert "up-to-date: no update assigned" in ran.output


def test_the_devices_http_sources_use_the_device_api_and_fall_back_on_an_old_tracker(
        tracker: Tracker, client: httpx.Client, tmp_path: Path) -> None:
    """Issue #17: the sources ask ``/device/v1/{id}/notifications``; a tracker that predates
    that prefix (404) is asked at ``/api/v1/devices/{id}/notifications`` from then on."""
    from suitkit.cli.notices import tracker_routes
    from suitkit.server.app import ServerConfig
    from suitkit.server.background import running_server
    from suitkit.tracker.config import TrackerConfig

    dev = register(client)
    current = LongPollSource(tracker.url, dev["token"], dev["id"])
    assert current.url == f"{tracker.url}/device/v1/{dev['id']}/notifications"
    wiring = tracker_routes(TrackerConfig(f"sqlite:///{tmp_path / 'old.db'}", ADMIN),
                            heartbeat=0.2)
    try:
        for router in wiring.routers:  # an old tracker: no device API
            router.routes[:] = [r for r in router.routes
                                if not getattr(r, "path", "").startswith("/device/v1/")]
        config = ServerConfig(data_dir=tmp_path / "data", routers=wiring.routers,
                              anchors=TrustAnchors.of(Author.create(tmp_path / "a").key
                                                      .public_key()))
        with running_server(config) as url, httpx.Client(base_url=url, timeout=15) as old:
            for kind in (SseSource, LongPollSource):
                dev = register(old)
                assert old.get(f"/device/v1/{dev['id']}/notifications",
                               headers=auth(dev["token"])).status_code == 404
                source = kind(url, dev["token"], dev["id"], backoff=0.1, max_backoff=0.5)
                source.start()
                try:
                    wait_until(lambda s=source: s.connections > 0, 20,
                               f"{source.name} connection to the old tracker")
                    assert "/api/v1/devices/" in source.url
                    deploy(old, dev["id"])
                    for _ in range(3):
                        notice = source.get(10)
                        assert notice is not None, source.name
                        if notice["release"] is not None:
                            break
                    assert notice["release"] == RELEASE
                finally:
                    source.close()
    finally:
        wiring.close()
