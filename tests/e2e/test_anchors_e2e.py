"""A leaked author key, revoked fleet-wide by a campaign (issue #16; docs/keys.md), with real
device agents and a real ``suitkit serve`` (a child process on loopback).

The fleet's devices trust a root key and the author key that signed what they run. The author
key leaks: a rotation (anchors version 1: the leaked key replaced by a new one and revoked),
signed by the root key, goes out as a campaign like any release; the tracker then shows anchor
version 1 for every device. The attacker's release, signed by the leaked key, reaches the
firmware server (which still knows that key) and a campaign: every device refuses it, naming
the revocation, and keeps running what it ran. The fleet is then updated with the new key. A
device that was offline for both rotations takes the second one (which carries the first) and
catches up in order, 0 -> 1 -> 2, still booting the release the revoked key signed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from device.device_kit import CLASS, VENDOR, Author, boot, confirm, image_bytes, install
from e2e.test_modes import FINAL, running
from serve_kit import serving
from suitkit.author.anchors import Edits, initial_document, next_document, rotation_envelope
from suitkit.core import codec
from suitkit.core.anchors import AnchorsDocument
from suitkit.core.sign import sign_envelope
from suitkit.device.agent import AgentResult, run_once
from suitkit.device.config import create_device
from suitkit.device.fetch import HttpFetcher
from suitkit.device.wiring import open_device
from tracker.test_campaign_api import ADMIN, World, auth

UPLOAD = "upload-token-anchors-e2e-0123456789"
WAIT = 90.0
"""Bound of each wait for an agent's final outcome or a campaign's counts (a busy machine)."""


def rotation(document: AnchorsDocument, root: Author, chain: tuple[bytes, ...] = ()) -> bytes:
    envelope = rotation_envelope(document, vendor_id=VENDOR, class_id=CLASS, chain=chain)
    return codec.encode_envelope(sign_envelope(envelope, root.key.signer()))


def upload(client: httpx.Client, envelope: bytes) -> dict[str, Any]:
    done = client.post("/api/v1/releases", headers=auth(UPLOAD), files=[
        ("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))])
    assert done.status_code in (200, 201), done.text
    return dict(done.json())


def campaign(world: World, name: str, rel: dict[str, Any], tags: list[str],
             **kw: Any) -> str:
    doc = world.started({"name": name, "release": rel["id"], "target": {"tags": tags},
                         "envelope_url": world.url + rel["envelope"]["url"], **kw})
    return str(doc["id"])


def settle(world: World, devices: dict[str, dict[str, Any]], folders: dict[str, Path],
           names: list[str]) -> dict[str, AgentResult]:
    """One agent run per device until each reaches a final outcome (the campaign's ticker
    assigns within a second or so)."""
    results: dict[str, AgentResult] = {}
    deadline = time.monotonic() + WAIT
    while len(results) < len(names):
        for name in names:
            if name in results:
                continue
            got = run_once(folders[name], world.url, devices[name]["token"],
                           fetcher=HttpFetcher(timeout=10))
            if got.outcome in FINAL:
                results[name] = got
        assert time.monotonic() < deadline, f"no final outcome for all of {names}: {results}"
        time.sleep(0.2)
    return results


def anchors_shown(world: World, device_id: str) -> Any:
    got = world.client.get(f"/api/v1/devices/{device_id}", headers=auth(ADMIN))
    assert got.status_code == 200, got.text
    return got.json()["anchors"]


def test_leaked_key_revoked_fleet_wide_then_fleet_updated(tmp_path: Path) -> None:
    root = Author.create(tmp_path / "root", name="root")
    leaked = Author.create(tmp_path / "leaked", name="leaked")
    fresh = Author.create(tmp_path / "fresh", name="fresh")
    spare = Author.create(tmp_path / "spare", name="spare")
    (tmp_path / "admin").write_text(ADMIN)
    (tmp_path / "upload").write_text(UPLOAD)

    folders: dict[str, Path] = {}
    for name in ("a", "b", "late"):
        folder = tmp_path / name
        create_device(folder, vendor_id=VENDOR, class_id=CLASS,
                      trust_anchors=[("root", root.anchor), ("author", leaked.anchor)])
        open_device(folder).save()
        base = leaked.envelope(1, [leaked.component(f"{name}.bin", image_bytes(name, 1500))])
        assert install(folder, base).installed
        boot(folder)
        confirm(folder)
        folders[name] = folder

    v0 = initial_document([("root", root.key.public_key()),
                           ("author", leaked.key.public_key())])
    v1 = next_document(v0, Edits(replace=[(leaked.key.public_key(), fresh.key.public_key())]))
    r1 = rotation(v1, root)
    v2 = next_document(v1, Edits(add=[("root", spare.key.public_key())]))
    r2 = rotation(v2, root, chain=(r1,))

    argv = ["--data", str(tmp_path / "data"), "--admin-token-file", str(tmp_path / "admin"),
            "--upload-token-file", str(tmp_path / "upload"),
            "--author-anchor", str(leaked.anchor), "--author-anchor", str(root.anchor),
            "--author-anchor", str(fresh.anchor)]
    with serving(argv) as served, httpx.Client(base_url=served.url, timeout=30) as client:
        world = World(served.url, client, leaked, tmp_path, {})
        world.token("alice", "operator")
        world.token("bob", "operator")
        devices = {name: world.register(["late", "all"] if name == "late" else ["fleet", "all"])
                   for name in folders}
        fleet = ["a", "b"]

        # 1. the rotation, as a campaign like any release
        cid = campaign(world, "revoke the leaked key", upload(client, r1), ["fleet"])
        results = settle(world, devices, folders, fleet)
        assert all(r.outcome == "succeeded" for r in results.values()), results
        assert all("trust anchors updated to version 1" in " ".join(r.steps)
                   for r in results.values()), results
        world.until(cid, lambda d: d["counts"] == {"succeeded": 2}, timeout=WAIT)
        for name in fleet:
            shown = anchors_shown(world, devices[name]["id"])
            assert shown == {"version": 1, "digest": v1.digest().hex()}, shown
            assert running(folders[name]) == (1, True)  # the revoked key's release still runs
        assert anchors_shown(world, devices["late"]["id"]) is None  # never checked in yet

        # 2. the attacker's release, signed by the leaked key: refused by every device
        attack = upload(client, leaked.envelope(7, [leaked.component(
            "attack.bin", image_bytes("attack", 1800))]))
        # (the failure threshold is off, so that the campaign reaches every device)
        cid = campaign(world, "attack", attack, ["fleet"], failure_threshold=1.0)
        results = settle(world, devices, folders, fleet)
        for name, result in results.items():
            assert result.outcome == "failed", result
            assert "signed by a revoked key" in result.reason, result.reason
            assert running(folders[name]) == (1, True)
        world.until(cid, lambda d: d["counts"] == {"failed": 2}, timeout=WAIT)

        # 3. the fleet updated with the new key
        good = upload(client, fresh.envelope(2, [fresh.component(
            "good.bin", image_bytes("good", 1700))]))
        cid = campaign(world, "good", good, ["fleet"])
        results = settle(world, devices, folders, fleet)
        assert all(r.outcome == "succeeded" for r in results.values()), results
        for name in fleet:
            assert running(folders[name]) == (2, True)

        # 4. the second rotation (carrying the first) to the whole fleet, the late device
        # included: it catches up 0 -> 1 -> 2, the others go 1 -> 2
        cid = campaign(world, "second rotation", upload(client, r2), ["all"])
        results = settle(world, devices, folders, [*fleet, "late"])
        assert all(r.outcome == "succeeded" for r in results.values()), results
        assert "version 2 (after version 1)" in " ".join(results["late"].steps)
        for name in folders:
            assert anchors_shown(world, devices[name]["id"]) == {
                "version": 2, "digest": v2.digest().hex()}
        assert running(folders["late"]) == (1, True)
        # and the late device refuses the attacker's release too
        assert not install(folders["late"], leaked.envelope(8, [leaked.component(
            "attack2.bin", image_bytes("attack2", 900))])).installed
