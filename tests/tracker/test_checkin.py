"""``POST /api/v1/devices/{id}/checkin``, the poll in one request (issue #12), over real HTTP
(uvicorn on 127.0.0.1), on SQLite and on a throwaway PostgreSQL.

What docs/tracker.md "Check-in" promises: nothing to do is ``{"release": null}``; a pending
release is the document of ``GET .../update``; an inventory digest the tracker does not hold
asks for the inventory (``send_inventory``), an inventory sent is stored, and a check-in that
changes nothing writes nothing (the device's row, ``last_seen`` aside, does not move); only
the device's own credential opens it; malformed and oversized bodies are one-line 4xx; the
state machine is still the events' business; the old pair of endpoints still works.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from device.device_kit import VENDOR
from pg import BACKENDS, backend_url
from suitkit.core import crypto
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router
from suitkit.tracker.service import open_db

ADMIN = "admin-token-for-checkin-tests"
CLASS = "1492af14-2569-5e48-bf42-9b2d51f2ab45"
DIGEST = "ab" * 32


@dataclass
class Tracker:
    url: str
    db_url: str
    client: httpx.Client

    def row(self, device_id: str) -> Any:
        """The device's row as stored (read directly, not over HTTP)."""
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as connection:
                return connection.execute(text(
                    "SELECT last_seen, inventory_updated, inventory_digest, history_count, "
                    "hardware, state FROM devices WHERE id = :id"), {"id": device_id}).one()
        finally:
            engine.dispose()

    def components(self, device_id: str) -> list[Any]:
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(
                    "SELECT id, digest FROM installed_components WHERE device_id = :id "
                    "ORDER BY position"), {"id": device_id}))
        finally:
            engine.dispose()

    def register(self) -> dict[str, Any]:
        response = self.client.post("/api/v1/devices", json={"name": "d"}, headers=auth(ADMIN))
        assert response.status_code == 201, response.text
        return dict(response.json())

    def checkin(self, device: dict[str, Any], body: Any, token: str | None = None
                ) -> httpx.Response:
        return self.client.post(f"/api/v1/devices/{device['id']}/checkin", json=body,
                                headers=auth(token or device["token"]))

    def deploy(self, device: dict[str, Any], release: str = "cd" * 32) -> None:
        response = self.client.post("/api/v1/deployments", headers=auth(ADMIN), json={
            "release": release, "envelope_url": "http://127.0.0.1:1/envelopes/x",
            "devices": [device["id"]]})
        assert response.status_code == 201, response.text


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def inventory(sequence: int = 3) -> dict[str, Any]:
    return {"vendor_id": str(VENDOR), "class_id": CLASS,
            "components": [{"id": ["00"], "sequence": sequence, "digest": "ab" * 32}],
            "hardware": {"board": "nrf52840"}}


@pytest.fixture(scope="module", params=BACKENDS)
def tracker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Tracker]:
    tmp_path = tmp_path_factory.mktemp("checkin")
    db_url = backend_url(request, tmp_path)
    db = open_db(db_url)
    request.addfinalizer(db.engine.dispose)
    router = create_router(TrackerConfig(db_url, ADMIN, poll_after=45), db)
    anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
    config = ServerConfig(data_dir=tmp_path / "data", anchors=anchors, routers=(router,))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Tracker(url, db_url, client)


def test_nothing_to_do_asks_once_for_the_inventory_then_stores_it(tracker: Tracker) -> None:
    dev = tracker.register()
    response = tracker.checkin(dev, {"inventory_digest": DIGEST})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {"release": None, "state": None, "send_inventory": True,
                               "poll_after": 45}
    response = tracker.checkin(dev, {"inventory_digest": DIGEST, "inventory": inventory()})
    assert response.status_code == 200, response.text
    assert response.json()["send_inventory"] is False
    row = tracker.row(dev["id"])
    assert row.inventory_digest == DIGEST and row.inventory_updated is not None
    assert [c.digest for c in tracker.components(dev["id"])] == ["ab" * 32]
    shown = tracker.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
    assert shown["components"] == [{"id": ["00"], "sequence": 3, "digest": "ab" * 32,
                                   "version": None}]
    assert shown["last_seen"] is not None


def test_an_unchanged_check_in_writes_nothing(tracker: Tracker) -> None:
    dev = tracker.register()
    tracker.checkin(dev, {"inventory_digest": DIGEST, "inventory": inventory()}
                    ).raise_for_status()
    before, components = tracker.row(dev["id"]), tracker.components(dev["id"])
    for _ in range(3):
        response = tracker.checkin(dev, {"inventory_digest": DIGEST})
        assert response.json()["send_inventory"] is False
    # the same inventory sent again (digest and all) changes nothing either
    tracker.checkin(dev, {"inventory_digest": DIGEST, "inventory": inventory()}
                    ).raise_for_status()
    assert tracker.row(dev["id"]) == before  # last_seen too: within SEEN_RESOLUTION
    assert tracker.components(dev["id"]) == components  # same rows, same ids


def test_a_changed_inventory_is_asked_for_and_stored(tracker: Tracker) -> None:
    dev = tracker.register()
    tracker.checkin(dev, {"inventory_digest": DIGEST, "inventory": inventory()}
                    ).raise_for_status()
    first = tracker.row(dev["id"])
    changed = "01" * 32
    assert tracker.checkin(dev, {"inventory_digest": changed}).json()["send_inventory"] is True
    assert tracker.row(dev["id"]) == first  # asking stores nothing
    tracker.checkin(dev, {"inventory_digest": changed, "inventory": inventory(4)}
                    ).raise_for_status()
    row = tracker.row(dev["id"])
    assert row.inventory_digest == changed and row.inventory_updated >= first.inventory_updated
    shown = tracker.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
    assert shown["components"][0]["sequence"] == 4
    # an inventory that changes through the old PUT clears the digest: asked for again
    tracker.client.put(f"/api/v1/devices/{dev['id']}/inventory", json=inventory(5),
                       headers=auth(dev["token"])).raise_for_status()
    assert tracker.row(dev["id"]).inventory_digest is None
    assert tracker.checkin(dev, {"inventory_digest": changed}).json()["send_inventory"] is True


def test_a_pending_release_is_the_document_of_get_update(tracker: Tracker) -> None:
    dev = tracker.register()
    tracker.deploy(dev)
    response = tracker.checkin(dev, {"inventory_digest": DIGEST})
    assert response.status_code == 200, response.text
    old = tracker.client.get(f"/api/v1/devices/{dev['id']}/update", headers=auth(dev["token"]))
    assert old.status_code == 200
    assert response.json() == {**old.json(), "state": "notified", "send_inventory": True,
                               "poll_after": 45}
    assert response.json()["release"] == "cd" * 32
    # the device walks its update with events; the check-in follows the state
    for state in ("downloading", "downloaded", "installing", "rebooting"):
        tracker.client.post(f"/api/v1/devices/{dev['id']}/events", json={"state": state},
                            headers=auth(dev["token"])).raise_for_status()
    assert tracker.checkin(dev, {"inventory_digest": DIGEST}).json()["state"] == "rebooting"
    tracker.client.post(f"/api/v1/devices/{dev['id']}/events", json={"state": "succeeded"},
                        headers=auth(dev["token"])).raise_for_status()
    done = tracker.checkin(dev, {"inventory_digest": DIGEST}).json()
    assert done["release"] is None and done["state"] == "succeeded"
    assert tracker.client.get(f"/api/v1/devices/{dev['id']}/update",
                              headers=auth(dev["token"])).status_code == 204


def test_the_state_machine_is_not_the_check_in_s_business(tracker: Tracker) -> None:
    """A check-in carries no state: a ``state`` member is refused, and the events keep
    refusing impossible transitions whatever check-ins came before."""
    dev = tracker.register()
    tracker.deploy(dev)
    response = tracker.checkin(dev, {"inventory_digest": DIGEST, "state": "succeeded"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("checkin: unknown member 'state'")
    tracker.checkin(dev, {"inventory_digest": DIGEST}).raise_for_status()
    response = tracker.client.post(f"/api/v1/devices/{dev['id']}/events",
                                   json={"state": "succeeded"}, headers=auth(dev["token"]))
    assert response.status_code == 409 and "notified to succeeded" in response.json()["error"]
    assert tracker.row(dev["id"]).state == "notified"


def test_only_the_device_s_own_credential_opens_its_check_in(tracker: Tracker) -> None:
    a, b = tracker.register(), tracker.register()
    tracker.deploy(a)
    body = {"inventory_digest": DIGEST, "inventory": inventory()}
    before = tracker.row(a["id"])
    for token, status in ((b["token"], 403), (ADMIN, 403), (f"{a['id']}.wrong-secret", 401),
                          ("garbage", 401), (f"{a['id']}.{b['secret']}", 401)):
        response = tracker.checkin(a, body, token=token)
        assert response.status_code == status, (token, response.text)
        assert "\n" not in response.json()["error"]
        assert "release" not in response.json()
    response = tracker.client.post(f"/api/v1/devices/{a['id']}/checkin", json=body)
    assert response.status_code == 401 and "Bearer" in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"
    after = tracker.row(a["id"])
    assert after.inventory_digest == before.inventory_digest is None
    assert tracker.components(a["id"]) == []
    # an unknown device's id with a well-formed credential: 401, no difference shown
    response = tracker.client.post("/api/v1/devices/no-such-device/checkin",
                                   json={"inventory_digest": DIGEST},
                                   headers=auth("no-such-device.secret"))
    assert response.status_code == 401


@pytest.mark.parametrize(("body", "status", "says"), [
    ({}, 400, "inventory_digest: expected a string"),
    ({"inventory_digest": ""}, 400, "inventory_digest: expected the device's digest"),
    ({"inventory_digest": "zz"}, 400, "inventory_digest: expected hexadecimal"),
    ({"inventory_digest": "ab" * 65}, 400, "inventory_digest: 130 characters is over"),
    ({"inventory_digest": DIGEST, "inventory": []}, 400, "inventory: expected an object"),
    ({"inventory_digest": DIGEST, "inventory": {"components": "x"}}, 400, "components:"),
    ({"inventory_digest": DIGEST, "inventory": {"vendor_id": "nope"}}, 400, "vendor_id:"),
    ({"inventory_digest": DIGEST, "inventory": {"hardware": {"k": [1]}}}, 400,
     "hardware.k: expected"),
    ({"inventory_digest": DIGEST, "extra": 1}, 400, "checkin: unknown member 'extra'"),
    ([DIGEST], 400, "the body must be a JSON object"),
])
def test_malformed_bodies_are_one_line_4xx(tracker: Tracker, body: Any, status: int,
                                           says: str) -> None:
    dev = tracker.register()
    response = tracker.checkin(dev, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error and "\n" not in error and "Traceback" not in error
    assert tracker.row(dev["id"]).inventory_digest is None


def test_oversized_and_non_json_bodies_are_refused(tracker: Tracker) -> None:
    dev = tracker.register()
    url, headers = f"/api/v1/devices/{dev['id']}/checkin", auth(dev["token"])
    big = b'{"inventory_digest": "' + b"ab" * 40_000 + b'"}'
    response = tracker.client.post(url, content=big,
                                   headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 413 and "larger than the 65536 bytes" in response.text
    response = tracker.client.post(url, content=b"inventory_digest=ab", headers={
        **headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    response = tracker.client.post(url, content=b'{"inventory_digest": "ab"',
                                   headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == (
        "the body is not valid JSON")
    response = tracker.client.post("/api/v1/devices/a%00b/checkin", headers=headers,
                                   json={"inventory_digest": DIGEST})
    assert response.status_code == 400 and "device_id in the path" in response.text
    assert tracker.client.get(url, headers=headers).status_code == 405


def test_an_inventory_with_another_identity_is_refused_409(tracker: Tracker) -> None:
    dev = tracker.register()
    tracker.checkin(dev, {"inventory_digest": DIGEST, "inventory": inventory()}
                    ).raise_for_status()
    other = {**inventory(), "class_id": "00000000-0000-4000-8000-000000000000"}
    response = tracker.checkin(dev, {"inventory_digest": "02" * 32, "inventory": other})
    assert response.status_code == 409 and "class_id" in response.json()["error"]
    assert tracker.row(dev["id"]).inventory_digest == DIGEST
