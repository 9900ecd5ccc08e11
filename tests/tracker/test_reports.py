"""Capability reports, signed reports and the nonce, end to end (issue #15; draft-ietf-suit-report
§6, §8), over real HTTP: one uvicorn server holds the firmware server and the status tracker
(SQLite in a temp folder), configured to require signed reports of one device class.

A real device folder registers with ``suitkit device register`` (which makes its report key and
registers the public half), runs the agent, and its signed report with the update's nonce is
stored; what it supports is shown by the API and ``suitkit devices capabilities``. The attacks
(forged signature, replayed or unknown nonce, another device's report, oversized) are sent by
hand and each leaves nothing recorded: the device's genuine report is still taken after them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from typer.testing import CliRunner

from device.device_kit import CLASS, Author, boot, confirm, image_bytes, install, new_device
from suitkit.cli.main import app as cli
from suitkit.core import crypto
from suitkit.core.model import Digest
from suitkit.core.report import (
    SIGNED_REPORT_MEDIA_TYPE,
    Reference,
    Report,
    decode_capability_report,
    encode_report,
    sign_report,
)
from suitkit.core.verify import TrustAnchors
from suitkit.device.agent import run_once
from suitkit.device.fetch import HttpFetcher
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router
from suitkit.tracker.service import Inventory, NonceRefused, NotAssigned, open_db

ADMIN = "admin-token-for-report-tests"
UPLOAD = "upload-token-for-report-tests"
OTHER_CLASS = uuid.uuid5(CLASS, "unsigned-class")
CBOR = {"Content-Type": "application/suit-report+cbor"}
COSE = {"Content-Type": SIGNED_REPORT_MEDIA_TYPE}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class World:
    url: str
    client: httpx.Client
    author: Author
    tmp: Path

    def release(self, sequence: int) -> dict[str, Any]:
        image = image_bytes(f"app-{sequence}-", 2000)
        uri = f"{self.url}/firmware/{hashlib.sha256(image).hexdigest()}"
        envelope, _ = self.author.release(sequence, uri=uri)
        files = [("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
                 ("image", ("app.bin", image, "application/octet-stream"))]
        response = self.client.post("/api/v1/releases", files=files, headers=auth(UPLOAD))
        assert response.status_code == 201, response.text
        return dict(response.json())

    def register(self, key: crypto.PrivateKey | None = None, klass: uuid.UUID = CLASS
                 ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": "d", "class_id": str(klass)}
        if key is not None:
            body["report_key"] = crypto.public_key_to_pem(key.public_key()).decode()
        response = self.client.post("/api/v1/devices", json=body, headers=auth(ADMIN))
        assert response.status_code == 201, response.text
        return dict(response.json())

    def deploy(self, release: dict[str, Any], device: dict[str, Any], *states: str) -> str:
        """Deploy, report ``states`` as the device; the nonce its update came with."""
        response = self.client.post("/api/v1/deployments", headers=auth(ADMIN), json={
            "release": release["id"], "envelope_url": self.url + release["envelope"]["url"],
            "devices": [device["id"]]})
        assert response.status_code == 201, response.text
        for state in states:
            response = self.client.post(f"/api/v1/devices/{device['id']}/events",
                                        json={"state": state}, headers=auth(device["token"]))
            assert response.status_code == 201, response.text
        pending = self.client.get(f"/api/v1/devices/{device['id']}/update",
                                  headers=auth(device["token"])).json()
        assert isinstance(pending["nonce"], str) and len(pending["nonce"]) == 32
        return str(pending["nonce"])

    def history(self, device_id: str) -> list[dict[str, Any]]:
        response = self.client.get(f"/api/v1/devices/{device_id}/history", headers=auth(ADMIN))
        return list(response.json()["history"])

    def post(self, device: dict[str, Any], body: bytes, headers: dict[str, str]
             ) -> httpx.Response:
        return self.client.post(f"/api/v1/devices/{device['id']}/reports", content=body,
                                headers={**auth(device["token"]), **headers})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("reports")
    author = Author.create(tmp / "author")
    router = create_router(TrackerConfig(f"sqlite:///{tmp / 'tracker.db'}", ADMIN,
                                         signed_reports=(str(CLASS),)))
    config = ServerConfig(data_dir=tmp / "data", upload_token=UPLOAD, routers=(router,),
                          anchors=TrustAnchors.of(author.key.public_key()))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield World(url, client, author, tmp)


def report_for(release: dict[str, Any], nonce: bytes | None) -> bytes:
    return encode_report(Report(reference=Reference("", Digest(-16, bytes.fromhex(
        release["id"]))), nonce=nonce))


def test_a_registered_device_signs_its_report_with_the_nonce_and_shows_what_it_supports(
        world: World) -> None:
    folder = new_device(world.tmp / "signer", [world.author.anchor])
    envelope, _ = world.author.release(1, "base")
    assert install(folder, envelope).installed
    boot(folder)
    confirm(folder)
    admin = world.tmp / "admin.token"
    admin.write_text(ADMIN + "\n")
    credential = world.tmp / "signer.cred"
    done = CliRunner().invoke(cli, ["device", "register", str(folder), "--server", world.url,
                                    "--token-file", str(admin), "--out", str(credential)])
    assert done.exit_code == 0, done.output
    assert (folder / "report.key").stat().st_mode & 0o777 == 0o600
    token = credential.read_text().strip()
    device_id = token.partition(".")[0]
    shown = world.client.get(f"/api/v1/devices/{device_id}", headers=auth(ADMIN)).json()
    assert shown["report_key"] is True
    # the capability report came with the first inventory: the device's own component, the
    # commands its processor runs, the algorithms its trust anchor accepts (ES256 key: -7, -9)
    caps = shown["capabilities"]
    assert caps["components"] == [{"id": ["00"], "wildcard": False}]
    assert {12, 20, 21, 28, 29} <= set(caps["commands"])  # set-index, override, fetch, ...
    assert 30 not in caps["parameters"]  # component metadata: the mcu shape has no place
    assert {-7, -9, -16} <= set(caps["algorithms"])
    assert shown["components"][0]["version"] is None  # the base release set no version

    release = world.release(2)
    assert world.client.post("/api/v1/deployments", headers=auth(ADMIN), json={
        "release": release["id"], "envelope_url": world.url + release["envelope"]["url"],
        "devices": [device_id]}).status_code == 201
    result = run_once(folder, world.url, token, fetcher=HttpFetcher())
    assert result.outcome == "succeeded", result.steps
    assert any("report sent (ok; signed)" in s for s in result.steps), result.steps
    (report,) = [h for h in world.history(device_id) if h["kind"] == "report"]
    assert report["summary"]["signed"] == "COSE_Sign1" and report["summary"]["succeeded"]
    assert report["summary"]["nonce"] is not None and len(report["summary"]["nonce"]) == 32

    # the author reads what the device supports (JSON, and the CBOR as the device sent it)
    author_token = world.client.post("/api/v1/tokens", headers=auth(ADMIN), json={
        "name": "writer", "role": "author"}).json()["token"]
    author_file = world.tmp / "author.token"
    author_file.write_text(author_token)
    listed = CliRunner().invoke(cli, ["devices", "capabilities", device_id, "--server",
                                      world.url, "--token-file", str(author_file), "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == caps
    out = world.tmp / "caps.cbor"
    saved = CliRunner().invoke(cli, ["devices", "capabilities", device_id, "--server",
                                     world.url, "--token-file", str(author_file), "--cbor",
                                     str(out)])
    assert saved.exit_code == 0, saved.output
    assert cbor2.loads(out.read_bytes())[1] == [[b"\x00"]]
    decode_capability_report(out.read_bytes())
    # and checks a release against it before deploying it
    good, _ = world.author.release(9, "check")
    bad = world.author.envelope(9, [world.author.component("x.bin", b"x" * 64, index=7)])
    for envelope, code, line in ((good, 0, "supports everything"),
                                 (bad, 1, "component [07] is not one the device has")):
        (world.tmp / "check.suit").write_bytes(envelope)
        checked = CliRunner().invoke(cli, ["devices", "capabilities", device_id, "--server",
                                           world.url, "--token-file", str(author_file),
                                           "--check", str(world.tmp / "check.suit")])
        assert checked.exit_code == code and line in checked.output, checked.output
    tree = CliRunner().invoke(cli, ["devices", "show", device_id, "--server", world.url,
                                    "--token-file", str(admin)])
    assert tree.exit_code == 0, tree.output
    assert "report key: registered" in tree.output and "capabilities" in tree.output
    assert "algorithms: " in tree.output and "signed (COSE_Sign1)" in tree.output


def test_forged_replayed_foreign_and_unknown_nonce_reports_record_nothing(
        world: World) -> None:
    key, other = crypto.generate_private_key("ESP256"), crypto.generate_private_key("ESP256")
    device, neighbour = world.register(key), world.register(other)
    release = world.release(3)
    nonce = bytes.fromhex(world.deploy(release, device, "downloading", "downloaded",
                                       "installing"))
    world.deploy(release, neighbour, "downloading", "downloaded", "installing")
    before = len(world.history(device["id"]))
    genuine = sign_report(report_for(release, nonce), key.signer())

    refused = [
        # forged: signed with a key that is not the device's
        (sign_report(report_for(release, nonce), other.signer()), COSE, 403,
         "signature does not verify"),
        # altered after signing (the nonce changed in the payload)
        (cbor2.dumps(cbor2.CBORTag(18, [*cbor2.loads(genuine).value[:2],
                                        report_for(release, b"\x00" * 16),
                                        cbor2.loads(genuine).value[3]])), COSE, 403,
         "signature does not verify"),
        # the right key, but a nonce the tracker never issued with this update
        (sign_report(report_for(release, b"\x07" * 16), key.signer()), COSE, 409,
         "is unknown"),
        # signed, but without a nonce: it could be replayed at a later update
        (sign_report(report_for(release, None), key.signer()), COSE, 409, "carries no nonce"),
        # unsigned from a device of the class that must sign
        (report_for(release, nonce), CBOR, 403, "must sign its reports"),
        # oversized
        (b"\x00" * (64 * 1024 + 1), COSE, 413, "larger than"),
    ]
    for body, headers, status, message in refused:
        response = world.post(device, body, headers)
        assert response.status_code == status, (message, response.text)
        assert message in response.json()["error"]
    # another device's report: the neighbour's own genuine report sent with this device's
    # credential does not verify with this device's key
    theirs = sign_report(report_for(release, nonce), other.signer())
    response = world.post(device, theirs, COSE)
    assert response.status_code == 403 and "signature does not verify" in response.text
    # and this device's report sent by the neighbour does not verify with the neighbour's key
    response = world.post(neighbour, genuine, COSE)
    assert response.status_code == 403, response.text
    assert len(world.history(device["id"])) == before  # nothing recorded

    accepted = world.post(device, genuine, COSE)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["summary"]["signed"] == "COSE_Sign1"
    replayed = world.post(device, genuine, COSE)
    assert replayed.status_code == 409 and "used already" in replayed.json()["error"]
    assert len(world.history(device["id"])) == before + 1


def test_signed_reports_without_a_key_and_unsigned_reports_of_other_classes(
        world: World) -> None:
    release = world.release(5)
    keyless = world.register(None, OTHER_CLASS)
    nonce = bytes.fromhex(world.deploy(release, keyless, "downloading"))
    key = crypto.generate_private_key("ESP256")
    response = world.post(keyless, sign_report(report_for(release, nonce), key.signer()), COSE)
    assert response.status_code == 403 and "no registered report key" in response.text
    # an existing agent or another device's own firmware: unsigned, a nonce of its own, a
    # class the policy does not name: accepted, its nonce kept as sent (report §8: the nonce
    # makes a signed report fresh)
    response = world.post(keyless, report_for(release, b"\x09" * 8), CBOR)
    assert response.status_code == 201, response.text
    summary = response.json()["summary"]
    assert summary["signed"] is None and summary["nonce_checked"] is False
    assert summary["nonce"] == "09" * 8

    # an admin registers a key later (COSE_Mac0 with an HMAC key this time)
    late = world.register(None, OTHER_CLASS)
    nonce = bytes.fromhex(world.deploy(release, late, "downloading"))
    secret = crypto.HmacKey(bytes(range(32)))
    path = f"/api/v1/devices/{late['id']}/report-key"
    assert world.client.put(path, json={"report_key": crypto.public_key_to_pem(
        secret).decode()}, headers=auth(late["token"])).status_code == 403
    private = crypto.generate_private_key("ESP256")
    pem = private.to_pem().decode()
    refused = world.client.put(path, json={"report_key": pem}, headers=auth(ADMIN))
    assert refused.status_code == 400 and "private" in refused.text  # public halves only
    assert world.client.put(path, json={"report_key": crypto.public_key_to_pem(
        secret).decode()}, headers=auth(ADMIN)).status_code == 200
    response = world.post(late, sign_report(report_for(release, nonce), secret), COSE)
    assert response.status_code == 201, response.text
    assert response.json()["summary"]["signed"] == "COSE_Mac0"


def test_the_inventory_holds_capabilities_versions_and_recipient_keys_within_bounds(
        world: World) -> None:
    device = world.register(None, OTHER_CLASS)
    recipient = crypto.generate_recipient_key("ECDH-P256")
    cose_key = base64.b64encode(cbor2.dumps(recipient.public_key().to_cose_key())).decode()
    caps = {1: [[b"\x00"]], 2: [1, 12], 3: [3], 4: [-9]}
    inventory = {"class_id": str(OTHER_CLASS),
                 "components": [{"id": ["00"], "version": [2, 0, 1]}],
                 "capabilities": base64.b64encode(cbor2.dumps(caps)).decode(),
                 "recipient_keys": [cose_key]}
    url = f"/api/v1/devices/{device['id']}"
    response = world.client.put(f"{url}/inventory", json=inventory,
                                headers=auth(device["token"]))
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["components"][0]["version"] == [2, 0, 1]
    assert shown["capabilities"]["commands"] == [1, 12]
    assert shown["recipient_keys"] == [cose_key]
    # the author's way to the key: a file suitkit encrypt --recipient takes
    admin = world.tmp / "admin2.token"
    admin.write_text(ADMIN)
    out = world.tmp / "device.pub"
    done = CliRunner().invoke(cli, ["devices", "recipient-key", device["id"], "--server",
                                    world.url, "--token-file", str(admin), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert crypto.load_recipient_public(out.read_bytes()).to_cose_key() == \
        recipient.public_key().to_cose_key()
    for change, message in [
        ({"capabilities": base64.b64encode(cbor2.dumps({1: [[b"\x00"]]})).decode()},
         "missing commands (2)"),
        ({"capabilities": "A" * 9000}, "over the limit"),
        ({"capabilities": "not base64!"}, "expected base64"),
        ({"recipient_keys": [cose_key] * 9}, "at most 8"),
        ({"recipient_keys": ["AAAA"]}, "recipient_keys[0]: expected base64 of an ECDH-ES"),
        ({"components": [{"id": ["00"], "version": []}]}, "components[0].version"),
        ({"components": [{"id": ["00"], "version": [1] * 17}]}, "components[0].version"),
        ({"components": [{"id": ["00"], "version": [1 << 64]}]}, "components[0].version"),
        ({"components": [{"id": ["00"], "version": ["1"]}]}, "components[0].version"),
    ]:
        response = world.client.put(f"{url}/inventory", json={**inventory, **change},
                                    headers=auth(device["token"]))
        assert response.status_code == 400, (change, response.text)
        assert message in response.json()["error"]
    assert world.client.get(url, headers=auth(ADMIN)).json()["capabilities"]["commands"] == \
        [1, 12]  # nothing of the refused inventories was stored


def test_an_expired_nonce_is_refused_and_records_nothing(tmp_path: Path) -> None:
    """The service's rule with its clock moved on (report §4: the nonce ties the report to a
    fresh update)."""
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    db = open_db(f"sqlite:///{tmp_path / 't.db'}", clock=lambda: now[0])
    try:
        device_id, _ = db.register("d")
        db.set_inventory(device_id, Inventory(None, None, (), {}))
        db.deploy("ab" * 32, "http://x/e", [device_id])
        nonce = bytes.fromhex(db.pending_update(device_id)["nonce"])  # type: ignore[index]
        db.add_event(device_id, "downloading", "", by_device=True)
        now[0] += timedelta(days=31)
        with pytest.raises(NonceRefused, match="expired"):
            db.add_report(device_id, b"r", {}, release="ab" * 32, nonce=nonce,
                          nonce_lifetime=timedelta(days=30))
        assert db.history(device_id)[-1]["kind"] == "event"
        with pytest.raises(NotAssigned):  # NonceRefused is a NotAssigned: 409 at the edge
            db.add_report(device_id, b"r", {}, release="ab" * 32, nonce=b"\x01",
                          nonce_lifetime=None)
        db.add_report(device_id, b"r", {}, release="ab" * 32, nonce=nonce,
                      nonce_lifetime=None)
        # a new deployment issues a new nonce
        db.add_event(device_id, "failed", "", by_device=True)
        db.deploy("ab" * 32, "http://x/e", [device_id])
        assert bytes.fromhex(db.pending_update(device_id)["nonce"]) != nonce  # type: ignore[index]
    finally:
        db.engine.dispose()
