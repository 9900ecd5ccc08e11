"""A fleet of simulated devices updated through a local server (``suitkit sim fleet``).

suitkit: ``sim.load.run_load`` against ``suitkit serve`` (a child process on loopback, SQLite):
N devices (shapes in turn) are provisioned and registered, connect in the chosen mode, v2 is
deployed to all of them at once, and the figure is the time from the deployment until the last
device reported its final state, with the requests the fleet made in that window (per second,
by status) and the server's error answers.

Baseline, in the same run on the same machine: the devices' own work alone. A sample of devices
of each shape installs the same v2 with no network at all (integrated payloads: verify, write
the slots, boot, run the invocation, confirm, save the flash), timed one after the other; N times
the mean is the least time one core needs for the fleet's installs. The ratio says what the
network, the tracker and the fleet's concurrency add on top of (or save below) that.

Run: ``.venv/bin/python benchmarks/bench_fleet.py [--devices 1000] [--modes poll,push]
[--json FILE]`` (several minutes for 1000 devices on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from suitkit.device.invoke import RecordingLauncher, invoke_running
from suitkit.device.wiring import open_device
from suitkit.sim.firmware import CLASS_NAMES, build_release, image_for, make_keys
from suitkit.sim.fleet import SHAPES, DevicePlan, provision
from suitkit.sim.load import run_load
from suitkit.sim.local import local_server


def baseline(root: Path, per_shape: int = 5) -> float:
    """Mean seconds for one device to install, boot, invoke and confirm v2 with no network."""
    keys = make_keys(root / "keys")
    times: list[float] = []
    for shape in SHAPES:
        klass = CLASS_NAMES[shape]
        count = 2 if shape in ("secure-split", "dual-cpu") else 1
        v1 = build_release(keys, root / "fw" / klass, label="v1", class_name=klass,
                           sequence=1, images=[image_for(shape, klass, "v1", i)
                                               for i in range(count)])
        v2 = build_release(keys, root / "fw" / klass, label="v2", class_name=klass,
                           sequence=2, images=[image_for(shape, klass, "v2", i)
                                               for i in range(count)])
        plans = [DevicePlan(f"{shape}-{i}", shape, "poll", klass) for i in range(per_shape)]
        for device in provision(root, keys, plans, {klass: v1}):
            started = time.perf_counter()
            opened = open_device(device.folder)
            assert opened.consumer().install(v2.envelope).installed
            opened.save()
            opened = open_device(device.folder)
            opened.bootloader.boot()
            invoke_running(opened.config, opened.bootloader, RecordingLauncher())
            opened.bootloader.confirm()
            opened.save()
            times.append(time.perf_counter() - started)
    return statistics.mean(times)


def run(devices: int, mode: str, workers: int, poll_interval: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        keys = make_keys(root / "keys")
        with local_server(root / "server", keys.author_pub) as server:
            result = asyncio.run(run_load(root, server.url, server.admin_token,
                                          server.upload_token, devices, mode=mode, keys=keys,
                                          workers=workers, poll_interval=poll_interval,
                                          timeout=1800.0))
        disk = sum(f.stat().st_size for f in (root / "devices").rglob("*") if f.is_file())
        doc = result.as_json()
        doc["disk_mb"] = round(disk / 1e6, 1)
        return doc
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--modes", default="poll,push")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--poll-interval", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    interval = args.poll_interval or max(2.0, args.devices / 100)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.system()} {platform.release()}; load "
          f"average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory(prefix="bench-fleet-base-") as tmp:
        per_device = baseline(Path(tmp))
    print(f"baseline: one device installs, boots and confirms v2 (no network) in "
          f"{per_device * 1000:.1f} ms; {args.devices} devices: "
          f"{per_device * args.devices:.1f} s of one core")
    results = {}
    for mode in args.modes.split(","):
        doc = run(args.devices, mode, args.workers, interval)
        results[mode] = doc
        window = doc["window"]
        ratio = doc["update_seconds"] / (per_device * args.devices)
        print(f"{mode}: {args.devices} devices updated in {doc['update_seconds']:.1f} s "
              f"({ratio:.2f}x the baseline); outcomes {doc['outcomes']}; "
              f"{window['requests']} requests in the window ({window['requests_per_second']}/s), "
              f"by status {window['by_status']}, server errors {window['server_errors']}, "
              f"transport errors {window['transport_errors']}; set up in "
              f"{doc['setup_seconds']:.1f} s; {doc['disk_mb']} MB of device folders; "
              f"poll interval {interval:g} s; load average {os.getloadavg()[0]:.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"baseline_seconds_per_device": per_device,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
