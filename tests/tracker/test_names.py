"""Classes and releases by name (issue #17): ``suitkit serve`` as a user runs it (a child
process on loopback, SQLite or PostgreSQL).

A release's manifest text (component vendor-name, model-name, vendor-domain,
component-version: manifest §8.4.4) names its class and its version; the uploader adds notes
(and a version when the text has none). The class registry (``GET/PUT /api/v1/classes``)
holds the names, checked against the IDs' derivation when the vendor domain is known
(§8.4.8.1-2); devices and campaigns show them.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import CLASS, VENDOR, Author, image_bytes
from pg import BACKENDS, backend_url
from serve_kit import serving

from helpers import run_cli

ADMIN = "admin-token-for-names-tests"
STAFF = {"Authorization": f"Bearer {ADMIN}"}
NAMED_TEXT = {"vendor-name": "Example Inc.", "model-name": "thermostat",
              "vendor-domain": "example.com", "component-version": "1.4.0"}


@dataclass
class Site:
    url: str
    client: httpx.Client
    author: Author

    def upload(self, envelope: bytes, image: bytes | None = None, **fields: str
               ) -> httpx.Response:
        files: list[tuple[str, tuple[str, bytes, str]]] = [
            ("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))]
        if image is not None:
            files.append(("image", ("app.bin", image, "application/octet-stream")))
        return self.client.post("/api/v1/releases", headers=STAFF, files=files,
                                data=fields)

    def release(self, sequence: int, text: dict[str, str] | None = None,
                top: dict[str, Any] | None = None, **fields: str) -> dict[str, Any]:
        """Upload a one-component release whose text (not severed) is ``text``."""
        image = image_bytes(f"names-{sequence}", 1500)
        component = self.author.component(f"names-{sequence}.bin", image)
        if text is not None:
            component["text"] = text
        envelope = self.author.envelope(sequence, [component],
                                        top={"sever": [], **(top or {})})
        answer = self.upload(envelope, **fields)
        assert answer.status_code in (200, 201), answer.text
        return dict(answer.json())

    def device(self, class_id: str = str(CLASS), vendor_id: str = str(VENDOR)
               ) -> dict[str, Any]:
        answer = self.client.post("/api/v1/devices", headers=STAFF, json={
            "name": "named", "vendor_id": vendor_id, "class_id": class_id})
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    def classes(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        after = None
        while True:
            answer = self.client.get("/api/v1/classes", headers=STAFF,
                                     params={"limit": 2, **({"after": after} if after else {})})
            assert answer.status_code == 200, answer.text
            for item in answer.json()["classes"]:
                assert item["class_id"] not in found, "a class shown on two pages"
                found[item["class_id"]] = item
            after = answer.json()["next"]
            if after is None:
                return found


@pytest.fixture(scope="module", params=BACKENDS)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("names")
    db_url = backend_url(request, tmp)
    author = Author.create(tmp / "author")
    (tmp / "admin.token").write_text(ADMIN + "\n")
    argv = ["--data", str(tmp / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp / "admin.token"), "--db", db_url]
    with serving(argv, timeout=60) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        yield Site(server.url, client, author)


def error_of(response: httpx.Response, status: int, fragment: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    error = str(response.json()["error"])
    assert fragment in error and "\n" not in error, error
    return error


def test_a_release_names_its_class_and_version_from_its_manifest_text(site: Site) -> None:
    device = site.device()
    release = site.release(101, NAMED_TEXT, notes="Fixes the fan.\nFaster boot.")
    assert release["version"] == "1.4.0"
    assert release["notes"] == "Fixes the fan.\nFaster boot."
    again = site.client.get(f"/api/v1/releases/{release['id']}", headers=STAFF).json()
    assert (again["version"], again["notes"]) == ("1.4.0", "Fixes the fan.\nFaster boot.")
    listed = {r["id"]: r for r in site.client.get("/api/v1/releases",
                                                  headers=STAFF).json()["releases"]}
    assert listed[release["id"]]["version"] == "1.4.0"

    named = site.classes()[str(CLASS)]
    assert named == {"vendor_id": str(VENDOR), "class_id": str(CLASS),
                     "vendor_name": "Example Inc.", "class_name": "thermostat",
                     "vendor_domain": "example.com", "source": "manifest",
                     "devices": named["devices"]}
    assert named["devices"] >= 1
    shown = site.client.get(f"/api/v1/devices/{device['id']}", headers=STAFF).json()
    assert (shown["vendor_name"], shown["class_name"]) == ("Example Inc.", "thermostat")
    page = site.client.get("/api/v1/devices", headers=STAFF, params={"limit": 1000}).json()
    mine = next(d for d in page["devices"] if d["id"] == device["id"])
    assert mine["class_name"] == "thermostat"


def test_the_version_is_the_texts_or_the_uploaders_and_set_once(site: Site) -> None:
    image = image_bytes("names-102", 1500)
    envelope = site.author.envelope(102, [site.author.component("n102.bin", image)])
    first = site.upload(envelope, version="2.0-beta", notes="first")
    assert first.status_code == 201, first.text
    assert (first.json()["version"], first.json()["notes"]) == ("2.0-beta", "first")
    assert site.upload(envelope).json()["version"] == "2.0-beta"  # none given: kept
    assert site.upload(envelope, version="2.0-beta").status_code == 200
    error_of(site.upload(envelope, version="2.1"), 409, "already has version '2.0-beta'")
    error_of(site.upload(envelope, notes="other"), 409, "already has notes 'first'")

    # refused before its image is stored: no blob nobody refers to
    detached_image = image_bytes("names-104", 1500)
    detached = site.author.envelope(104, [site.author.component(
        "n104.bin", detached_image, uri="https://fw.example/n104.bin")])
    assert site.upload(detached, notes="first").status_code == 201
    error_of(site.upload(detached, detached_image, notes="other"), 409, "already has notes")
    blob = hashlib.sha256(detached_image).hexdigest()
    assert site.client.get(f"/firmware/{blob}").status_code == 404
    assert site.upload(detached, detached_image).status_code == 200
    assert site.client.get(f"/firmware/{blob}").content == detached_image

    component = site.author.component("n103.bin", image_bytes("names-103", 1500))
    component["text"] = {"component-version": "3.0"}
    texted = site.author.envelope(103, [component], top={"sever": []})
    error_of(site.upload(texted, version="3.1"), 422,
             "the manifest's text says component-version '3.0'")
    error_of(site.upload(envelope, version="bad\x07version"), 400, "form field 'version'")
    error_of(site.upload(envelope, version="v" * 65), 400, "expected 1 to 64 characters")
    error_of(site.upload(envelope, notes="n" * 4097), 400, "expected 1 to 4096 characters")
    error_of(site.upload(envelope, other="x"), 400, "the text fields are 'version' and 'notes'")


def test_an_operator_names_a_class_and_the_derivation_is_checked(site: Site) -> None:
    vendor = uuid.uuid5(uuid.NAMESPACE_DNS, "acme.test")
    klass = uuid.uuid5(vendor, "sensor")
    device = site.device(str(klass), str(vendor))
    path = f"/api/v1/classes/{klass}"
    error = error_of(site.client.put(path, headers=STAFF, json={
        "vendor_name": "ACME", "class_name": "sensr", "vendor_domain": "acme.test"}), 422,
        f"class name 'sensr' gives class id {uuid.uuid5(vendor, 'sensr')}")
    assert str(klass) in error
    error_of(site.client.put(path, headers=STAFF, json={
        "vendor_name": "ACME", "class_name": "sensor", "vendor_domain": "other.test"}), 422,
        "vendor domain 'other.test' gives vendor id")
    named = site.client.put(path, headers=STAFF, json={
        "vendor_name": "ACME", "class_name": "sensor", "vendor_domain": "acme.test"})
    assert named.status_code == 200, named.text
    assert named.json() == {"vendor_id": str(vendor), "class_id": str(klass),
                            "vendor_name": "ACME", "class_name": "sensor",
                            "vendor_domain": "acme.test", "source": "operator", "devices": 1}
    # the domain is known from now on: a later name is checked too
    error_of(site.client.put(path, headers=STAFF, json={"class_name": "other"}), 422,
             "class name 'other' gives class id")
    shown = site.client.get(f"/api/v1/devices/{device['id']}", headers=STAFF).json()
    assert (shown["vendor_name"], shown["class_name"]) == ("ACME", "sensor")
    audit = site.client.get("/api/v1/audit", headers=STAFF).json()["entries"]
    assert any(e["action"] == "class.name" and e["target"] == str(klass) for e in audit)

    # without a known domain a name is only text; a class nobody has seen needs its vendor
    free = uuid.uuid4()
    error_of(site.client.put(f"/api/v1/classes/{free}", headers=STAFF,
                             json={"class_name": "lab rig"}), 400, "give its vendor id")
    done = site.client.put(f"/api/v1/classes/{free}", headers=STAFF,
                           json={"class_name": "lab rig", "vendor_id": str(uuid.uuid4())})
    assert done.status_code == 200 and done.json()["devices"] == 0, done.text
    assert site.classes()[str(free)]["class_name"] == "lab rig"


def test_an_operators_names_win_over_a_later_manifest(site: Site) -> None:
    vendor = uuid.uuid5(uuid.NAMESPACE_DNS, "kept.test")
    klass = uuid.uuid5(vendor, "meter")
    site.device(str(klass), str(vendor))
    assert site.client.put(f"/api/v1/classes/{klass}", headers=STAFF, json={
        "vendor_name": "Kept Ltd", "class_name": "meter"}).status_code == 200
    site.release(110, {"vendor-name": "Renamed", "model-name": "meter"},
                 top={"vendor-domain": "kept.test", "class-name": "meter"})
    assert site.classes()[str(klass)]["vendor_name"] == "Kept Ltd"
    # a manifest whose names contradict the derivation names nothing
    other = uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_DNS, "wrong.test"), "pump")
    site.release(111, {"vendor-name": "W", "model-name": "not-pump",
                       "vendor-domain": "wrong.test"},
                 top={"vendor-domain": "wrong.test", "class-name": "pump"})
    assert str(other) not in site.classes()


def test_bad_class_requests_are_refused_with_one_line(site: Site) -> None:
    path = f"/api/v1/classes/{CLASS}"
    error_of(site.client.put(path, headers=STAFF, json={"class_name": "a\x01b"}), 400,
             "class_name: expected printable text")
    error_of(site.client.put(path, headers=STAFF, json={"class_name": "x" * 129}), 400,
             "class_name: expected 1 to 128 characters")
    error_of(site.client.put(path, headers=STAFF, json={"colour": "red"}), 400,
             "unknown member 'colour'")
    error_of(site.client.put(path, headers=STAFF, json={}), 400, "give vendor_name")
    error_of(site.client.put("/api/v1/classes/not-a-uuid", headers=STAFF,
                             json={"class_name": "x"}), 400, "expected a UUID")
    error_of(site.client.get("/api/v1/classes", headers=STAFF, params={"after": "zz"}), 400,
             "after: expected the cursor")
    device = site.device()
    error_of(site.client.put(path, headers={"Authorization": f"Bearer {device['token']}"},
                             json={"class_name": "mine"}), 403, "role")


def test_a_device_and_a_campaign_speak_in_versions_and_names(site: Site) -> None:
    release = site.release(120, {**NAMED_TEXT, "component-version": "5.1.2"})
    device = site.device()
    deployed = site.client.post("/api/v1/deployments", headers=STAFF, json={
        "release": release["id"], "devices": [device["id"]]})
    assert deployed.status_code == 201, deployed.text
    own = {"Authorization": f"Bearer {device['token']}"}
    for state in ("downloading", "downloaded", "installing", "rebooting"):
        moved = site.client.post(f"/api/v1/devices/{device['id']}/events", headers=own,
                                 json={"state": state})
        assert moved.status_code == 201, moved.text
    before = site.client.get(f"/api/v1/devices/{device['id']}", headers=STAFF).json()
    assert before["version"] is None  # not running it yet
    site.client.post(f"/api/v1/devices/{device['id']}/events", headers=own,
                     json={"state": "succeeded"})
    shown = site.client.get(f"/api/v1/devices/{device['id']}", headers=STAFF).json()
    assert shown["version"] == "5.1.2"

    # a device that reports versions in its inventory shows them before any update
    other = site.device()
    put = site.client.put(f"/api/v1/devices/{other['id']}/inventory",
                          headers={"Authorization": f"Bearer {other['token']}"},
                          json={"vendor_id": str(VENDOR), "class_id": str(CLASS),
                                "components": [{"id": ["00"], "version": [1, 2, -1, 3]}]})
    assert put.status_code == 200, put.text
    assert put.json()["version"] == "1.2-rc.3"

    made = site.client.post("/api/v1/campaigns", headers=STAFF, json={
        "name": "names", "release": release["id"],
        "target": {"class_id": str(CLASS)}})
    assert made.status_code == 201, made.text
    campaign = site.client.get(f"/api/v1/campaigns/{made.json()['id']}", headers=STAFF).json()
    assert campaign["target"]["class_name"] == "thermostat"
    assert campaign["release_version"] == "5.1.2"
    listed = site.client.get("/api/v1/campaigns", headers=STAFF).json()["campaigns"]
    assert next(c for c in listed if c["id"] == made.json()["id"])["release_version"] == "5.1.2"


def test_the_cli_speaks_in_names_and_versions(site: Site, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "admin.token"
    token.write_text(ADMIN + "\n")
    where = ("--server", site.url, "--token-file", token)
    image = image_bytes("names-130", 1500)
    envelope = tmp_path / "r.suit"
    envelope.write_bytes(site.author.envelope(130, [site.author.component("n130.bin", image)]))
    (tmp_path / "notes.txt").write_text("Quieter fan.\nSecond line.\n")
    code, out, err = run_cli(capsys, "upload", envelope, *where, "--version", "7.0.1",
                             "--notes", f"@{tmp_path / 'notes.txt'}")
    assert code == 0 and "(version 7.0.1, sequence number 130) stored" in out, err
    code, out, err = run_cli(capsys, "releases", "list", *where, "--json")
    assert code == 0, err
    mine = next(r for r in json.loads(out) if r["sequence_number"] == 130)
    assert (mine["version"], mine["notes"]) == ("7.0.1", "Quieter fan.\nSecond line.\n")
    code, out, err = run_cli(capsys, "releases", "list", *where, "--verbose")
    line = next(x for x in out.splitlines() if "7.0.1" in x)
    assert code == 0 and "Quieter fan." in line and mine["id"][:8] in line, out

    vendor = uuid.uuid5(uuid.NAMESPACE_DNS, "cli.test")
    klass = uuid.uuid5(vendor, "gateway")
    device = site.device(str(klass), str(vendor))
    code, out, err = run_cli(capsys, "classes", "name", str(klass), *where, "--class-name",
                             "gateway", "--vendor-name", "CLI Co", "--vendor-domain", "cli.test")
    assert code == 0 and "CLI Co / gateway" in out, err
    code, out, err = run_cli(capsys, "classes", "name", str(klass), *where, "--class-name",
                             "gw")
    assert code == 1 and "class name 'gw' gives class id" in err and err.count("\n") == 1
    code, out, err = run_cli(capsys, "classes", "list", *where, "--json")
    assert code == 0 and any(c["class_name"] == "gateway" for c in json.loads(out)), err
    code, out, err = run_cli(capsys, "devices", "list", *where)
    assert code == 0 and "CLI Co / gateway" in out, err
    code, out, err = run_cli(capsys, "devices", "list", *where, "--verbose")
    assert code == 0 and str(klass)[:8] in out, err
    code, out, err = run_cli(capsys, "devices", "show", device["id"], *where)
    assert code == 0 and "class: CLI Co / gateway" in out and "version: -" in out, err

    made = site.client.post("/api/v1/campaigns", headers=STAFF, json={
        "name": "cli-names", "release": mine["id"], "target": {"class_id": str(klass)}})
    assert made.status_code == 201, made.text
    code, out, err = run_cli(capsys, "campaign", "status", made.json()["id"], *where)
    assert code == 0 and f"release 7.0.1 ({mine['id'][:12]})" in out, err
    assert "target class CLI Co / gateway" in out
    code, out, err = run_cli(capsys, "campaign", "list", *where)
    assert code == 0 and "7.0.1" in out, err
