"""A tracker (notice_kit.Tracker: firmware server + status tracker on loopback) with the LwM2M
server edge beside it, a signed release, and tracker-registered devices whose folders start
on a confirmed base release."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import Author, boot, confirm, install, new_device
from notice_kit import ADMIN, UPLOAD, Tracker
from suitkit.core.verify import TrustAnchors
from suitkit.tracker.edges.lwm2m import Lwm2mConfig, Lwm2mServer

NODE_DIR = Path(__file__).parent / "node"


def need_node_peer() -> None:
    """Skip, saying what to run, when node or lwm2m-node-lib is missing."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "lwm2m-node-lib").is_dir():
        pytest.skip("lwm2m-node-lib is not installed: run `npm ci` in tests/lwm2m/node "
                    "(.ci/run does)")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class World:
    tracker: Tracker
    lwm2m: Lwm2mServer
    author: Author
    tmp: Path
    sequence: int = 1
    tokens: dict[str, str] = field(default_factory=dict)
    """Each device's credential (``device``)."""

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.tracker.url, timeout=15)

    def device(self, trusts: Author | None = None) -> tuple[Path, str]:
        """(folder, tracker device id) of a new mcu device running a confirmed base release,
        trusting ``trusts`` (default: the author of the server's releases)."""
        anchor = trusts or self.author
        folder = new_device(self.tmp / f"dev-{len(list(self.tmp.glob('dev-*')))}",
                            [anchor.anchor])
        envelope, _ = anchor.release(1, "base")
        assert install(folder, envelope).installed
        boot(folder)
        confirm(folder)
        with self.client() as c:
            response = c.post("/api/v1/devices", json={"name": "lwm2m"}, headers=auth(ADMIN))
        assert response.status_code == 201, response.text
        self.tokens[str(response.json()["id"])] = str(response.json()["token"])
        return folder, str(response.json()["id"])

    def release(self) -> dict[str, Any]:
        """Upload a new release (bundled image)."""
        self.sequence += 1
        envelope, _ = self.author.release(self.sequence, size=3000)
        with self.client() as c:
            response = c.post("/api/v1/releases", headers=auth(UPLOAD), files=[
                ("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))])
        assert response.status_code == 201, response.text
        return dict(response.json())

    def deploy(self, release: dict[str, Any], device_id: str) -> None:
        with self.client() as c:
            response = c.post("/api/v1/deployments", headers=auth(ADMIN), json={
                "release": release["id"],
                "envelope_url": self.tracker.url + release["envelope"]["url"],
                "devices": [device_id]})
        assert response.status_code == 201, response.text

    def history(self, device_id: str) -> list[dict[str, Any]]:
        with self.client() as c:
            response = c.get(f"/api/v1/devices/{device_id}/history", headers=auth(ADMIN))
        assert response.status_code == 200, response.text
        return list(response.json()["history"])

    def record(self, device_id: str) -> dict[str, Any]:
        with self.client() as c:
            response = c.get(f"/api/v1/devices/{device_id}", headers=auth(ADMIN))
        assert response.status_code == 200, response.text
        return dict(response.json())


def states(history: list[dict[str, Any]]) -> list[str]:
    return [h["state"] for h in history if h["kind"] == "event"]


@contextmanager
def world(tmp: Path, **config: Any) -> Iterator[World]:
    """The tracker and its LwM2M edge on loopback until the block ends (both stopped in a
    ``finally``)."""
    author = Author.create(tmp / "author")
    tracker = Tracker(tmp / "data", TrustAnchors.of(author.key.public_key()))
    tracker.start()
    server: Lwm2mServer | None = None
    try:
        assert tracker.wiring is not None
        server = Lwm2mServer(tracker.wiring.db, tracker.wiring.hub, Lwm2mConfig(
            port=0, nosec=True, **{"poll_interval": 0.5, **config}))
        server.start()
        yield World(tracker, server, author, tmp)
    finally:
        if server is not None:
            server.stop()
        tracker.stop()
