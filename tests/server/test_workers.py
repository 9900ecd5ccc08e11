"""``suitkit serve --workers N`` (issue #12): N processes on one port, as a user runs it.

Both workers answer (their CPU time moves, read from /proc), a device checks in through
either, what lives in one process (CoAP's port, the MQTT publisher, push notices on SQLite) is
refused with one line, on PostgreSQL a long-poll held by one worker hears another's
deployment, and the server stops as one: SIGTERM stops every worker, and a worker that dies
stops the others (the parent exits non-zero, for its supervisor to see).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from pg import PostgresCluster
from serve_kit import READY, STOP, SUITKIT, serving, stop_process

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads worker processes from /proc")

ADMIN = "admin-token-for-workers-tests"


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(what: str, check: object, timeout: float = READY) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(0.1)


def argv(tmp_path: Path, *extra: str) -> list[str]:
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text(ADMIN)
    return ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin.token"), "--log-level", "warning",
            *extra]


def test_two_workers_both_answer_and_a_device_checks_in(tmp_path: Path) -> None:
    with serving(argv(tmp_path, "--workers", "2")) as server:
        pid = server.process.pid
        wait_for("two worker processes under suitkit serve", lambda: len(children(pid)) == 2)
        workers = children(pid)
        before = {w: cpu_ticks(w) for w in workers}
        headers = {"Authorization": f"Bearer {ADMIN}"}
        response = httpx.post(f"{server.url}/api/v1/devices", json={"name": "d"},
                              headers=headers, timeout=30)
        assert response.status_code == 201, response.text
        device = response.json()
        # a new connection per request: the kernel hands each to whichever worker accepts
        deadline = time.monotonic() + READY
        while not all(cpu_ticks(w) > before[w] + 2 for w in workers):
            assert time.monotonic() < deadline, (
                f"waited {READY:g} s for both workers {workers} to answer requests")
            for _ in range(20):
                response = httpx.post(
                    f"{server.url}/api/v1/devices/{device['id']}/checkin",
                    json={"inventory_digest": "ab" * 32},
                    headers={"Authorization": f"Bearer {device['token']}"}, timeout=30)
                assert response.status_code == 200, response.text
                assert response.json()["release"] is None
        # push notices would miss the other worker's deployments: refused with one line
        response = httpx.get(f"{server.url}/api/v1/devices/{device['id']}/notifications",
                             headers={"Authorization": f"Bearer {device['token']}"},
                             timeout=30)
        assert response.status_code == 501
        assert "--workers 1" in response.json()["error"]
        assert children(pid) == workers
    assert "2 worker processes" in server.stdout
    assert not any(alive(w) for w in workers), "a worker outlived suitkit serve"


def test_on_postgresql_a_long_poll_held_by_one_worker_hears_the_other_s_deployment(
        tmp_path: Path, postgres: PostgresCluster) -> None:
    # each worker's LISTEN relay hears the changes committed in the others (push stays on)
    db = postgres.tracker_database()
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text(ADMIN)
    with serving(["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
                  "--admin-token-file", str(tmp_path / "admin.token"), "--log-level",
                  "warning", "--workers", "2", "--db", db]) as server:
        pid = server.process.pid
        wait_for("two worker processes under suitkit serve", lambda: len(children(pid)) == 2)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        envelope, image = author.release(2, "workers", size=3000,
                                         uri="https://fw.example/f.bin")
        stored = httpx.post(f"{server.url}/api/v1/releases", headers=admin, timeout=30,
                            files=[("envelope", ("e.suit", envelope)),
                                   ("image-0", ("f.bin", image))])
        assert stored.status_code == 201, stored.text
        release = stored.json()["id"]
        made = httpx.post(f"{server.url}/api/v1/devices", json={"name": "d"}, headers=admin,
                          timeout=30)
        assert made.status_code == 201, made.text
        device = made.json()
        auth = {"Authorization": f"Bearer {device['token']}"}
        url = f"{server.url}/api/v1/devices/{device['id']}/notifications"
        first = httpx.get(f"{url}?wait=1&after=0", headers=auth, timeout=30)
        assert first.status_code == 200, first.text
        assert first.json()["release"] is None
        serial = first.json()["serial"]
        # many long-polls at once on new connections: some are held by each worker
        results: dict[int, httpx.Response] = {}

        def poll(n: int) -> None:
            results[n] = httpx.get(f"{url}?wait=60&after={serial}", headers=auth, timeout=90)

        polls = [threading.Thread(target=poll, args=(n,)) for n in range(4)]
        for thread in polls:
            thread.start()
        time.sleep(2)  # the long-polls are held by now (not needed for correctness)
        started = time.monotonic()
        deployed = httpx.post(f"{server.url}/api/v1/deployments", headers=admin, timeout=30,
                              json={"release": release, "devices": [device["id"]]})
        for thread in polls:
            thread.join(90)
        elapsed = time.monotonic() - started
    assert deployed.status_code == 201, deployed.text
    assert sorted(results) == [0, 1, 2, 3]
    for response in results.values():
        assert response.status_code == 200, response.text
        assert response.json()["serial"] > serial and response.json()["release"] == release
    assert elapsed < 50, f"the long-polls were answered after {elapsed:.1f} s, not at the change"


def test_sigterm_stops_every_worker_and_a_dead_worker_stops_the_server(
        tmp_path: Path) -> None:
    with serving(argv(tmp_path, "--workers", "2")) as server:
        pid = server.process.pid
        wait_for("two worker processes under suitkit serve", lambda: len(children(pid)) == 2)
        first, second = children(pid)
        os.kill(first, signal.SIGKILL)
        try:
            status = server.process.wait(timeout=STOP + 30)
        except subprocess.TimeoutExpired:
            stop_process(server.process)
            raise AssertionError("suitkit serve ran on after one of its workers died") from None
        assert status == 1
        wait_for(f"worker {second} to stop", lambda: not alive(second), STOP)
    assert f"worker process {first} ended" in server.stderr
    with serving(argv(tmp_path, "--workers", "2")) as server:
        pid = server.process.pid
        wait_for("two worker processes under suitkit serve", lambda: len(children(pid)) == 2)
        workers = children(pid)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=STOP + 30) == 0
        assert not any(alive(w) for w in workers)


@pytest.mark.parametrize(("extra", "says"), [
    (["--workers", "0"], "--workers: expected 1 to 64 processes, got 0"),
    (["--workers", "2", "--coap-port", "5999"], "--coap-port needs --workers 1"),
    (["--workers", "2", "--mqtt", "127.0.0.1:1883"], "--mqtt needs --workers 1"),
])
def test_what_one_process_owns_is_refused_with_several_workers(
        tmp_path: Path, extra: list[str], says: str) -> None:
    done = subprocess.run([*SUITKIT, "serve", *argv(tmp_path, *extra), "--port", "1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith(f"suitkit: error: {says}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_device_s_rate_is_shared_out_among_the_workers(tmp_path: Path) -> None:
    """Rates are counted in each process: with 2 workers each allows half, so a device gets
    no more than the rate in all (2 inventories a minute here), whichever worker answers."""
    with serving(argv(tmp_path, "--workers", "2", "--device-inventory-per-minute", "2")
                 ) as server:
        pid = server.process.pid
        wait_for("two worker processes under suitkit serve", lambda: len(children(pid)) == 2)
        response = httpx.post(f"{server.url}/api/v1/devices", json={"name": "d"},
                              headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        device = response.json()
        inventory = {"vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe", "components": []}
        statuses = []
        for _ in range(8):  # a new connection each: both workers get some
            response = httpx.post(f"{server.url}/api/v1/devices/{device['id']}/checkin",
                                  json={"inventory_digest": "ab", "inventory": inventory},
                                  headers={"Authorization": f"Bearer {device['token']}"},
                                  timeout=30)
            statuses.append(response.status_code)
        assert set(statuses) <= {200, 429} and statuses.count(200) <= 2, statuses
