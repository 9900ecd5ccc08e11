"""What a device's event costs the database (issue #12: five events make every update, and
they were most of the server's CPU per update in bench_fleet.py). The statements one event
sends are counted on each backend: the lock takes the history number (and, on PostgreSQL, the
transaction's clock) in one statement, the device and its assignment are read in one, the
event is written, and the quota's trim is asked only when the device's history can exceed
it. The history numbers, the times and the trim stay what they were."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from pg import BACKENDS, backend_url
from suitkit.tracker.quotas import Quotas
from suitkit.tracker.service import TrackerDB, open_db

RELEASE = "ab" * 32


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[TrackerDB]:
    tracker = open_db(backend_url(request, tmp_path), quotas=Quotas(max_events=6))
    try:
        yield tracker
    finally:
        tracker.engine.dispose()


def statements(db: TrackerDB) -> list[str]:
    """The SQL statements sent from now on (appended as they go)."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(db.engine, "before_cursor_execute", note)
    return seen


def test_an_event_is_four_statements_and_keeps_its_numbers_and_times(db: TrackerDB) -> None:
    device, _ = db.register("cost")
    db.deploy(RELEASE, f"https://fw.example/envelopes/{RELEASE}", [device])
    sent = statements(db)
    added = db.add_event(device, "downloading", "", by_device=True)
    # UPDATE .. RETURNING (the history number; PostgreSQL: and now()), the device with its
    # assignment (one joined read), the device's new state, the event: no SELECT of the
    # number, no second read, no SELECT now(), no trim query for a device with 2 history items
    assert len(sent) == 4, sent
    assert sent[1].startswith("SELECT") and "JOIN assignments" in sent[1], sent
    assert sent[0].startswith("UPDATE devices SET history_count") and "RETURNING" in sent[0]
    assert not any("now()" in s.lower() and s.startswith("SELECT") for s in sent), sent
    history = db.history(device)
    assert [h["seq"] for h in history] == [1, 2] and added["seq"] == 2
    assert added["timestamp"] == history[-1]["timestamp"]
    assert db.device(device)["state_changed"] == added["timestamp"]  # type: ignore[index]


def test_the_quota_still_trims_once_the_history_can_exceed_it(db: TrackerDB) -> None:
    device, _ = db.register("trim")
    for _ in range(2):  # 2 x (notified + 5 device events) = 12 events, 6 kept
        db.deploy(RELEASE, f"https://fw.example/envelopes/{RELEASE}", [device])
        for state in ("downloading", "downloaded", "installing", "rebooting", "succeeded"):
            db.add_event(device, state, "", by_device=True)
    seqs = [h["seq"] for h in db.history(device)]
    assert seqs == list(range(7, 13)), seqs


def test_a_report_reads_the_device_and_its_assignment_in_one_statement(db: TrackerDB) -> None:
    device, _ = db.register("report")
    db.deploy(RELEASE, f"https://fw.example/envelopes/{RELEASE}", [device])
    db.add_event(device, "downloading", "", by_device=True)
    sent = statements(db)
    stored = db.add_report(device, b"\xa0", {"result": "ok"}, release=RELEASE)
    # the lock, the device with its assignment, the report, the assignment's mark, the
    # report quota's sizes
    reads = [s for s in sent if s.startswith("SELECT") and "FROM devices" in s]
    assert len(reads) == 1 and "JOIN assignments" in reads[0], sent
    assert len(sent) == 5, sent
    assert stored["seq"] == 3 and [h["seq"] for h in db.history(device)] == [1, 2, 3]
