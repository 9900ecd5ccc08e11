"""Deployments and campaigns name a release the firmware server holds (issue #11 item 12).

``suitkit serve`` as a user runs it (a child process on loopback, SQLite or PostgreSQL): it
hands the tracker a lookup over its own store, so a deployment or campaign for release R gets
R's envelope URL from the server; an unknown release, or an envelope URL that points at another
release's envelope, is refused with a one-line 422 before anything is stored.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import Author
from pg import BACKENDS, backend_url
from serve_kit import SUITKIT, serving
from suitkit.tracker.campaigns import CampaignEngine, CampaignSpec
from suitkit.tracker.service import open_db

from helpers import run_cli

ADMIN = "admin-token-for-release-rules"
STAFF = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Site:
    url: str
    db_url: str
    client: httpx.Client
    releases: dict[str, dict[str, Any]]
    """``"a"``, ``"b"``: what the server answered to their uploads."""
    device: dict[str, Any]

    def envelope_url(self, name: str) -> str:
        return self.url + self.releases[name]["envelope"]["url"]


@pytest.fixture(scope="module", params=BACKENDS)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("release-rules")
    db_url = backend_url(request, tmp)
    author = Author.create(tmp / "author")
    (tmp / "admin.token").write_text(ADMIN + "\n")
    argv = ["--data", str(tmp / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp / "admin.token"), "--db", db_url]
    with serving(argv, timeout=60) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        releases = {}
        for name, sequence in (("a", 1), ("b", 2)):
            envelope, image = author.release(sequence, name)
            uploaded = client.post("/api/v1/releases", headers=STAFF, files=[
                ("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
                ("image", ("app.bin", image, "application/octet-stream"))])
            assert uploaded.status_code == 201, uploaded.text
            releases[name] = uploaded.json()
            assert releases[name]["envelope"]["sha256"] == hashlib.sha256(envelope).hexdigest()
        device = client.post("/api/v1/devices", json={"name": "d"}, headers=STAFF).json()
        yield Site(server.url, db_url, client, releases, device)


def refused(response: httpx.Response, fragment: str) -> str:
    assert response.status_code == 422, (response.status_code, response.text)
    error = str(response.json()["error"])
    assert fragment in error and "\n" not in error, error
    return error


def test_a_deployment_gets_its_envelope_url_from_the_server(site: Site) -> None:
    a = site.releases["a"]
    deployed = site.client.post("/api/v1/deployments", headers=STAFF, json={
        "release": a["id"], "devices": [site.device["id"]]})
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["envelope_url"] == site.envelope_url("a")
    update = site.client.get(f"/api/v1/devices/{site.device['id']}/update",
                             headers={"Authorization": f"Bearer {site.device['token']}"})
    assert update.json()["envelope_url"] == site.envelope_url("a")
    # the same envelope on a mirror (content-addressed, any CDN) is that release's too
    mirror = f"https://mirror.example/cache/envelopes/{a['envelope']['sha256']}"
    deployed = site.client.post("/api/v1/deployments", headers=STAFF, json={
        "release": a["id"], "envelope_url": mirror, "devices": [site.device["id"]]})
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["envelope_url"] == mirror


def test_a_deployment_whose_url_points_at_another_release_is_refused(site: Site) -> None:
    a, b = site.releases["a"], site.releases["b"]
    before = site.client.get(f"/api/v1/devices/{site.device['id']}/history",
                             headers=STAFF).json()["history"]
    for url in (site.envelope_url("b"), f"{site.envelope_url('a')}?x=1",
                f"{site.url}/firmware/{b['envelope']['sha256']}"):
        error = refused(site.client.post("/api/v1/deployments", headers=STAFF, json={
            "release": a["id"], "envelope_url": url, "devices": [site.device["id"]]}),
            f"is not the envelope of release {a['id']}")
        assert f"expected a URL ending in /envelopes/{a['envelope']['sha256']}" in error
    after = site.client.get(f"/api/v1/devices/{site.device['id']}/history",
                            headers=STAFF).json()["history"]
    assert after == before


def test_a_release_not_on_the_server_is_refused(site: Site) -> None:
    for release in ("cd" * 32, "ab"):
        refused(site.client.post("/api/v1/deployments", headers=STAFF, json={
            "release": release, "envelope_url": site.envelope_url("a"),
            "devices": [site.device["id"]]}), "is not on the firmware server")
        refused(site.client.post("/api/v1/campaigns", headers=STAFF, json={
            "name": "x", "release": release, "target": {"devices": [site.device["id"]]}}),
            "is not on the firmware server")


def test_a_campaign_names_an_uploaded_release_and_its_url_is_derived(site: Site) -> None:
    a = site.releases["a"]
    refused(site.client.post("/api/v1/campaigns", headers=STAFF, json={
        "name": "x", "release": a["id"], "envelope_url": site.envelope_url("b"),
        "target": {"devices": [site.device["id"]]}}), "is not the envelope of release")
    made = site.client.post("/api/v1/campaigns", headers=STAFF, json={
        "name": "x", "release": a["id"], "target": {"devices": [site.device["id"]]}})
    assert made.status_code == 201, made.text
    assert made.json()["envelope_url"] == site.envelope_url("a")


def test_a_campaign_stored_with_another_releases_url_is_not_approved(site: Site) -> None:
    """A draft made before releases were checked (here written to the database directly)
    whose URL names release B's envelope: approval and start are refused."""
    db = open_db(site.db_url)
    try:
        spec = CampaignSpec(name="old", release=site.releases["a"]["id"],
                            envelope_url=site.envelope_url("b"),
                            devices=(site.device["id"],))
        engine = CampaignEngine(db)
        draft = engine.create(spec, "someone-else")
        approved = engine.approve(engine.create(spec, "someone-else")["id"], "a-third")
    finally:
        db.engine.dispose()
    refused(site.client.post(f"/api/v1/campaigns/{draft['id']}/approve", headers=STAFF),
            "is not the envelope of release")
    refused(site.client.post(f"/api/v1/campaigns/{approved['id']}/start", headers=STAFF),
            "is not the envelope of release")
    status = site.client.get(f"/api/v1/campaigns/{approved['id']}", headers=STAFF).json()
    assert status["status"] == "approved" and status["devices"] == 0


def test_campaign_create_names_the_release_only(
        site: Site, tmp_path_factory: pytest.TempPathFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``suitkit campaign create`` without ``--envelope-url``: the server derives it; with
    another release's URL: exit 1 and the server's one line."""
    token = tmp_path_factory.mktemp("cli") / "admin.token"
    token.write_text(ADMIN + "\n")
    a = site.releases["a"]
    common = ["--server", site.url, "--token-file", token, "--device", site.device["id"]]
    code, out, err = run_cli(capsys, "campaign", "create", "--release", a["id"], "--json",
                             *common)
    assert code == 0, err
    assert json.loads(out)["envelope_url"] == site.envelope_url("a")
    code, _, err = run_cli(capsys, "campaign", "create", "--release", a["id"],
                           "--envelope-url", site.envelope_url("b"), *common)
    assert code == 1 and "HTTP 422" in err and "is not the envelope of release" in err
    assert len(err.strip().splitlines()) == 1


def test_serve_public_url_is_the_base_of_derived_envelope_urls(tmp_path: Path) -> None:
    """Devices may reach the server under another name than the operator: ``--public-url``."""
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin.token")]
    bad = subprocess.run([*SUITKIT, "serve", *argv, "--public-url", "ftp://x"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "--public-url: expected an http:// or https:// URL" in (
        bad.stderr)
    with serving([*argv, "--public-url", "https://fw.example.com/base/"], timeout=60) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        envelope, image = author.release(1)
        uploaded = client.post("/api/v1/releases", headers=STAFF, files=[
            ("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
            ("image", ("app.bin", image, "application/octet-stream"))])
        assert uploaded.status_code == 201, uploaded.text
        device = client.post("/api/v1/devices", json={"name": "d"}, headers=STAFF).json()
        deployed = client.post("/api/v1/deployments", headers=STAFF, json={
            "release": uploaded.json()["id"], "devices": [device["id"]]})
        assert deployed.status_code == 201, deployed.text
        assert deployed.json()["envelope_url"] == (
            f"https://fw.example.com/base/envelopes/{hashlib.sha256(envelope).hexdigest()}")
