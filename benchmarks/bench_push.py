"""Push capacity: idle push connections held by one ``suitkit serve`` process (issue #12).

``suitkit serve`` (firmware server + status tracker, SQLite, one process, its own defaults) runs
as a child process. CONNECTIONS devices are registered in its database before it starts
(``tracker.service.TrackerDB.register``; the tracker's API registers one device per
request), one release with a 1 MiB detached image is uploaded. Then, in turn:

1. **before**: the server's RSS (``/proc/PID/status`` VmRSS) after a warm-up, then for
   ``--seconds`` the check-in rate (``PUT inventory`` + ``GET update`` from 8 concurrent
   keep-alive clients, as bench_checkins.py), three downloads of the image and three operator
   requests (``GET /api/v1/devices?limit=100`` as admin), timed;
2. **held**: a second process (``suitkit.sim.push_hold``: asyncio protocols on raw sockets, its
   own open-file limit raised) opens one idle SSE stream (or long-poll, ``--transport
   longpoll``) per device; once all are answered the server's RSS again: memory per connection
   = RSS growth / connections held;
3. **meanwhile**: the same check-in load, downloads and operator requests with every
   connection still held, then a deployment to ``--sample`` held devices and the time until
   each of them saw its notice on its held connection.

Bounded in time: every wait has a deadline; the server and the holder are stopped by their
pids at the end, whatever happened. The server's start-up line (what it says it can hold) is
printed as it said it.

Run: ``.venv/bin/python benchmarks/bench_push.py [--connections 10000] [--seconds 10]
[--transport sse|longpoll] [--sample 100]`` (about 3 minutes for 10,000 on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
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
from bench_checkins import cpu_model, load

from suitkit.sim.control import Console
from suitkit.sim.firmware import build_release, make_keys
from suitkit.sim.push_hold import TRANSPORTS, hold_in_process, raise_open_files
from suitkit.tracker.service import open_db

ADMIN = "bench-push-admin-token-0123456789"
CLIENTS = 8
IMAGE_BYTES = 1024 * 1024
START_TIMEOUT = 120.0
SUITKIT = [sys.executable, "-c", "from suitkit.cli.main import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (``/proc/PID/stat``), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_kernel_kib() -> int:
    """Memory the kernel holds for TCP buffers, all processes (``/proc/net/sockstat``), KiB."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return 0


class Server:
    """``suitkit serve`` as a child process in its own session, stopped by its pid."""

    def __init__(self, folder: Path, author_pub: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "admin.token").write_text(ADMIN)
        self.out = folder / "serve.out"
        self.err = folder / "serve.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [*SUITKIT, "serve", "--data", str(folder / "data"), "--author-anchor",
                 str(author_pub), "--admin-token-file", str(folder / "admin.token"),
                 "--port", str(self.port), "--log-level", "warning"],
                stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"suitkit serve exited: {self.err.read_text()[-2000:]}")
            try:
                httpx.get(f"{self.url}/api/v1/releases", timeout=5)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"suitkit serve did not answer GET {self.url}"
                                       f"/api/v1/releases within {START_TIMEOUT:g} s") from None
                time.sleep(0.1)

    def said(self) -> str:
        return self.out.read_text().strip()

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL to its group."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)


def register(db_url: str, n: int) -> list[tuple[str, str]]:
    """``n`` devices (id, bearer token) registered in the database before the server starts."""
    db = open_db(db_url)
    try:
        devices = [db.register(f"push-{i}") for i in range(n)]
    finally:
        db.engine.dispose()
    return [(device_id, f"{device_id}.{secret}") for device_id, secret in devices]


def served_meanwhile(url: str, devices: list[tuple[str, str]], seconds: float,
                     digest: str) -> dict[str, float]:
    """Check-ins per second over ``seconds``; then the median time of three downloads of the
    image and of three operator requests."""

    async def checkins() -> float:
        clients = [httpx.AsyncClient(base_url=url, timeout=60) for _ in range(CLIENTS)]
        try:
            return await load(clients, devices, seconds, "checkin")
        finally:
            for client in clients:
                await client.aclose()

    rate = asyncio.run(checkins())
    downloads, operator = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(3):
            started = time.perf_counter()
            got = client.get(f"/firmware/{digest}")
            assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == digest
            downloads.append(time.perf_counter() - started)
            started = time.perf_counter()
            listed = client.get("/api/v1/devices", params={"limit": 100},
                                headers={"Authorization": f"Bearer {ADMIN}"})
            assert listed.status_code == 200, listed.text
            operator.append(time.perf_counter() - started)
    return {"checkins": rate, "download": statistics.median(downloads),
            "operator": statistics.median(operator)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--transport", choices=TRANSPORTS, default="sse")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="check-in load before and while the connections are held")
    parser.add_argument("--sample", type=int, default=100,
                        help="held devices a deployment is sent to")
    parser.add_argument("--open-timeout", type=float, default=600.0,
                        help="seconds allowed to open every connection")
    args = parser.parse_args()
    started = time.monotonic()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), Python "
          f"{platform.python_version()}, {platform.platform()}")
    limit = raise_open_files(args.connections + 256)
    print(f"{args.connections} idle {args.transport} connections; this process's open-file "
          f"limit {limit}", flush=True)
    with tempfile.TemporaryDirectory(prefix="suitkit-bench-push-") as tmp:
        folder = Path(tmp)
        keys = make_keys(folder / "keys")
        (folder / "data").mkdir()
        t = time.monotonic()
        devices = register(f"sqlite:///{folder / 'data' / 'tracker.db'}", args.connections)
        print(f"registered {len(devices)} devices in {time.monotonic() - t:.1f} s", flush=True)
        server = Server(folder, keys.author_pub)
        holder = None
        try:
            print(f"server says: {server.said()}", flush=True)
            pid = server.process.pid
            image = os.urandom(IMAGE_BYTES)
            digest = hashlib.sha256(image).hexdigest()
            with Console(server.url, ADMIN) as console:
                release = console.upload(build_release(
                    keys, folder / "release", label="v2", class_name="bench", sequence=2,
                    images=[image], server_url=server.url))
            served_meanwhile(server.url, devices[:64], 1.0, digest)  # warm-up
            before = served_meanwhile(server.url, devices, args.seconds, digest)
            rss_before, kernel_before = rss_kib(pid), tcp_kernel_kib()
            print(f"before: RSS {rss_before / 1024:.1f} MiB; {before['checkins']:.0f} "
                  f"check-ins/s, 1 MiB download {before['download'] * 1000:.0f} ms, operator "
                  f"list {before['operator'] * 1000:.0f} ms", flush=True)

            t = time.monotonic()
            holder = hold_in_process(server.url, devices, args.transport)
            status = holder.wait_opened(args.open_timeout)
            opened_in = time.monotonic() - t
            time.sleep(2.0)  # settle: the last streams' first heartbeat timers armed
            status = holder.status()
            rss_held, kernel_held = rss_kib(pid), tcp_kernel_kib()
            per = (rss_held - rss_before) / max(status.held, 1)
            print(f"held: {status.held} of {len(devices)} in {opened_in:.1f} s (refused or "
                  f"failed: {status.refused or 'none'}); RSS {rss_held / 1024:.1f} MiB: "
                  f"+{(rss_held - rss_before) / 1024:.1f} MiB, {per:.1f} KiB per connection; "
                  f"kernel TCP buffers +{(kernel_held - kernel_before) / 1024:.1f} MiB (both "
                  f"ends)", flush=True)

            cpu, wall = cpu_seconds(pid), time.monotonic()
            time.sleep(args.seconds)
            idle = (cpu_seconds(pid) - cpu) / (time.monotonic() - wall)
            print(f"idle with {status.held} held: the server used {idle * 100:.0f}% of a core "
                  f"(heartbeats every 15 s on each stream)", flush=True)

            during = served_meanwhile(server.url, devices, args.seconds, digest)
            print(f"meanwhile: {during['checkins']:.0f} check-ins/s "
                  f"({during['checkins'] / before['checkins']:.2f}x of before), 1 MiB "
                  f"download {during['download'] * 1000:.0f} ms, operator list "
                  f"{during['operator'] * 1000:.0f} ms", flush=True)

            sample = [device_id for device_id, _ in devices[::max(1, len(devices)
                                                                   // args.sample)]]
            sample = sample[:args.sample]
            sent = time.time()
            with Console(server.url, ADMIN) as console:
                console.deploy(release, sample)
            deployed = time.time() - sent
            deadline = time.monotonic() + 60
            while True:
                status = holder.status()
                seen = [status.changes[d] - sent for d in sample if d in status.changes]
                if len(seen) == len(sample) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            still = holder.status()
            if seen:
                print(f"notices: {len(seen)} of {len(sample)} held devices saw the deployment "
                      f"(the request took {deployed * 1000:.0f} ms): median "
                      f"{statistics.median(seen) * 1000:.0f} ms, slowest "
                      f"{max(seen) * 1000:.0f} ms after it was sent; still held "
                      f"{still.held}, closed by the server {still.closed}", flush=True)
            else:
                print(f"notices: none of {len(sample)} arrived within 60 s")
            print(f"RSS now {rss_kib(pid) / 1024:.1f} MiB; peak "
                  f"{_hwm(pid) / 1024:.1f} MiB", flush=True)
        finally:
            if holder is not None:
                holder.stop()
            server.stop()
    print(f"total {time.monotonic() - started:.0f} s")


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    main()
