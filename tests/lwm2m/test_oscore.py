"""OSCORE (RFC 8613) between suitkit's LwM2M server edge and suitkit's LwM2M client: a device
with its context registers authenticated and is updated by a deployment, pull and push, on a
server that accepts no NoSec; both keep working after a restart of each (sequence numbers and
replay windows persisted in the contexts' folders). Real aiocoap on loopback."""

from __future__ import annotations

import json
from pathlib import Path

from device.device_kit import boot
from lwm2m.lwm2m_kit import states, world
from lwm2m.test_suitkit_client import WAIT, lwm2m_client
from notice_kit import wait_until
from suitkit.device.lwm2m import OSCORE_FOLDER
from suitkit.tracker.edges.lwm2m import Lwm2mConfig, Lwm2mServer


def _next_to_send(folder: Path) -> int:
    return int(json.loads((folder / "sequence.json").read_text())["next-to-send"])


def test_an_oscore_client_registers_authenticated_and_is_updated_by_pull(tmp_path: Path) -> None:
    with world(tmp_path, nosec=False) as w:
        folder, device_id = w.device()
        with lwm2m_client(w, folder, device_id) as client:
            wait_until(lambda: "lwm2m.manufacturer" in w.record(device_id)["hardware"], WAIT,
                       "the LwM2M server to read Object 3 over OSCORE")
            assert w.record(device_id)["hardware"]["lwm2m.security"] == "oscore (authenticated)"
            w.deploy(w.release(), device_id)
            wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"), WAIT,
                       "the client's update by pull over OSCORE to end")
        assert w.record(device_id)["state"] == "succeeded", (client.lines,
                                                            w.history(device_id))
        assert states(w.history(device_id)) == [
            "notified", "downloading", "downloaded", "installing", "rebooting", "succeeded"]
        assert [i.sequence_number for i in boot(folder).images] == [w.sequence]
        assert client.said("de-registered (2.02 Deleted)")  # the DELETE went over OSCORE too
        # the contexts: the device's in its folder, the server's in its data folder
        assert (folder / OSCORE_FOLDER / "settings.json").is_file()
        assert (tmp_path / "data" / "lwm2m-oscore" / device_id / "settings.json").is_file()


def test_an_oscore_client_takes_the_envelope_pushed_block_wise(tmp_path: Path) -> None:
    with world(tmp_path, nosec=False) as w:
        folder, device_id = w.device()
        with lwm2m_client(w, folder, device_id, delivery="push") as client:
            wait_until(lambda: w.lwm2m.registered()[device_id]["tasks"] > 0, WAIT,
                       "the server to observe the client over OSCORE")
            w.deploy(w.release(), device_id)
            wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"), WAIT,
                       "the client's pushed update over OSCORE to end")
        assert w.record(device_id)["state"] == "succeeded", (client.lines,
                                                            w.history(device_id))
        assert client.said("receiving the package (5/0/0, block-wise)")
        assert [i.sequence_number for i in boot(folder).images] == [w.sequence]


def test_client_and_server_restarts_keep_oscore_working(tmp_path: Path) -> None:
    """Both sides reopen their contexts: the sender sequence numbers go on from where they
    were (a context that started again at 0 would have its requests refused as replays by the
    other side's persisted window, and would reuse nonces)."""
    with world(tmp_path, nosec=False) as w:
        folder, device_id = w.device()
        device_context = folder / OSCORE_FOLDER
        server_context = tmp_path / "data" / "lwm2m-oscore" / device_id
        with lwm2m_client(w, folder, device_id):
            wait_until(lambda: "lwm2m.manufacturer" in w.record(device_id)["hardware"], WAIT,
                       "the LwM2M server to read Object 3 over OSCORE")
        sent_device, sent_server = _next_to_send(device_context), _next_to_send(server_context)
        assert sent_device > 0 and sent_server > 0
        port = w.lwm2m.port
        w.lwm2m.stop()
        restarted = Lwm2mServer(w.tracker.wiring.db, w.tracker.wiring.hub,  # type: ignore[union-attr]
                                Lwm2mConfig(port=port, poll_interval=0.5,
                                            oscore_dir=tmp_path / "data" / "lwm2m-oscore"))
        restarted.start()
        try:
            w.lwm2m = restarted
            with lwm2m_client(w, folder, device_id) as client:
                w.deploy(w.release(), device_id)
                wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"),
                           WAIT, "the update after both restarts to end")
            assert w.record(device_id)["state"] == "succeeded", (client.lines,
                                                                w.history(device_id))
        finally:
            restarted.stop()
        assert _next_to_send(device_context) > sent_device
        assert _next_to_send(server_context) > sent_server
