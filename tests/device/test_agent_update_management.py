"""The agent with update management, over real HTTP (RFC 9019 §2.3, update-management §5.6).

One uvicorn server holds the firmware server and the status tracker (SQLite in tmp_path); a
real device folder runs ``suitkit.device.agent.run_once``. A release that waits for external
power leaves the device *waiting*: the tracker has it in the state ``waiting`` (never
``failed``), the event says what it waits for, and the next run after the fact changes installs
it. The inventory carries each component's version (the running image's suit-set-version).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import Author, boot, confirm, image_bytes, install, new_device
from suitkit.core.verify import TrustAnchors
from suitkit.device.agent import inventory_of, run_once
from suitkit.device.fetch import HttpFetcher
from suitkit.device.wiring import open_device
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router

ADMIN = "admin-token-for-update-management"
UPLOAD = "upload-token-for-update-management"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class World:
    url: str
    client: httpx.Client
    author: Author
    tmp: Path

    def release(self, sequence: int, set_version: str, **component: Any) -> dict[str, Any]:
        """Upload a release with a detached image served by the firmware server."""
        image = image_bytes(f"um-agent-{sequence}", 1800)
        comp = self.author.component(f"app-{sequence}.bin", image,
                                     uri=f"{self.url}/firmware/"
                                     f"{hashlib.sha256(image).hexdigest()}")
        comp.update(component)
        envelope = self.author.envelope(sequence, [comp], top={"set-version": set_version})
        response = self.client.post("/api/v1/releases", headers=auth(UPLOAD), files=[
            ("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
            ("image", ("app.bin", image, "application/octet-stream"))])
        assert response.status_code == 201, response.text
        return dict(response.json())

    def device(self, name: str) -> tuple[Path, dict[str, Any]]:
        """A registered mcu device running (confirmed) release 1, version 1.0.0."""
        folder = new_device(self.tmp / name, [self.author.anchor])
        comp = self.author.component("base.bin", image_bytes("um-base", 1500))
        assert install(folder, self.author.envelope(
            1, [comp], top={"set-version": "1.0.0"})).installed
        boot(folder)
        confirm(folder)
        response = self.client.post("/api/v1/devices", json={"name": name},
                                    headers=auth(ADMIN))
        assert response.status_code == 201, response.text
        return folder, dict(response.json())

    def deploy(self, release: dict[str, Any], device: str) -> None:
        response = self.client.post("/api/v1/deployments", headers=auth(ADMIN), json={
            "release": release["id"], "envelope_url": self.url + release["envelope"]["url"],
            "devices": [device]})
        assert response.status_code == 201, response.text

    def shown(self, device: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/v1/devices/{device}", headers=auth(ADMIN)).json())

    def history(self, device: str) -> list[dict[str, Any]]:
        response = self.client.get(f"/api/v1/devices/{device}/history", headers=auth(ADMIN))
        return list(response.json()["history"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("um-agent")
    author = Author.create(tmp / "author")
    router = create_router(TrackerConfig(f"sqlite:///{tmp / 'tracker.db'}", ADMIN))
    config = ServerConfig(data_dir=tmp / "data", upload_token=UPLOAD, routers=(router,),
                          anchors=TrustAnchors.of(author.key.public_key()))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield World(url, client, author, tmp)


def states(history: list[dict[str, Any]]) -> list[str]:
    return [h["state"] for h in history if h["kind"] == "event"]


def test_a_waiting_update_is_waiting_on_the_tracker_and_resumes_when_the_fact_changes(
        world: World) -> None:
    folder, dev = world.device("waits")
    release = world.release(2, "2.0.0", wait={"power": 1})
    world.deploy(release, dev["id"])
    (folder / "facts.json").write_text(json.dumps({"power": 0}))

    first = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher())
    assert first.outcome == "waiting" and first.ok, first.steps
    assert "power 1 (now 0)" in first.reason
    history = world.history(dev["id"])
    assert states(history) == ["notified", "downloading", "downloaded", "installing",
                               "waiting"]
    assert "power 1 (now 0)" in history[-1]["detail"]  # what it waits for
    assert not [h for h in history if h["kind"] == "report"]  # sent once the update ends
    shown = world.shown(dev["id"])
    assert shown["state"] == "waiting"
    assert "waiting" not in shown["hardware"]  # a state now, not a hardware fact
    assert (folder / "agent").is_dir() and list((folder / "agent").iterdir())

    # still no power: waiting again, nothing new on the tracker (no event at every poll)
    again = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher())
    assert again.outcome == "waiting"
    assert any("resuming: the tracker has the device waiting" in s for s in again.steps)
    assert states(world.history(dev["id"])) == states(history)

    (folder / "facts.json").write_text(json.dumps({"power": 1}))
    done = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher())
    assert done.outcome == "succeeded", done.steps
    history = world.history(dev["id"])
    assert states(history) == ["notified", "downloading", "downloaded", "installing",
                               "waiting", "rebooting", "succeeded"]
    (report,) = [h for h in history if h["kind"] == "report"]
    assert report["summary"]["succeeded"] is True
    shown = world.shown(dev["id"])
    assert shown["state"] == "succeeded"
    assert shown["components"][0]["sequence"] == 2
    assert shown["components"][0]["version"] == [2, 0, 0]  # the agent sends versions now
    assert not list((folder / "agent").iterdir())


def test_the_inventory_carries_each_components_version(world: World) -> None:
    folder, dev = world.device("versions")
    doc = inventory_of(open_device(folder))
    images = [c for c in doc["components"] if c["id"] == ["00"]]
    assert images == [{"id": ["00"], "sequence": 1, "digest": images[0]["digest"],
                       "version": [1, 0, 0]}]
    # the trust anchors are a component too (docs/keys.md): version 0, no image version
    anchors = [c for c in doc["components"] if c["id"] != ["00"]]
    assert anchors == [{"id": [b"suitkit".hex(), b"anchors".hex()], "sequence": 0}]
    # the tracker keeps it (migration 0011_reports) and shows it
    result = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher())
    assert result.outcome == "up-to-date", result.steps
    shown = world.shown(dev["id"])
    assert shown["components"][0]["sequence"] == 1
    assert shown["components"][0]["version"] == [1, 0, 0]


def test_an_envelope_kept_for_a_release_no_longer_assigned_is_removed(world: World) -> None:
    folder, dev = world.device("stale")
    kept = folder / "agent" / "00ff.suit"
    kept.parent.mkdir()
    kept.write_bytes(b"an envelope of a release the operator withdrew")
    world.deploy(world.release(4, "4.0.0"), dev["id"])
    assert run_once(folder, world.url, dev["token"], fetcher=HttpFetcher()).outcome == \
        "succeeded"
    assert not kept.exists()
