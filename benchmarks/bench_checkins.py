"""Device check-ins per second on one server process, SQLite and PostgreSQL.

A check-in is what the device agent does on each poll (``suitkit.device.agent``):
``PUT /api/v1/devices/{id}/inventory`` (identity, two components, hardware facts) then
``GET /api/v1/devices/{id}/update`` (200 with the release for a quarter of the devices, which
have a pending deployment; 204 for the rest), each with the device's own bearer credential.

Setup per backend: ``suitkit serve``'s application (firmware server + status tracker routes) on
uvicorn, one worker, in a child process (so the load generator does not share its GIL), on
127.0.0.1; DEVICES devices registered (``TrackerDB.register``, before the server starts);
CONCURRENCY clients (asyncio + httpx, one keep-alive connection each) picking devices
round-robin. PostgreSQL is a throwaway
cluster from a temp dir (``tests/pg.py``: initdb + pg_ctl, fsync off as in the tests); SQLite
is a file in a temp dir (the default ``DATA/tracker.db``).

Baselines, measured in the same run against the same server process: a no-op JSON route
(``GET /bench/noop``, mounted for the benchmark beside the tracker's routes: HTTP + routing +
JSON, no database), and ``GET /api/v1/whoami`` with a device credential (the credential check
alone). The three loads are measured in turn, three rounds, medians printed (a shared machine's
load then moves baseline and check-ins alike). The ratio printed is the time of one check-in
over the time of two no-op requests: what the two requests cost beyond the HTTP stack.

Run: ``.venv/bin/python benchmarks/bench_checkins.py [--seconds 10]`` (about 60 s).
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
from suitkit.server.background import UVICORN_OPTIONS
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router
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


def serve(db_url: str, data: Path, port: int) -> None:
    """Child process: the application ``suitkit serve --admin-token-file`` runs, one worker."""
    noop = APIRouter()

    @noop.get("/bench/noop")
    def _noop() -> dict[str, Any]:
        return {}

    anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
    config = ServerConfig(data_dir=data, anchors=anchors,
                          routers=(create_router(TrackerConfig(db_url, ADMIN)), noop))
    uvicorn.run(create_app(config), host="127.0.0.1", port=port, log_level="warning",
                workers=1, access_log=False, **UVICORN_OPTIONS)  # type: ignore[arg-type]


START_TIMEOUT = 60.0  # seconds; generous: the machine may be busy


class Server:
    def __init__(self, db_url: str, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", db_url, str(data), str(self.port)],
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.communicate()[1][-2000:]}")
            try:
                httpx.get(f"{self.url}/bench/noop", timeout=5).raise_for_status()
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the check-in server did not answer GET {self.url}"
                                       f"/bench/noop within {START_TIMEOUT:g} s") from None
                time.sleep(0.05)

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


def inventory(n: int) -> dict[str, Any]:
    return {"vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
            "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
            "components": [{"id": ["00"], "sequence": n, "digest": "ab" * 32},
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


async def load(clients: list[httpx.AsyncClient], devices: list[tuple[str, str]],
               seconds: float, kind: str) -> float:
    """Operations per second of ``kind`` ("checkin", "whoami", "noop") over ``seconds``, after a
    WARMUP; every answer's status is checked."""
    turn = itertools.cycle(range(len(devices)))
    done = 0
    measuring = False
    stop_at = time.monotonic() + WARMUP + seconds

    async def one(client: httpx.AsyncClient, device_id: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        path = f"/api/v1/devices/{device_id}"
        if kind == "noop":
            response = await client.get("/bench/noop")
            assert response.status_code == 200, response.text
        elif kind == "whoami":
            response = await client.get("/api/v1/whoami", headers=headers)
            assert response.status_code == 200, response.text
        else:
            response = await client.put(f"{path}/inventory", headers=headers,
                                        json=inventory(done))
            assert response.status_code == 200, response.text
            response = await client.get(f"{path}/update", headers=headers)
            assert response.status_code in (200, 204), response.text

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            device_id, token = devices[next(turn)]
            await one(client, device_id, token)
            if measuring:
                done += 1

    async def clock() -> float:
        nonlocal measuring
        await asyncio.sleep(WARMUP)
        measuring, started = True, time.monotonic()
        await asyncio.sleep(seconds)
        measuring = False
        return time.monotonic() - started

    *_, elapsed = await asyncio.gather(*(worker(c) for c in clients), clock())
    if done == 0:
        raise RuntimeError(f"no {kind} completed in {elapsed:.1f} s")
    return done / elapsed


def measure(name: str, db_url: str, data: Path, seconds: float) -> dict[str, float]:
    """Medians over ROUNDS rounds; each round measures the no-op, whoami and check-in loads one
    after the other, so that a change of machine load hits baseline and check-ins alike."""
    devices = register(db_url)
    server = Server(db_url, data)
    spans = (("noop", seconds / ROUNDS / 2), ("whoami", seconds / ROUNDS / 2),
             ("checkin", seconds / ROUNDS))

    async def run() -> list[dict[str, float]]:
        # the clients (and their connections) are made once, outside every measurement
        clients = [httpx.AsyncClient(base_url=server.url, timeout=30)
                   for _ in range(CONCURRENCY)]
        try:
            return [{kind: await load(clients, devices, span, kind) for kind, span in spans}
                    for _ in range(ROUNDS)]
        finally:
            for client in clients:
                await client.aclose()

    try:
        rounds = asyncio.run(run())
    finally:
        server.stop()
    figures = {kind: statistics.median(r[kind] for r in rounds)
               for kind in ("noop", "whoami", "checkin")}
    # one check-in (two requests) over two no-op requests, per round
    ratio = statistics.median((1 / r["checkin"]) / (2 / r["noop"]) for r in rounds)
    spread = ", ".join(f"{r['checkin']:.0f}" for r in rounds)
    print(f"  {name:<10} check-ins {figures['checkin']:6.0f}/s "
          f"({1000 / figures['checkin']:5.1f} ms; rounds {spread}); baselines: no-op "
          f"{figures['noop']:5.0f} req/s, whoami {figures['whoami']:5.0f} req/s; "
          f"check-in / two no-ops {ratio:4.1f}x", flush=True)
    return figures


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
                        help="measuring time of the check-in load per backend (the baselines "
                        "get as much again)")
    parser.add_argument("--serve", nargs=3, metavar=("DB_URL", "DATA", "PORT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], Path(args.serve[1]), int(args.serve[2]))
        return
    started = time.perf_counter()
    sys.path.insert(0, str(HERE.parent / "tests"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), Python "
          f"{platform.python_version()}, {platform.platform()}")
    print(f"device credential check: {hash_secret('x').split('$')[0]} of the secret; "
          f"{DEVICES} devices, {CONCURRENCY} concurrent clients, one uvicorn worker; "
          f"{args.seconds:.0f} s of check-ins per backend")
    with tempfile.TemporaryDirectory(prefix="suitkit-bench-") as tmp:
        measure("SQLite", f"sqlite:///{Path(tmp) / 'tracker.db'}", Path(tmp) / "data-sqlite",
                args.seconds)
        try:
            from pg import PostgresCluster, PostgresMissing  # noqa: PLC0415 - tests/pg.py
        except ImportError as e:
            print(f"  PostgreSQL: skipped ({e})")
        else:
            try:
                cluster = PostgresCluster()
            except PostgresMissing as e:
                print(f"  PostgreSQL: skipped ({e})")
            else:
                try:
                    measure("PostgreSQL", cluster.database(), Path(tmp) / "data-pg",
                            args.seconds)
                finally:
                    cluster.stop()
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
