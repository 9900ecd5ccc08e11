"""What the APIs give the dashboard, over real HTTP: the manifest details the firmware server
adds to each release (member ``manifest``) and the device list with components
(``GET /api/v1/devices?components=true``)."""

from __future__ import annotations

from pathlib import Path

import httpx

from device.device_kit import CLASS, VENDOR, Author, image_bytes
from suitkit.core import crypto
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router

UPLOAD = "release-details-upload-token"
ADMIN = {"Authorization": "Bearer dashboard-api-admin-token-0123"}


def test_releases_carry_the_manifest_details_while_the_envelope_verifies(
        tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    component = {**author.component("app.bin", image_bytes("app", 500)),
                 "text": {"model-name": "Pump <P1>", "component-version": "1.2.0"}}
    envelope = author.envelope(4, [component], top={"text": {"update-description": "Faster"}})
    config = ServerConfig(data_dir=tmp_path / "data", upload_token=UPLOAD,
                          anchors=TrustAnchors.of(author.key.public_key()))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
        made = client.post("/api/v1/releases", headers={"Authorization": f"Bearer {UPLOAD}"},
                           files=[("envelope", ("r.suit", envelope, "application/cbor"))])
        assert made.status_code == 201, made.text
        listed = client.get("/api/v1/releases").json()["releases"]
        one = client.get(f"/api/v1/releases/{made.json()['id']}").json()
    assert made.json()["manifest"] == listed[0]["manifest"] == one["manifest"]
    manifest = one["manifest"]
    assert manifest["vendor_ids"] == [str(VENDOR)] and manifest["class_ids"] == [str(CLASS)]
    (signer,) = manifest["signers"]
    assert signer["role"] == "author" and signer["key_id"] is None
    assert "ES256" in signer["algorithms"] and signer["algorithms"] == sorted(signer["algorithms"])
    assert manifest["text"] == {"en-US": {"update-description": "Faster",
                                          "00": {"model-name": "Pump <P1>",
                                                 "component-version": "1.2.0"}}}
    assert manifest["severed"] == [] and manifest["reference_uri"] is None

    # the same data directory served with other trust anchors: the release is still listed,
    # its details are not vouched for any more
    other = TrustAnchors.of(crypto.generate_private_key("ES256").public_key())
    with running_server(ServerConfig(data_dir=tmp_path / "data", anchors=other)) as url:
        again = httpx.get(f"{url}/api/v1/releases", timeout=10).json()["releases"]
    assert [r["id"] for r in again] == [one["id"]] and again[0]["manifest"] is None
    assert again[0]["components"] == one["components"]


def test_the_device_list_can_carry_every_device_s_components(tmp_path: Path) -> None:
    router = create_router(TrackerConfig(f"sqlite:///{tmp_path / 't.db'}",
                                         ADMIN["Authorization"].split()[1]))
    config = ServerConfig(data_dir=tmp_path / "data", routers=(router,),
                          anchors=TrustAnchors.of(crypto.generate_private_key("ES256")
                                                  .public_key()))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
        made = [client.post("/api/v1/devices", json={"name": n}, headers=ADMIN).json()
                for n in ("a", "b", "c")]
        for dev, parts in ((made[0], [["00"], ["01", "02"]]), (made[2], [["00"]])):
            body = {"components": [{"id": p, "sequence": i + 1} for i, p in enumerate(parts)]}
            client.put(f"/api/v1/devices/{dev['id']}/inventory", json=body,
                       headers={"Authorization": f"Bearer {dev['token']}"}).raise_for_status()
        plain = client.get("/api/v1/devices", headers=ADMIN).json()["devices"]
        full = client.get("/api/v1/devices?components=true", headers=ADMIN).json()["devices"]
        one = client.get(f"/api/v1/devices/{made[0]['id']}", headers=ADMIN).json()
    assert all("components" not in d for d in plain)
    assert [d["id"] for d in full] == [d["id"] for d in plain] == [d["id"] for d in made]
    assert full[0]["components"] == one["components"] == [
        {"id": ["00"], "sequence": 1, "digest": None, "version": None},
        {"id": ["01", "02"], "sequence": 2, "digest": None, "version": None}]
    assert full[1]["components"] == []
    assert full[2]["components"] == [{"id": ["00"], "sequence": 1, "digest": None,
                                      "version": None}]
