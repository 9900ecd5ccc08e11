"""A fleet of light simulated devices updated through local servers (``suitkit sim fleet``).

suitkit: ``sim.load.run_load`` (``sim.swarm``: every device a small object in one asyncio loop,
real verification and SUIT processing, the agent's requests) against ``suitkit serve`` child
processes on loopback: one on SQLite, and one (or ``--replicas N``) on a throwaway PostgreSQL
when ``initdb`` is installed (``tests/pg.py``). N devices are registered, connect in the mix
given, v2 is deployed to all of them at once, and the figures are the time from the deployment
until 50/90/99/100 % were updated, the requests in that window, and the CPU seconds of the
server processes (``/proc/<pid>/stat``) next to the simulator's own.

Baseline, in the same run: the server's CPU. The simulator is "not the bottleneck" when its CPU
over the update window is a small fraction of the server's (the issue's starting point: twice
the server's). A second baseline for the HTTP client alone: the same GET, made ``--requests``
times by 16 concurrent callers, with httpx's ``AsyncClient`` and with ``sim.wire.Pool``,
client CPU per request (``time.process_time``; the server is another process).

Run: ``.venv/bin/python benchmarks/bench_fleet.py [--devices 1000] [--mix poll=1]
[--large 10000 --large-mix poll=1,sse=1,hybrid=1] [--backends sqlite,postgresql]
[--replicas 2] [--front nginx|none] [--no-access-log] [--json FILE]``.
On PostgreSQL, ``--replicas`` servers (2 by default) share the database and one data folder
(the firmware files), behind one nginx (when installed; ``--front none`` without) configured
from suitkit's own template (``nginx_accel_config``, as ``tests/nginx_kit.py``; the replicas
run ``--accel-redirect``): round robin, nginx sends the firmware files. Notices cross the
replicas through PostgreSQL (LISTEN/NOTIFY). Besides the servers' CPU, the CPU of PostgreSQL's
and nginx's process trees is measured over the same window, and the server CPU per device
updated is printed first: on a shared machine it moves far less than the times do. The load
average is printed with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from suitkit.sim.firmware import make_keys
from suitkit.sim.load import run_load
from suitkit.sim.local import LocalServer, local_server
from suitkit.sim.swarm import parse_mix
from suitkit.sim.wire import Pool

HERE = Path(__file__).resolve().parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file()
                                  else None)
_PREFIX = "/_suitkit_blobs/"


async def _client_cost(url: str, path: str, requests: int) -> dict[str, float]:
    """Client CPU microseconds per GET of ``path``: httpx.AsyncClient, then sim.wire.Pool."""
    callers = 16
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(
            max_connections=callers, max_keepalive_connections=callers)) as client:

        async def with_httpx(n: int) -> None:
            for _ in range(n):
                response = await client.get(path)
                assert response.status_code == 200, response.status_code

        await with_httpx(20)
        cpu = time.process_time()
        await asyncio.gather(*(with_httpx(requests // callers) for _ in range(callers)))
        out["httpx_us"] = (time.process_time() - cpu) / requests * 1e6
    pool = Pool(url, callers)
    try:
        async def with_wire(n: int) -> None:
            for _ in range(n):
                answer = await pool.request("GET", path)
                assert answer.status == 200, answer.status

        await with_wire(20)
        cpu = time.process_time()
        await asyncio.gather(*(with_wire(requests // callers) for _ in range(callers)))
        out["wire_us"] = (time.process_time() - cpu) / requests * 1e6
    finally:
        pool.close()
    return out


@dataclass
class _Topology:
    servers: list[LocalServer]
    urls: list[str]
    """What the devices and the operator talk to: nginx's URL, or the servers'."""
    side: dict[str, int] = field(default_factory=dict)
    """Root pids of the other processes whose CPU is measured (postgresql, nginx)."""


@contextlib.contextmanager
def _servers(root: Path, author_pub: Path, backend: str, replicas: int, *, front: str,
             access_log: bool, devices: int) -> Iterator[_Topology]:
    """The servers (and PostgreSQL, and nginx in front of them), stopped when the block ends."""
    with contextlib.ExitStack() as stack:
        extra: tuple[str, ...] = () if access_log else ("--log-level", "warning")
        side: dict[str, int] = {}
        if backend == "postgresql":
            sys.path.insert(0, str(HERE.parent / "tests"))
            from pg import PostgresCluster  # noqa: PLC0415 - tests/pg.py

            cluster = PostgresCluster()
            stack.callback(cluster.stop)
            extra += ("--db", cluster.database())
            side["postgresql"] = int((cluster.dir / "data" / "postmaster.pid").read_text()
                                     .split()[0])
        if front == "nginx":
            extra += ("--accel-redirect", _PREFIX)
        first = stack.enter_context(local_server(root / "server", author_pub,
                                                 start_timeout=60, extra_args=extra))
        servers = [first]
        for i in range(1, replicas):  # same database, same firmware files, same tokens
            servers.append(stack.enter_context(local_server(
                root / f"replica-{i}", author_pub, start_timeout=60, extra_args=extra,
                data=first.data, tokens=(first.admin_token, first.upload_token))))
        urls = [s.url for s in servers]
        if front == "nginx":
            sys.path.insert(0, str(HERE.parent / "tests"))
            from nginx_kit import nginx_in_front  # noqa: PLC0415 - tests/nginx_kit.py

            # each device may hold a stream or a long-poll: two connections of nginx's
            folder = root / "nginx"
            urls = [stack.enter_context(nginx_in_front(
                folder, tuple(urls), first.data / "blobs",
                connections=max(1024, 2 * devices + 512)))]
            side["nginx"] = int((folder / "nginx.pid").read_text().split()[0])
        yield _Topology(servers, urls, side)


def run(devices: int, mix: dict[str, float], backend: str, *, replicas: int,
        concurrency: int, poll_interval: float, long_poll: float, safety_interval: float,
        client_requests: int, front: str, access_log: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        keys = make_keys(root / "keys")
        with _servers(root, keys.author_pub, backend, replicas, front=front,
                      access_log=access_log, devices=devices) as topology:
            servers, urls = topology.servers, topology.urls
            result = asyncio.run(run_load(
                root, urls, servers[0].admin_token, servers[0].upload_token, devices, mix=mix,
                keys=keys, concurrency=concurrency, poll_interval=poll_interval,
                long_poll=long_poll, safety_interval=safety_interval, timeout=3600.0,
                server_pids=[s.pid for s in servers], side_pids=topology.side))
            doc = result.as_json()
            if client_requests:
                image = next(iter((root / "firmware").rglob("v2-0.bin")))
                path = f"/firmware/{hashlib.sha256(image.read_bytes()).hexdigest()}"
                doc["client_cost"] = asyncio.run(_client_cost(servers[0].url, path,
                                                              client_requests))
            doc["server_log_errors"] = [
                line[:300] for server in servers for line in server.log.read_text(
                    errors="replace").splitlines()
                if " 500 " in line or " 503 " in line or "ERROR" in line or "Error" in line][:10]
            nginx_log = root / "nginx" / "error.log"
            if nginx_log.is_file():
                doc["server_log_errors"] += [
                    f"nginx: {line[:300]}" for line in nginx_log.read_text(
                        errors="replace").splitlines() if "[error]" in line or "[crit]" in line
                ][:10]
        doc["backend"], doc["replicas"] = backend, len(servers)
        doc["front"], doc["access_log"] = front, access_log
        doc["simulator_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        doc["load_average"] = [round(x, 1) for x in os.getloadavg()]
        return doc
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _line(doc: dict[str, Any], poll_interval: float) -> str:
    window, cpu, p = doc["window"], doc["cpu"]["window"], doc["percentiles"]
    server, own = cpu["server_seconds"], cpu["simulator_seconds"]
    ratio = f"{own / server:.2f}" if server else "?"
    mix = ",".join(f"{k}={v:g}" for k, v in doc["mix"].items())
    updated = doc["outcomes"].get("updated", 0)
    per_update = f"{server / updated * 1000:.1f} ms" if server and updated else "?"
    side = "".join(f", {name} {seconds} s" for name, seconds in
                   cpu.get("side_seconds", {}).items())
    front = " behind nginx" if doc["front"] == "nginx" else ""
    log = "" if doc["access_log"] else ", access log off"
    return (f"{doc['backend']} x{doc['replicas']}{front}{log}, {doc['devices']} devices "
            f"({mix}): **server CPU per device updated {per_update}**"
            f" (load average {doc['load_average'][0]}/{doc['load_average'][1]}); updated "
            f"in {doc['update_seconds']:.1f} s (50% {p['p50']} s, 90% {p['p90']} s, 99% "
            f"{p['p99']} s); outcomes {doc['outcomes']}; {window['requests']} requests in the "
            f"window ({window['requests_per_second']}/s) by kind {window['by_kind']}, server "
            f"errors {window['server_errors']}, transport errors "
            f"{window['transport_errors']} {window['transport_errors_by_kind']}; CPU in the "
            f"window: server {server} s{side}, simulator "
            f"{own} s (simulator/server {ratio}); registration {doc['register_seconds']:.1f} s,"
            f" set up {doc['setup_seconds']:.1f} s; poll interval {poll_interval:g} s; peak "
            f"RSS of the simulator {doc['simulator_rss_mb']} MB; load "
            f"average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--mix", default="poll=1")
    parser.add_argument("--large", type=int, default=0,
                        help="also a fleet of this many devices (e.g. 10000)")
    parser.add_argument("--large-mix", default="poll=1,sse=1,hybrid=1")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--replicas", type=int, default=2,
                        help="servers on PostgreSQL (SQLite runs one)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--poll-interval", type=float, default=10.0)
    parser.add_argument("--large-poll-interval", type=float, default=120.0)
    parser.add_argument("--long-poll", type=float, default=55.0)
    parser.add_argument("--safety-interval", type=float, default=300.0)
    parser.add_argument("--client-requests", type=int, default=4000)
    parser.add_argument("--front", choices=("nginx", "none"), default=None,
                        help="nginx in front of the PostgreSQL replicas (the default when "
                             "nginx is installed; SQLite runs without it)")
    parser.add_argument("--no-access-log", action="store_true",
                        help="the servers without their access log (--log-level warning)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    # Ctrl-C, SIGINT or SIGTERM (`timeout`, `kill`) stops the runs cleanly (servers, nginx,
    # PostgreSQL), also when the benchmark was started in the background, where the shell
    # hands it SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.system()} {platform.release()}; load "
          f"average {os.getloadavg()[0]:.1f} at the start")
    runs = [(args.devices, parse_mix(args.mix))] if args.devices > 0 else []
    if args.large > 0:
        runs.append((args.large, parse_mix(args.large_mix)))
    results = []
    for backend in args.backends.split(","):
        if backend == "postgresql" and not (shutil.which("initdb")
                                            or list(Path("/usr/lib/postgresql").glob(
                                                "*/bin/initdb"))):
            print("postgresql: skipped (initdb is not installed: apt-get install postgresql)")
            continue
        for i, (n, mix) in enumerate(runs):
            interval = (args.poll_interval if i == 0 and args.devices > 0
                        else args.large_poll_interval)
            front = args.front or ("nginx" if backend == "postgresql" and NGINX else "none")
            doc = run(n, mix, backend, replicas=args.replicas if backend == "postgresql" else 1,
                      concurrency=args.concurrency, poll_interval=interval,
                      long_poll=args.long_poll, safety_interval=args.safety_interval,
                      client_requests=args.client_requests if not results else 0,
                      front=front, access_log=not args.no_access_log)
            results.append(doc)
            if "client_cost" in doc:
                cost = doc["client_cost"]
                print(f"HTTP client CPU per GET (12 KiB image, 16 callers): httpx.AsyncClient "
                      f"{cost['httpx_us']:.0f} us, sim.wire {cost['wire_us']:.0f} us "
                      f"({cost['httpx_us'] / cost['wire_us']:.1f}x)")
            print(_line(doc, interval), flush=True)
            for line in doc["server_log_errors"]:
                print(f"  server log: {line}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
