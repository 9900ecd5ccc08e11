"""The tracker database without HTTP: the state machine table, the history order, credentials.

The exhaustive transition walk runs here, on ``TrackerDB`` directly, so that it stays fast.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pg import BACKENDS, backend_url
from suitkit.errors import StorageError
from suitkit.tracker.model import STATES, TRANSITIONS
from suitkit.tracker.service import (
    SEEN_RESOLUTION,
    ComponentEntry,
    Inventory,
    TrackerDB,
    TransitionRefused,
    hash_secret,
    open_db,
    pbkdf2_hash,
    verify_secret,
)


def walks() -> dict[str | None, list[str]]:
    """The shortest list of events that brings a new device to each state."""
    paths: dict[str | None, list[str]] = {None: []}
    frontier: list[str | None] = [None]
    while frontier:
        current = frontier.pop(0)
        for nxt in sorted(TRANSITIONS[current]):
            if nxt not in paths:
                paths[nxt] = [*paths[current], nxt]
                frontier.append(nxt)
    return paths


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on SQLite and on PostgreSQL."""
    return backend_url(request, tmp_path)


@pytest.fixture
def db(request: pytest.FixtureRequest, url: str) -> TrackerDB:
    moments = iter(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i)
                   for i in range(10_000))
    tracker = open_db(url, clock=lambda: next(moments))
    request.addfinalizer(tracker.engine.dispose)
    return tracker


def test_the_table_reaches_every_state_and_lists_only_known_states() -> None:
    assert set(walks()) == {None, *STATES}
    assert all(set(targets) <= set(STATES) for targets in TRANSITIONS.values())
    assert all("failed" in TRANSITIONS[s] for s in STATES if s not in
               ("succeeded", "failed", "rolled-back"))


def test_every_transition_outside_the_table_is_refused(db: TrackerDB) -> None:
    """For each allowed (state, next) pair: a device in that state refuses every state the
    table does not allow (its state does not move), then accepts the allowed one."""
    for start, walk in walks().items():
        for allowed in sorted(TRANSITIONS[start]):
            device_id, _ = db.register("d")
            for state in walk:
                db.add_event(device_id, state, "")
            for wanted in STATES:
                if wanted in TRANSITIONS[start]:
                    continue
                with pytest.raises(TransitionRefused) as refused:
                    db.add_event(device_id, wanted, "")
                assert (refused.value.current, refused.value.wanted) == (start, wanted)
            assert db.add_event(device_id, allowed, "ok")["previous"] == start
            doc = db.device(device_id)
            assert doc is not None and doc["state"] == allowed


def test_history_interleaves_events_and_reports_in_arrival_order(db: TrackerDB) -> None:
    device_id, _ = db.register("d")
    db.add_event(device_id, "notified", "")
    db.add_report(device_id, b"\x01", {"n": 1})
    db.add_event(device_id, "downloading", "")
    db.add_report(device_id, b"\x02", {"n": 2})
    history = db.history(device_id)
    assert [(h["kind"], h["seq"]) for h in history] == [
        ("event", 1), ("report", 2), ("event", 3), ("report", 4)]
    assert history[0]["timestamp"] == "2026-01-01T00:00:01+00:00"
    assert db.report_bytes(device_id) == [b"\x01", b"\x02"]


def test_concurrent_events_from_one_state_move_the_device_once(url: str) -> None:
    """The row lock in ``_lock``: eight threads report ``downloading`` for one ``notified``
    device at once; exactly one moves it, the others are refused, sequence numbers stay unique."""
    db = open_db(url)
    try:
        device_id, _ = db.register("d")
        db.add_event(device_id, "notified", "")
        start = threading.Barrier(8, timeout=60)  # generous: a loaded machine

        def report(_: int) -> str:
            start.wait()
            try:
                db.add_event(device_id, "downloading", "")
            except TransitionRefused as refused:
                return f"refused from {refused.current}"
            return "moved"

        with ThreadPoolExecutor(8) as pool:
            outcomes = sorted(pool.map(report, range(8), timeout=120))
        assert outcomes == ["moved", *["refused from downloading"] * 7]
        seqs = [h["seq"] for h in db.history(device_id)]
        assert seqs == [1, 2]
    finally:
        db.engine.dispose()


def test_events_for_an_unknown_device_are_a_storage_error(db: TrackerDB) -> None:
    with pytest.raises(StorageError, match="no device"):
        db.add_event("missing", "notified", "")


def test_credentials_are_hashes_checked_in_constant_time(db: TrackerDB) -> None:
    # 256-bit random secrets: one SHA-256, no salt or KDF needed (docs/tracker.md)
    first = hash_secret("s3cret")
    assert first.startswith("sha256$") and "s3cret" not in first
    assert verify_secret("s3cret", first) and not verify_secret("s3creT", first)
    legacy = pbkdf2_hash("s3cret", iterations=1000)  # what earlier versions stored
    assert verify_secret("s3cret", legacy) and not verify_secret("s3creT", legacy)
    assert not verify_secret("s3cret", "md5$1$00$00") and not verify_secret("x", "garbage")
    device_id, secret = db.register("d")
    assert db.authenticate(device_id, secret)
    assert not db.authenticate(device_id, secret + "x")
    assert not db.authenticate("no-such-device", secret)
    assert not db.authenticate("x" * 100, secret)


def test_an_unusable_url_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="cannot open the tracker database") as refused:
        open_db("nosuchdialect://user:hunter2@host/db")
    assert "hunter2" not in str(refused.value) and "user:***@host" in str(refused.value)


def test_last_seen_is_written_at_most_once_per_resolution(url: str) -> None:
    """A check-in authenticates on every request; ``last_seen`` is kept to SEEN_RESOLUTION
    so that is not a database write per request."""
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    db = open_db(url, clock=lambda: now[0])
    try:
        device_id, secret = db.register("seen")
        assert db.authenticate(device_id, secret)
        first = db.device(device_id)
        assert first is not None and first["last_seen"] == "2026-01-01T00:00:00+00:00"
        now[0] += SEEN_RESOLUTION - timedelta(seconds=1)
        assert db.authenticate(device_id, secret)
        assert db.device(device_id) == first  # unchanged within the resolution
        now[0] += timedelta(seconds=1)
        assert db.authenticate(device_id, secret)
        later = db.device(device_id)
        assert later is not None and later["last_seen"] == now[0].isoformat()
    finally:
        db.engine.dispose()


def test_an_unchanged_inventory_writes_nothing(db: TrackerDB) -> None:
    """Devices send their inventory at every check-in: the same one again changes nothing
    (``inventory_updated`` is when it last changed); a new one replaces it."""
    device_id, _ = db.register("inv")
    first = Inventory(vendor_id=None, class_id=None, hardware={"board": "x"},
                      components=(ComponentEntry(("00",), 1, "aa" * 32),))
    db.set_inventory(device_id, first)
    stored = db.device(device_id)
    assert stored is not None and stored["components"][0]["sequence"] == 1
    db.set_inventory(device_id, first)
    assert db.device(device_id) == stored
    second = Inventory(vendor_id=None, class_id=None, hardware={"board": "x"},
                       components=(ComponentEntry(("00",), 2, "bb" * 32),))
    db.set_inventory(device_id, second)
    changed = db.device(device_id)
    assert changed is not None and changed["components"][0]["sequence"] == 2
    assert changed["inventory_updated"] > stored["inventory_updated"]
