"""Health-gated rollouts on the tracker (issue #13): what devices say of the health of the
release they confirmed (``TrackerDB.report_health``), the campaign engine's health rule and
gate (``CampaignSpec.unhealthy_threshold``, ``health_window``), the rollback order, and the
``POST /api/v1/devices/{id}/health`` route's bounds and authorization.

The engine tests run on the database under an injected clock (``test_campaigns.World``); the
route tests on a real uvicorn server on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from pg import BACKENDS, backend_url
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.campaigns import CampaignEngine, CampaignSpec
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router
from suitkit.tracker.service import (
    CampaignRefused,
    DeploymentRefused,
    HealthRecord,
    HealthReport,
    NotAssigned,
    open_db,
)
from tracker.test_campaigns import RELEASE, URL, VENDOR, Clock, World, notified
from tracker.test_campaigns import world as world  # noqa: PLC0414 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def unhealthy(release: str = RELEASE, **kw: Any) -> HealthReport:
    return HealthReport(release=release, status="unhealthy", window=600.0, checks=3,
                        failures=1, records=(HealthRecord("command", False, "exit 1"),), **kw)


def healthy(status: str = "watching") -> HealthReport:
    return HealthReport(release=RELEASE, status=status, window=600.0, checks=1)


def started(world: World, n: int, **kw: Any) -> tuple[str, list[str]]:
    """A running campaign over ``n`` new devices, each notified (one wave unless ``waves``)."""
    ids = world.devices(n)
    kw.setdefault("failure_threshold", 1.0)
    doc = world.campaign(**kw)
    world.engine.start(doc["id"], "carol")
    return doc["id"], ids


# ---------------------------------------------------------------------------- the engine rule


@pytest.mark.parametrize(("bad", "paused"), [(1, False), (2, True)])
def test_the_health_threshold_pauses_only_above_the_fraction(world: World, bad: int,
                                                             paused: bool) -> None:
    """4 devices confirmed, threshold 0.25: 1 unhealthy is 25% (not more: runs on), 2 is 50%
    (pauses, with the reason in the campaign and its log)."""
    campaign_id, ids = started(world, 4, unhealthy_threshold=0.25, health_window=600.0)
    for device_id in ids:
        world.succeed(device_id)
    for device_id in ids[:bad]:
        world.clock.now += timedelta(seconds=10)
        assert world.db.report_health(device_id, unhealthy())["rollback"] is True
    summary = world.engine.tick()
    doc = world.engine.get(campaign_id)
    assert (campaign_id in summary["paused"]) is paused
    assert doc["status"] == ("paused" if paused else "running")
    assert doc["health"] == {"confirmed": 4, "unhealthy": bad}
    if paused:
        assert doc["pause_reason"] == ("health threshold crossed: 2 of 4 devices that "
                                       "confirmed turned unhealthy within 600 s (50% > 25%)")
        assert doc["log"][-1]["action"] == "pause" and doc["log"][-1]["actor"] == "engine"
        # resuming accepts those two; a third unhealthy device pauses it again
        world.engine.resume(campaign_id, "carol")
        assert world.engine.get(campaign_id)["status"] == "running"
        world.db.report_health(ids[2], unhealthy())
        world.engine.tick()
        assert world.engine.get(campaign_id)["status"] == "paused"


def test_a_zero_threshold_pauses_at_the_first_unhealthy_device(world: World) -> None:
    campaign_id, ids = started(world, 3, unhealthy_threshold=0.0, health_window=60.0)
    for device_id in ids:
        world.succeed(device_id)
    world.engine.tick()
    assert world.engine.get(campaign_id)["status"] == "running"
    world.db.report_health(ids[0], unhealthy())
    world.engine.tick()
    assert world.engine.get(campaign_id)["status"] == "paused"


def test_unhealthy_after_the_window_neither_counts_nor_orders_a_rollback(world: World) -> None:
    campaign_id, ids = started(world, 2, unhealthy_threshold=0.0, health_window=60.0)
    for device_id in ids:
        world.succeed(device_id)
    world.clock.now += timedelta(seconds=60)  # the boundary: still inside (<=)
    assert world.db.report_health(ids[0], unhealthy())["rollback"] is True
    world.clock.now += timedelta(seconds=1)
    answer = world.db.report_health(ids[1], unhealthy())
    assert answer["rollback"] is False and answer["health"]["status"] == "unhealthy"
    world.engine.tick()
    doc = world.engine.get(campaign_id)
    assert doc["health"] == {"confirmed": 2, "unhealthy": 1}
    assert doc["status"] == "paused"  # the first one, inside its window
    assert {m["device_id"]: m["health"] for m in doc["members"]} == {
        ids[0]: "unhealthy", ids[1]: "unhealthy"}


def test_waves_open_only_after_the_open_waves_windows_passed_healthy(world: World) -> None:
    campaign_id, ids = started(world, 4, waves=(50, 100), health_window=300.0)
    first = notified(world, campaign_id)
    assert len(first) == 2
    for device_id in first:
        world.succeed(device_id)
    world.engine.tick()
    assert notified(world, campaign_id) == []  # confirmed, but still inside their windows
    doc = world.engine.get(campaign_id)
    assert doc["waves_detail"][1]["open"] is False
    world.clock.now += timedelta(seconds=299)
    world.engine.tick()
    assert notified(world, campaign_id) == []
    world.clock.now += timedelta(seconds=1)
    world.engine.tick()
    second = notified(world, campaign_id)
    assert sorted(second) == sorted(set(ids) - set(first))
    for device_id in second:
        world.succeed(device_id)
    world.engine.tick()
    assert world.engine.get(campaign_id)["status"] == "running"  # not before the windows
    world.clock.now += timedelta(seconds=300)
    world.engine.tick()
    assert world.engine.get(campaign_id)["status"] == "completed"


def test_an_unhealthy_device_does_not_count_as_a_success_of_its_wave(world: World) -> None:
    """Without a threshold, health still gates the waves: a member found unhealthy inside its
    window ends its wave short of the success threshold (the campaign pauses there)."""
    campaign_id, _ = started(world, 2, waves=(50, 100), health_window=60.0)
    (first,) = notified(world, campaign_id)
    world.succeed(first)
    world.db.report_health(first, unhealthy())
    world.clock.now += timedelta(seconds=61)
    world.engine.tick()
    doc = world.engine.get(campaign_id)
    assert doc["status"] == "paused" and "wave 1 finished with 0 of 1" in doc["pause_reason"]


def test_the_rollback_order_reaches_the_check_in_and_ends_with_rolled_back(
        world: World) -> None:
    campaign_id, ids = started(world, 1, health_window=600.0)
    device_id = ids[0]
    secret = _secret(world, device_id)
    world.succeed(device_id)
    assert world.db.check_in(device_id, secret, "x").rollback is None  # type: ignore[union-attr]
    assert world.db.report_health(device_id, healthy())["rollback"] is False
    assert world.db.report_health(device_id, unhealthy())["rollback"] is True
    checked = world.db.check_in(device_id, secret, "x")
    assert checked is not None and checked.rollback == RELEASE and checked.pending is None
    answer = world.db.report_health(device_id, HealthReport(RELEASE, "rolled-back", 600.0,
                                                            detail="reverted"))
    assert answer["rollback"] is False and answer["status"] == "rolled-back"
    device = world.db.device(device_id)
    assert device is not None and device["state"] == "rolled-back"
    assert device["health"][0]["status"] == "rolled-back"
    history = world.db.history(device_id)
    assert [h["state"] for h in history if h["kind"] == "event"][-2:] == [
        "succeeded", "rolled-back"]
    assert history[-1]["detail"].startswith("rolled back after the health check")
    checked = world.db.check_in(device_id, secret, "x")
    assert checked is not None and checked.rollback is None
    (member,) = world.engine.get(campaign_id)["members"]
    assert member["state"] == "rolled-back" and member["health"] == "rolled-back"
    # the report is the same again: no second event; anything else is refused
    world.db.report_health(device_id, HealthReport(RELEASE, "rolled-back", 600.0))
    assert len(world.db.history(device_id)) == len(history)
    with pytest.raises(NotAssigned, match="did not confirm"):
        world.db.report_health(device_id, healthy("healthy"))


def test_no_new_update_is_given_inside_a_health_window(world: World) -> None:
    """The agent takes none before its window ends: a deployment is refused, a campaign
    holds the member until then; a new assignment carries no old rollback order."""
    (device_id,) = world.devices(1)
    secret = _secret(world, device_id)
    world.db.deploy(RELEASE, URL, [device_id])
    world.succeed(device_id)
    world.db.report_health(device_id, HealthReport(RELEASE, "watching", 60.0))
    with pytest.raises(DeploymentRefused, match=f"inside the health window of release "
                                                f"{RELEASE} until 2026-03-02T12:01:00"):
        world.db.deploy("cd" * 32, URL, [device_id])
    campaign_id = world.campaign(devices=(device_id,), vendor_id=None)["id"]
    world.engine.start(campaign_id, "carol")
    assert notified(world, campaign_id) == []  # held: retried at a later tick
    world.clock.now += timedelta(seconds=60)
    world.engine.tick()
    assert notified(world, campaign_id) == [device_id]
    checked = world.db.check_in(device_id, secret, "x")
    assert checked is not None and checked.rollback is None


def test_a_new_assignment_drops_the_last_update_s_rollback_order(world: World) -> None:
    campaign_id, (device_id,) = started(world, 1, health_window=600.0)
    secret = _secret(world, device_id)
    world.succeed(device_id)
    assert world.db.report_health(device_id, unhealthy())["rollback"] is True
    world.db.report_health(device_id, HealthReport(RELEASE, "rolled-back", 600.0))
    world.db.deploy("cd" * 32, URL, [device_id])  # the same instant: the clock stands still
    for state in ("downloading", "downloaded", "installing", "rebooting", "succeeded"):
        world.db.add_event(device_id, state, "")
    checked = world.db.check_in(device_id, secret, "x")
    assert checked is not None and checked.rollback is None and checked.state == "succeeded"
    del campaign_id


def test_a_direct_deployment_keeps_health_but_orders_no_rollback(world: World) -> None:
    (device_id,) = world.devices(1)
    world.db.deploy(RELEASE, URL, [device_id])
    world.succeed(device_id)
    answer = world.db.report_health(device_id, unhealthy())
    assert answer["rollback"] is False and answer["health"]["failures"] == 1


def test_a_health_report_is_only_for_the_confirmed_current_release(world: World) -> None:
    (device_id,) = world.devices(1)
    with pytest.raises(NotAssigned, match="no state yet with release none"):
        world.db.report_health(device_id, healthy())
    world.db.deploy(RELEASE, URL, [device_id])
    for state in ("downloading", "downloaded"):
        world.db.add_event(device_id, state, "")
    with pytest.raises(NotAssigned, match="is downloaded"):  # not confirmed yet
        world.db.report_health(device_id, healthy())
    for state in ("installing", "rebooting", "succeeded"):
        world.db.add_event(device_id, state, "")
    with pytest.raises(NotAssigned, match="the report names " + "cd" * 32):
        world.db.report_health(device_id, unhealthy("cd" * 32))
    assert world.db.report_health(device_id, healthy())["status"] == "watching"


def test_health_rows_are_bounded_per_device(world: World) -> None:
    (device_id,) = world.devices(1)
    for n in range(12):
        release = f"{n:02x}" * 32
        world.db.deploy(release, URL, [device_id])
        world.succeed(device_id)
        world.clock.now += timedelta(seconds=1)
        world.db.report_health(device_id, HealthReport(release, "healthy", 1.0))
    rows = world.db.health(device_id)
    assert len(rows) == 8 and rows[0]["release"] == "0b" * 32


@pytest.fixture(params=BACKENDS)
def any_world(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[World]:
    """``World`` on SQLite and on PostgreSQL (the health counts are SQL of their own)."""
    from datetime import UTC, datetime

    clock = Clock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    db = open_db(backend_url(request, tmp_path), clock=clock)
    try:
        yield World(db, CampaignEngine(db), clock, tmp_path, [])
    finally:
        db.engine.dispose()


def test_the_health_rule_and_gate_on_each_backend(any_world: World) -> None:
    world = any_world
    campaign_id, ids = started(world, 4, waves=(50, 100), unhealthy_threshold=0.4,
                               health_window=120.0)
    first = notified(world, campaign_id)
    for device_id in first:
        world.succeed(device_id)
    world.clock.now += timedelta(seconds=120)
    world.engine.tick()
    assert sorted(notified(world, campaign_id)) == sorted(set(ids) - set(first))
    for device_id in set(ids) - set(first):
        world.succeed(device_id)
    world.clock.now += timedelta(seconds=1)
    world.db.report_health(first[0], unhealthy())  # outside its window: counts for nothing
    world.engine.tick()
    assert world.engine.get(campaign_id)["health"] == {"confirmed": 4, "unhealthy": 0}
    second = sorted(set(ids) - set(first))
    world.clock.now += timedelta(seconds=5)
    assert world.db.report_health(second[0], unhealthy())["rollback"] is True
    world.engine.tick()
    assert world.engine.get(campaign_id)["status"] == "running"  # 1 of 4: not above 40%
    world.db.report_health(second[1], unhealthy())
    world.engine.tick()
    doc = world.engine.get(campaign_id)
    assert doc["status"] == "paused" and doc["pause_reason"].startswith(
        "health threshold crossed: 2 of 4 devices")


@pytest.mark.parametrize(("kw", "message"), [
    ({"unhealthy_threshold": 0.1}, "unhealthy_threshold: needs health_window"),
    ({"unhealthy_threshold": 1.5, "health_window": 60.0}, "unhealthy_threshold: expected a "
                                                          "fraction between 0 and 1, got 1.5"),
    ({"health_window": 0.0}, "health_window: expected seconds in (0, 604800], got 0.0"),
])
def test_bad_health_thresholds_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(CampaignRefused) as caught:
        CampaignSpec(name="c", release=RELEASE, envelope_url=URL, vendor_id=VENDOR,
                     **kw).check()
    assert str(caught.value).startswith(message)


def _secret(world: World, device_id: str) -> str:
    """A fresh credential for ``device_id`` (the test's own: it writes the hash)."""
    from suitkit.tracker.model import Device
    from suitkit.tracker.service import hash_secret

    with world.db.store.transaction() as tx:
        device = tx.device(device_id)
        assert isinstance(device, Device)
        device.credential_hash = hash_secret("s3cret")
    return "s3cret"


# ---------------------------------------------------------------------------- the route

ADMIN = "admin-token-for-health-tests"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, httpx.Client]]:
    from device.device_kit import Author

    tmp = tmp_path_factory.mktemp("health")
    author = Author.create(tmp / "author")
    router = create_router(TrackerConfig(f"sqlite:///{tmp / 'tracker.db'}", ADMIN))
    config = ServerConfig(data_dir=tmp / "data", routers=(router,),
                          anchors=TrustAnchors.of(author.key.public_key()))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield url, client


def _register(client: httpx.Client) -> dict[str, Any]:
    made = client.post("/api/v1/devices", json={"name": "h"},
                       headers={"Authorization": f"Bearer {ADMIN}"})
    assert made.status_code == 201, made.text
    return dict(made.json())


BODY = {"release": RELEASE, "status": "unhealthy", "window": 600, "checks": 2, "failures": 1,
        "crashes": 0, "records": [{"check": "command", "ok": False, "detail": "exit 1"}],
        "detail": "the health command failed"}


@pytest.mark.parametrize(("change", "message"), [
    ({"extra": 1}, "health: unknown member 'extra'"),
    ({"status": "fine"}, "status: expected one of watching, healthy, unhealthy, rolled-back, "
                         "got 'fine'"),
    ({"release": "zz"}, "release: expected hexadecimal bytes, got 'zz'"),
    ({"window": -1}, "window: expected seconds from 0 to 604800, got -1"),
    ({"window": 10**9}, "window: expected seconds from 0 to 604800, got 1000000000"),
    ({"checks": 2**31}, "checks: expected an integer from 0 to 2147483647, got 2147483648"),
    ({"crashes": True}, "crashes: expected an integer from 0 to 2147483647, got True"),
    ({"records": [{"check": "c", "ok": True}] * 17}, "records: expected a list of at most 16 "
                                                     "records"),
    ({"records": [{"check": "c" * 33, "ok": True}]}, "records[0].check: 33 characters is over "
                                                     "the limit of 32"),
    ({"records": [{"check": "c", "ok": "yes"}]}, "records[0].ok: expected true or false"),
    ({"records": [{"check": "c", "ok": True, "when": 1}]}, "records[0]: unknown member "
                                                           "'when'"),
    ({"records": ["c"]}, "records[0]: expected an object {check, ok, detail}"),
    ({"detail": "d" * 257}, "detail: 257 characters is over the limit of 256"),
])
def test_the_health_route_bounds_every_member(server: tuple[str, httpx.Client],
                                              change: dict[str, Any], message: str) -> None:
    _, client = server
    dev = _register(client)
    response = client.post(f"/api/v1/devices/{dev['id']}/health", json={**BODY, **change},
                           headers={"Authorization": f"Bearer {dev['token']}"})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(message)


def test_the_health_route_is_the_device_s_own(server: tuple[str, httpx.Client]) -> None:
    _, client = server
    dev, other = _register(client), _register(client)
    path = f"/api/v1/devices/{dev['id']}/health"
    assert client.post(path, json=BODY).status_code == 401
    bad = client.post(path, json=BODY, headers={"Authorization": f"Bearer {dev['id']}.nope"})
    assert bad.status_code == 401
    foreign = client.post(path, json=BODY, headers={"Authorization": f"Bearer {other['token']}"})
    assert foreign.status_code == 403, foreign.text
    staff = client.post(path, json=BODY, headers={"Authorization": f"Bearer {ADMIN}"})
    assert staff.status_code == 403, staff.text
    # the device itself gets through to the rules: nothing confirmed, 409
    own = client.post(path, json=BODY, headers={"Authorization": f"Bearer {dev['token']}"})
    assert own.status_code == 409, own.text
    big = client.post(path, content=b'{"detail": "' + b"x" * (2 << 20) + b'"}',
                      headers={"Authorization": f"Bearer {dev['token']}",
                               "Content-Type": "application/json"})
    assert big.status_code == 413, big.text
    # the reading side: the device and the staff, nobody else
    assert client.get(path, headers={"Authorization": f"Bearer {dev['token']}"}).json() == {
        "health": []}
    assert client.get(path, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert client.get(path, headers={"Authorization": f"Bearer {other['token']}"}
                      ).status_code == 403
