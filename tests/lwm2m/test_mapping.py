"""Object 5 State and Update Result onto the tracker's state machine (``walk_to``), and the
protocol-neutral facts an edge records (``TrackerDB.merge_facts``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from suitkit.errors import StorageError
from suitkit.tracker.edges.lwm2m import RESULT_EVENTS, STATE_EVENTS, walk_to
from suitkit.tracker.service import MAX_FACTS, TrackerDB, open_db


@pytest.fixture
def db(tmp_path: Path) -> TrackerDB:
    return open_db(f"sqlite:///{tmp_path / 'tracker.db'}")


def _states(db: TrackerDB, device_id: str) -> list[str]:
    return [h["state"] for h in db.history(device_id) if h["kind"] == "event"]


def test_result_success_straight_after_downloading_walks_every_state(db: TrackerDB) -> None:
    device_id, _ = db.register("d")
    db.deploy("r1", "http://fw/e.suit", [device_id])
    walk_to(db, device_id, "downloading", "LwM2M State 1")
    walk_to(db, device_id, *RESULT_EVENTS[1])  # type: ignore[misc]
    assert _states(db, device_id) == ["notified", "downloading", "downloaded", "installing",
                                      "rebooting", "succeeded"]
    assert db.pending_update(device_id) is None  # the assignment is done
    walk_to(db, device_id, "downloading", "late notification")  # nothing pending: no event
    assert _states(db, device_id)[-1] == "succeeded"


def test_a_failure_result_fails_the_update_and_a_backward_state_adds_nothing(
        db: TrackerDB) -> None:
    device_id, _ = db.register("d")
    db.deploy("r1", "http://fw/e.suit", [device_id])
    walk_to(db, device_id, "downloaded", "LwM2M State 2")
    walk_to(db, device_id, "downloading", "LwM2M State 1")  # backwards: refused silently
    assert _states(db, device_id) == ["notified", "downloading", "downloaded"]
    state, detail = RESULT_EVENTS[5]  # type: ignore[misc]
    walk_to(db, device_id, state, f"LwM2M: {detail}")
    assert _states(db, device_id)[-1] == "failed"
    assert db.history(device_id)[-1]["detail"] == (
        "LwM2M: integrity check failure for the new firmware package")


def test_every_state_and_result_maps_to_a_tracker_state_or_nothing() -> None:
    assert set(STATE_EVENTS) == {0, 1, 2, 3} and set(RESULT_EVENTS) == set(range(10))
    assert {r[0] for r in RESULT_EVENTS.values() if r is not None} == {"succeeded", "failed"}


def test_merge_facts_keeps_the_other_facts_and_is_bounded(db: TrackerDB) -> None:
    device_id, _ = db.register("d")
    db.merge_facts(device_id, {"a": "1"})
    db.merge_facts(device_id, {"b": "x" * 1000})
    hardware = (db.device(device_id) or {})["hardware"]
    assert hardware == {"a": "1", "b": "x" * 256}
    with pytest.raises(StorageError, match=f"at most {MAX_FACTS} hardware facts"):
        db.merge_facts(device_id, {f"k{i}": "v" for i in range(MAX_FACTS)})
    assert (db.device(device_id) or {})["hardware"] == hardware
    with pytest.raises(StorageError, match="no device"):
        db.merge_facts("nope", {"a": "1"})
