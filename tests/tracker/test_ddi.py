"""The hawkBit DDI controller API (``tracker.edges.ddi``) over real HTTP, as a DDI client sees
it: base poll, deploymentBase with the SUIT envelope and the images as artifacts (sizes,
SHA-256/SHA-1/MD5, download links to the firmware server, Range, MD5SUM), feedback onto the
tracker's state machine and history, configData into the inventory, installedBase, the
action types of the tracker's modes. Attacks on it: tests/security/test_ddi_attacks.py; a
real client (SWUpdate): tests/e2e/test_swupdate_ddi.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from device.device_kit import image_bytes
from suitkit.tracker.campaigns import CampaignEngine, CampaignSpec
from suitkit.tracker.edges.ddi import UNREPORTED, _cancelled_id, _types, action_id
from suitkit.tracker.service import AssignmentView, UpdateView, open_db
from tracker.ddi_kit import DdiWorld, admin, ddi_world, feedback


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DdiWorld]:
    with ddi_world(tmp_path_factory.mktemp("ddi")) as w:
        yield w


def test_base_poll_gives_the_polling_sleep_and_config_data_link(world: DdiWorld) -> None:
    device = world.register()
    doc = world.poll(device)
    assert doc["config"]["polling"]["sleep"] == "00:00:01"
    assert set(doc["_links"]) == {"configData"}
    assert doc["_links"]["configData"]["href"].endswith(
        f"/DEFAULT/controller/v1/{device.id}/configData")


def test_the_tenant_is_case_insensitive_and_another_tenant_is_unknown(world: DdiWorld) -> None:
    device = world.register()
    assert world.client.get(world.base(device.id, "default"),
                            headers=device.headers).status_code == 200
    other = world.client.get(world.base(device.id, "ACME"), headers=device.headers)
    assert other.status_code == 404 and "tenant" in other.json()["error"]


def test_deployment_lists_the_envelope_and_images_with_sizes_hashes_and_links(
        world: DdiWorld) -> None:
    image = image_bytes("ddi-listing", 5000)
    release = world.release_with("firmware.swu", image)
    device = world.register()
    world.deploy(release, device)
    links = world.poll(device)["_links"]
    assert "deploymentBase" in links
    number = world.action(device)
    doc = world.client.get(links["deploymentBase"]["href"], headers=device.headers).json()
    assert doc["id"] == str(number)
    deployment = doc["deployment"]
    assert deployment["download"] == deployment["update"] == "attempt"  # a direct deployment
    (chunk,) = deployment["chunks"]
    assert chunk["part"] == "os" and chunk["version"] == str(world.releases)
    envelope, firmware = chunk["artifacts"]
    assert envelope["filename"] == f"{release['id'][:16]}.suit"
    assert firmware["filename"] == "firmware.swu"
    assert firmware["size"] == len(image)
    assert firmware["hashes"] == {"sha256": hashlib.sha256(image).hexdigest(),
                                  "sha1": hashlib.sha1(image).hexdigest(),
                                  "md5": hashlib.md5(image).hexdigest()}
    got = world.client.get(firmware["_links"]["download-http"]["href"])
    assert got.content == image
    part = world.client.get(firmware["_links"]["download-http"]["href"],
                            headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == image[10:20]
    whole = world.client.get(envelope["_links"]["download-http"]["href"]).content
    assert len(whole) == envelope["size"]
    assert hashlib.sha256(whole).hexdigest() == envelope["hashes"]["sha256"] \
        == release["envelope"]["sha256"]
    md5 = world.client.get(firmware["_links"]["md5sum-http"]["href"], headers=device.headers)
    assert md5.status_code == 200
    assert md5.text == f"{hashlib.md5(image).hexdigest()}  firmware.swu\n"


def test_feedback_walks_the_state_machine_and_marks_an_unverified_success(
        world: DdiWorld) -> None:
    release = world.release()
    device = world.register()
    world.deploy(release, device)
    number = world.action(device)
    url = f"{world.base(device.id)}/deploymentBase/{number}/feedback"
    for body in (feedback(number, "proceeding", details=["Installing Update Chunk"]),
                 feedback(number, "proceeding", progress={"cnt": 1, "of": 2})):
        response = world.client.post(url, json=body, headers=device.headers)
        assert response.status_code == 200, response.text
    assert world.device(device.id)["state"] == "downloading"
    done = world.client.post(url, json=feedback(number, "closed", "success",
                                                ["Update Installed."]), headers=device.headers)
    assert done.status_code == 200, done.text
    assert world.states(device.id) == ["notified", "downloading", "downloaded", "installing",
                                       "rebooting", "succeeded"]
    last = world.history(device.id)[-1]
    assert last["detail"].startswith(UNREPORTED) and "Update Installed." in last["detail"]
    # nothing more to do: no deployment link; the finished action is the installed base
    links = world.poll(device)["_links"]
    assert "deploymentBase" not in links
    assert links["installedBase"]["href"].endswith(f"/installedBase/{number}")
    installed = world.client.get(links["installedBase"]["href"], headers=device.headers)
    assert installed.status_code == 200 and installed.json()["id"] == str(number)
    # a repeated closed message changes nothing
    again = world.client.post(url, json=feedback(number, "closed", "success"),
                              headers=device.headers)
    assert again.status_code == 200
    assert len(world.states(device.id)) == 6


def test_a_closed_failure_fails_the_device_with_the_client_s_message(world: DdiWorld) -> None:
    release = world.release()
    device = world.register()
    world.deploy(release, device)
    number = world.action(device)
    url = f"{world.base(device.id)}/deploymentBase/{number}/feedback"
    response = world.client.post(url, json=feedback(
        number, "closed", "failure", ["ERROR : HASH mismatch : payload.bin"]),
        headers=device.headers)
    assert response.status_code == 200, response.text
    assert world.states(device.id) == ["notified", "failed"]
    assert "HASH mismatch" in world.history(device.id)[-1]["detail"]


def test_downloaded_feedback_and_scheduled_change_what_they_say(world: DdiWorld) -> None:
    release = world.release()
    device = world.register()
    world.deploy(release, device)
    number = world.action(device)
    url = f"{world.base(device.id)}/deploymentBase/{number}/feedback"
    assert world.client.post(url, json=feedback(number, "scheduled"),
                             headers=device.headers).status_code == 200
    assert world.states(device.id) == ["notified"]
    assert world.client.post(url, json=feedback(number, "downloaded"),
                             headers=device.headers).status_code == 200
    assert world.states(device.id) == ["notified", "downloading", "downloaded"]


def test_config_data_becomes_the_inventory_s_hardware_facts(world: DdiWorld) -> None:
    device = world.register()
    url = f"{world.base(device.id)}/configData"
    body = {"id": "", "time": "20261206T094000", "status": {
        "result": {"finished": "success"}, "execution": "closed", "details": [""]},
        "data": {"hwRevision": "1.0", "board": "test"}}
    response = world.client.put(url, json=body, headers=device.headers)
    assert response.status_code == 200, response.text
    assert world.device(device.id)["hardware"] == {"hwRevision": "1.0", "board": "test"}
    merged = world.client.put(url, json={"data": {"serial": "42"}, "mode": "merge"},
                              headers=device.headers)
    assert merged.status_code == 200
    assert world.device(device.id)["hardware"] == {"hwRevision": "1.0", "board": "test",
                                                   "serial": "42"}


def test_the_secret_alone_is_a_target_token_for_its_controller(world: DdiWorld) -> None:
    device = world.register()
    secret = device.token.partition(".")[2]
    response = world.client.get(world.base(device.id),
                                headers={"Authorization": f"TargetToken {secret}"})
    assert response.status_code == 200


def test_action_types_follow_the_mode() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def view(action: str, campaign: str | None, window: str | None = None) -> AssignmentView:
        return AssignmentView("ab" * 32, "http://x/e", action, created, True, False, False,
                              campaign, "install-now" if campaign else None, window)

    assert _types(view("install", None), now) == {"download": "attempt", "update": "attempt"}
    assert _types(view("install", "c"), now) == {"download": "forced", "update": "forced"}
    assert _types(view("download", "c"), now) == {"download": "forced", "update": "skip"}
    assert _types(view("install", "c", "11:00-13:00"), now)["maintenanceWindow"] == "available"
    assert _types(view("install", "c", "13:00-14:00"), now)["maintenanceWindow"] \
        == "unavailable"


def test_a_withdrawn_action_is_offered_as_cancelled() -> None:
    created = datetime(2026, 1, 1)
    gone = UpdateView("notified", created, None)
    assert _cancelled_id("dev", gone) == action_id("dev", created)
    pending = UpdateView("notified", created, AssignmentView(
        "ab" * 32, "u", "install", created, True, False, False, None, None, None))
    assert _cancelled_id("dev", pending) is None
    assert _cancelled_id("dev", UpdateView("failed", created, None)) is None


def test_action_ids_are_31_bit_and_differ_per_assignment() -> None:
    first = action_id("dev", datetime(2026, 1, 1))
    second = action_id("dev", datetime(2026, 1, 1, 0, 0, 1))
    assert first != second
    assert all(0 < n < 2**31 for n in (first, second))


def test_the_artifacts_of_an_unknown_release_are_none(tmp_path: Path) -> None:
    from suitkit.cli.notices import release_artifacts

    lookup = release_artifacts(tmp_path / "data")
    assert lookup("00" * 32) is None
    assert lookup("not a release") is None


def test_a_campaign_s_action_is_forced_and_its_cancellation_is_offered_and_acknowledged(
        world: DdiWorld) -> None:
    db = open_db(f"sqlite:///{world.tmp / 'tracker.db'}")
    try:
        engine = CampaignEngine(db)
        release = world.release()
        device, other = world.register(), world.register()
        url = world.url + release["envelope"]["url"]
        made = engine.create(CampaignSpec("ddi", release["id"], url, devices=(device.id,)),
                             "alice")
        engine.approve(made["id"], "bob")
        engine.start(made["id"], "alice")
        engine.tick()
        number = world.action(device)
        link = world.poll(device)["_links"]["deploymentBase"]["href"]
        deployment = world.client.get(link, headers=device.headers).json()["deployment"]
        assert deployment["download"] == deployment["update"] == "forced"
        # withdrawn before the device started: offered as cancelAction with the same id
        engine.cancel(made["id"], "alice")
        links = world.poll(device)["_links"]
        assert "deploymentBase" not in links
        assert links["cancelAction"]["href"].endswith(f"/cancelAction/{number}")
        got = world.client.get(links["cancelAction"]["href"], headers=device.headers)
        assert got.status_code == 200
        assert got.json() == {"id": str(number), "cancelAction": {"stopId": str(number)}}
        # another device cannot acknowledge it; the device itself can, once
        url_feedback = f"{world.base(device.id)}/cancelAction/{number}/feedback"
        body = feedback(number, "closed", "success", ["cancellation acknowledged."])
        assert world.client.post(url_feedback, json=body,
                                 headers=other.headers).status_code == 403
        done = world.client.post(url_feedback, json=body, headers=device.headers)
        assert done.status_code == 200, done.text
        assert world.states(device.id) == ["notified", "failed"]
        assert "cancelled" in world.history(device.id)[-1]["detail"]
        assert "cancelAction" not in world.poll(device)["_links"]
        again = world.client.post(url_feedback, json=body, headers=device.headers)
        assert again.status_code == 409
    finally:
        db.engine.dispose()


def test_a_download_only_campaign_skips_the_update_and_closed_means_downloaded(
        world: DdiWorld) -> None:
    db = open_db(f"sqlite:///{world.tmp / 'tracker.db'}")
    try:
        engine = CampaignEngine(db)
        release = world.release()
        device = world.register()
        made = engine.create(CampaignSpec("ddi-dl", release["id"],
                                          world.url + release["envelope"]["url"],
                                          devices=(device.id,), mode="download-only"), "alice")
        engine.approve(made["id"], "bob")
        engine.start(made["id"], "alice")
        engine.tick()
        number = world.action(device)
        link = world.poll(device)["_links"]["deploymentBase"]["href"]
        deployment = world.client.get(link, headers=device.headers).json()["deployment"]
        assert (deployment["download"], deployment["update"]) == ("forced", "skip")
        url = f"{world.base(device.id)}/deploymentBase/{number}/feedback"
        response = world.client.post(url, json=feedback(number, "closed", "success",
                                                        ["Skipped Update."]),
                                     headers=device.headers)
        assert response.status_code == 200, response.text
        assert world.states(device.id) == ["notified", "downloading", "downloaded"]
        assert "deploymentBase" not in world.poll(device)["_links"]
    finally:
        db.engine.dispose()


def test_suitkit_serve_mounts_the_ddi_edge_by_default_and_no_ddi_turns_it_off(
        tmp_path: Path) -> None:
    from device.device_kit import Author
    from serve_kit import serving

    author = Author.create(tmp_path / "author")
    token = tmp_path / "admin.token"
    token.write_text("admin-token-for-serve-ddi")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(token)]
    with serving([*argv, "--ddi-tenant", "acme", "--ddi-poll-seconds", "5"]) as server:
        admin = {"Authorization": "Bearer admin-token-for-serve-ddi"}
        made = httpx.post(f"{server.url}/api/v1/devices", json={"name": "d"}, headers=admin,
                          timeout=20).json()
        poll = httpx.get(f"{server.url}/acme/controller/v1/{made['id']}", timeout=20,
                         headers={"Authorization": f"TargetToken {made['token']}"})
        assert poll.status_code == 200, poll.text
        assert poll.json()["config"]["polling"]["sleep"] == "00:00:05"
        other = httpx.get(f"{server.url}/DEFAULT/controller/v1/{made['id']}", timeout=20,
                          headers={"Authorization": f"TargetToken {made['token']}"})
        assert other.status_code == 404 and "tenant" in other.json()["error"]
    with serving([*argv, "--no-ddi"]) as server:
        off = httpx.get(f"{server.url}/DEFAULT/controller/v1/x", timeout=20)
        assert off.status_code == 404 and "TargetToken" not in off.text


def test_every_artifact_s_md5sum_link_answers_even_for_a_long_image_name(
        world: DdiWorld) -> None:
    release = world.release_with("a" * 60 + ".bin", image_bytes("ddi-long-name", 100))
    device = world.register()
    world.deploy(release, device)
    link = world.poll(device)["_links"]["deploymentBase"]["href"]
    chunk = world.client.get(link, headers=device.headers).json()["deployment"]["chunks"][0]
    names = [a["filename"] for a in chunk["artifacts"]]
    assert names[1] == "component-0.bin"  # not a name a path segment can carry
    for artifact in chunk["artifacts"]:
        md5 = world.client.get(artifact["_links"]["md5sum-http"]["href"],
                               headers=device.headers)
        assert md5.status_code == 200, md5.text
        assert md5.text == f"{artifact['hashes']['md5']}  {artifact['filename']}\n"


def test_a_release_with_a_version_is_the_chunk_s_version(world: DdiWorld) -> None:
    """hawkBit's software module version is the release's version (issue #17) when it has
    one (the sequence number otherwise, above)."""
    world.releases += 1
    image = image_bytes("ddi-version", 800)
    envelope = world.author.envelope(world.releases,
                                     [world.author.component("versioned.bin", image)])
    uploaded = world.client.post("/api/v1/releases", headers=admin(), data={"version": "4.2.0"},
                                 files=[("envelope", ("e.suit", envelope,
                                                      "application/suit-envelope+cose"))])
    assert uploaded.status_code == 201, uploaded.text
    device = world.register()
    world.deploy(uploaded.json(), device)
    links = world.poll(device)["_links"]
    doc = world.client.get(links["deploymentBase"]["href"], headers=device.headers).json()
    assert doc["deployment"]["chunks"][0]["version"] == "4.2.0"
