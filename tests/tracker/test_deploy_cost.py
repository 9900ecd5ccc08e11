"""What a deployment costs the database (issue #12: ``TrackerDB.deploy`` of 500 devices took
about 7 statements per device, one device after the other, 25 s on PostgreSQL, and the
10,000-device fleet spent 11 minutes in its deployment calls). A deployment is set-based now:
the devices are locked in id order and read with their assignments and health rows in one
statement each, then one statement per table writes the states, the events and the
assignments, whatever the number of devices (per batch of 500). The statements are counted
on each backend; what a deployment stores and refuses stays what it was."""

from __future__ import annotations

from datetime import timedelta

import pytest

from suitkit.tracker.campaigns import CampaignEngine, CampaignSpec
from suitkit.tracker.service import DeploymentRefused, TrackerDB
from tracker.test_event_cost import db as db  # noqa: PLC0414 - the fixture (the events quota of 6)
from tracker.test_event_cost import statements

OLD = "ab" * 32
NEW = "cd" * 32
STEPS = ("downloading", "downloaded", "installing", "rebooting", "succeeded")


def url(release: str) -> str:
    return f"https://fw.example/envelopes/{release}"


def fleet(db: TrackerDB, n: int, prefix: str) -> list[str]:
    """``n`` devices: a third never updated, a third done with an update (``succeeded``, a
    history of 6 events: at the quota, so the deployment's event trims), a third still
    ``notified`` of an older release (no event: only the assignment is replaced)."""
    ids = [db.register(f"{prefix}{i}")[0] for i in range(n)]
    done, notified = ids[1::3], ids[2::3]
    db.deploy(OLD, url(OLD), done + notified)
    for device in done:
        for state in STEPS:
            db.add_event(device, state, "", by_device=True)
    return ids


def test_a_deployment_sends_as_many_statements_for_200_devices_as_for_10(
        db: TrackerDB) -> None:
    counts = []
    sent = statements(db)
    for n, prefix in ((10, "small"), (200, "large")):
        ids = fleet(db, n, prefix)
        sent.clear()
        db.deploy(NEW, url(NEW), ids)
        # PostgreSQL's notices go in payloads of at most 7,000 bytes (store._payloads): one
        # per ~150 devices, a cost of the notification channel, not of the tables
        counts.append(len([s for s in sent if "pg_notify" not in s]))
    # lock, read, states, events, trim, assignments, the clock (PostgreSQL) and the notices:
    # a constant, not ~7 per device as before
    assert counts[0] == counts[1], counts
    assert counts[1] <= 10, counts


def test_a_deployment_stores_what_it_did_one_device_at_a_time(db: TrackerDB) -> None:
    fresh, done, notified = fleet(db, 3, "d")
    nonces = {d: db.pending_update(d) for d in (done, notified)}
    assert nonces[done] is None
    before = db.history(notified)
    results = db.deploy(NEW, url(NEW), [notified, fresh, done, fresh])
    # in the order asked, once each; the event of each moved device, none for the notified one
    assert [r["id"] for r in results] == [notified, fresh, done]
    assert results[0]["event"] is None
    assert results[1]["event"]["seq"] == 1 and results[1]["event"]["previous"] is None
    assert results[2]["event"]["seq"] == 7 and results[2]["event"]["previous"] == "succeeded"
    assert results[2]["event"]["detail"] == f"release {NEW}"
    for device in (fresh, done, notified):
        pending = db.pending_update(device)
        assert pending is not None and pending["release"] == NEW, pending
        assert pending["envelope_url"] == url(NEW) and pending["campaign"] is None
        assert pending["action"] == "install" and len(pending["nonce"]) == 32
        assert db.device(device)["state"] == "notified"  # type: ignore[index]
    # a new nonce per device and per update (report §4)
    assert len({db.pending_update(d)["nonce"] for d in (fresh, done, notified)}) == 3  # type: ignore[index]
    assert db.pending_update(notified)["nonce"] != nonces[notified]["nonce"]  # type: ignore[index]
    # the notified device's history is untouched and its next number not used up
    assert db.history(notified) == before
    added = db.add_event(notified, "downloading", "", by_device=True)
    assert added["seq"] == before[-1]["seq"] + 1
    # the done device had 6 events (the quota): the oldest is trimmed
    assert [h["seq"] for h in db.history(done)] == list(range(2, 8))
    history = db.history(done)
    assert history[-1]["timestamp"] == results[2]["event"]["timestamp"]
    assert db.device(done)["state_changed"] == history[-1]["timestamp"]  # type: ignore[index]


def test_a_refused_deployment_stores_nothing_and_says_why(db: TrackerDB) -> None:
    ids = fleet(db, 3, "r")
    fresh, done, _ = ids
    busy = db.register("busy")[0]
    db.deploy(OLD, url(OLD), [busy])
    db.add_event(busy, "downloading", "", by_device=True)
    histories = {d: db.history(d) for d in (*ids, busy)}
    pending = {d: db.pending_update(d) for d in (*ids, busy)}
    with pytest.raises(DeploymentRefused) as refused:
        db.deploy(NEW, url(NEW), [*ids, busy])
    assert str(refused.value) == (
        f"device {busy} is in the middle of an update (state downloading); deploy again "
        "once it reports succeeded, failed or rolled-back")
    assert not refused.value.unknown
    with pytest.raises(DeploymentRefused) as unknown:
        db.deploy(NEW, url(NEW), [fresh, "nobody", "x" * 50])
    assert unknown.value.unknown and str(unknown.value) == "no device 'nobody'"
    # all or none: not one device moved, got an event or lost its assignment
    for device in (*ids, busy):
        assert db.history(device) == histories[device]
        assert db.pending_update(device) == pending[device]
    assert db.device(fresh)["state"] is None and db.device(done)["state"] == "succeeded"  # type: ignore[index]


def test_a_campaign_wave_is_assigned_in_as_many_statements_for_200_devices_as_for_10(
        db: TrackerDB) -> None:
    engine = CampaignEngine(db)
    counts = []
    sent = statements(db)
    for n, prefix in ((10, "small"), (200, "large")):
        ids = fleet(db, n, prefix)
        busy = db.register(f"{prefix}-busy")[0]  # mid-update: it waits
        db.deploy(OLD, url(OLD), [busy])
        db.add_event(busy, "downloading", "", by_device=True)
        opens = db.now() + timedelta(hours=1)
        campaign = engine.create(CampaignSpec(
            name=prefix, release=NEW, envelope_url=url(NEW), devices=(*ids, busy),
            start_after=opens), "alice")["id"]
        engine.approve(campaign, "bob")
        engine.start(campaign, "bob")  # before its start time: nothing assigned yet
        assert notified_members(engine, campaign) == set()
        sent.clear()
        free = set(ids) - set(ids[2::3])  # the notified third's deployment is pending: busy
        assert engine.tick(opens, only=campaign)["assigned"] == len(free)
        counts.append(len([s for s in sent if "pg_notify" not in s]))
        assert notified_members(engine, campaign) == free
        doc = engine.get(campaign, limit=1000)
        assert {m["device_id"] for m in doc["members"] if m["state"] == "pending"} == {
            busy, *ids[2::3]}
        done = ids[1]
        history = db.history(done)
        assert [h["seq"] for h in history] == list(range(2, 8))  # the quota's trim
        assert history[-1]["detail"] == f"release {NEW} (campaign {campaign})"
        view = db.update_view(done)  # (pending_update: held back, it is before 'opens')
        assert view is not None and view.device_state == "notified" and view.assignment is not None
        assert view.assignment.campaign_id == campaign and not view.assignment.done
        assert view.assignment.release == NEW and view.assignment.action == "install"
    assert counts[0] == counts[1], counts


def notified_members(engine: CampaignEngine, campaign: str) -> set[str]:
    return {m["device_id"] for m in engine.get(campaign, limit=1000)["members"]
            if m["state"] == "notified"}


@pytest.mark.parametrize("verb", ["cancel", "trigger"])
def test_a_cancel_or_a_trigger_sends_as_many_statements_for_200_members_as_for_10(
        db: TrackerDB, verb: str) -> None:
    """The siblings of the wave: a cancel withdraws every member not started, a trigger
    tells every member that downloads to install; both took their devices one by one."""
    engine = CampaignEngine(db)
    counts = []
    sent = statements(db)
    for n, prefix in ((10, "small"), (200, "large")):
        ids = [db.register(f"{prefix}{i}")[0] for i in range(n)]
        campaign = engine.create(CampaignSpec(
            name=prefix, release=NEW, envelope_url=url(NEW), devices=tuple(ids),
            mode="install-on-trigger"), "alice")["id"]
        engine.approve(campaign, "bob")
        engine.start(campaign, "bob")
        nonces = {i: db.pending_update(i)["nonce"] for i in ids}  # type: ignore[index]
        assert notified_members(engine, campaign) == set(ids)
        sent.clear()
        if verb == "cancel":
            engine.cancel(campaign, "bob")
        else:
            engine.trigger(campaign, "bob")
        counts.append(len([s for s in sent if "pg_notify" not in s]))
        doc = engine.get(campaign, limit=1000)
        for device in ids:
            pending = db.pending_update(device)
            if verb == "cancel":  # withdrawn: nothing to do, the member cancelled
                assert pending is None
            else:  # told to install, a new update with a new nonce
                assert pending is not None and pending["action"] == "install"
                assert pending["nonce"] != nonces[device]
        states = {m["state"] for m in doc["members"]}
        assert states == ({"cancelled"} if verb == "cancel" else {"notified"}), states
        if verb == "cancel":
            assert all("cancelled" in m["times"] for m in doc["members"])
    assert counts[0] == counts[1], counts
