"""A campaign deploys a release of several manifests (issue #15, trust domains), end to end.

``suitkit serve`` as a user runs it (a child process on loopback, SQLite): authors A and B each
upload their component manifest with its image, the operator uploads the root that depends on
both (fetched by the device from the server's ``/envelopes/``), two operators run a campaign of
the root, and the real device agent on a Linux-class device with two images (each author
scoped to its own) downloads the root, fetches both dependency manifests and both images,
installs the set, reboots, confirms and reports success: the device ends up running both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx

from device.device_kit import running as running_images
from device.trust_kit import Domains
from serve_kit import serving
from suitkit.device.agent import run_once
from suitkit.device.fetch import HttpFetcher
from suitkit.device.wiring import open_device

ADMIN = "admin-token-for-trust-domains"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_campaign_deploys_a_root_and_two_authors_manifests(tmp_path: Path) -> None:
    domains = Domains(tmp_path)
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    argv = ["--data", str(tmp_path / "data"), "--db", f"sqlite:///{tmp_path / 'tracker.db'}",
            "--admin-token-file", str(tmp_path / "admin.token")]
    for who in (domains.operator, domains.a, domains.b):
        argv += ["--author-anchor", str(who.anchor)]
    with serving(argv, timeout=60) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        tokens = {}
        for name, role in (("alice", "operator"), ("bob", "operator"), ("ann", "author")):
            made = client.post("/api/v1/tokens", headers=_auth(ADMIN),
                               json={"name": name, "role": role})
            assert made.status_code == 201, made.text
            tokens[name] = made.json()["token"]

        def upload(envelope: bytes, *images: bytes) -> dict[str, Any]:
            files = [("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))]
            files += [("image", ("i.bin", image, "application/octet-stream"))
                      for image in images]
            done = client.post("/api/v1/releases", headers=_auth(tokens["ann"]), files=files)
            assert done.status_code == 201, done.text
            return dict(done.json())

        image_uri = f"{server.url}/firmware/{{sha256}}"
        env_a, image_a = domains.component_manifest(domains.a, 4, 0, uri=image_uri)
        env_b, image_b = domains.component_manifest(domains.b, 6, 1, uri=image_uri)
        upload(env_a, image_a)
        upload(env_b, image_b)
        root = upload(domains.root_manifest(2, [
            {"envelope": "a.suit", "bytes": env_a, "uri": f"{server.url}/envelopes/{{sha256}}"},
            {"envelope": "b.suit", "bytes": env_b,
             "uri": f"{server.url}/envelopes/{{sha256}}"}]))
        assert [c["blob"] for c in root["components"] if c.get("dependency")] == [
            hashlib.sha256(env_a).hexdigest(), hashlib.sha256(env_b).hexdigest()]

        device = client.post("/api/v1/devices", json={"name": "two-authors"},
                             headers=_auth(ADMIN)).json()
        made = client.post("/api/v1/campaigns", headers=_auth(tokens["alice"]), json={
            "name": "trust domains", "release": root["id"],
            "target": {"devices": [device["id"]]}})
        assert made.status_code == 201, made.text
        cid = made.json()["id"]
        assert client.post(f"/api/v1/campaigns/{cid}/approve",
                           headers=_auth(tokens["bob"])).status_code == 200
        started = client.post(f"/api/v1/campaigns/{cid}/start", headers=_auth(tokens["bob"]))
        assert started.status_code == 200, started.text

        result = run_once(domains.device, server.url, device["token"], fetcher=HttpFetcher())

        assert result.outcome == "succeeded", result.steps
        booted = running_images(open_device(domains.device).bootloader.boot())
        assert booted == {"app": (4, hashlib.sha256(image_a).digest()),
                          "data": (6, hashlib.sha256(image_b).digest())}
        doc = client.get(f"/api/v1/campaigns/{cid}?limit=10",
                         headers=_auth(tokens["alice"])).json()
        assert [m["state"] for m in doc["members"]] == ["succeeded"], doc
