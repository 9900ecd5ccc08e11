"""A campaign that sends each device the delta that matches what it runs (docs/delta.md).

One uvicorn server serves the firmware server and the status tracker the way ``suitkit serve
--admin-token-file`` wires them (as tests/e2e/test_campaigns_e2e.py). Two MCU devices with real
agents run different images: ``a`` the release the delta was made from, ``b`` another one. The
campaign names the full release and, for the precursor ``a`` runs, an SKD1 delta release; the
tracker reads each device's inventory (the digests its agent reported) and assigns ``a`` the
delta and ``b`` the full image; both end up running the same new image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import VENDOR, Author, boot, confirm, image_bytes, install, new_device
from e2e.test_modes import running
from suitkit.cli.notices import tracker_routes
from suitkit.core.verify import TrustAnchors
from suitkit.device.agent import run_once
from suitkit.device.fetch import HttpFetcher
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from tracker.test_campaign_api import ADMIN, World, auth


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    author = Author.create(tmp_path / "author")
    data = tmp_path / "data"
    data.mkdir()
    wiring = tracker_routes(TrackerConfig(f"sqlite:///{data / 'tracker.db'}", ADMIN),
                            heartbeat=0.5)
    config = ServerConfig(data_dir=data, anchors=TrustAnchors.of(author.key.public_key()),
                          routers=wiring.routers, authorizer=wiring.authorizer)
    with running_server(config) as url, httpx.Client(base_url=url, timeout=30) as client:
        try:
            w = World(url, client, author, tmp_path, {})
            w.token("alice", "operator")
            w.token("bob", "operator")
            w.token("ann", "author")
            yield w
        finally:
            wiring.close()


def upload(world: World, envelope: bytes) -> dict[str, Any]:
    done = world.client.post("/api/v1/releases", headers=auth(world.tokens["ann"]), files=[
        ("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))])
    assert done.status_code in (200, 201), done.text
    return dict(done.json())


def device(world: World, name: str, base: bytes) -> tuple[Path, str, str]:
    """A device folder running (confirmed) ``base`` as release 1, registered with the
    tracker; (folder, tracker id, token)."""
    folder = world.tmp / name
    new_device(folder, [world.author.anchor])
    assert install(folder, world.author.envelope(
        1, [world.author.component(f"{name}-base.bin", base)])).installed
    boot(folder)
    confirm(folder)
    doc = world.register()
    return folder, doc["id"], doc["token"]


def test_a_campaign_sends_the_delta_to_the_device_on_its_precursor_and_the_full_image_to_the_other(
        world: World) -> None:
    base_a = image_bytes("precursor a", 40_000)
    base_b = image_bytes("precursor b", 40_000)
    new = base_a[:10_000] + b"the new feature" + base_a[10_000:30_000] \
        + image_bytes("lib", 500) + base_a[30_500:]
    author = world.author
    # the server stores the precursor (release 1 of a), so it can check the delta on upload
    upload(world, author.envelope(1, [author.component("a-base.bin", base_a)]))
    full = upload(world, author.envelope(2, [author.component("v2.bin", new)]))
    (author.folder / "a-base.bin").write_bytes(base_a)
    delta_component = author.component("v2-delta.bin", new)
    delta_component.update({"delta-from": "a-base.bin", "compress": "best"})
    delta_envelope = author.envelope(2, [delta_component])
    delta = upload(world, delta_envelope)
    assert delta["id"] != full["id"]
    assert len(delta_envelope) < len(new) // 4  # the patch travels, not the image

    a_folder, a_id, a_token = device(world, "a", base_a)
    b_folder, b_id, b_token = device(world, "b", base_b)
    for folder, token in ((a_folder, a_token), (b_folder, b_token)):
        # first contact: the agent reports its inventory (what the tracker chooses by)
        assert run_once(folder, world.url, token, fetcher=HttpFetcher(timeout=10)).outcome \
            == "up-to-date"

    precursor = hashlib.sha256(base_a).hexdigest()
    doc = world.started({"name": "delta", "release": full["id"],
                         "envelope_url": world.url + full["envelope"]["url"],
                         "target": {"devices": [a_id, b_id]},
                         "deltas": [{"precursor": precursor, "release": delta["id"],
                                     "envelope_url": world.url + delta["envelope"]["url"]}]})
    assert doc["status"] == "running"
    assert doc["deltas"] == [{"precursor": precursor, "release": delta["id"],
                              "envelope_url": world.url + delta["envelope"]["url"]}]

    got_a = run_once(a_folder, world.url, a_token, fetcher=HttpFetcher(timeout=10))
    got_b = run_once(b_folder, world.url, b_token, fetcher=HttpFetcher(timeout=10))
    assert (got_a.outcome, got_a.release) == ("succeeded", delta["id"]), got_a.steps
    assert (got_b.outcome, got_b.release) == ("succeeded", full["id"]), got_b.steps
    digest = hashlib.sha256(new).hexdigest()
    for folder in (a_folder, b_folder):
        assert running(folder) == (2, True)
        shown = world.client.get(f"/api/v1/devices/{a_id if folder == a_folder else b_id}",
                                 headers=auth(ADMIN)).json()
        assert shown["components"][0]["digest"] == digest
    done = world.until(doc["id"], lambda d: d["status"] == "completed")
    assert done["counts"] == {"succeeded": 2}


def test_deltas_are_checked_when_the_campaign_is_created(world: World) -> None:
    full = upload(world, world.author.envelope(2, [world.author.component(
        "v2.bin", image_bytes("v2", 3000))]))
    body = {"name": "bad", "release": full["id"], "target": {"vendor_id": str(VENDOR)},
            "envelope_url": world.url + full["envelope"]["url"]}
    cases = [
        ({"deltas": [{"precursor": "00" * 32, "release": "ab" * 32}]}, 400,
         "envelope_url: expected the URL"),
        ({"deltas": [{"precursor": "00" * 31, "release": "ab" * 32, "envelope_url": "http://x/e"}]},
         400, "deltas[0].precursor: expected the SHA-256 of an image"),
        ({"deltas": [{"precursor": "00" * 32, "release": full["id"],
                      "envelope_url": "http://x/e"}]}, 400, "another release than the campaign"),
        ({"deltas": [{"precursor": "00" * 32}]}, 400, "deltas[0].release: expected a string"),
        ({"deltas": [{"precursor": "zz", "release": "ab" * 32}]}, 400,
         "deltas[0].precursor: expected hexadecimal bytes"),
        ({"deltas": "x"}, 400, "deltas: expected a list"),
        ({"deltas": [{"precursor": "00" * 32, "release": full["id"], "x": 1}]}, 400, "x"),
    ]
    for extra, status, text in cases:
        made = world.post("", "alice", {**body, **extra})
        assert made.status_code == status, (extra, made.text)
        assert text in made.text, (extra, made.text)
