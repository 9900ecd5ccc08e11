"""Server CPU per hawkBit DDI poll, against suitkit's own poll in the same run (issue #14).

A DDI controller (SWUpdate, RAUC, ``suitkit device run --protocol ddi``) polls
``GET /DEFAULT/controller/v1/{id}`` with ``Authorization: TargetToken <credential>`` every
``config.polling.sleep``; suitkit's agent polls ``GET /device/v1/{id}/update`` with a
bearer credential. Both are measured on one server process (``suitkit serve``'s application
with the tracker and the DDI edge, ``cli.notices.tracker_routes``, uvicorn, one worker, a
child process, SQLite on /tmp), for devices with nothing assigned (the common poll) and with a
pending deployment (the DDI answer then carries the ``deploymentBase`` link).

The figure is the server's CPU time (``/proc/<pid>/stat`` utime + stime) over N sequential
requests of one keep-alive client, divided by N: what one poll costs the server, whatever the
client's speed. The loads run in turn, ROUNDS rounds, medians printed, and the ratio DDI /
suitkit poll.

Run: ``.venv/bin/python benchmarks/bench_ddi.py [--requests 2000]`` (about 60 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn

from suitkit.cli.notices import release_artifacts, release_lookup, tracker_routes
from suitkit.core import crypto
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig, create_app
from suitkit.server.background import UVICORN_OPTIONS
from suitkit.tracker.config import DdiOptions, TrackerConfig
from suitkit.tracker.quotas import Quotas
from suitkit.tracker.service import open_db

ADMIN = "bench-admin-token-0123456789"
DEVICES = 100
ROUNDS = 3
RELEASE = "ab" * 32
START_TIMEOUT = 60.0
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(db_url: str, data: Path, port: int) -> None:
    """Child process: the tracker with its DDI edge, as ``suitkit serve`` wires them."""
    anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
    no_limits = Quotas(reports_per_minute=0, events_per_minute=0, inventory_per_minute=0)
    config = TrackerConfig(db_url, ADMIN, releases=release_lookup(data),
                           artifacts=release_artifacts(data), quotas=no_limits)
    wiring = tracker_routes(config, ddi=DdiOptions())
    app = create_app(ServerConfig(data_dir=data, anchors=anchors, routers=wiring.routers,
                                  authorizer=wiring.authorizer))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", workers=1,
                access_log=False, **UVICORN_OPTIONS)  # type: ignore[arg-type]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def measure(client: httpx.Client, pid: int, load: tuple[str, dict[str, str], int],
            requests: int) -> float:
    """Server CPU seconds per request of ``load`` (path, headers, expected status)."""
    path, headers, expected = load
    for _ in range(20):  # warm up the route and the connection
        client.get(path, headers=headers)
    before = cpu_seconds(pid)
    for _ in range(requests):
        response = client.get(path, headers=headers)
        if response.status_code != expected:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")
    return (cpu_seconds(pid) - before) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], Path(args.serve[1]), int(args.serve[2]))
        return
    # stopped by SIGTERM (a timeout): still stop the server child in the finally below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="bench-ddi-") as tmp:
        db_url = f"sqlite:///{tmp}/tracker.db"
        db = open_db(db_url)
        devices = [db.register(f"d{i}") for i in range(DEVICES)]
        db.deploy(RELEASE, "http://127.0.0.1/envelopes/" + "cd" * 32,
                  [d for d, _ in devices[DEVICES // 2:]])
        db.engine.dispose()
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", db_url, tmp, str(port)],
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"server exited: {server.communicate()[1][-2000:]}")
                try:
                    httpx.get(f"{url}/openapi.json", timeout=5).raise_for_status()
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the server did not answer within "
                                           f"{START_TIMEOUT:g} s") from None
                    time.sleep(0.05)
            idle_id, idle_secret = devices[0]
            busy_id, busy_secret = devices[-1]
            loads = {
                "DDI base poll, nothing assigned": (
                    f"/DEFAULT/controller/v1/{idle_id}",
                    {"Authorization": f"TargetToken {idle_id}.{idle_secret}"}, 200),
                "suitkit poll, nothing assigned": (
                    f"/device/v1/{idle_id}/update",
                    {"Authorization": f"Bearer {idle_id}.{idle_secret}"}, 204),
                "DDI base poll, deployment pending": (
                    f"/DEFAULT/controller/v1/{busy_id}",
                    {"Authorization": f"TargetToken {busy_id}.{busy_secret}"}, 200),
                "suitkit poll, deployment pending": (
                    f"/api/v1/devices/{busy_id}/update",
                    {"Authorization": f"Bearer {busy_id}.{busy_secret}"}, 200),
            }
            results: dict[str, list[float]] = {name: [] for name in loads}
            with httpx.Client(base_url=url, timeout=30) as client:
                for _ in range(ROUNDS):
                    for name, load in loads.items():
                        results[name].append(measure(client, server.pid, load, args.requests))
        finally:
            server.terminate()
            try:
                server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.communicate(timeout=30)
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(server.pid, signal.SIGKILL)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}; "
          f"{args.requests} requests x {ROUNDS} rounds, medians (server CPU per request)")
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"  {name:36s} {value * 1e3:7.2f} ms CPU")
    for case in ("nothing assigned", "deployment pending"):
        ratio = medians[f"DDI base poll, {case}"] / medians[f"suitkit poll, {case}"]
        print(f"  DDI / suitkit poll, {case}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
