"""``cli.notices.tracker_routes``: what ``serve`` starts, ``close()`` ends, the database's
pooled connections included (a PostgreSQL connection left to the garbage collector surfaced as
a ResourceWarning in whichever test happened to run when it was collected)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pg import BACKENDS, backend_url
from suitkit.cli.notices import tracker_routes
from suitkit.tracker.config import TrackerConfig

ADMIN = "admin-token-for-the-wiring-test"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request, tmp_path)


def test_close_returns_every_pooled_connection(backend: str) -> None:
    wiring = tracker_routes(TrackerConfig(backend, ADMIN), coap=True)
    db = wiring.db
    assert db is not None
    try:
        db.register("a")
        assert db.devices()
        assert db.engine.pool.checkedin() > 0  # the pool holds the connections it used
    finally:
        wiring.close()
    assert db.engine.pool.checkedin() == 0
