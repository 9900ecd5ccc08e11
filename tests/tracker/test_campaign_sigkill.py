"""``suitkit serve`` killed with SIGKILL in the middle of a campaign, then restarted on the same
data directory: nothing is lost or corrupted and the campaign carries on to the end (issue #4).

The server runs as a real process (``server.test_sigkill.Server``) with its campaign ticker.
Simulated devices (HTTP, their own credentials) poll ``GET .../update`` and post their events
from a background thread while the server is killed; an event whose answer was lost is
re-synchronised from the device's state. After the restart: the database passes SQLite's
integrity check, every device was notified exactly once, its events are in state-machine order,
every wave opened once, and the campaign completes with every device succeeded.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import Author
from server.test_sigkill import ADMIN, TOKEN, WAIT, Server, make_release, upload

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

STEPS = ("downloading", "downloaded", "installing", "rebooting", "succeeded")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "upload.token").write_text(TOKEN + "\n")
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    running = Server(tmp_path, Author.create(tmp_path / "author"), tracker=True)
    try:
        yield running
    finally:
        running.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def advance(url: str, device: dict[str, Any]) -> bool:
    """One step of a simulated device; ``False`` when it has nothing to do. Transport errors
    (the server is being killed) propagate."""
    with httpx.Client(base_url=url, timeout=5, headers=bearer(device["token"])) as client:
        shown = client.get(f"/api/v1/devices/{device['id']}")
        state = shown.json()["state"]
        if state in (None, "succeeded"):
            return False
        if state == "notified" and client.get(
                f"/api/v1/devices/{device['id']}/update").status_code != 200:
            return False
        following = STEPS[STEPS.index(state) + 1] if state in STEPS else STEPS[0]
        sent = client.post(f"/api/v1/devices/{device['id']}/events", json={"state": following})
        assert sent.status_code in (201, 409), sent.text  # 409: a lost answer, resynced next
        return True


def test_sigkill_during_a_campaign_loses_nothing_and_the_campaign_carries_on(
        server: Server) -> None:
    server.start()
    admin = httpx.Client(timeout=WAIT, headers=bearer(ADMIN))
    tokens = {}
    for name in ("alice", "bob"):
        made = admin.post(f"{server.url}/api/v1/tokens", json={"name": name, "role": "operator"})
        assert made.status_code == 201, made.text
        tokens[name] = made.json()["token"]
    uploaded = upload(server.url, make_release(server.author, 1))  # a campaign names a release
    assert uploaded.status_code == 201, uploaded.text
    release = uploaded.json()["id"]
    devices = []
    for _ in range(10):
        made = admin.post(f"{server.url}/api/v1/devices", json={"name": "d"})
        devices.append(made.json())
    made = admin.post(f"{server.url}/api/v1/campaigns", headers=bearer(tokens["alice"]), json={
        "name": "sigkill", "release": release,
        "target": {"devices": [d["id"] for d in devices]}, "waves": [10, 50, 100]})
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    for who, action in (("bob", "approve"), ("alice", "start")):
        done = admin.post(f"{server.url}/api/v1/campaigns/{cid}/{action}",
                          headers=bearer(tokens[who]))
        assert done.status_code == 200, done.text

    def campaign() -> dict[str, Any]:
        got = admin.get(f"{server.url}/api/v1/campaigns/{cid}?limit=1000")
        assert got.status_code == 200, got.text
        return dict(got.json())

    stop = threading.Event()
    errors: list[str] = []

    def drive() -> None:
        while not stop.is_set():
            for device in devices:
                try:
                    advance(server.url, device)
                except httpx.TransportError:
                    time.sleep(0.05)  # killed or restarting
                except Exception as e:  # noqa: BLE001 - reported by the test
                    errors.append(f"{type(e).__name__}: {e}")
                    return

    worker = threading.Thread(target=drive, daemon=True)
    worker.start()
    deadline = time.monotonic() + WAIT
    while campaign()["current_wave"] < 2:  # the kill lands in wave 2, devices mid-update
        assert time.monotonic() < deadline and not errors, errors
        time.sleep(0.05)
    server.kill()
    with contextlib.closing(sqlite3.connect(server.data / "tracker.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    server.start()
    deadline = time.monotonic() + 2 * WAIT
    while (doc := campaign())["status"] != "completed":
        assert doc["status"] == "running", doc["pause_reason"]
        assert time.monotonic() < deadline and not errors, (errors, doc["counts"])
        time.sleep(0.1)
    stop.set()
    worker.join(WAIT)
    assert not errors, errors
    assert doc["counts"] == {"succeeded": 10}
    assert [e["detail"][:6] for e in doc["log"] if e["action"] == "wave"] == ["wave 2", "wave 3"]
    for device in devices:
        history = admin.get(f"{server.url}/api/v1/devices/{device['id']}/history").json()
        states = [h["state"] for h in history["history"] if h["kind"] == "event"]
        assert states == ["notified", *STEPS], (device["id"], states)
    admin.close()
