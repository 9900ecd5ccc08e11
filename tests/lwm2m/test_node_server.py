"""suitkit's LwM2M CLIENT (``suitkit device run --protocol lwm2m``, a real process) against
lwm2m-node-lib's SERVER (tests/lwm2m/node/fw_server.js, an independent LwM2M stack): the client
registers; the node server reads /3/0 and /5/0, observes 5/0/3, writes 5/0/1, executes 5/0/2
once State is Downloaded and reads the Update Result; the test asserts what the node server
saw, and that the device folder boots the new release. On SIGTERM the client de-registers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from device.device_kit import Author, boot, confirm, firmware_server, install, new_device
from lwm2m.lwm2m_kit import NODE_DIR, need_node_peer
from notice_kit import wait_until
from serve_kit import SUITKIT, free_port, start_process, stop_process
from suitkit.device.config import load_config

WAIT = 90.0


def seen(out: Path) -> list[dict[str, Any]]:
    """What the node server printed (one JSON object a line)."""
    docs = []
    for line in out.read_text().splitlines():
        if line.startswith("{"):
            docs.append(json.loads(line))
    return docs


def events(out: Path, kind: str) -> list[dict[str, Any]]:
    return [d for d in seen(out) if d["event"] == kind]


@contextmanager
def node_server(tmp: Path, package_uri: str) -> Iterator[tuple[int, Path]]:
    """fw_server.js listening until the block ends: (its UDP port, its output file)."""
    port = free_port(socket.SOCK_DGRAM)
    out = tmp / "node-server.log"
    with out.open("w") as sink:
        process = start_process(["node", str(NODE_DIR / "fw_server.js"), str(port), package_uri],
                                stdout=sink, stderr=subprocess.STDOUT, cwd=NODE_DIR,
                                env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")})
    try:
        wait_until(lambda: events(out, "listening") or process.poll() is not None, WAIT,
                   "lwm2m-node-lib's server to listen")
        assert events(out, "listening"), out.read_text()
        yield port, out
    finally:
        stop_process(process)


@contextmanager
def suitkit_client(folder: Path, credential: Path, port: int, log: Path) -> Iterator[Any]:
    with log.open("w") as sink:
        process = start_process(
            [*SUITKIT, "device", "run", str(folder), "--protocol", "lwm2m",
             "--lwm2m", f"coap://127.0.0.1:{port}", "--lwm2m-lifetime", "60",
             "--server", "http://127.0.0.1:9", "--credential-file", str(credential)],
            stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process)


def test_suitkit_client_updated_by_the_node_server(tmp_path: Path) -> None:
    need_node_peer()
    author = Author.create(tmp_path / "author")
    folder = new_device(tmp_path / "device", [author.anchor])
    base, _ = author.release(1, "base")
    assert install(folder, base).installed
    boot(folder)
    confirm(folder)
    device_id = str(load_config(folder).device_id)
    credential = tmp_path / "credential"
    credential.write_text(f"{device_id}.no-tracker-here\n")
    envelope, _ = author.release(2, "node", size=3000)
    log = tmp_path / "client.log"
    with firmware_server() as (url, served):
        served.files["/e.suit"] = envelope
        with node_server(tmp_path, f"{url}/e.suit") as (port, out), \
                suitkit_client(folder, credential, port, log) as client:
            wait_until(lambda: events(out, "result") or client.poll() is not None, WAIT,
                       "the node server to see the update end (State back to Idle)")
            assert events(out, "result"), (out.read_text(), log.read_text())
            stop_process(client)  # SIGTERM: the client de-registers on its way out
            wait_until(lambda: events(out, "deregistered"), WAIT,
                       "the client to de-register on SIGTERM")
    registered = events(out, "registered")[0]
    assert registered["endpoint"] == device_id
    assert "</3/0>" in registered["payload"] and "</5/0>" in registered["payload"]
    assert registered["lifetime"] == "60" and registered["binding"] == "U"
    reads = {d["path"]: d["value"] for d in events(out, "read")[:7]}
    config = load_config(folder)
    assert reads == {"/3/0/0": str(config.vendor_id), "/3/0/1": str(config.class_id),
                     "/3/0/2": device_id, "/3/0/3": "#1", "/5/0/3": "0", "/5/0/5": "0",
                     "/5/0/9": "2"}, reads
    assert events(out, "written")[0]["value"] == f"{url}/e.suit"
    # the observed State went Downloading (1, may be skipped) -> Downloaded -> Updating -> Idle
    states = [d["value"] for d in events(out, "notify")]
    assert [s for s in states if s != "1"] == ["2", "3", "0"], states
    assert len(events(out, "executed")) == 1
    after = {d["path"]: d["value"] for d in events(out, "read")[7:]}
    assert after == {"/5/0/5": "1", "/3/0/3": "#2"}, (after, log.read_text())
    assert not events(out, "error"), out.read_text()
    assert [i.sequence_number for i in boot(folder).images] == [2]
