"""nginx's kept-alive connections to suitkit (``nginx-accel.conf``) end before suitkit ends
them: a request nginx sends on a connection suitkit has just closed as idle is a 502 for a
POST (nginx does not retry a non-idempotent request), which bench_fleet.py met under load
(one device event in 5,000 through 2 replicas)."""

from __future__ import annotations

import re
from pathlib import Path

from suitkit.server.app import nginx_accel_config
from suitkit.server.background import UVICORN_OPTIONS
from suitkit.server.guard import Guards


def test_nginx_lets_go_of_idle_upstream_connections_before_suitkit_closes_them(
        tmp_path: Path) -> None:
    config = nginx_accel_config(listen="127.0.0.1:8080", upstreams=("10.0.0.1:8080",),
                                blobs=tmp_path / "blobs", state=tmp_path / "state")
    upstreams = re.findall(r"upstream \w+ \{(.*?)\}", config, flags=re.S)
    assert len(upstreams) == 2, config
    server_idle = min(float(UVICORN_OPTIONS["timeout_keep_alive"]), Guards().head_timeout)
    for block in upstreams:
        assert "keepalive 32;" in block
        found = re.search(r"keepalive_timeout (\d+)s;", block)
        assert found is not None, f"an upstream keeps idle connections for nginx's 60 s: {block}"
        assert float(found.group(1)) < server_idle, block
