"""Notice-to-download latency over LwM2M: from a deployment (``POST /api/v1/deployments``
sent) to the moment an LwM2M device starts downloading the envelope.

Setup: the tracker and firmware server on loopback (``tests/notice_kit.Tracker``, in this
process) with the LwM2M server edge (``tracker.edges.lwm2m``) beside it; one lwm2m-node-lib
client (``tests/lwm2m/node/fw_client.js``, an independent LwM2M stack in a node child process)
registered as a tracker device. Each round uploads a release, deploys it, and reads the
client's "downloading <ms since the epoch>" line (same machine, same clock); the update then
runs to its end (``suitkit device install`` in the device folder) before the next round.

Baseline, same run: the time from the same deployment to the notices hub's watcher call in
this process (what an SSE or long-poll device could hear at best); the ratio printed is the
LwM2M latency over it. The LwM2M path adds: the hub -> the edge's event loop, a database read
of the pending assignment, a CoAP PUT of the Package URI to the client and its answer, the
client's write handler.

``--client suitkit``: the device is suitkit's own LwM2M client (``device.lwm2m``, in a thread
of this process) instead: the time is to its "downloading" line, and the whole update
(deployment to ``succeeded`` in the tracker) is printed too.

Run: ``.venv/bin/python benchmarks/bench_lwm2m.py [--rounds 10] [--client node|suitkit]``
(about 1 s a round plus the installs; the node client needs ``npm ci`` in tests/lwm2m/node).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from lwm2m.lwm2m_kit import need_node_peer, world
from lwm2m.test_node_client import node_client
from lwm2m.test_suitkit_client import lwm2m_client
from notice_kit import wait_until


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--client", choices=("node", "suitkit"), default="node")
    args = parser.parse_args()
    if args.client == "suitkit":
        suitkit_client(args.rounds)
        return
    try:
        need_node_peer()
    except pytest.skip.Exception as e:  # the skip names what to install
        sys.exit(f"bench_lwm2m: {e}")
    lwm2m_ms: list[float] = []
    hub_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-lwm2m-") as folder, \
            world(Path(folder), poll_interval=0.5) as w:
        device_folder, device_id = w.device()
        assert w.tracker.wiring is not None
        heard: list[float] = []
        woken = threading.Event()

        def watcher(changed: str, _: int) -> None:
            if changed == device_id:
                heard.append(time.time())
                woken.set()
        stop = w.tracker.wiring.hub.watch(device_id, watcher)
        try:
            with node_client(w, device_id, device_folder) as out:
                for _ in range(args.rounds):
                    release = w.release()
                    seen = out.read_text().count("downloading ")
                    heard.clear()
                    woken.clear()
                    started = time.time()
                    w.deploy(release, device_id)
                    wait_until(lambda seen=seen: out.read_text().count("downloading ") > seen,
                               60, "the client to start downloading")
                    line = [x for x in out.read_text().splitlines()
                            if x.startswith("downloading ")][-1]
                    lwm2m_ms.append(int(line.split()[1]) - started * 1000)
                    woken.wait(30)
                    hub_ms.append((heard[0] - started) * 1000 if heard else float("nan"))
                    wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"),
                               90, "the update to end")
        finally:
            stop()
    lw, hb = statistics.median(lwm2m_ms), statistics.median(hub_ms)
    print(f"rounds {args.rounds}")
    print(f"notice-to-download over LwM2M: median {lw:.1f} ms (min {min(lwm2m_ms):.1f}, "
          f"max {max(lwm2m_ms):.1f})")
    print(f"deployment-to-hub baseline:    median {hb:.1f} ms")
    print(f"ratio LwM2M / hub: {lw / hb:.1f}x" if hb > 0 else "ratio: n/a")


def suitkit_client(rounds: int) -> None:
    """The same rounds with suitkit's own LwM2M client (pull)."""
    download_ms: list[float] = []
    update_ms: list[float] = []
    hub_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-lwm2m-") as folder, \
            world(Path(folder), poll_interval=0.5) as w:
        device_folder, device_id = w.device()
        assert w.tracker.wiring is not None
        heard: list[float] = []

        def watcher(changed: str, _: int) -> None:
            if changed == device_id:
                heard.append(time.time())
        stop = w.tracker.wiring.hub.watch(device_id, watcher)
        try:
            with lwm2m_client(w, device_folder, device_id) as client:
                for _ in range(rounds):
                    release = w.release()
                    seen = len(client.stamps)
                    heard.clear()
                    started = time.time()
                    w.deploy(release, device_id)
                    wait_until(lambda seen=seen: any(
                        line.startswith("downloading") for _, line in client.stamps[seen:]),
                        60, "the client to start downloading")
                    at = next(t for t, line in client.stamps[seen:]
                              if line.startswith("downloading"))
                    download_ms.append((at - started) * 1000)
                    wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"),
                               90, "the update to end")
                    update_ms.append((time.time() - started) * 1000)
                    hub_ms.append((heard[0] - started) * 1000 if heard else float("nan"))
        finally:
            stop()
    lw, hb = statistics.median(download_ms), statistics.median(hub_ms)
    print(f"rounds {rounds} (suitkit's LwM2M client)")
    print(f"notice-to-download over LwM2M: median {lw:.1f} ms (min {min(download_ms):.1f}, "
          f"max {max(download_ms):.1f})")
    print(f"deployment-to-succeeded:       median {statistics.median(update_ms):.1f} ms "
          f"(min {min(update_ms):.1f}, max {max(update_ms):.1f})")
    print(f"deployment-to-hub baseline:    median {hb:.1f} ms")
    print(f"ratio LwM2M / hub: {lw / hb:.1f}x" if hb > 0 else "ratio: n/a")


if __name__ == "__main__":
    main()
