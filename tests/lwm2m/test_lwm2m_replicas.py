"""LwM2M across replicas (issue #14 with #12's replicas): two ``suitkit serve`` processes on one
PostgreSQL; a deployment made through replica A reaches an LwM2M device registered with
replica B's LwM2M server (B hears A's change through the notice relay, LISTEN/NOTIFY, and
writes the Package URI at once: not at the device's next registration update).

The device is suitkit's own LwM2M client (``device.lwm2m``) in a thread of the test, with a
lifetime of 300 s: its first registration update would come 150 s later, well after the
bound of this test.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from device.device_kit import Author, boot, confirm, install, new_device
from notice_kit import wait_until
from pg import PostgresCluster
from serve_kit import Served, free_port, serving
from suitkit.device.fetch import HttpFetcher, RoutingFetcher
from suitkit.device.lwm2m import Lwm2mOptions, run_lwm2m

ADMIN = "admin-token-for-the-lwm2m-replica-test"
UPLOAD = "upload-token-for-the-lwm2m-replica-test"
REACHES_WITHIN = 20.0
WAIT = 90.0


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_deployment_through_replica_a_reaches_an_lwm2m_device_registered_at_replica_b(
        tmp_path: Path, postgres: PostgresCluster) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin").write_text(ADMIN)
    (tmp_path / "upload").write_text(UPLOAD)
    folder = new_device(tmp_path / "device", [author.anchor])
    base, _ = author.release(1, "base")
    assert install(folder, base).installed
    boot(folder)
    confirm(folder)
    db = postgres.tracker_database()
    argv = ["--data", str(tmp_path / "shared"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin"),
            "--upload-token-file", str(tmp_path / "upload"), "--db", db,
            "--db-pool-size", "3", "--log-level", "warning"]
    lwm2m_port = free_port(socket.SOCK_DGRAM)
    lines: list[str] = []
    stop = threading.Event()
    with ExitStack() as stack:
        a: Served = stack.enter_context(serving(argv))
        b: Served = stack.enter_context(serving(
            [*argv, "--lwm2m-port", str(lwm2m_port), "--lwm2m-nosec"]))
        client = stack.enter_context(httpx.Client(timeout=15))
        made = client.post(f"{a.url}/api/v1/devices", json={"name": "lwm2m"},
                           headers=auth(ADMIN))
        assert made.status_code == 201, made.text
        device_id, token = made.json()["id"], made.json()["token"]

        def record() -> dict[str, object]:
            got = client.get(f"{b.url}/api/v1/devices/{device_id}", headers=auth(ADMIN))
            assert got.status_code == 200, got.text
            return dict(got.json())

        options = Lwm2mOptions(server=f"coap://127.0.0.1:{lwm2m_port}", lifetime=300,
                               delivery="pull")
        thread = threading.Thread(target=lambda: run_lwm2m(
            folder, token, options, fetcher=RoutingFetcher(HttpFetcher()),
            tracker_url=b.url, say=lines.append, stop=stop), daemon=True)
        thread.start()

        def stop_client() -> None:
            stop.set()
            thread.join(WAIT)
            assert not thread.is_alive(), "the LwM2M client did not stop"
        stack.callback(stop_client)
        wait_until(lambda: any(line.startswith("registered") for line in lines), WAIT,
                   "the LwM2M client to register with replica B")
        # B read Object 3 after the registration: the device is B's and B is settled
        wait_until(lambda: "lwm2m.serial" in dict(record()["hardware"]),  # type: ignore[arg-type]
                   WAIT, "replica B to read Object 3")

        envelope, _ = author.release(2, "replicas")
        up = client.post(f"{a.url}/api/v1/releases", headers=auth(UPLOAD), files=[
            ("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))])
        assert up.status_code == 201, up.text
        release = up.json()
        deployed = time.monotonic()
        done = client.post(f"{a.url}/api/v1/deployments", headers=auth(ADMIN), json={
            "release": release["id"], "envelope_url": a.url + release["envelope"]["url"],
            "devices": [device_id]})
        assert done.status_code == 201, done.text
        wait_until(lambda: any(line.startswith("downloading") for line in lines)
                   or time.monotonic() - deployed > REACHES_WITHIN, WAIT,
                   "replica B to write the Package URI of A's deployment")
        reached = time.monotonic() - deployed
        assert reached <= REACHES_WITHIN, (
            f"A's deployment did not reach the LwM2M device at B within {REACHES_WITHIN} s",
            lines)
        wait_until(lambda: record()["state"] in ("succeeded", "failed"), WAIT,
                   "the LwM2M device's update to end")
        assert record()["state"] == "succeeded", lines
    assert [i.sequence_number for i in boot(folder).images] == [2]
