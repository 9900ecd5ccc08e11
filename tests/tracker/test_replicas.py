"""Several tracker processes on one PostgreSQL (issue #12): notices cross replicas, serials are
the database's, campaign ticks do not queue behind each other, the pool is an option.

Each "replica" here is a ``TrackerDB`` of its own over the same database, with its own hub and
``notices.pg.NoticeRelay``, as two ``suitkit serve`` processes have (tests/e2e/test_replicas.py
runs the real processes behind nginx).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from pg import PostgresCluster
from suitkit.tracker.campaigns import CampaignEngine, CampaignSpec
from suitkit.tracker.notices import NotificationHub
from suitkit.tracker.notices.pg import NoticeRelay
from suitkit.tracker.service import Inventory, TrackerDB, open_db
from suitkit.tracker.store import PoolOptions, parse_payload

VENDOR = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"
CLASS = "1492af14-2569-5e48-bf42-9b2d51f2ab45"
RELEASE = "ab" * 32
URL = "http://127.0.0.1:1/envelopes/" + RELEASE
WAIT = 30.0


@dataclass
class Replica:
    db: TrackerDB
    hub: NotificationHub
    relay: NoticeRelay

    def close(self) -> None:
        self.relay.stop()
        self.hub.close()
        self.db.engine.dispose()


def replica(url: str) -> Replica:
    db = open_db(url)
    hub = NotificationHub(db.notice, serials=db.store.serials)
    db.add_listener(hub.changed)
    relay = NoticeRelay(db.store, hub, poll=0.2, min_backoff=0.1, max_backoff=0.5)
    relay.start()
    return Replica(db, hub, relay)


@pytest.fixture
def pair(postgres: PostgresCluster) -> Iterator[tuple[Replica, Replica]]:
    url = postgres.tracker_database()
    made: list[Replica] = []
    try:
        made += [replica(url), replica(url)]
        for r in made:
            assert r.relay.listening.wait(WAIT), f"the relay did not listen within {WAIT} s"
        yield made[0], made[1]
    finally:
        for r in made:
            r.close()


def until(predicate: object, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def test_a_change_on_one_replica_wakes_the_watchers_of_the_other_with_the_same_serial(
        pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    device_id, _ = a.db.register("d")
    heard: list[tuple[str, int]] = []
    b.hub.watch(device_id, lambda d, s: heard.append((d, s)))
    assert b.hub.current(device_id) == {"release": None, "serial": 1}
    a.db.deploy(RELEASE, URL, [device_id])
    until(lambda: heard, "replica B to hear replica A's deployment")
    assert heard == [(device_id, 2)]
    # one serial for one change, on every replica
    assert a.hub.current(device_id)["serial"] == b.hub.current(device_id)["serial"] == 2
    assert b.hub.current(device_id)["release"] == RELEASE
    b.db.add_event(device_id, "failed", "")  # a final event: the notice changes again
    until(lambda: a.hub.serial(device_id) == 3, "replica A to hear replica B's change")


def test_the_relay_reconnects_and_no_change_made_while_it_was_away_is_missed(
        pair: tuple[Replica, Replica], postgres: PostgresCluster) -> None:
    a, b = pair
    device_id, _ = a.db.register("d")
    heard: list[int] = []
    b.hub.watch(device_id, lambda _, s: heard.append(s))
    assert b.relay.connections == 1
    database = a.db.engine.url.database
    with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres",
                         autocommit=True) as admin:
        # every connection that LISTENs is ended (the relays of both replicas), then the change
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                      "AND query LIKE 'LISTEN%%'", (database,))
    until(lambda: not b.relay.listening.is_set() or b.relay.connections > 1,
          "replica B's relay to notice its connection was gone")
    a.db.deploy(RELEASE, URL, [device_id])
    until(lambda: b.relay.connections > 1 and b.relay.listening.is_set(),
          "replica B's relay to listen again")
    until(lambda: 2 in heard, "the change made while B was away to wake B's watcher")


def test_notifications_that_are_not_ours_are_ignored() -> None:
    """Anyone who can connect may NOTIFY on the channel: only ids and whole numbers pass."""
    assert parse_payload("not json") is None
    assert parse_payload('{"o": 1, "s": {}}') is None
    assert parse_payload('{"o": "x", "s": {"a": 1, "b": "2", "": 3, "c": -1, "d": 1.5}}') == (
        "x", {"a": 1})


def test_a_campaign_tick_does_not_queue_behind_another_replicas_tick(
        pair: tuple[Replica, Replica]) -> None:
    """Replica A holds the campaign's row (its tick, here a transaction held open); replica
    B's tick skips that campaign at once instead of waiting for A's transaction to end."""
    a, b = pair
    ids = []
    for _ in range(2):
        device_id, _ = a.db.register("d")
        a.db.set_inventory(device_id, Inventory(VENDOR, CLASS, (), {}))
        ids.append(device_id)
    engine_a, engine_b = CampaignEngine(a.db), CampaignEngine(b.db)
    doc = engine_a.create(CampaignSpec(name="c", release=RELEASE, envelope_url=URL,
                                       vendor_id=VENDOR, waves=(50.0, 100.0)), "alice")
    engine_a.approve(doc["id"], "bob")
    engine_a.start(doc["id"], "bob")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with a.db.store.transaction() as tx:
            assert tx.lock_campaign(doc["id"], status="running") is not None
            held.set()
            release.wait(WAIT)
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(WAIT), "the holding transaction did not start"
        started = time.monotonic()
        summary = engine_b.tick()
        took = time.monotonic() - started
    finally:
        release.set()
        holder.join(WAIT)
    assert took < 2.0, f"replica B's tick waited {took:.1f} s for replica A's"
    assert summary["assigned"] == 0
    with b.db.engine.connect() as connection:  # the lock was free again: a tick works
        assert connection.execute(text("SELECT 1")).scalar() == 1


def test_the_pool_is_an_option(postgres: PostgresCluster, tmp_path: Path) -> None:
    for url in (postgres.tracker_database(), f"sqlite:///{tmp_path / 'tracker.db'}"):
        db = open_db(url, pool=PoolOptions(size=2, max_overflow=1, timeout=1.5))
        try:
            pool = db.engine.pool
            assert (pool.size(), pool._max_overflow, pool._timeout) == (2, 1, 1.5)  # type: ignore[attr-defined]
        finally:
            db.engine.dispose()


def test_release_records_are_the_databases_and_every_replica_sees_them(
        pair: tuple[Replica, Replica], tmp_path: Path) -> None:
    """The firmware server's release records in the tracker database (``DatabaseReleases``):
    one replica stores, the other reads; the same envelope again merges its images, another
    envelope under the same id is a conflict; records of an older data directory are
    imported."""
    from suitkit.cli.notices import DatabaseReleases, release_lookup
    from suitkit.server.store import BlobStore, ComponentRecord, ReleaseConflict, ReleaseRecord

    a, b = DatabaseReleases(pair[0].db), DatabaseReleases(pair[1].db)
    envelope = "e" * 64
    bare = ReleaseRecord("ab" * 32, 3, envelope, (ComponentRecord(0, ("00",), -16, "1" * 64,
                                                                  10, None),), {})
    assert a.add_release(bare) == (bare, True)
    with_image = ReleaseRecord("ab" * 32, 3, envelope, (ComponentRecord(
        0, ("00",), -16, "1" * 64, 10, "1" * 64),), {})
    assert b.add_release(with_image) == (with_image, False)
    assert a.add_release(bare) == (with_image, False)  # an image is never dropped
    assert a.get_release("ab" * 32) == with_image and b.releases() == [with_image]
    with pytest.raises(ReleaseConflict):
        b.add_release(ReleaseRecord("ab" * 32, 3, "f" * 64, (), {}))
    assert release_lookup(b)("ab" * 32) is not None and release_lookup(b)("cd" * 32) is None
    older = BlobStore(tmp_path / "data")
    older.put_release(ReleaseRecord("cd" * 32, 1, envelope, (), {}))
    assert a.import_files(tmp_path / "data") == 1 and a.import_files(tmp_path / "data") == 0
    assert b.get_release("cd" * 32) is not None


def test_time_is_the_databases_on_postgresql_one_per_transaction(
        postgres: PostgresCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica whose clock is a day off (here: the store's system clock, moved) still stores
    the database's time, and a transaction's times are one: maintenance windows, token expiry
    and the order of events agree across replicas."""
    from datetime import UTC, datetime, timedelta

    import suitkit.tracker.store as store_module

    drifted = datetime.now(UTC) + timedelta(days=1)
    monkeypatch.setattr(store_module, "_utcnow", lambda: drifted)
    db = open_db(postgres.tracker_database())
    try:
        device_id, _ = db.register("d")
        db.deploy(RELEASE, URL, [device_id])
        shown = db.device(device_id)
        assert shown is not None
        with db.engine.connect() as connection:
            database_now = connection.execute(text("SELECT now()")).scalar()
        assert isinstance(database_now, datetime)
        stored = datetime.fromisoformat(shown["state_changed"])
        assert abs(stored - database_now) < timedelta(minutes=5), (stored, database_now)
        assert abs(db.now().replace(tzinfo=UTC) - database_now) < timedelta(minutes=5)
        (event,) = db.history(device_id)
        assert event["timestamp"] == shown["state_changed"]  # one time per transaction
    finally:
        db.engine.dispose()


def test_each_process_has_its_own_mqtt_client_id_and_publishes_only_its_own_changes() -> None:
    """A shared client id made replicas evict each other at the broker once or twice a
    second; each change was then published by every replica, and every device again at each
    reconnection."""
    pytest.importorskip("paho.mqtt.client", reason="install paho-mqtt")
    from suitkit.tracker.notices.mqtt import MqttPublisher

    hub = NotificationHub(lambda _: (None, 0))
    ids = {MqttPublisher(hub, "127.0.0.1", 9).client_id for _ in range(3)}
    assert len(ids) == 3 and all(i.startswith("suitkit-tracker-") for i in ids)
    reads: list[str] = []
    counting = NotificationHub(lambda d: (reads.append(d), (None, 0))[1])
    publisher = MqttPublisher(counting, "127.0.0.1", 9)  # no broker there: nothing is sent
    publisher.start()
    try:
        counting.changed({"made-elsewhere": 4}, local=False)  # another replica's: not ours
        publisher._on_connect(None, None, None, None)  # a reconnection publishes nothing
        counting.changed({"made-here": 5})  # this process's change: published (read) once
        until(lambda: "made-here" in reads, "the publisher to read the local change")
        time.sleep(0.2)
        assert reads == ["made-here"]
    finally:
        publisher.stop()
