"""A firmware server and status tracker with the hawkBit DDI edge, as ``suitkit serve`` wires
them (``cli.notices.tracker_routes`` with ``DdiOptions``), on real uvicorn on 127.0.0.1; and
the DDI client's side of it: target-token headers, base polls, feedback bodies.

``ddi_world(tmp)`` yields a ``DdiWorld``: upload releases (``release_with``), register devices,
deploy, read a device's state and history with the admin token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from device.device_kit import Author, image_bytes
from suitkit.cli.notices import release_artifacts, release_lookup, tracker_routes
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import DdiOptions, TrackerConfig
from suitkit.tracker.quotas import Quotas

ADMIN = "admin-token-for-ddi-tests"
UPLOAD_ROLE_TOKEN = ADMIN  # the bootstrap admin may upload too
TENANT = "DEFAULT"


def target(token: str) -> dict[str, str]:
    return {"Authorization": f"TargetToken {token}"}


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def feedback(action: int | str, execution: str, finished: str = "none",
             details: list[str] | None = None, **more: Any) -> dict[str, Any]:
    return {"id": str(action), "time": "20261206T094000",
            "status": {"execution": execution, "result": {"finished": finished, **more},
                       "details": details or []}}


@dataclass
class Device:
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return target(self.token)


@dataclass
class DdiWorld:
    url: str
    client: httpx.Client
    author: Author
    tmp: Path
    releases: int = field(default=0)

    def base(self, device_id: str, tenant: str = TENANT) -> str:
        return f"/{tenant}/controller/v1/{device_id}"

    def upload(self, envelope: bytes) -> dict[str, Any]:
        files = [("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))]
        response = self.client.post("/api/v1/releases", files=files, headers=admin())
        assert response.status_code == 201, response.text
        return dict(response.json())

    def release_with(self, name: str, image: bytes) -> dict[str, Any]:
        """Upload a release whose one component's image is integrated as ``#name``."""
        self.releases += 1
        envelope = self.author.envelope(self.releases, [self.author.component(name, image)])
        return self.upload(envelope)

    def release(self) -> dict[str, Any]:
        return self.release_with("app.bin", image_bytes(f"ddi-{self.releases}", 3000))

    def register(self, name: str = "d") -> Device:
        response = self.client.post("/api/v1/devices", json={"name": name}, headers=admin())
        assert response.status_code == 201, response.text
        doc = response.json()
        return Device(doc["id"], doc["token"])

    def deploy(self, release: dict[str, Any], *devices: Device) -> None:
        response = self.client.post("/api/v1/deployments", headers=admin(), json={
            "release": release["id"], "devices": [d.id for d in devices]})
        assert response.status_code == 201, response.text

    def device(self, device_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/devices/{device_id}", headers=admin())
        assert response.status_code == 200, response.text
        return dict(response.json())

    def history(self, device_id: str) -> list[dict[str, Any]]:
        response = self.client.get(f"/api/v1/devices/{device_id}/history", headers=admin())
        assert response.status_code == 200, response.text
        return list(response.json()["history"])

    def states(self, device_id: str) -> list[str]:
        return [h["state"] for h in self.history(device_id) if h["kind"] == "event"]

    def poll(self, device: Device) -> dict[str, Any]:
        response = self.client.get(self.base(device.id), headers=device.headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def action(self, device: Device) -> int:
        """The device's pending action id, from its base poll's deploymentBase link."""
        href = self.poll(device)["_links"]["deploymentBase"]["href"]
        return int(href.rsplit("/", 1)[1].split("?")[0])


@contextmanager
def ddi_world(tmp: Path, *, poll_seconds: int = 1, quotas: Quotas | None = None
              ) -> Iterator[DdiWorld]:
    author = Author.create(tmp / "author")
    data = tmp / "data"
    config = TrackerConfig(f"sqlite:///{tmp / 'tracker.db'}", ADMIN,
                           releases=release_lookup(data), artifacts=release_artifacts(data),
                           quotas=quotas or Quotas())
    wiring = tracker_routes(config, ddi=DdiOptions(TENANT, poll_seconds))
    server = ServerConfig(data_dir=data, anchors=TrustAnchors.of(author.key.public_key()),
                          routers=wiring.routers, authorizer=wiring.authorizer)
    try:
        with running_server(server) as url, httpx.Client(base_url=url, timeout=20) as client:
            yield DdiWorld(url, client, author, tmp)
    finally:
        wiring.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
