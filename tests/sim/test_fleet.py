"""``suitkit sim fleet``: many light devices in one process against a running server, in every
kind of waiting at once (poll, push over SSE, push over long-poll, hybrid); every device is
updated, the tracker has each one's events and SUIT report, and the figures are reported."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from suitkit.cli.main import app as cli
from suitkit.sim.control import Console
from suitkit.sim.firmware import make_keys
from suitkit.sim.fleet import SHAPES, DevicePlan
from suitkit.sim.load import anchors_of, cpu_seconds, light_devices
from suitkit.sim.local import local_server
from suitkit.sim.scenario import build_releases
from suitkit.sim.swarm import Swarm, _new_release, interleave, parse_mix

PER_KIND = 8
KINDS = ("poll", "sse", "longpoll", "hybrid")
N = PER_KIND * len(KINDS)
IMAGES = {"mcu": 1, "secure-split": 2, "dual-cpu": 2, "linux": 1}


def test_a_mixed_fleet_is_updated_against_a_running_server(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    out = tmp_path / "fleet.json"
    with local_server(tmp_path / "server", keys.author_pub, start_timeout=60) as server:
        started = time.monotonic()
        result = CliRunner().invoke(cli, [
            "sim", "fleet", "--devices", str(N), "--mix", "poll=1,sse=1,longpoll=1,hybrid=1",
            "--server", server.url, "--server-pid", str(server.pid),
            "--admin-token-file", str(tmp_path / "server" / "admin.token"),
            "--upload-token-file", str(tmp_path / "server" / "upload.token"),
            "--author-key", str(keys.author_key), "--dir", str(tmp_path / "fleet"),
            "--poll-interval", "0.5", "--concurrency", "8", "--timeout", "120",
            "--json", str(out), "--no-live"])
        elapsed = time.monotonic() - started
        with Console(server.url, server.admin_token) as console:
            devices = console.devices()
            histories = {d["id"]: console.history(d["id"]) for d in devices}
    assert result.exit_code == 0, result.output
    assert elapsed < 150, f"a fleet of {N} took {elapsed:.0f} s"
    assert f"updated {N}" in result.output and "CPU during the update: server" in result.output
    figures = json.loads(out.read_text())
    assert figures["ok"] is True and figures["outcomes"] == {"updated": N}
    assert figures["by_kind"] == {kind: {"updated": PER_KIND} for kind in KINDS}
    window = figures["window"]
    assert window["server_errors"] == 0 and window["transport_errors"] == 0
    assert window["transport_errors_by_kind"] == {}
    # each device sent what the real agent sends: five events, one SUIT report, check-ins
    # (its polls, the one that reads the state after a notice, the one with the new
    # inventory), fetched its envelope and every image of its class; none of the old calls
    kinds = window["by_kind"]
    assert kinds["events"] == 5 * N and kinds["reports"] == N and kinds["envelope"] == N
    assert kinds["checkin"] >= 2 * N
    assert not {"inventory", "device", "update"} & set(kinds), kinds
    assert kinds["firmware"] == sum(IMAGES[SHAPES[i % 4]] for i in range(N))
    assert figures["total"]["by_kind"]["register"] == N
    # the first device of each class verified its envelope; the others used the cache
    assert figures["verify"] == {"verified": 4, "cached": N - 4,
                                 "payload_bytes": figures["verify"]["payload_bytes"]}
    percentiles = figures["percentiles"]
    assert 0 < percentiles["p50"] <= percentiles["p90"] <= percentiles["p100"]
    assert percentiles["p100"] == pytest.approx(figures["update_seconds"], abs=0.02)
    cpu = figures["cpu"]["window"]
    assert cpu["server_seconds"] is not None and cpu["server_seconds"] > 0
    assert cpu["simulator_seconds"] >= 0
    # the tracker agrees: every device succeeded, with its stored SUIT report
    assert len(devices) == N and {d["state"] for d in devices} == {"succeeded"}
    for history in histories.values():
        states = [h.get("state") for h in history if h.get("kind", "event") == "event"]
        assert states[-6:] == ["notified", "downloading", "downloaded", "installing",
                               "rebooting", "succeeded"], history
        assert any(h.get("kind") == "report" for h in history), history


def test_devices_that_do_not_trust_the_signer_refuse_the_update(tmp_path: Path) -> None:
    """The light devices verify for real: with other trust anchors every update is refused,
    reported failed with the reason, and nothing is installed."""
    keys, strangers = make_keys(tmp_path / "keys"), make_keys(tmp_path / "strangers")
    with local_server(tmp_path / "server", keys.author_pub, start_timeout=60) as server:

        async def main() -> list[tuple[str | None, str, int]]:
            plans = [DevicePlan(shape, shape, "poll", name) for shape, name in
                     (("mcu", "thermostat"), ("linux", "gateway"))]
            releases = build_releases(tmp_path, keys, server.url, plans)
            with Console(server.url, server.admin_token) as console:
                stored = console.upload(releases["thermostat", "v2"],
                                        token=server.upload_token)
                devices = [d for d in light_devices(8, {"poll": 1, "sse": 1})
                           if d.klass.name == "thermostat"]
                swarm = Swarm(devices, [server.url], anchors_of(strangers), poll_interval=0.5)
                await swarm.register(devices, server.admin_token)
                runner = asyncio.create_task(swarm.run())
                try:
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(console.deploy, stored, [d.id for d in devices])
                    assert await swarm.wait_done(devices, 60), [d.state for d in devices]
                finally:
                    swarm.stop()
                    await runner
                states = [console.device(d.id)["state"] for d in devices]
            assert set(states) == {"failed"}
            return [(d.outcome, d.reason, d.sequence) for d in devices]

        outcomes = asyncio.run(main())
    assert len(outcomes) == 2
    for outcome, reason, sequence in outcomes:
        assert outcome == "failed" and reason.startswith("rejected:"), reason
        assert sequence == 1  # still the factory release


def test_mix_is_parsed_and_spread_evenly() -> None:
    assert parse_mix("poll=2,sse=1,hybrid=1") == {"poll": 2.0, "sse": 1.0, "hybrid": 1.0}
    kinds = interleave(8, {"poll": 2, "sse": 1, "hybrid": 1})
    assert kinds.count("poll") == 4 and kinds.count("sse") == 2 and kinds.count("hybrid") == 2
    assert kinds[:2] != ["poll", "poll"] or kinds[2:4] != ["poll", "poll"]
    assert len(interleave(10_000, {"poll": 1, "sse": 1, "longpoll": 1, "hybrid": 1})) == 10_000
    assert sorted(set(interleave(7, {"poll": 1, "sse": 1, "longpoll": 1}))) == [
        "longpoll", "poll", "sse"]
    for bad, said in (("poll", "KIND=WEIGHT"), ("push=1", "KIND=WEIGHT"),
                      ("poll=x", "must be a number"), ("poll=-1", "must be >= 0"),
                      ("poll=nan", "must be >= 0"), ("poll=0", "above 0")):
        with pytest.raises(ValueError, match=said):
            parse_mix(bad)


@pytest.mark.parametrize(("args", "said"), [
    (["--mix", "poll=1,carrier-pigeon=2"], "--mix: expected KIND=WEIGHT"),
    (["--server", "ftp://example.com", "--admin-token-file", "a", "--upload-token-file", "u",
      "--author-key", "k"], "--server: expected an http:// or https:// URL"),
    (["--server-pid", "1"], "--server-pid goes with --server"),
    (["--concurrency", "0"], "--concurrency"),
    (["--server", "http://127.0.0.1:9"], "--admin-token-file"),
])
def test_sim_fleet_refuses_bad_options_in_one_line(tmp_path: Path, args: list[str],
                                                    said: str) -> None:
    result = CliRunner().invoke(cli, ["sim", "fleet", "--dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert said in result.output and "Traceback" not in result.output


def test_cpu_seconds_reads_a_process_and_tolerates_a_gone_one() -> None:
    spent = cpu_seconds(os.getpid())
    assert spent is not None and spent > 0
    assert cpu_seconds(2**22 + 12345) is None


def test_sim_fleet_starts_its_own_server_when_none_is_given(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    result = CliRunner().invoke(cli, ["sim", "fleet", "--devices", "4", "--mode", "push",
                                      "--dir", str(tmp_path / "fleet"), "--json", str(out),
                                      "--no-live"])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["outcomes"] == {"updated": 4} and figures["by_kind"] == {
        "sse": {"updated": 4}}
    assert figures["cpu"]["window"]["server_seconds"] is not None  # the server it started
    assert (tmp_path / "fleet" / "server" / "data" / "tracker.db").is_file()


def test_an_update_cut_short_resumes_where_the_tracker_has_it(tmp_path: Path) -> None:
    """As the agent: a device whose earlier attempt got as far as ``downloaded`` (its events
    reached the tracker, then the network failed) resumes from there, without reporting those
    steps again; a device whose final event got through before the failure ends with it."""
    keys = make_keys(tmp_path / "keys")
    with local_server(tmp_path / "server", keys.author_pub, start_timeout=60) as server:

        async def main() -> list[list[str]]:
            plans = [DevicePlan("mcu", "mcu", "poll", "thermostat")]
            releases = build_releases(tmp_path, keys, server.url, plans)
            with Console(server.url, server.admin_token) as console:
                stored = console.upload(releases["thermostat", "v2"],
                                        token=server.upload_token)
                devices = light_devices(8, {"poll": 1})[::4]  # two thermostats
                swarm = Swarm(devices, [server.url], anchors_of(keys), poll_interval=0.5)
                await swarm.register(devices, server.admin_token)
                await asyncio.to_thread(console.deploy, stored, [d.id for d in devices])
                cut, finished = devices
                for device, states in ((cut, ("downloading", "downloaded")),
                                       (finished, ("downloading", "downloaded", "installing",
                                                   "rebooting", "succeeded"))):
                    for state in states:
                        console.call("POST", f"/api/v1/devices/{device.id}/events", (201,),
                                     token=device.credential, json={"state": state})
                # the finished one's assignment is done: no check-in offers it again; the
                # device still acts on the assignment it was working on
                swarm.open()
                await swarm.update(finished, {"release": stored.id,
                                              "envelope_url": stored.envelope_url})
                runner = asyncio.create_task(swarm.run())
                try:
                    assert await swarm.wait_done(devices, 60), [d.state for d in devices]
                finally:
                    swarm.stop()
                    await runner
                assert [d.outcome for d in devices] == ["succeeded", "succeeded"]
                assert finished.reason == "the tracker has the update succeeded"
                return [[h["state"] for h in console.history(d.id) if h["kind"] == "event"]
                        for d in devices]

        histories = asyncio.run(main())
    assert histories[0] == ["notified", "downloading", "downloaded", "installing", "rebooting",
                            "succeeded"]
    assert histories[1] == histories[0]


def test_every_server_gets_every_class_and_kind() -> None:
    """Replicas share the fleet evenly: each gets devices of every class and every kind (the
    classes are deployed one after the other, so a replica with one class only would be idle
    while another works)."""
    for servers in (2, 3, 4):
        devices = light_devices(96, {"poll": 1, "sse": 1, "hybrid": 1}, servers)
        for server in range(servers):
            mine = [d for d in devices if d.server == server]
            assert len(mine) == 96 // servers
            assert {d.klass.name for d in mine} == {"thermostat", "smart-lock", "camera",
                                                    "gateway"}
            assert {d.kind for d in mine} == {"poll", "sse", "hybrid"}


def test_a_notice_that_names_no_release_string_is_no_work() -> None:
    """Notices and check-in answers are untrusted: a release that is a list, a number or
    empty is nothing to act on (a list was an unhashable-type crash of the device's
    coroutine)."""
    device = light_devices(1, {"poll": 1})[0]
    device.handled.add("done")
    assert _new_release({"release": "abc"}, device)
    for doc in ({"release": ["a"]}, {"release": {"a": 1}}, {"release": 3}, {"release": ""},
                {"release": None}, {}, {"release": "done"}):
        assert not _new_release(doc, device), doc
