"""suitkit's own agent over hawkBit DDI (``run_once(..., protocol="ddi")``, ``suitkit device run
--protocol ddi``) against the tracker's DDI edge, over real HTTP: it polls the base resource,
takes the ``*.suit`` artifact of the deployment as the envelope, verifies and installs it with
the consumer, sends its SUIT report (JSON API) and closes the action with success or with the
report's reason. Unlike a legacy client, the tracker then knows it checked the signatures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from device.device_kit import Author, boot, confirm, image_bytes, install, new_device
from suitkit.cli.main import app as cli
from suitkit.core import crypto
from suitkit.device.agent import AgentOptions, run_once
from suitkit.device.fetch import HttpFetcher
from suitkit.device.wiring import open_device
from suitkit.tracker.edges.ddi import UNREPORTED
from tracker.ddi_kit import DdiWorld, Device, admin, ddi_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DdiWorld]:
    with ddi_world(tmp_path_factory.mktemp("ddi-agent")) as w:
        yield w


def device_folder(world: DdiWorld, anchors: list[Path] | None = None) -> tuple[Path, Device]:
    """A registered mcu device running (confirmed) release 1."""
    folder = new_device(world.tmp / f"dev-{len(list(world.tmp.glob('dev-*')))}",
                        anchors or [world.author.anchor])
    envelope, _ = world.author.release(1, "base")
    assert install(folder, envelope).installed
    boot(folder)
    confirm(folder)
    return folder, world.register("agent")


def release(world: DdiWorld, sequence: int, *, serve: bytes | None = None) -> dict[str, Any]:
    """A release whose detached image is ``/firmware/<sha256>`` of ``serve`` (default: its own
    image, uploaded with it)."""
    image = image_bytes(f"app-{sequence}-", 2000)
    served = serve if serve is not None else image
    uri = f"{world.url}/firmware/{hashlib.sha256(served).hexdigest()}"
    envelope, _ = world.author.release(sequence, uri=uri)
    files = [("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))]
    if serve is None:
        files.append(("image", ("app.bin", image, "application/octet-stream")))
    response = world.client.post("/api/v1/releases", files=files,
                                 headers={"Authorization": "Bearer admin-token-for-ddi-tests"})
    assert response.status_code == 201, response.text
    return dict(response.json())


def running(folder: Path) -> int:
    (check,) = open_device(folder).bootloader.observe().primary  # type: ignore[attr-defined]
    return int(check.info.sequence_number)


def test_the_agent_over_ddi_verifies_installs_and_closes_the_action(world: DdiWorld) -> None:
    folder, device = device_folder(world)
    wanted = release(world, 2)
    world.deploy(wanted, device)
    result = run_once(folder, world.url, device.token, fetcher=HttpFetcher(), protocol="ddi")
    assert result.outcome == "succeeded", result.steps
    assert result.release == wanted["id"]
    assert running(folder) == 2
    history = world.history(device.id)
    assert world.states(device.id) == ["notified", "downloading", "downloaded", "installing",
                                       "rebooting", "succeeded"]
    (report,) = [h for h in history if h["kind"] == "report"]
    assert report["summary"]["succeeded"] is True
    assert not history[-1]["detail"].startswith(UNREPORTED)  # it checked the signatures
    assert "ddi closed success" in history[-1]["detail"]
    # nothing pending: the next run is up to date and changes nothing
    again = run_once(folder, world.url, device.token, fetcher=HttpFetcher(), protocol="ddi")
    assert again.outcome == "up-to-date"
    assert len(world.history(device.id)) == len(history)


def test_the_agent_over_ddi_refuses_a_release_it_cannot_verify(world: DdiWorld,
                                                                tmp_path: Path) -> None:
    stranger = Author.create(tmp_path / "stranger")
    folder, device = device_folder(world, [world.author.anchor])
    # the device trusts the author; a release whose image does not match its digest
    good = release(world, 5)
    bad = release(world, 6, serve=image_bytes("app-5-", 2000))
    world.deploy(bad, device)
    result = run_once(folder, world.url, device.token, fetcher=HttpFetcher(), protocol="ddi")
    assert result.outcome == "failed" and not result.ok
    assert running(folder) == 1
    history = world.history(device.id)
    assert world.states(device.id)[-1] == "failed"
    (report,) = [h for h in history if h["kind"] == "report"]
    assert report["summary"]["succeeded"] is False
    assert "ddi closed failure" in history[-1]["detail"]
    assert result.reason in history[-1]["detail"] and "digest" in result.reason.lower()
    # a device that trusts another key refuses the next one before anything is installed
    other, device2 = device_folder(world, [stranger.anchor, world.author.anchor])
    world.deploy(good, device2)
    assert run_once(other, world.url, device2.token, fetcher=HttpFetcher(),
                    protocol="ddi").outcome == "succeeded"


def test_device_run_protocol_ddi_once(world: DdiWorld, tmp_path: Path) -> None:
    folder, device = device_folder(world)
    world.deploy(release(world, 3), device)
    credential = tmp_path / "credential"
    credential.write_text(device.token)
    outcome = CliRunner().invoke(cli, ["device", "run", str(folder), "--server", world.url,
                                       "--credential-file", str(credential), "--once",
                                       "--protocol", "ddi"])
    assert outcome.exit_code == 0, outcome.output
    assert "succeeded" in outcome.output
    assert running(folder) == 3
    refused = CliRunner().invoke(cli, ["device", "run", str(folder), "--server", world.url,
                                       "--credential-file", str(credential), "--once",
                                       "--protocol", "ddi", "--mode", "push"])
    assert refused.exit_code == 2 and "poll mode" in refused.output


def test_agent_options_refuse_an_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="protocol must be one of suitkit, ddi"):
        AgentOptions(protocol="lwm2m-typo").check()


def test_the_agent_over_ddi_signs_its_report_with_the_nonce_from_the_deployment(
        world: DdiWorld) -> None:
    """A device with a report key (report §8) signs its report over DDI too: the nonce of its
    update comes as the chunk's ``suit-nonce`` metadata, and the tracker takes the report."""
    folder, device = device_folder(world)
    public = open_device(folder).config.ensure_report_key()
    registered = world.client.put(
        f"/api/v1/devices/{device.id}/report-key", headers=admin(),
        json={"report_key": crypto.public_key_to_pem(public).decode()})
    assert registered.status_code == 200, registered.text
    world.deploy(release(world, 7), device)
    result = run_once(folder, world.url, device.token, fetcher=HttpFetcher(), protocol="ddi")
    assert result.outcome == "succeeded", result.steps
    (report,) = [h for h in world.history(device.id) if h["kind"] == "report"]
    assert report["summary"]["signed"] == "COSE_Sign1"
    assert report["summary"]["nonce_checked"] is True
