"""Device check-ins: server CPU per check-in and per no-op request, SQLite and PostgreSQL, one
and several worker processes.

A check-in is what the device agent does on each poll (``suitkit.device.agent``). Two ways are
measured against the same server:

- **checkin**, the one request of issue #12: ``POST /device/v1/{id}/checkin`` with the
  device's inventory digest (its inventory was stored by a first check-in before the
  measurement; nothing changed since, as on almost every poll of a real fleet);
- **pair**, the old way (kept for agents that predate it): ``PUT /device/v1/{id}/inventory``
  (identity, two components, hardware facts; unchanged) then ``GET /device/v1/{id}/update``.

Either answers the release for a quarter of the devices (a pending deployment) and nothing for
the rest, with the device's own bearer credential.

Setup per backend and worker count: ``suitkit serve``'s application (firmware server + status
tracker routes) on uvicorn in a child process, ``--workers``-style (``server.background
.run_workers``: forked processes on one socket) for more than one worker; DEVICES devices
registered (``TrackerDB.register``, before the server starts); CONCURRENCY clients (asyncio +
httpx, one keep-alive connection each) picking devices round-robin. PostgreSQL is a throwaway
cluster from a temp dir (``tests/pg.py``: initdb + pg_ctl, fsync off as in the tests); SQLite
is a file in a temp dir (the default ``DATA/tracker.db``).

**Server CPU** is read from ``/proc/<pid>/stat`` (user + system time) of every server process
(the worker processes and their parent) at the start and end of each measuring window, and
divided by the operations done in it: it does not depend on how busy the machine is, unlike
throughput. Baselines against the same server in the same run: a no-op JSON route
(``GET /bench/noop``, mounted for the benchmark beside the tracker's routes: HTTP + routing +
JSON, no database) and ``GET /api/v1/whoami`` with a device credential. The loads take turns,
three rounds, medians printed. The ratio is a check-in's server CPU over a no-op request's.

Run: ``.venv/bin/python benchmarks/bench_checkins.py [--seconds 10] [--workers 1,2]`` (about
three minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
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
from typing import Any

import httpx
import uvicorn
from fastapi import APIRouter

from suitkit.core import crypto
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig, create_app
from suitkit.server.background import UVICORN_OPTIONS, run_workers
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router
from suitkit.tracker.quotas import Quotas
from suitkit.tracker.service import hash_secret, open_db

HERE = Path(__file__).resolve().parent
ADMIN = "bench-admin-token-0123456789"
DEVICES = 200
CONCURRENCY = 16
PENDING_EVERY = 4  # one device in four has a deployment waiting
ROUNDS = 3
WARMUP = 0.5
RELEASE = "ab" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- the server


def serve(db_url: str, data: Path, port: int, workers: int) -> None:
    """Child process: the application ``suitkit serve --admin-token-file`` runs, on
    ``workers`` processes (``run_workers``, as ``suitkit serve --workers``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)

    def worker(_: int) -> int:
        noop = APIRouter()

        @noop.get("/bench/noop")
        def _noop() -> dict[str, Any]:
            return {}

        anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
        # the old pair PUTs an inventory at every poll: no rate limit in the way
        tracker = TrackerConfig(db_url, ADMIN, quotas=Quotas(inventory_per_minute=0))
        config = ServerConfig(data_dir=data, anchors=anchors,
                              routers=(create_router(tracker), noop))
        server = uvicorn.Server(uvicorn.Config(
            create_app(config), log_level="warning", access_log=False,
            **UVICORN_OPTIONS))  # type: ignore[arg-type]
        server.run(sockets=[sock])
        return 0

    if workers == 1:
        worker(0)
    else:
        sys.exit(run_workers(sock, workers, worker))


START_TIMEOUT = 60.0  # seconds; generous: the machine may be busy


class Server:
    def __init__(self, db_url: str, data: Path, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", db_url, str(data), str(self.port),
             str(workers)],
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.communicate()[1][-2000:]}")
            try:
                httpx.get(f"{self.url}/bench/noop", timeout=5).raise_for_status()
                if len(self.pids()) == workers + (workers > 1):
                    return
                raise httpx.TransportError("not every worker runs yet")
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the check-in server did not answer GET {self.url}"
                                       f"/bench/noop within {START_TIMEOUT:g} s") from None
                time.sleep(0.05)

    def pids(self) -> list[int]:
        """The server's processes: the child and, with workers, its children (/proc)."""
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return [pid, *(int(c) for c in children)]

    def cpu(self) -> float:
        """Seconds of CPU (user + system) the server's processes used so far."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return total

    def stop(self) -> None:
        """Stop the server by its pid and process group (SIGTERM, then SIGKILL)."""
        self.process.terminate()
        try:
            self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- the clients


INVENTORY_DIGEST = "5e" * 32


def inventory() -> dict[str, Any]:
    return {"vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
            "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
            "components": [{"id": ["00"], "sequence": 3, "digest": "ab" * 32},
                           {"id": ["01", "6170"], "sequence": 7, "digest": "cd" * 32}],
            "hardware": {"flash_bytes": 1048576, "ram_bytes": 262144, "board": "nrf52840"}}


def register(db_url: str) -> list[tuple[str, str]]:
    """DEVICES devices (id, bearer token), registered directly in the database before the
    server starts (faster than the admin API; the same ``TrackerDB.register``), a quarter of
    them with a pending deployment."""
    db = open_db(db_url)
    try:
        devices = [db.register(f"bench-{i}") for i in range(DEVICES)]
        db.deploy(RELEASE, "https://fw.example/e.suit",
                  [device_id for device_id, _ in devices[::PENDING_EVERY]])
    finally:
        db.engine.dispose()
    return [(device_id, f"{device_id}.{secret}") for device_id, secret in devices]


KINDS = ("noop", "whoami", "pair", "checkin")


async def one(client: httpx.AsyncClient, device_id: str, token: str, kind: str) -> None:
    """One operation of ``kind``; every answer's status is checked."""
    headers = {"Authorization": f"Bearer {token}"}
    path = f"/device/v1/{device_id}"  # the device API (issue #17)
    if kind == "noop":
        response = await client.get("/bench/noop")
        assert response.status_code == 200, response.text
    elif kind == "whoami":
        response = await client.get("/api/v1/whoami", headers=headers)
        assert response.status_code == 200, response.text
    elif kind == "pair":
        response = await client.put(f"{path}/inventory", headers=headers, json=inventory())
        assert response.status_code == 200, response.text
        response = await client.get(f"{path}/update", headers=headers)
        assert response.status_code in (200, 204), response.text
    else:
        response = await client.post(f"{path}/checkin", headers=headers,
                                     json={"inventory_digest": INVENTORY_DIGEST})
        assert response.status_code == 200, response.text
        if response.json()["send_inventory"]:
            response = await client.post(f"{path}/checkin", headers=headers, json={
                "inventory_digest": INVENTORY_DIGEST, "inventory": inventory()})
            assert response.status_code == 200, response.text


async def load(clients: list[httpx.AsyncClient], devices: list[tuple[str, str]],
               seconds: float, kind: str, server: Server) -> tuple[float, float]:
    """(operations per second, server CPU seconds per operation) of ``kind`` over
    ``seconds``, after a WARMUP."""
    turn = itertools.cycle(range(len(devices)))
    done = 0
    measuring = False
    stop_at = time.monotonic() + WARMUP + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            device_id, token = devices[next(turn)]
            await one(client, device_id, token, kind)
            if measuring:
                done += 1

    async def clock() -> tuple[float, float]:
        nonlocal measuring
        await asyncio.sleep(WARMUP)
        measuring, started, cpu = True, time.monotonic(), server.cpu()
        await asyncio.sleep(seconds)
        measuring = False
        return time.monotonic() - started, server.cpu() - cpu

    *_, (elapsed, cpu) = await asyncio.gather(*(worker(c) for c in clients), clock())
    if done == 0:
        raise RuntimeError(f"no {kind} completed in {elapsed:.1f} s")
    return done / elapsed, cpu / done


def measure(name: str, db_url: str, data: Path, seconds: float, workers: int
            ) -> dict[str, float]:
    """Medians over ROUNDS rounds; each round measures every load in turn, so that a change
    of machine load hits baseline and check-ins alike."""
    devices = register(db_url)
    server = Server(db_url, data, workers)
    spans = {"noop": seconds / ROUNDS / 2, "whoami": seconds / ROUNDS / 2,
             "pair": seconds / ROUNDS, "checkin": seconds / ROUNDS}

    async def run() -> list[dict[str, tuple[float, float]]]:
        # the clients (and their connections) are made once, outside every measurement
        clients = [httpx.AsyncClient(base_url=server.url, timeout=30)
                   for _ in range(CONCURRENCY)]
        try:
            # every device's first check-in stores its inventory (as a real first poll does)
            for device_id, token in devices:
                await one(clients[0], device_id, token, "checkin")
            return [{kind: await load(clients, devices, spans[kind], kind, server)
                     for kind in KINDS} for _ in range(ROUNDS)]
        finally:
            for client in clients:
                await client.aclose()

    try:
        rounds = asyncio.run(run())
    finally:
        server.stop()
    rate = {kind: statistics.median(r[kind][0] for r in rounds) for kind in KINDS}
    cpu = {kind: statistics.median(r[kind][1] for r in rounds) for kind in KINDS}
    ratio = {kind: statistics.median(r[kind][1] / r["noop"][1] for r in rounds)
             for kind in KINDS}
    label = f"{name}, {workers} worker{'s' if workers > 1 else ''}"
    print(f"  {label:<24} no-op {cpu['noop'] * 1e3:5.2f} ms CPU ({rate['noop']:5.0f}/s); "
          f"whoami {cpu['whoami'] * 1e3:5.2f} ms ({ratio['whoami']:3.1f}x)", flush=True)
    for kind, what in (("checkin", "check-in (POST .../checkin)"),
                       ("pair", "old pair (PUT inventory + GET update)")):
        spread = ", ".join(f"{r[kind][1] * 1e3:.2f}" for r in rounds)
        print(f"    {what:<40} {cpu[kind] * 1e3:5.2f} ms server CPU (rounds {spread}); "
              f"{ratio[kind]:4.1f}x a no-op; {rate[kind]:5.0f}/s", flush=True)
    return cpu


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measuring time of each check-in load per backend and worker "
                        "count (the baselines get as much again)")
    parser.add_argument("--workers", default="1,2",
                        help="worker process counts to measure, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--serve", nargs=4, metavar=("DB_URL", "DATA", "PORT", "WORKERS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], Path(args.serve[1]), int(args.serve[2]), int(args.serve[3]))
        return
    started = time.perf_counter()
    sys.path.insert(0, str(HERE.parent / "tests"))
    counts = [int(n) for n in args.workers.split(",")]
    backends = args.backends.split(",")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), Python "
          f"{platform.python_version()}, {platform.platform()}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"device credential check: {hash_secret('x').split('$')[0]} of the secret; "
          f"{DEVICES} devices, {CONCURRENCY} concurrent clients; {args.seconds:.0f} s of "
          "each check-in load per backend and worker count")
    with tempfile.TemporaryDirectory(prefix="suitkit-bench-") as tmp:
        for workers in counts:
            if "sqlite" in backends:
                base = Path(tmp) / f"sqlite-{workers}"
                base.mkdir()
                measure("SQLite", f"sqlite:///{base / 'tracker.db'}", base / "data",
                        args.seconds, workers)
            if "postgresql" not in backends:
                continue
            try:
                from pg import PostgresCluster, PostgresMissing  # noqa: PLC0415 - tests/pg.py
            except ImportError as e:
                print(f"  PostgreSQL: skipped ({e})")
                continue
            try:
                cluster = PostgresCluster()
            except PostgresMissing as e:
                print(f"  PostgreSQL: skipped ({e})")
                continue
            try:
                measure("PostgreSQL", cluster.database(), Path(tmp) / f"data-pg-{workers}",
                        args.seconds, workers)
            finally:
                cluster.stop()
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
