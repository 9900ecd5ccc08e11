"""In-process cost of a deployment (``TrackerDB.deploy``) on PostgreSQL, this code against an
earlier revision in the same run (issue #12: the deployment calls took 11 minutes of the
10,000-device fleet's window).

Usage: ``.venv/bin/python benchmarks/bench_deploy.py [--devices 500,10000] [--baseline REV]
[--baseline-max 500] [--rounds 2] [--call 500]``

One PostgreSQL (tests/pg.py, fsync off) serves every measurement. For each fleet size and
round, each code (the baseline's ``src`` from ``git archive REV``, then this tree's) runs in a
child process of its own on a fresh database: it registers the devices (rows written
directly, no credential work), then deploys one release to all of them in calls of ``--call``
devices, as ``POST /api/v1/deployments`` would, and reports the deployment's wall time and
CPU, its own and PostgreSQL's (the postmaster's process tree, ``sim.load.tree_cpu_seconds``).
The baseline runs only up to ``--baseline-max`` devices (the old code's 10,000 take minutes).
The load average is printed with each line: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RELEASE = "ab" * 32


def measure(url: str, devices: int, call: int, postmaster: int) -> dict[str, Any]:
    """In the child: a fleet of ``devices`` on ``url``, then one deployment to all of them."""
    from sqlalchemy import insert  # noqa: PLC0415

    from suitkit.sim.load import tree_cpu_seconds  # noqa: PLC0415
    from suitkit.tracker.model import Device  # noqa: PLC0415
    from suitkit.tracker.service import open_db  # noqa: PLC0415

    db = open_db(url)
    try:
        now = db.now()
        ids = [str(uuid.uuid4()) for _ in range(devices)]
        with db.engine.begin() as connection:
            for start in range(0, devices, 1000):
                connection.execute(insert(Device.__table__), [
                    {"id": i, "name": f"d{start + n}", "credential_hash": "sha256$" + "00" * 32,
                     "created": now, "history_count": 0, "hardware": {}, "tags": []}
                    for n, i in enumerate(ids[start:start + 1000])])
        envelope = f"https://fw.example/envelopes/{RELEASE}"
        db.deploy(RELEASE, envelope, ids[:1])  # connections and compiled statements warm
        pg_before = tree_cpu_seconds(postmaster) or 0.0
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(1, devices, call):
            db.deploy(RELEASE, envelope, ids[start:start + call])
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        pg = (tree_cpu_seconds(postmaster) or 0.0) - pg_before
        assert all(db.pending_update(i) is not None for i in (ids[0], ids[-1]))
        return {"devices": devices, "wall": wall, "cpu": cpu, "postgresql": pg}
    finally:
        db.engine.dispose()


def _source(revision: str, root: Path) -> Path:
    """The ``src`` folder of ``revision`` (git archive), under ``root``."""
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", revision, "src"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root / "src"


def _child(src: Path, url: str, devices: int, call: int, postmaster: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, __file__, "--measure", url, "--devices", str(devices), "--call",
         str(call), "--postmaster", str(postmaster)],
        capture_output=True, text=True, env=env, timeout=3600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the measurement failed ({src}): {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="500,10000")
    parser.add_argument("--baseline", default=None,
                        help="git revision to compare with (e.g. 8fe1538); none: this code only")
    parser.add_argument("--baseline-max", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--call", type=int, default=500)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--postmaster", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, int(args.devices), args.call, args.postmaster)))
        return
    sys.path.insert(0, str(HERE.parent / "tests"))
    from pg import PostgresCluster  # noqa: PLC0415 - tests/pg.py

    cluster = PostgresCluster()
    try:
        postmaster = int((cluster.dir / "data" / "postmaster.pid").read_text().split()[0])
        with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
            codes = {"this": HERE.parent / "src"}
            if args.baseline is not None:
                codes = {args.baseline: _source(args.baseline, Path(tmp)), **codes}
            for devices in (int(n) for n in args.devices.split(",")):
                results: dict[str, list[dict[str, Any]]] = {}
                for _ in range(args.rounds):
                    for name, src in codes.items():  # interleaved: the load hits both
                        if name != "this" and devices > args.baseline_max:
                            continue
                        result = _child(src, cluster.tracker_database(), devices, args.call,
                                        postmaster)
                        result["load"] = os.getloadavg()[0]
                        results.setdefault(name, []).append(result)
                        print(f"{name:>8} {devices:>6} devices: wall {result['wall']:7.2f} s, "
                              f"CPU {result['cpu']:6.2f} s "
                              f"({1000 * result['cpu'] / devices:.2f} ms per device), "
                              f"PostgreSQL {result['postgresql']:6.2f} s; "
                              f"load average {result['load']:.1f}", flush=True)
                if len(results) == 2:
                    old, new = (min(r, key=lambda x: x["cpu"]) for r in results.values())
                    print(f"{devices} devices, best of {args.rounds}: wall "
                          f"{new['wall'] / old['wall']:.3f}x, CPU {new['cpu'] / old['cpu']:.3f}x,"
                          f" PostgreSQL {new['postgresql'] / max(old['postgresql'], 1e-9):.3f}x "
                          f"(this / {args.baseline})", flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
