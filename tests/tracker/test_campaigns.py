"""Campaigns over the tracker database, without HTTP: ``CampaignEngine`` and simulated devices
that post their events with ``TrackerDB.add_event``, under an injected clock.

What each test shows: waves open only when the open waves succeeded; the failure threshold
pauses the campaign by itself; four-eyes approval; start time and maintenance window; pause,
resume, cancel and trigger; targeting; a new engine over the same file carries on.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pg import BACKENDS, backend_url
from suitkit.tracker.campaigns import CampaignEngine, CampaignSpec, wave_sizes
from suitkit.tracker.service import (
    CampaignRefused,
    ComponentEntry,
    DeploymentRefused,
    Inventory,
    NotAssigned,
    TrackerDB,
    in_window,
    open_db,
    parse_window,
)

VENDOR = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"
CLASS = "1492af14-2569-5e48-bf42-9b2d51f2ab45"
OTHER = "00000000-0000-5000-8000-000000000000"
RELEASE = "ab" * 32
URL = "http://127.0.0.1:1/envelopes/" + RELEASE
INSTALL = ["downloading", "downloaded", "installing", "rebooting"]


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    db: TrackerDB
    engine: CampaignEngine
    clock: Clock
    path: Path
    announced: list[str]

    def devices(self, n: int, *, vendor: str = VENDOR, cls: str = CLASS) -> list[str]:
        ids = []
        for _ in range(n):
            device_id, _secret = self.db.register("d")
            self.db.set_inventory(device_id, Inventory(vendor, cls, (), {}))
            ids.append(device_id)
        return ids

    def campaign(self, *, by: str = "alice", approve: str | None = "bob", **kw: Any
                 ) -> dict[str, Any]:
        kw.setdefault("vendor_id", VENDOR)
        spec = CampaignSpec(name="c", release=RELEASE, envelope_url=URL, **kw)
        doc = self.engine.create(spec, by)
        if approve is not None:
            doc = self.engine.approve(doc["id"], approve)
        return doc

    def succeed(self, device_id: str) -> None:
        for state in [*INSTALL, "succeeded"]:
            self.db.add_event(device_id, state, "")

    def fail(self, device_id: str) -> None:
        self.db.add_event(device_id, "downloading", "")
        self.db.add_event(device_id, "failed", "digest mismatch")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    # SQLite commits on tmpfs when there is one: these tests commit thousands of events
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else tmp_path) as folder:
        clock = Clock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
        path = Path(folder) / "tracker.db"
        db = open_db(f"sqlite:///{path}", clock=clock)
        announced: list[str] = []
        db.add_listener(announced.extend)
        yield World(db, CampaignEngine(db), clock, path, announced)
        db.engine.dispose()


def members(doc: dict[str, Any], *states: str) -> list[str]:
    return [m["device_id"] for m in doc["members"] if not states or m["state"] in states]


def notified(world: World, campaign_id: str) -> list[str]:
    return members(world.engine.get(campaign_id, limit=1000), "notified")


# ---------------------------------------------------------------------------- waves


def test_waves_open_only_when_the_open_waves_succeeded(world: World) -> None:
    world.devices(10)
    doc = world.campaign(waves=(10, 50, 100), failure_threshold=1.0)
    doc = world.engine.start(doc["id"], "carol")
    assert doc["status"] == "running" and doc["devices"] == 10
    assert [w["devices"] for w in doc["waves_detail"]] == [1, 4, 5]  # ceil(1), ceil(5), 10
    first = notified(world, doc["id"])
    assert len(first) == 1 and world.announced == first
    assert world.engine.tick()["assigned"] == 0  # the first wave has not succeeded yet
    world.db.add_event(first[0], "downloading", "")
    world.engine.tick()
    assert notified(world, doc["id"]) == []  # still not: started is not succeeded
    for state in [*INSTALL[1:], "succeeded"]:
        world.db.add_event(first[0], state, "")
    summary = world.engine.tick()
    assert summary["waves"] == [(doc["id"], 2)] and summary["assigned"] == 4
    second = notified(world, doc["id"])
    assert len(second) == 4 and first[0] not in second
    for device_id in second[:3]:
        world.succeed(device_id)
    world.fail(second[3])
    summary = world.engine.tick()
    doc = world.engine.get(doc["id"])
    assert doc["status"] == "paused" and summary["paused"] == [doc["id"]]
    assert doc["pause_reason"] == ("wave 2 finished with 4 of 5 devices succeeded "
                                   "(80% < 100% needed)")
    assert doc["counts"] == {"succeeded": 4, "failed": 1, "pending": 5}
    assert doc["current_wave"] == 2  # the third wave never opened


def test_a_success_threshold_below_one_lets_a_wave_with_failures_advance(world: World) -> None:
    world.devices(4)
    doc = world.engine.start(world.campaign(waves=(50, 100), success_threshold=0.5,
                                            failure_threshold=1.0)["id"], "carol")
    a, b = notified(world, doc["id"])
    world.succeed(a)
    world.engine.tick()
    assert len(notified(world, doc["id"])) == 3  # one of two succeeded is enough: wave 2
    world.fail(b)
    for device_id in notified(world, doc["id"]):
        world.succeed(device_id)
    world.engine.tick()
    doc = world.engine.get(doc["id"])
    assert doc["status"] == "completed" and doc["finished"] is not None
    assert doc["log"][-1]["action"] == "completed"


def test_members_are_ordered_by_a_stable_hash_and_waves_are_prefixes(world: World) -> None:
    world.devices(20)
    doc = world.engine.start(world.campaign(waves=(5, 25, 100))["id"], "carol")
    listed = world.engine.get(doc["id"], limit=1000)["members"]
    assert [m["wave"] for m in listed] == [1] + [2] * 4 + [3] * 15
    again = world.engine.get(doc["id"], limit=1000)["members"]
    assert [m["device_id"] for m in again] == [m["device_id"] for m in listed]
    page = world.engine.get(doc["id"], offset=5, limit=3)["members"]
    assert [m["device_id"] for m in page] == [m["device_id"] for m in listed[5:8]]


# ---------------------------------------------------------------------------- thresholds


def test_the_failure_threshold_pauses_the_campaign_by_itself(world: World) -> None:
    ids = world.devices(10)
    doc = world.engine.start(world.campaign(failure_threshold=0.2)["id"], "carol")
    assert sorted(notified(world, doc["id"])) == sorted(ids)
    for device_id in ids[:3]:
        world.succeed(device_id)
    world.db.add_event(ids[4], "downloading", "")  # started before the pause
    world.fail(ids[3])
    world.engine.tick()
    doc = world.engine.get(doc["id"])
    assert doc["status"] == "paused"
    assert doc["pause_reason"] == ("failure threshold crossed: 1 of 4 finished devices failed "
                                   "(25% > 20%)")
    assert doc["log"][-1]["actor"] == "engine"
    # not started: nothing to do while paused; started: carries on
    assert world.db.pending_update(ids[5]) is None
    started = world.db.pending_update(ids[4])
    assert started is not None
    assert started == {"release": RELEASE, "envelope_url": URL, "action": "install",
                       "campaign": doc["id"], "nonce": started["nonce"]}
    for state in [*INSTALL[1:], "succeeded"]:
        world.db.add_event(ids[4], state, "")
    world.engine.tick()
    assert world.engine.get(doc["id"])["status"] == "paused"  # ticks do not resume
    # resuming acknowledges the failure so far; the next failure pauses again
    world.announced.clear()
    doc = world.engine.resume(doc["id"], "dave")
    assert doc["status"] == "running" and doc["pause_reason"] is None
    assert set(ids[5:]) <= set(world.announced)
    assert world.db.pending_update(ids[5]) is not None
    world.engine.tick()
    assert world.engine.get(doc["id"])["status"] == "running"
    world.fail(ids[5])
    world.engine.tick()
    doc = world.engine.get(doc["id"])
    assert doc["status"] == "paused"
    assert doc["pause_reason"].startswith("failure threshold crossed: 2 of 6 finished")


def test_failures_below_the_threshold_do_not_pause(world: World) -> None:
    ids = world.devices(5)
    doc = world.engine.start(world.campaign(failure_threshold=0.5,
                                            success_threshold=0.5)["id"], "carol")
    world.fail(ids[0])
    world.succeed(ids[1])
    world.engine.tick()
    assert world.engine.get(doc["id"])["status"] == "running"  # 1 of 2 = 50%: not over


# ---------------------------------------------------------------------------- approval


def test_approval_needs_an_operator_who_is_not_the_author(world: World) -> None:
    world.devices(1)
    doc = world.campaign(by="alice", approve=None)
    with pytest.raises(CampaignRefused, match="must be approved") as refused:
        world.engine.start(doc["id"], "alice")
    assert refused.value.kind == "conflict"
    with pytest.raises(CampaignRefused, match="alice created this campaign and cannot approve "
                       "it; another operator must") as refused:
        world.engine.approve(doc["id"], "alice")
    assert refused.value.kind == "forbidden"
    assert world.engine.get(doc["id"])["status"] == "draft"
    doc = world.engine.approve(doc["id"], "bob")
    assert (doc["status"], doc["approved_by"], doc["created_by"]) == ("approved", "bob", "alice")
    with pytest.raises(CampaignRefused, match="campaign is approved; only draft campaigns can "
                       "be approved"):
        world.engine.approve(doc["id"], "carol")
    assert world.engine.start(doc["id"], "alice")["status"] == "running"
    with pytest.raises(CampaignRefused, match="campaign is running; only approved campaigns "
                       "can be started"):
        world.engine.start(doc["id"], "bob")
    assert [e["action"] for e in world.engine.get(doc["id"])["log"]] == [
        "create", "approve", "start"]


def test_a_spec_is_checked_before_anything_is_stored(world: World) -> None:
    cases = [
        (dict(vendor_id=None), "target: give at least one of"),
        (dict(waves=(50, 20, 100)), "waves: expected increasing percentages"),
        (dict(waves=(10, 50)), "ending at 100"),
        (dict(failure_threshold=1.5), "failure_threshold: expected a fraction"),
        (dict(window="25:00-03:00"), "window: expected 'HH:MM-HH:MM'"),
        (dict(window="02:00-02:00"), "start and end are equal"),
        (dict(tags=("ok", "bad tag")), "'bad tag' is not a tag"),
        (dict(devices=("nope",)), "target.devices: no device 'nope'"),
    ]
    for kw, message in cases:
        with pytest.raises(CampaignRefused, match=message) as refused:
            world.campaign(approve=None, **kw)
        assert refused.value.kind == "invalid"
    assert world.engine.campaigns() == []
    with pytest.raises(CampaignRefused, match="no campaign") as unknown:
        world.engine.get("missing")
    assert unknown.value.kind == "unknown"


def test_a_target_matching_no_device_cannot_start(world: World) -> None:
    world.devices(2)
    doc = world.campaign(vendor_id=OTHER)
    with pytest.raises(CampaignRefused, match="target matches no device"):
        world.engine.start(doc["id"], "carol")
    assert world.engine.get(doc["id"])["status"] == "approved"


# ---------------------------------------------------------------------------- targeting


def test_targets_by_vendor_class_tags_and_list(world: World) -> None:
    a, b = world.devices(2)
    (c,) = world.devices(1, cls=OTHER)
    (d,) = world.devices(1, vendor=OTHER)
    world.engine.set_tags(a, ["eu", "canary"])
    world.engine.set_tags(c, ["eu"])
    assert world.db.device(a)["tags"] == ["eu", "canary"]  # type: ignore[index]
    with pytest.raises(CampaignRefused, match="no device"):
        world.engine.set_tags("missing", ["x"])

    def resolved(**kw: Any) -> set[str]:
        doc = world.engine.start(world.campaign(**kw)["id"], "carol")
        got = set(members(world.engine.get(doc["id"], limit=1000)))
        world.engine.cancel(doc["id"], "carol")
        return got

    assert resolved() == {a, b, c}
    assert resolved(class_id=CLASS) == {a, b}
    assert resolved(vendor_id=None, tags=("eu",)) == {a, c}
    assert resolved(vendor_id=None, tags=("eu", "canary")) == {a}
    assert resolved(vendor_id=None, devices=(b, d)) == {b, d}
    assert resolved(devices=(b, d)) == {b}  # the list and the filters together


# ---------------------------------------------------------------------------- schedule


def test_start_after_and_the_maintenance_window_use_the_injected_clock(world: World) -> None:
    ids = world.devices(2)
    start = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)
    doc = world.campaign(start_after=start, window="22:00-02:00", failure_threshold=1.0)
    doc = world.engine.start(doc["id"], "carol")  # 12:00: before start_after
    assert doc["status"] == "running" and notified(world, doc["id"]) == []
    world.clock.now = datetime(2026, 3, 2, 22, 10, tzinfo=UTC)  # in the window, too early
    assert world.engine.tick()["assigned"] == 0
    world.clock.now = start
    assert world.engine.tick()["assigned"] == 2
    assert world.db.pending_update(ids[0]) is not None
    world.db.add_event(ids[1], "downloading", "")
    world.clock.now = datetime(2026, 3, 3, 2, 0, tzinfo=UTC)  # the window closed (wrapped)
    assert world.db.pending_update(ids[0]) is None  # not started: held back
    assert world.db.pending_update(ids[1]) is not None  # started: finishes
    world.clock.now = datetime(2026, 3, 3, 23, 59, tzinfo=UTC)
    assert world.db.pending_update(ids[0]) is not None


def test_windows_wrap_midnight() -> None:
    at = [datetime(2026, 1, 1, h, m, tzinfo=UTC) for h, m in ((21, 59), (22, 0), (0, 0),
                                                              (1, 59), (2, 0), (12, 0))]
    assert [in_window("22:00-02:00", t) for t in at] == [False, True, True, True, False, False]
    assert [in_window("01:00-13:00", t) for t in at] == [False, False, False, True, True, True]
    assert all(in_window(None, t) for t in at)
    assert parse_window("00:00-23:59")[1].minute == 59


# ---------------------------------------------------------------------------- operator actions


def test_pause_holds_back_members_not_started_and_resume_releases_them(world: World) -> None:
    ids = world.devices(3)
    doc = world.engine.start(world.campaign()["id"], "carol")
    world.db.add_event(ids[0], "downloading", "")
    doc = world.engine.pause(doc["id"], "carol", "looking at a report")
    assert doc["pause_reason"] == "paused by carol: looking at a report"
    with pytest.raises(CampaignRefused, match="campaign is paused; only running campaigns "
                       "can be paused"):
        world.engine.pause(doc["id"], "carol")
    assert world.db.pending_update(ids[1]) is None and world.db.pending_update(ids[2]) is None
    assert world.db.pending_update(ids[0]) is not None
    assert world.engine.tick() == {"assigned": 0, "paused": [], "completed": [], "waves": []}
    world.engine.resume(doc["id"], "dave")
    for device_id in ids:
        assert world.db.pending_update(device_id) is not None


def test_cancel_withdraws_members_not_started_and_started_ones_finish(world: World) -> None:
    ids = world.devices(4)
    doc = world.engine.start(world.campaign(waves=(50, 100))["id"],
                             "carol")
    first = notified(world, doc["id"])
    world.db.add_event(first[0], "downloading", "")
    world.announced.clear()
    doc = world.engine.cancel(doc["id"], "carol")
    assert doc["status"] == "cancelled"
    assert world.announced == [first[1]]
    assert world.db.pending_update(first[1]) is None
    assert world.db.device(first[1])["state"] == "notified"  # type: ignore[index]
    assert world.db.pending_update(first[0]) is not None  # started: finishes
    for state in [*INSTALL[1:], "succeeded"]:
        world.db.add_event(first[0], state, "")
    doc = world.engine.get(doc["id"], limit=1000)
    assert doc["counts"] == {"succeeded": 1, "cancelled": 3}
    with pytest.raises(CampaignRefused, match="campaign is cancelled"):
        world.engine.resume(doc["id"], "carol")
    # the devices are free again: a direct deployment reaches the withdrawn one
    deployed = world.db.deploy(RELEASE, URL, [first[1]])
    assert deployed[0]["event"] is None  # still notified: only its assignment is new
    pending = world.db.pending_update(first[1])
    assert pending is not None
    assert pending == {"release": RELEASE, "envelope_url": URL, "action": "install",
                       "campaign": None, "nonce": pending["nonce"]}
    assert len(ids) == 4


def test_a_late_device_event_after_cancel_is_refused(world: World) -> None:
    """A device whose campaign assignment was withdrawn (cancelled before it started) has
    nothing to report: a late ``downloading`` is refused and moves neither the device nor the
    cancelled member; the member that started finishes."""
    world.devices(2)
    doc = world.engine.start(world.campaign()["id"], "carol")
    first, second = notified(world, doc["id"])
    world.db.add_event(first, "downloading", "", by_device=True)
    world.engine.cancel(doc["id"], "carol")
    with pytest.raises(NotAssigned, match="no update assigned"):
        world.db.add_event(second, "downloading", "", by_device=True)
    assert world.db.device(second)["state"] == "notified"  # type: ignore[index]
    for state in [*INSTALL[1:], "succeeded"]:
        world.db.add_event(first, state, "", by_device=True)
    doc = world.engine.get(doc["id"], limit=1000)
    assert doc["counts"] == {"succeeded": 1, "cancelled": 1}
    with pytest.raises(NotAssigned, match="no update assigned"):
        world.db.add_event(first, "failed", "replayed", by_device=True)


def test_a_device_cannot_start_an_assignment_its_campaign_holds_back(world: World) -> None:
    """Paused (or outside its window) a campaign gives its members that did not start nothing
    (``GET .../update`` is 204): a device that starts anyway is refused until the campaign
    gives the assignment again; one that had started finishes."""
    world.devices(2)
    doc = world.engine.start(world.campaign(failure_threshold=1.0)["id"], "carol")
    first, second = notified(world, doc["id"])
    world.db.add_event(first, "downloading", "", by_device=True)
    world.engine.pause(doc["id"], "carol", "looking")
    assert world.db.pending_update(second) is None
    with pytest.raises(NotAssigned, match=r"holds device .* assignment back"):
        world.db.add_event(second, "downloading", "", by_device=True)
    world.db.add_event(first, "downloaded", "", by_device=True)  # started: it goes on
    world.engine.resume(doc["id"], "carol")
    world.db.add_event(second, "downloading", "", by_device=True)
    states = {m["device_id"]: m["state"] for m in world.engine.get(doc["id"])["members"]}
    assert states == {first: "downloaded", second: "downloading"}


def test_a_direct_deployment_does_not_take_a_device_from_a_campaign(world: World) -> None:
    (device_id,) = world.devices(1)
    doc = world.engine.start(world.campaign()["id"], "carol")
    with pytest.raises(DeploymentRefused, match=f"pending assignment of campaign {doc['id']}"):
        world.db.deploy("cd" * 32, URL, [device_id])


def test_a_busy_device_waits_and_joins_when_it_is_free(world: World) -> None:
    (device_id,) = world.devices(1)
    world.db.deploy("cd" * 32, URL, [device_id])
    world.db.add_event(device_id, "downloading", "")
    doc = world.engine.start(world.campaign()["id"], "carol")
    assert notified(world, doc["id"]) == []
    assert world.db.pending_update(device_id)["campaign"] is None  # type: ignore[index]
    for state in [*INSTALL[1:], "succeeded"]:
        world.db.add_event(device_id, state, "")
    world.engine.tick()
    assert notified(world, doc["id"]) == [device_id]
    world.succeed(device_id)
    world.engine.tick()
    assert world.engine.get(doc["id"])["status"] == "completed"


# ---------------------------------------------------------------------------- modes


def test_download_only_stops_at_downloaded_and_completes(world: World) -> None:
    ids = world.devices(2)
    doc = world.engine.start(world.campaign(mode="download-only")["id"], "carol")
    assert world.db.pending_update(ids[0])["action"] == "download"  # type: ignore[index]
    for device_id in ids:
        world.db.add_event(device_id, "downloading", "")
        world.db.add_event(device_id, "downloaded", "")
        assert world.db.pending_update(device_id) is None  # done: nothing more to do
    world.engine.tick()
    doc = world.engine.get(doc["id"])
    assert doc["status"] == "completed" and doc["counts"] == {"downloaded": 2}
    # a later campaign of the same release installs the staged image (no new notification)
    later = world.engine.start(world.campaign()["id"], "carol")
    assert members(world.engine.get(later["id"]), "downloaded") == \
        members(world.engine.get(later["id"]))
    assert world.db.pending_update(ids[0])["action"] == "install"  # type: ignore[index]
    for device_id in ids:
        for state in ("installing", "rebooting", "succeeded"):
            world.db.add_event(device_id, state, "")
    world.engine.tick()
    assert world.engine.get(later["id"])["status"] == "completed"


def test_install_on_trigger_downloads_everywhere_then_installs_on_the_trigger(
        world: World) -> None:
    ids = world.devices(4)
    doc = world.engine.start(world.campaign(mode="install-on-trigger",
                                            waves=(50, 100))["id"], "carol")
    with pytest.raises(CampaignRefused, match="only install-on-trigger campaigns"):
        world.engine.trigger(world.campaign()["id"], "carol")
    for _wave in range(2):
        for device_id in notified(world, doc["id"]):
            assert world.db.pending_update(device_id)["action"] == "download"  # type: ignore
            world.db.add_event(device_id, "downloading", "")
            world.db.add_event(device_id, "downloaded", "")
        world.engine.tick()  # the waves advance on downloads in this phase
    doc = world.engine.get(doc["id"])
    assert doc["status"] == "running" and doc["counts"] == {"downloaded": 4}
    assert all(world.db.pending_update(d) is None for d in ids)
    world.announced.clear()
    doc = world.engine.trigger(doc["id"], "dave")
    assert doc["triggered"] is not None and sorted(world.announced) == sorted(ids)
    with pytest.raises(CampaignRefused, match="already triggered"):
        world.engine.trigger(doc["id"], "dave")
    for device_id in ids:
        assert world.db.pending_update(device_id)["action"] == "install"  # type: ignore
        for state in ("installing", "rebooting", "succeeded"):
            world.db.add_event(device_id, state, "")
    world.engine.tick()
    doc = world.engine.get(doc["id"], limit=10)
    assert doc["status"] == "completed"
    times = doc["members"][0]["times"]
    assert list(times) == ["notified", "downloading", "downloaded", "installing",
                           "rebooting", "succeeded"]


# ---------------------------------------------------------------------------- restart safety


def test_a_new_engine_over_the_same_file_carries_on(world: World) -> None:
    world.devices(10)
    doc = world.engine.start(world.campaign(waves=(10, 50, 100))["id"], "carol")
    first = notified(world, doc["id"])
    world.succeed(first[0])
    world.db.engine.dispose()  # "killed": nothing but the file survives
    db = open_db(f"sqlite:///{world.path}", clock=world.clock)
    engine = CampaignEngine(db)
    engine.tick()
    engine.tick()
    doc = engine.get(doc["id"], limit=1000)
    assert doc["current_wave"] == 2 and len(members(doc, "notified")) == 4
    for device_id in members(doc, "notified"):
        for state in [*INSTALL, "succeeded"]:
            db.add_event(device_id, state, "")
    engine.tick()
    doc = engine.get(doc["id"], limit=1000)
    assert doc["current_wave"] == 3 and len(members(doc, "notified")) == 5
    # every device was notified exactly once
    for device_id in members(doc):
        events = [h for h in db.history(device_id) if h["kind"] == "event"]
        assert [e["state"] for e in events].count("notified") == 1


def test_concurrent_ticks_assign_each_member_once(world: World) -> None:
    world.devices(30)
    doc = world.campaign(start_after=world.clock.now + timedelta(minutes=5))
    world.engine.start(doc["id"], "carol")  # nothing assigned before start_after
    engines = [CampaignEngine(open_db(f"sqlite:///{world.path}", clock=world.clock))
               for _ in range(3)]
    world.clock.now += timedelta(minutes=5)  # now three engines race to assign
    results: list[int] = []
    errors: list[BaseException] = []

    def run(engine: CampaignEngine) -> None:
        try:
            for _ in range(3):
                results.append(engine.tick()["assigned"])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and sum(results) == 30 and len(results) == 9
    for device_id in members(world.engine.get(doc["id"], limit=1000)):
        states = [h["state"] for h in world.db.history(device_id)]
        assert states == ["notified"]


# ------------------------------------------------------------ retry, preview, progress


def test_retry_gives_the_failed_devices_another_assignment(world: World) -> None:
    ids = world.devices(4)
    doc = world.engine.start(world.campaign(failure_threshold=0.2)["id"], "carol")
    cid = doc["id"]
    for device_id in ids[:3]:
        world.succeed(device_id)
    world.fail(ids[3])
    world.engine.tick()
    assert world.engine.get(cid)["status"] == "paused"  # 1 of 4 > 20 %
    world.clock.now += timedelta(minutes=1)
    doc = world.engine.retry(cid, "dave")
    assert doc["status"] == "paused" and doc["counts"] == {"succeeded": 3, "pending": 1}
    (member,) = [m for m in doc["members"] if m["device_id"] == ids[3]]
    assert member["detail"] == "retry by dave (was failed)" and "retried" in member["times"]
    assert doc["log"][-1]["action"] == "retry" and doc["log"][-1]["actor"] == "dave"
    assert world.db.pending_update(ids[3]) is None  # paused: nothing until resumed
    doc = world.engine.resume(cid, "dave")
    assert notified(world, cid) == [ids[3]]
    assert world.db.pending_update(ids[3]) is not None
    world.succeed(ids[3])
    world.engine.tick()
    doc = world.engine.get(cid)
    assert doc["status"] == "completed" and doc["counts"] == {"succeeded": 4}


def test_a_retried_device_that_fails_again_is_a_new_failure(world: World) -> None:
    ids = world.devices(4)
    cid = world.engine.start(world.campaign(failure_threshold=0.3)["id"], "carol")["id"]
    world.succeed(ids[0])
    world.fail(ids[1])
    world.engine.tick()  # 1 of 2 finished failed: paused
    world.engine.resume(cid, "dave")  # that failure acknowledged
    world.engine.retry(cid, "dave")  # and given another go: no longer acknowledged
    assert world.engine.get(cid)["status"] == "running"
    assert ids[1] in notified(world, cid)
    world.fail(ids[1])
    world.engine.tick()
    doc = world.engine.get(cid)
    assert doc["status"] == "paused"
    assert doc["pause_reason"].startswith("failure threshold crossed: 1 of 2 finished")


def test_retry_is_refused_without_failures_or_in_the_wrong_status(world: World) -> None:
    ids = world.devices(2)
    draft = world.campaign(approve=None)
    with pytest.raises(CampaignRefused, match="campaign is draft; only running or paused "
                                              "campaigns can be retried"):
        world.engine.retry(draft["id"], "dave")
    cid = world.engine.start(world.campaign(failure_threshold=1.0)["id"], "carol")["id"]
    with pytest.raises(CampaignRefused, match="no failed devices to retry"):
        world.engine.retry(cid, "dave")
    world.succeed(ids[0])
    world.fail(ids[1])
    world.engine.tick()  # the wave finished below the success threshold: paused
    assert world.engine.get(cid)["status"] == "paused"
    world.engine.cancel(cid, "dave")
    with pytest.raises(CampaignRefused, match="campaign is cancelled"):
        world.engine.retry(cid, "dave")


def test_a_device_reset_by_an_operator_can_be_retried(world: World) -> None:
    (device_id,) = world.devices(1)
    cid = world.engine.start(world.campaign()["id"], "carol")["id"]
    world.db.add_event(device_id, "downloading", "")
    world.db.add_event(device_id, "failed", "reset by dave: stuck")  # the reset route's event
    world.engine.tick()
    world.engine.retry(cid, "dave")
    world.engine.resume(cid, "dave")
    assert notified(world, cid) == [device_id]
    world.succeed(device_id)
    world.engine.tick()
    assert world.engine.get(cid)["status"] == "completed"


def test_the_preview_splits_waves_as_the_start_does(world: World) -> None:
    world.devices(10)
    world.devices(3, cls=OTHER)
    for count in (1, 2, 3, 7, 10, 13):
        for waves in ((100,), (10, 50, 100), (1, 2, 100), (33.3, 66.6, 100)):
            assert sum(wave_sizes(count, waves)) == count
    spec = CampaignSpec(name="p", release="", envelope_url="", vendor_id=VENDOR,
                        class_id=CLASS, waves=(10, 50, 100))
    assert world.engine.preview(spec) == {"devices": 10, "waves": [1, 4, 5]}
    other = CampaignSpec(name="p", release="", envelope_url="", class_id=OTHER,
                         waves=(1, 2, 100))
    assert world.engine.preview(other) == {"devices": 3, "waves": [1, 0, 2]}
    doc = world.engine.start(world.campaign(class_id=OTHER, waves=(1, 2, 100))["id"], "carol")
    assert [w["devices"] for w in doc["waves_detail"]] == [1, 0, 2]
    with pytest.raises(CampaignRefused, match="waves: expected increasing"):
        world.engine.preview(CampaignSpec(name="p", release="", envelope_url="",
                                          vendor_id=VENDOR, waves=(50, 10)))


def test_progress_is_a_series_of_successes_and_failures_over_time(world: World) -> None:
    ids = world.devices(3)
    cid = world.campaign(failure_threshold=1.0)["id"]
    assert world.engine.progress(cid)["series"] == []
    start = world.clock.now
    world.engine.start(cid, "carol")
    world.clock.now = start + timedelta(seconds=10)
    world.succeed(ids[0])
    world.clock.now = start + timedelta(seconds=20)
    world.fail(ids[1])
    world.clock.now = start + timedelta(seconds=40)
    doc = world.engine.progress(cid, points=4)
    assert doc["devices"] == 3 and doc["started"] == start.isoformat()
    assert [(p["done"], p["failed"]) for p in doc["series"]] == [
        (0, 0), (1, 0), (1, 1), (1, 1), (1, 1)]
    assert doc["series"][-1]["time"] == (start + timedelta(seconds=40)).isoformat()
    with pytest.raises(CampaignRefused, match="no campaign"):
        world.engine.progress("nope")


def test_the_fleet_summary_counts_states_classes_tags_and_versions(world: World) -> None:
    ids = world.devices(3)
    world.devices(1, cls=OTHER)
    world.engine.set_tags(ids[0], ["lab", "eu"])
    world.engine.set_tags(ids[1], ["eu"])
    world.db.set_inventory(ids[2], Inventory(VENDOR, CLASS, (
        ComponentEntry(("00",), 4, None, (1, 2, 0)),), {}))
    summary = world.db.fleet_summary()
    assert summary["devices"] == 4 and summary["states"] == {"no state yet": 4}
    assert summary["classes"] == [{"vendor_id": VENDOR, "class_id": CLASS, "devices": 3},
                                  {"vendor_id": VENDOR, "class_id": OTHER, "devices": 1}]
    assert summary["tags"] == {"eu": 2, "lab": 1}
    assert summary["versions"] == [{"component": ["00"], "sequence": 4, "version": [1, 2, 0],
                                    "devices": 1}]


def test_the_fleet_summary_is_bounded(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = world.devices(3)
    world.devices(1, cls=OTHER)
    world.engine.set_tags(ids[0], ["a", "b"])
    world.engine.set_tags(ids[1], ["b"])
    for i, device_id in enumerate(ids):  # devices name their own components
        world.db.set_inventory(device_id, Inventory(VENDOR, CLASS, (
            ComponentEntry(("00",), 1, None), ComponentEntry((f"{i:02x}", "ff"), 9, None)), {}))
    monkeypatch.setattr("suitkit.tracker.service._SUMMARY_ROWS", 1)
    monkeypatch.setattr("suitkit.tracker.service._SUMMARY_TAGS", 1)
    summary = world.db.fleet_summary()
    assert summary["classes"] == [{"vendor_id": VENDOR, "class_id": CLASS, "devices": 3}]
    assert summary["tags"] == {"b": 2}
    assert summary["versions"] == [{"component": ["00"], "sequence": 1, "version": None,
                                    "devices": 3}]


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request, tmp_path)


def test_the_summary_and_progress_queries_on_both_databases(database: str) -> None:
    """The grouped queries behind ``fleet_summary`` (JSON columns grouped by their text) and
    ``progress`` on SQLite and PostgreSQL."""
    clock = Clock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    db = open_db(database, clock=clock)
    try:
        engine = CampaignEngine(db)
        ids = []
        for i in range(3):
            device_id, _ = db.register(f"d{i}")
            db.set_inventory(device_id, Inventory(VENDOR, CLASS, (
                ComponentEntry(("00",), 2, None, (2, 0)),), {}))
            ids.append(device_id)
        engine.set_tags(ids[0], ["eu"])
        summary = db.fleet_summary()
        assert summary["versions"] == [{"component": ["00"], "sequence": 2, "version": [2, 0],
                                        "devices": 3}]
        assert summary["tags"] == {"eu": 1} and summary["classes"][0]["devices"] == 3
        cid = engine.create(CampaignSpec(name="c", release=RELEASE, envelope_url=URL,
                                         class_id=CLASS, failure_threshold=1.0), "alice")["id"]
        engine.approve(cid, "bob")
        engine.start(cid, "bob")
        clock.now += timedelta(seconds=10)
        for state in [*INSTALL, "succeeded"]:
            db.add_event(ids[0], state, "")
        clock.now += timedelta(seconds=10)
        series = engine.progress(cid, points=2)["series"]
        assert [(p["done"], p["failed"]) for p in series] == [(0, 0), (1, 0), (1, 0)]
        assert engine.preview(CampaignSpec(name="p", release="", envelope_url="",
                                           tags=("eu",))) == {"devices": 1, "waves": [1]}
    finally:
        db.engine.dispose()
