"""Text no database can hold, from a hostile client (issue #11, items 11a and 11b), on SQLite
and PostgreSQL (the ``tracker`` fixture of test_tracker_api: one server per backend).

- An id in the path with a NUL (``%00``) made PostgreSQL fail (500): every id in a path is
  now refused with 400 naming the parameter, before authentication and before any query;
  other control and non-ASCII characters and over-long ids the same way.
- A lone surrogate (JSON ``"\\ud800"``) or a NUL anywhere in a JSON body, a member name
  included, is 400 naming the member; nothing is stored.
- The sibling on CoAP: ``/notices/<device-id>`` with a NUL in the id was 5.00 on PostgreSQL.
  The CoAP path accepted every other id the HTTP routes refuse (``+``, ``#``, ``/``, bidi
  controls, non-ASCII): anyone could make the hub remember such an id over plain UDP, and the
  MQTT publisher then published it again at each reconnection, to a topic with wildcards or
  more levels (``suitkit/devices/a/b/update``). The same ids are refused on both edges now.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import pytest

from notice_kit import free_port
from pg import BACKENDS, backend_url
from suitkit.cli.notices import tracker_routes
from suitkit.errors import StorageError
from suitkit.server.coap import CoapServer, create_coap_site
from suitkit.server.store import BlobStore
from suitkit.tracker.config import TrackerConfig
from tracker.test_tracker_api import ADMIN, Tracker, auth
from tracker.test_tracker_api import tracker as tracker  # noqa: PLC0414 - the fixture

DEVICE_ID = "3f0e9a8e-1111-4222-8333-944455556666"
BAD_IDS = ["%00", "a%00b", "%01", "%7F", "%C3%A9", "a%20b", "x" * 65]


def routes(bad: str) -> list[tuple[str, str]]:
    """Every tracker route with an id in its path, with ``bad`` as that id."""
    device = f"/api/v1/devices/{bad}"
    return [("GET", device), ("GET", f"{device}/history"), ("GET", f"{device}/update"),
            ("PUT", f"{device}/inventory"), ("POST", f"{device}/events"),
            ("POST", f"{device}/reports"), ("POST", f"{device}/reset"),
            ("PUT", f"{device}/tags"), ("DELETE", f"/api/v1/tokens/{bad}"),
            ("GET", f"/api/v1/campaigns/{bad}"), ("POST", f"/api/v1/campaigns/{bad}/pause"),
            ("POST", f"/api/v1/campaigns/{bad}/approve")]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_an_id_in_the_path_no_record_can_have_is_400_before_the_database(
        tracker: Tracker, bad: str) -> None:
    dev = tracker.register()
    for token in (ADMIN, dev["token"]):
        for method, path in routes(bad):
            response = tracker.client.request(method, path, headers=auth(token),
                                               json={"reason": "x"})
            assert response.status_code == 400, (method, path, response.text)
            assert "in the path: expected 1 to 64 letters" in response.json()["error"], path
    # ids of the right shape still reach the routes (404 for an unknown one, as before)
    response = tracker.client.get(f"/api/v1/devices/{DEVICE_ID}", headers=auth(ADMIN))
    assert response.status_code == 404, response.text
    assert tracker.client.get(f"/api/v1/devices/{dev['id']}/history",
                              headers=auth(dev["token"])).status_code == 200


def bodies(device_id: str) -> list[tuple[str, str, str, str, str]]:
    """(method, path, who, JSON body with ESC where the bad text goes, member named)."""
    return [
        ("POST", "/api/v1/devices", "admin", '{"name": "ESC"}', "name"),
        ("POST", "/api/v1/devices", "admin", '{"ESC": "x"}', "the body"),
        ("POST", "/api/v1/tokens", "admin", '{"name": "n", "role": "ESC"}', "role"),
        ("POST", f"/api/v1/devices/{device_id}/events", "device", '{"state": "ESC"}',
         "state"),
        ("PUT", f"/api/v1/devices/{device_id}/inventory", "device",
         '{"hardware": {"board": {"ESC": 1}}}', "hardware.board"),
        ("PUT", f"/api/v1/devices/{device_id}/inventory", "device",
         '{"components": [{"id": ["00"], "digest": "ESC"}]}', "components[0].digest"),
        ("POST", "/api/v1/campaigns", "admin",
         '{"name": "c", "release": "ab", "envelope_url": "https://x/e", '
         '"target": {"tags": ["ok", "ESC"]}}', "target.tags[1]"),
        ("POST", "/api/v1/campaigns", "admin", '{"mode": "ESC"}', "mode"),
        ("PUT", f"/api/v1/devices/{device_id}/tags", "admin", '{"tags": ["ESC"]}',
         "tags[0]"),
        ("POST", "/api/v1/deployments", "admin",
         '{"release": "ab", "envelope_url": "https://x/e", "devices": ["ESC"]}',
         "devices[0]"),
    ]


@pytest.mark.parametrize("escaped", ["\\ud800", "a\\udfffb", "\\u0000", "x\\ud800\\u0000"])
def test_a_lone_surrogate_or_nul_anywhere_in_a_json_body_is_400_naming_the_member(
        tracker: Tracker, escaped: str) -> None:
    dev = tracker.register()
    before = tracker.query_one("SELECT count(*) FROM devices")[0]
    for method, path, who, template, member in bodies(dev["id"]):
        token = ADMIN if who == "admin" else dev["token"]
        response = tracker.client.request(
            method, path, content=template.replace("ESC", escaped).encode(),
            headers={**auth(token), "Content-Type": "application/json"})
        assert response.status_code == 400, (path, template, response.text)
        error: Any = response.json()["error"]
        assert error.startswith(f"{member}: "), (path, template, error)
        assert "NUL" in error and "surrogate" in error, error
    assert tracker.query_one("SELECT count(*) FROM devices")[0] == before
    assert tracker.client.get(f"/api/v1/devices/{dev['id']}/history",
                              headers=auth(ADMIN)).json()["history"] == []


@pytest.fixture(params=BACKENDS)
def coap_notices(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    """The tracker's CoAP notices (``/notices/<device-id>``) on a real CoAP server over a
    fresh database of each backend; its UDP port."""
    wiring = tracker_routes(TrackerConfig(backend_url(request, tmp_path), ADMIN), coap=True)
    site = create_coap_site(BlobStore(tmp_path / "data"), extra_resources=wiring.coap_resources)
    server: CoapServer | None = None
    try:
        for attempt in range(5):  # a free port may be taken by a parallel run before bind
            server = CoapServer(BlobStore(tmp_path / "data"), "127.0.0.1",
                                free_port(socket.SOCK_DGRAM), timeout=5.0, site=site)
            try:
                server.start()
                break
            except StorageError:
                server = None
                if attempt == 4:
                    raise
        assert server is not None
        yield server.port
    finally:
        if server is not None:
            server.stop()
        wiring.close()


def coap_get(port: int, *segments: str) -> Any:
    async def get() -> Any:
        context = await aiocoap.Context.create_client_context()
        try:
            request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/")
            request.opt.uri_path = segments
            return await asyncio.wait_for(context.request(request).response, 20)
        finally:
            await context.shutdown()

    return asyncio.run(get())


@pytest.mark.parametrize("bad", ["\x00", "a\x00b", "\x01", "\x7f", "+", "#", "a/b",
                                 "a+#", "\u202e", "\u00e9", "a b", "x" * 37])
def test_coap_notices_for_an_id_no_device_can_have_are_4xx_not_5xx(coap_notices: int,
                                                                   bad: str) -> None:
    response = coap_get(coap_notices, "notices", bad)
    assert response.code.class_ == 4, (bad, response.code, response.payload[:200])
    assert coap_get(coap_notices, "notices", DEVICE_ID).code.is_successful()


def test_the_mqtt_publisher_never_publishes_to_a_topic_no_device_id_can_make() -> None:
    """An id with an MQTT wildcard or a level separator is not published (paho refuses a
    wildcard topic with an exception logged per id; ``a/b`` wrote a retained message under
    ``suitkit/devices/a/b``), whoever made the hub know it."""
    pytest.importorskip("paho.mqtt.client", reason="install paho-mqtt")
    from suitkit.tracker.notices import NotificationHub
    from suitkit.tracker.notices.mqtt import MqttPublisher

    hub = NotificationHub(lambda _: (None, 0))
    publisher = MqttPublisher(hub, "127.0.0.1", 9)  # never started: nothing is sent
    for bad in ("+", "#", "a/b", "a/+/#", "\u202e", "", "x/update/#"):
        hub.current(bad)
        publisher.publish(bad)
    publisher.publish(DEVICE_ID)
    queued = [publisher._queue.get_nowait() for _ in range(publisher._queue.qsize())]
    assert queued == [DEVICE_ID]
