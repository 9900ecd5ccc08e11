"""What the check-in with a changed inventory costs (issue #12: the final check-in of every
update carries the new inventory, 2.9 ms of server CPU in bench_fleet.py, most of it
deleting and inserting every component row again). Only what changed is written now: a
component whose image changed is one UPDATE of its row, the others are not touched. Counted on
each backend; what is stored stays what it was."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from pg import BACKENDS, backend_url
from suitkit.tracker.service import ComponentEntry, Inventory, TrackerDB, open_db

VENDOR = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"
CLASS = "1492af14-2569-5e48-bf42-9b2d51f2ab45"


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[TrackerDB]:
    tracker = open_db(backend_url(request, tmp_path))
    try:
        yield tracker
    finally:
        tracker.engine.dispose()


def inventory(*images: str, hardware: dict[str, object] | None = None) -> Inventory:
    return Inventory(VENDOR, CLASS, tuple(
        ComponentEntry((f"c{i}",), i + 1, image, (1, i)) for i, image in enumerate(images)),
        hardware or {"ram": "64k"})


def component_rows(db: TrackerDB, device: str) -> list[tuple[Any, ...]]:
    with db.store.transaction() as tx:
        return [(c.id, c.position, c.component_id, c.sequence_number, c.digest, c.version)
                for c in tx.components(device)]


def test_a_changed_component_is_one_update_of_its_row(db: TrackerDB) -> None:
    device, _ = db.register("inv", vendor_id=VENDOR, class_id=CLASS)
    db.set_inventory(device, inventory("aa" * 32, "bb" * 32, "cc" * 32), digest="d1")
    before = component_rows(db, device)
    sent: list[str] = []
    event.listen(db.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *a: sent.append(" ".join(statement.split())))
    db.set_inventory(device, inventory("aa" * 32, "dd" * 32, "cc" * 32), digest="d2")
    touched = [s for s in sent if "installed_components" in s and not s.startswith("SELECT")]
    assert len(touched) == 1 and touched[0].startswith("UPDATE installed_components"), touched
    after = component_rows(db, device)
    # the same rows, in place; only the second one's image changed
    assert [r[0] for r in after] == [r[0] for r in before]
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1][:4] == before[1][:4] and after[1][4] == "dd" * 32
    row = db.store.checkin_read(device)
    assert row is not None and row.inventory_digest == "d2"
    doc = db.device(device)
    assert doc is not None
    assert [c["digest"] for c in doc["components"]] == ["aa" * 32, "dd" * 32, "cc" * 32]


def test_components_added_and_removed_keep_their_order(db: TrackerDB) -> None:
    device, _ = db.register("inv2", vendor_id=VENDOR, class_id=CLASS)
    db.set_inventory(device, inventory("aa" * 32, "bb" * 32))
    db.set_inventory(device, inventory("aa" * 32, "bb" * 32, "cc" * 32, "ee" * 32))
    rows = component_rows(db, device)
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        (i, [f"c{i}"], str(i + 1), image, [1, i])
        for i, image in enumerate(("aa" * 32, "bb" * 32, "cc" * 32, "ee" * 32))]
    db.set_inventory(device, inventory("ff" * 32, hardware={"ram": "128k"}))
    rows = component_rows(db, device)
    assert [(r[1], r[4]) for r in rows] == [(0, "ff" * 32)]
    doc = db.device(device)
    assert doc is not None and doc["hardware"] == {"ram": "128k"}
    assert [c["digest"] for c in doc["components"]] == ["ff" * 32]
