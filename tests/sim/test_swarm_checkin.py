"""The light fleet polls as the agent does since issue #12: one ``POST .../checkin`` per poll
(the inventory's digest; the inventory only when asked), the update found by a poll goes on
from that answer's state, and the new inventory goes back in a check-in. Counted by the server
itself (its ``/metrics``: requests by route template), not by the simulator. Against a tracker
without the check-in (an old replica behind the same nginx: 404) the devices fall back to the
old calls and are still updated."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nginx_kit import NGINX, have_nginx
from serve_kit import READY, free_port, start_process, stop_process
from suitkit.device.agent import inventory_digest
from suitkit.sim.control import Console
from suitkit.sim.firmware import make_keys
from suitkit.sim.fleet import DevicePlan
from suitkit.sim.load import anchors_of, light_devices
from suitkit.sim.local import local_server
from suitkit.sim.scenario import build_releases
from suitkit.sim.swarm import Swarm

DEVICE = "/device/v1/{device_id}"  # the device API (issue #17)
LEGACY = "/api/v1/devices/{device_id}"  # its deprecated twin, and the device's own record


def tracker_requests(metrics_url: str) -> Counter[tuple[str, str]]:
    """The server's count of the devices' requests so far: (method, route suffix) -> n."""
    text = httpx.get(f"{metrics_url}/metrics", timeout=30).text
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            route = sample.labels.get("route", "")
            if sample.name == "suitkit_http_requests_total" and route.startswith(
                    (DEVICE, LEGACY)):
                suffix = route.removeprefix(DEVICE).removeprefix(LEGACY)
                counts[sample.labels["method"], suffix] += int(sample.value)
    return counts


def digest_is_stored(url: str, device_id: str, credential: str, digest: str) -> bool:
    """Whether the tracker has ``digest`` as the device's inventory digest (a check-in that
    names it is not asked for the inventory)."""
    answer = httpx.post(f"{url}/device/v1/{device_id}/checkin", timeout=30,
                        headers={"Authorization": f"Bearer {credential}"},
                        json={"inventory_digest": digest})
    assert answer.status_code == 200, answer.text
    return answer.json()["send_inventory"] is False


def test_a_poll_is_one_request_and_the_inventory_goes_once(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    metrics_port = free_port()
    with local_server(tmp_path / "server", keys.author_pub, start_timeout=READY,
                      extra_args=("--metrics-port", str(metrics_port))) as server:
        metrics = f"http://127.0.0.1:{metrics_port}"
        devices = light_devices(4, {"poll": 1})

        async def main() -> list[dict[str, object] | None]:
            swarm = Swarm(devices, [server.url], anchors_of(keys))
            try:
                await swarm.register(devices, server.admin_token)
                before = tracker_requests(metrics)
                answers = []
                for _ in range(3):
                    for device in devices:
                        answers.append(await swarm.check_in(device))
                moved = tracker_requests(metrics) - before
            finally:
                swarm.close()
            # the first check-in of each device is asked for its inventory (one more request),
            # every other poll is one request; nothing else reaches the tracker
            assert moved == Counter({("POST", "/checkin"): 3 * 4 + 4}), moved
            return answers

        answers = asyncio.run(main())
        assert all(a is not None and a["release"] is None and a["state"] is None
                   for a in answers), answers
        assert all(d.connected and d.poll_after == 60 for d in devices)
        with Console(server.url, server.admin_token) as console:
            for device in devices:
                components = console.device(device.id)["components"]
                assert [(c["sequence"], c["digest"]) for c in components] == [
                    (1, d.hex()) for d in device.klass.factory_digests]
                assert digest_is_stored(server.url, device.id, device.credential,
                                        inventory_digest(device.inventory()))


def test_an_update_found_by_a_poll_is_eight_requests_to_the_tracker(tmp_path: Path) -> None:
    """Poll, five events, the SUIT report, the new inventory: 8 (the old calls: 10, with
    ``GET .../update``, two ``PUT .../inventory`` and ``GET .../{id}``)."""
    keys = make_keys(tmp_path / "keys")
    metrics_port = free_port()
    with local_server(tmp_path / "server", keys.author_pub, start_timeout=READY,
                      extra_args=("--metrics-port", str(metrics_port))) as server:
        metrics = f"http://127.0.0.1:{metrics_port}"
        plans = [DevicePlan("mcu", "mcu", "poll", "thermostat")]
        releases = build_releases(tmp_path, keys, server.url, plans)
        devices = light_devices(8, {"poll": 1})[::4]  # two thermostats

        async def main() -> Counter[tuple[str, str]]:
            with Console(server.url, server.admin_token) as console:
                stored = console.upload(releases["thermostat", "v2"],
                                        token=server.upload_token)
                swarm = Swarm(devices, [server.url], anchors_of(keys))
                try:
                    await swarm.register(devices, server.admin_token)
                    for device in devices:  # their inventory stored, as after a first poll
                        await swarm.check_in(device)
                    await asyncio.to_thread(console.deploy, stored, [d.id for d in devices])
                    before = tracker_requests(metrics)
                    for device in devices:
                        answer = await swarm.check_in(device)
                        assert answer is not None and answer["release"] == stored.id
                        assert answer["state"] == "notified"
                        await swarm.update(device, answer, checked_in=True)
                    return tracker_requests(metrics) - before
                finally:
                    swarm.close()

        moved = asyncio.run(main())
        assert [d.outcome for d in devices] == ["succeeded", "succeeded"], [
            d.reason for d in devices]
        assert moved == Counter({("POST", "/checkin"): 2 * 2, ("POST", "/events"): 5 * 2,
                                 ("POST", "/reports"): 2}), moved
        assert sum(moved.values()) == 8 * 2
        with Console(server.url, server.admin_token) as console:
            for device in devices:
                stored_device = console.device(device.id)
                assert stored_device["state"] == "succeeded"
                # the last check-in carried the new inventory: the tracker runs v2 for it
                assert [(c["sequence"], c["digest"]) for c in stored_device["components"]
                        ] == [(2, d.hex()) for d in device.digests]
                assert digest_is_stored(server.url, device.id, device.credential,
                                        inventory_digest(device.inventory()))


_OLD_REPLICA = """\
daemon off;
worker_processes 1;
{user}
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        # a tracker older than the check-in: the route does not exist
        location ~ "^/(api/v1/devices|device/v1)/[^/]+/checkin$" {{ return 404; }}
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


@pytest.mark.skipif(not have_nginx(), reason="needs nginx (apt-get install nginx-light)")
def test_a_tracker_without_the_check_in_gets_the_old_calls(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    metrics_port = free_port()
    with local_server(tmp_path / "server", keys.author_pub, start_timeout=READY,
                      extra_args=("--metrics-port", str(metrics_port))) as server:
        metrics = f"http://127.0.0.1:{metrics_port}"
        root = (tmp_path / "nginx").resolve()
        root.mkdir()
        port = free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        (root / "nginx.conf").write_text(_OLD_REPLICA.format(
            root=root, port=port, upstream=server.url, user=user))
        with (root / "nginx.out").open("w") as out:
            nginx = start_process([NGINX, "-p", str(root), "-e", str(root / "error.log"),
                                   "-c", str(root / "nginx.conf")], stdout=out,
                                  stderr=subprocess.STDOUT)
        try:
            front = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + READY
            while True:
                try:
                    httpx.get(f"{front}/healthz", timeout=5)
                    break
                except httpx.TransportError:
                    assert nginx.poll() is None, (root / "error.log").read_text()
                    assert time.monotonic() < deadline, (
                        f"nginx did not answer GET {front}/healthz within {READY} s")
                    time.sleep(0.05)
            plans = [DevicePlan("mcu", "mcu", "poll", "thermostat")]
            releases = build_releases(tmp_path, keys, front, plans)
            devices = light_devices(8, {"poll": 1, "sse": 1})[::4]  # a poll, an SSE device

            async def main() -> Counter[tuple[str, str]]:
                with Console(front, server.admin_token) as console:
                    stored = console.upload(releases["thermostat", "v2"],
                                            token=server.upload_token)
                    swarm = Swarm(devices, [front], anchors_of(keys), poll_interval=0.3)
                    await swarm.register(devices, server.admin_token)
                    before = tracker_requests(metrics)
                    runner = asyncio.create_task(swarm.run())
                    try:
                        await asyncio.sleep(1.0)
                        await asyncio.to_thread(console.deploy, stored,
                                                [d.id for d in devices])
                        assert await swarm.wait_done(devices, 60), [d.state for d in devices]
                    finally:
                        swarm.stop()
                        await runner
                    assert swarm.old_servers == {0}
                    return tracker_requests(metrics) - before

            moved = asyncio.run(main())
        finally:
            stop_process(nginx)
        assert [d.outcome for d in devices] == ["succeeded", "succeeded"], [
            d.reason for d in devices]
        assert ("POST", "/checkin") not in moved  # nginx answered those
        assert moved["GET", "/update"] >= 1 and moved["PUT", "/inventory"] == 2 * 2
        assert moved["GET", ""] == 2 and moved["POST", "/events"] == 5 * 2
