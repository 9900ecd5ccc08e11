"""A database outage must not flood the server's log (the sibling of issue #11's "a 503 for a
cap reached is not logged as an error").

The campaign engine ticks every second and reads the database each time, campaigns running or
not. With the database gone (PostgreSQL stopped, a disk full under a running campaign) each
tick logged "campaign tick failed" with a full traceback: 60 tracebacks a minute, for as long
as the outage lasts, on the disk that may be the one that is full. A storage failure is now
one warning line at most once a minute, and the next tick that works says so.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from pg import PostgresCluster, PostgresMissing
from serve_kit import serving

ADMIN = "admin-token-for-outage-tests"
OUTAGE = 6.0
"""Seconds the database stays down: six ticks."""


def test_a_database_outage_is_one_log_line_a_minute_not_a_traceback_a_tick(
        tmp_path: Path) -> None:
    try:
        cluster = PostgresCluster()
    except PostgresMissing as e:
        pytest.skip(str(e))
    try:
        url = cluster.tracker_database()
        author = Author.create(tmp_path / "author")
        (tmp_path / "admin.token").write_text(ADMIN + "\n")
        argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
                "--admin-token-file", str(tmp_path / "admin.token"), "--db", url]
        with serving(argv, timeout=60) as server:
            whoami = httpx.get(f"{server.url}/api/v1/whoami", timeout=30,
                               headers={"Authorization": f"Bearer {ADMIN}"})
            assert whoami.status_code == 200, whoami.text
            cluster._run("pg_ctl", "-D", str(cluster.dir / "data"), "-m", "immediate", "-w",
                         "-t", "30", "stop")
            cluster.started = False
            time.sleep(OUTAGE)
            log = server.log()
        failed = [line for line in log.splitlines() if "campaign tick failed" in line]
        assert len(failed) == 1, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert failed[0].split(" ", 3)[2] == "WARNING", failed[0]
    finally:
        cluster.stop()
