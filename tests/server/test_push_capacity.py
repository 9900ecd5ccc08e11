"""Push capacity (issue #12): how many idle push connections one ``suitkit serve`` holds, and
that check-ins, downloads, the operator and notices are still served meanwhile.

The caps come from ``server.guard.plan_capacity`` (pure, tested first); then a real ``suitkit
serve`` on loopback holds 1,500 idle SSE streams opened by a child process
(``suitkit.sim.push_hold``, raw asyncio sockets) — a smaller version of
``benchmarks/bench_push.py``'s 10,000 — and one with a small connection cap shows that push
streams at their cap leave connections to everyone else.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from serve_kit import Served, serving
from suitkit.server.guard import (
    DEFAULT_PUSH,
    PUSH_STREAM_KIB,
    RESERVED_FILES,
    Capacity,
    plan_capacity,
)
from suitkit.sim.push_hold import Holder, hold_in_process
from suitkit.tracker.service import open_db

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

ADMIN = "push-capacity-admin-token"
HELD = 1_500
OPEN_WAIT = 240.0  # seconds to open every stream: generous, the machine is shared
PROMPT = 30.0  # seconds within which a request or a notice counts as served on a busy machine


# ----------------------------------------------------------------------------- the plan


def test_the_default_plan_holds_10000_push_streams_with_room_for_other_requests() -> None:
    plan = plan_capacity(20_000)
    assert plan == Capacity(20_000, DEFAULT_PUSH + 2_000, DEFAULT_PUSH)
    assert plan.push_mib == -(-DEFAULT_PUSH * PUSH_STREAM_KIB // 1024)
    # a larger limit does not make the default larger (memory: PUSH_STREAM_KIB each)
    assert plan_capacity(65_536) == Capacity(65_536, DEFAULT_PUSH + 2_000, DEFAULT_PUSH)
    # the room beside the push streams follows the bound on ordinary requests
    assert plan_capacity(20_000, max_requests=100) == Capacity(20_000, 10_200, 10_000)


def test_a_small_open_file_limit_lowers_both_caps_and_says_why() -> None:
    plan = plan_capacity(1_024)  # a soft limit the hard limit does not let serve raise
    # a quarter of the files left for the blobs of downloads in progress, the rest connections
    assert plan.downloads == (1_024 - RESERVED_FILES) // 4 == 192
    assert plan.connections == 1_024 - RESERVED_FILES - plan.downloads
    assert plan.push == plan.connections // 2  # half the connections stay for the rest
    assert len(plan.lowered) == 1 and "open-file limit is 1,024" in plan.lowered[0]
    assert "ulimit -Hn" in plan.lowered[0]
    assert (plan_capacity(0).connections, plan_capacity(0).push) == (16, 8)


def test_named_caps_are_kept_or_lowered_to_what_the_files_and_the_room_allow() -> None:
    assert plan_capacity(20_000, max_push=100) == Capacity(20_000, 2_100, 100)
    assert plan_capacity(20_000, max_connections=5_000) == Capacity(20_000, 5_000, 3_000)
    big = plan_capacity(20_000, max_push=30_000)
    assert big.downloads == 1_000
    assert (big.connections, big.push) == (20_000 - RESERVED_FILES - 1_000,
                                           20_000 - RESERVED_FILES - 1_000 - 2_000)
    assert big.lowered == (f"--max-push 30000 lowered to {big.push} (it leaves 2000 of "
                           f"{big.connections} connections to other requests)",)
    capped = plan_capacity(4_096, max_connections=10_000, max_push=50)
    assert (capped.connections, capped.push, capped.downloads) == (2_880, 50, 960)
    assert capped.lowered == ("--max-connections 10000 lowered to 2880 (the open-file limit "
                              "is 4096)",)


# ----------------------------------------------------------------------------- a real server


def hard_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 30 if hard == resource.RLIM_INFINITY else hard


@contextmanager
def fleet_server(tmp: Path, devices: int, *extra: str
                 ) -> Iterator[tuple[Served, list[tuple[str, str]], Author, dict[str, str]]]:
    """``suitkit serve`` with the tracker and ``devices`` devices registered in its database
    before it starts (the API registers one per request): (server, [(id, bearer token)],
    author, admin headers)."""
    author = Author.create(tmp / "author")
    (tmp / "admin.token").write_text(ADMIN + "\n")
    (tmp / "data").mkdir()
    db = open_db(f"sqlite:///{tmp / 'data' / 'tracker.db'}")
    try:
        registered = [db.register(f"held-{n}") for n in range(devices)]
    finally:
        db.engine.dispose()
    argv = ["--data", str(tmp / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp / "admin.token"), "--log-level", "warning", *extra]
    with serving(argv) as served:
        yield (served, [(d, f"{d}.{secret}") for d, secret in registered], author,
               {"Authorization": f"Bearer {ADMIN}"})


@contextmanager
def holding(url: str, devices: list[tuple[str, str]], parallel: int = 200
            ) -> Iterator[Holder]:
    holder = hold_in_process(url, devices, "sse", parallel=parallel)
    try:
        yield holder
    finally:
        holder.stop()


def check_in(client: httpx.Client, device: tuple[str, str]) -> None:
    """The agent's check-in (inventory, then the pending update), answered within PROMPT."""
    device_id, token = device
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {token}"}
    stored = client.put(f"/api/v1/devices/{device_id}/inventory", headers=headers, json={
        "components": [{"id": ["00"], "sequence": 1, "digest": "ab" * 32}]})
    assert stored.status_code == 200, stored.text
    update = client.get(f"/api/v1/devices/{device_id}/update", headers=headers)
    assert update.status_code in (200, 204), update.text
    assert time.monotonic() - started < PROMPT, "a check-in took longer than PROMPT"


def test_serve_holds_1500_idle_push_streams_and_serves_check_ins_downloads_and_notices(
        tmp_path: Path) -> None:
    if hard_limit() < 3_500:
        pytest.skip(f"the open-file hard limit is {hard_limit()}: the server needs about "
                    f"{HELD + 2 * 1000 + RESERVED_FILES} files to hold {HELD} push streams "
                    "beside its room for other requests (ulimit -Hn)")
    with fleet_server(tmp_path, HELD) as (served, devices, author, admin), \
            httpx.Client(base_url=served.url, timeout=PROMPT) as client:
        envelope, image = author.release(1, "held", size=50_000,
                                         uri="https://fw.example/app.bin")
        stored = client.post("/api/v1/releases", headers=admin, files=[
            ("envelope", ("e.suit", envelope)), ("image-0", ("app.bin", image))])
        assert stored.status_code == 201, stored.text
        with holding(served.url, devices) as holder:
            status = holder.wait_opened(OPEN_WAIT)
            assert status.opening == 0, (
                f"{status.opening} of {HELD} streams were still opening after {OPEN_WAIT} s")
            assert (status.held, status.refused, status.closed) == (HELD, {}, 0)
            # everyone else is still served, each within PROMPT
            for device in devices[:5]:
                check_in(client, device)
            download = client.get(stored.json()["components"][0]["url"])
            assert download.status_code == 200 and download.content == image
            assert client.get("/api/v1/devices", params={"limit": 10},
                              headers=admin).status_code == 200
            # a deployment reaches held streams promptly
            sample = [device_id for device_id, _ in devices[::HELD // 10]]
            deployed = client.post("/api/v1/deployments", headers=admin, json={
                "release": stored.json()["id"], "devices": sample})
            assert deployed.status_code == 201, deployed.text
            deadline = time.monotonic() + PROMPT
            while not set(sample) <= set(holder.status().changes):
                assert time.monotonic() < deadline, (
                    f"the notice reached {len(set(sample) & set(holder.status().changes))} "
                    f"of {len(sample)} held streams within {PROMPT} s")
                time.sleep(0.2)
            assert holder.status().held == HELD
    said = served.stdout
    assert f"holds up to {plan_capacity(hard_limit()).connections:,} connections" in said, said
    assert f"{plan_capacity(hard_limit()).push:,} of them push streams" in said, said


def test_push_streams_at_their_cap_leave_connections_for_check_ins(tmp_path: Path) -> None:
    """``--max-connections 700 --limit-concurrency 100``: push streams get 500 (700 less room
    for twice 100 other requests); 800 streams asked for: 500 held, 300 refused with 503, and a
    check-in is still served. (The push cap used to be --max-push alone, 10000: the streams
    took all 700 connections and the check-in's connection was closed at once.)"""
    if hard_limit() < 1_200:
        pytest.skip(f"the open-file hard limit is {hard_limit()}: this test needs about 1,200")
    with fleet_server(tmp_path, 800, "--max-connections", "700", "--limit-concurrency",
                      "100") as (served, devices, _, admin), \
            httpx.Client(base_url=served.url, timeout=PROMPT) as client, \
            holding(served.url, devices, parallel=50) as holder:  # < --limit-concurrency
        status = holder.wait_opened(OPEN_WAIT)
        assert status.opening == 0, f"{status.opening} streams still opening after {OPEN_WAIT} s"
        assert (status.held, status.refused) == (500, {"503": 300}), status
        check_in(client, devices[0])
        assert client.get("/api/v1/devices", params={"limit": 10},
                          headers=admin).status_code == 200
    assert "holds up to 700 connections" in served.stdout, served.stdout
    assert "500 of them push streams" in served.stdout, served.stdout
