"""suitkit's own LwM2M CLIENT (``device.lwm2m``, ``suitkit device run --protocol lwm2m``)
against suitkit's LwM2M SERVER edge: a deployment updates it by pull (Package URI) and by push
(Package, block-wise), a refused envelope ends with the right Update Result, the SUIT report
reaches the tracker, the client de-registers on exit.

The client runs in a thread of the test (``run_lwm2m`` with a stop event, stopped in a
``finally``); the tracker and the LwM2M server are real, on loopback (``lwm2m_kit.world``).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from device.device_kit import Author, boot
from lwm2m.lwm2m_kit import World, states, world
from notice_kit import ADMIN, wait_until
from suitkit.device.agent import AgentResult
from suitkit.device.fetch import CoapFetcher, HttpFetcher, RoutingFetcher
from suitkit.device.lwm2m import Lwm2mOptions, run_lwm2m

WAIT = 90.0


class Client:
    """``run_lwm2m`` in a thread; ``lines`` what it said."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stamps: list[tuple[float, str]] = []
        """(time.time(), line) of each line (benchmarks/bench_lwm2m.py)."""
        self.result: list[AgentResult | None] = []
        self.stop = threading.Event()

    def say(self, line: str) -> None:
        self.stamps.append((time.time(), line))
        self.lines.append(line)

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))


@contextmanager
def lwm2m_client(w: World, folder: Path, device_id: str, *, delivery: str = "pull",
                 tracker: bool = True, **options: Any) -> Iterator[Client]:
    """suitkit's LwM2M client of ``folder`` registered with ``w``'s server until the block ends
    (then stopped, and joined)."""
    client = Client()
    credential = w.tokens[device_id]
    opts = Lwm2mOptions(server=f"coap://127.0.0.1:{w.lwm2m.port}", delivery=delivery,
                        **{"lifetime": 60, **options})

    def run() -> None:
        try:
            client.result.append(run_lwm2m(
                folder, credential, opts,
                fetcher=RoutingFetcher(HttpFetcher(), coap=CoapFetcher()),
                tracker_url=w.tracker.url if tracker else None, say=client.say,
                stop=client.stop))
        except BaseException:
            client.lines.append(f"Traceback: {traceback.format_exc()}")
            raise
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: device_id in w.lwm2m.registered() or not thread.is_alive(), WAIT,
                   f"suitkit's LwM2M client to register as {device_id}")
        assert device_id in w.lwm2m.registered(), client.lines
        yield client
    finally:
        client.stop.set()
        thread.join(WAIT)
        assert not thread.is_alive(), "the LwM2M client did not stop"


def test_suitkit_client_is_updated_by_pull_and_reports(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        folder, device_id = w.device()
        with lwm2m_client(w, folder, device_id) as client:
            wait_until(lambda: "lwm2m.manufacturer" in w.record(device_id)["hardware"]
                       or client.said("Traceback"), WAIT,
                       "the LwM2M server to read Object 3 after the registration")
            assert not client.said("Traceback"), client.lines
            hardware = w.record(device_id)["hardware"]
            release = w.release()
            w.deploy(release, device_id)
            wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"), WAIT,
                       "the client's update by pull to end")
            wait_until(lambda: client.said("update result"), WAIT, "the client's last line")
        assert w.record(device_id)["state"] == "succeeded", (client.lines,
                                                            w.history(device_id))
        # Object 3 is the folder's identity and running firmware
        assert hardware["lwm2m.serial"] == str(_config(folder).device_id)
        assert hardware["lwm2m.manufacturer"] == str(_config(folder).vendor_id)
        assert hardware["lwm2m.firmware_version"] == "#1"
        assert states(w.history(device_id)) == [
            "notified", "downloading", "downloaded", "installing", "rebooting", "succeeded"]
        assert client.said("signatures verified") and client.said("update result 1")
        # the full SUIT report reached the tracker over its JSON API
        reports = [h for h in w.history(device_id) if h["kind"] == "report"]
        assert len(reports) == 1 and reports[0]["summary"]["succeeded"], w.history(device_id)
        assert [i.sequence_number for i in boot(folder).images] == [w.sequence]
        # on exit the client de-registered
        assert device_id not in w.lwm2m.registered()
        assert client.said("de-registered (2.02 Deleted)")


def _config(folder: Path) -> Any:
    from suitkit.device.config import load_config

    return load_config(folder)


def test_suitkit_client_takes_the_envelope_pushed_block_wise(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        folder, device_id = w.device()
        with lwm2m_client(w, folder, device_id, delivery="push") as client:
            wait_until(lambda: w.lwm2m.registered()[device_id]["tasks"] > 0, WAIT,
                       "the server to observe the client")
            release = w.release()
            w.deploy(release, device_id)
            wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"), WAIT,
                       "the client's pushed update to end")
        assert w.record(device_id)["state"] == "succeeded", (client.lines,
                                                            w.history(device_id))
        assert client.said("receiving the package (5/0/0, block-wise)")
        assert not client.said("downloading http")  # nothing was pulled
        assert [i.sequence_number for i in boot(folder).images] == [w.sequence]


def test_suitkit_client_refuses_an_envelope_it_does_not_trust_with_result_5(
        tmp_path: Path) -> None:
    with world(tmp_path) as w:
        # the device trusts another author: the server's release is one it refuses
        folder, device_id = w.device(trusts=Author.create(tmp_path / "stranger"))
        release = w.release()
        w.deploy(release, device_id)  # before the registration: delivered when it registers
        with lwm2m_client(w, folder, device_id) as client:
            wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"), WAIT,
                       "the refused update to end")
        events = [h for h in w.history(device_id) if h["kind"] == "event"]
        assert events[-1]["state"] == "failed", events
        assert events[-1]["detail"] == ("LwM2M: integrity check failure for the new firmware "
                                        "package"), events
        assert client.said("the package is refused")
        assert not client.said("updating")  # Update was never executed: nothing installed
        assert [i.sequence_number for i in boot(folder).images] == [1]


def test_suitkit_client_pulls_the_envelope_over_coap(tmp_path: Path) -> None:
    """A Package URI on the firmware server's CoAP edge (block-wise GET of
    ``/envelopes/<sha256>``): the agent's CoAP fetcher downloads it."""
    with world(tmp_path) as w:
        folder, device_id = w.device()
        release = w.release()
        with w.client() as c:
            made = c.post("/api/v1/deployments", headers={"Authorization": f"Bearer {ADMIN}"},
                          json={"release": release["id"], "devices": [device_id],
                                "envelope_url": w.tracker.coap + release["envelope"]["url"]})
        assert made.status_code == 201, made.text
        with lwm2m_client(w, folder, device_id) as client:
            wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"), WAIT,
                       "the client's update over CoAP to end")
        assert w.record(device_id)["state"] == "succeeded", (client.lines,
                                                            w.history(device_id))
        assert client.said(f"downloading {w.tracker.coap}/envelopes/")
        assert [i.sequence_number for i in boot(folder).images] == [w.sequence]


def test_suitkit_client_updates_its_registration_before_it_expires(tmp_path: Path) -> None:
    """A lifetime of 2 s: the server forgets a registration not updated within it (its
    sweep runs each second); the client updates at half of it, so it stays registered."""
    with world(tmp_path) as w:
        folder, device_id = w.device()
        with lwm2m_client(w, folder, device_id, lifetime=2) as client:
            ends = time.monotonic() + 6.0
            while time.monotonic() < ends:
                assert device_id in w.lwm2m.registered(), client.lines
                time.sleep(0.2)
            assert w.lwm2m.registered()[device_id]["lifetime"] == 2
        assert sum(line.startswith("registered") for line in client.lines) == 1, client.lines
        assert device_id not in w.lwm2m.registered()  # de-registered on exit
