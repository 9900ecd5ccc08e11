"""Image download throughput: nginx alone, suitkit alone, and nginx in front of suitkit.

Three servers, measured in the same run, interleaved (round after round, the three in turn):

- **nginx direct**, the baseline: nginx (``/usr/sbin/nginx``, ``worker_processes 1``, sendfile)
  serving the image files at ``/firmware/<sha256>`` from a directory of its own;
- **suitkit alone**: ``suitkit serve`` (uvicorn, one process; ``GET /firmware/{sha256}``:
  whole files by ``sendfile`` through the ASGI pathsend extension, ETag, Cache-Control, Range);
- **nginx + suitkit (accel)**: a second ``suitkit serve --accel-redirect /_suitkit_blobs/`` on
  the same data directory behind nginx configured from ``suitkit/server/nginx-accel.conf``:
  suitkit checks each request and answers ``X-Accel-Redirect``, nginx sends the blob.

The two nginx paths are **one nginx process** (one worker, one ``http {}`` block: the same
sendfile, tcp_nopush, buffers and keep-alive settings), two ``server {}`` blocks on two ports:
the comparison is of the paths, not of two nginx instances. All listen on free loopback ports.
Each URL is checked first (same SHA-256 from all three), then loaded with ``wrk -t1 -c4``
full-file GETs for a few seconds (a Python httpx client with 4 threads if wrk is missing), the
same client for all.

On a shared machine one measurement can swing by 3x, so each round measures the servers back to
back, in an order that alternates from round to round (forward, then backward: a drift of the
machine's load weighs on all alike), and nginx direct twice per round (first and last): the
ratio of those two, the **A/A ratio**, is the noise of the run. The figures are the medians of
the per-round ratios (each server to the nginx direct measured in the same round), with their
range, next to the A/A ratio's range: a ratio whose range is inside the A/A range is noise.

Run: ``.venv/bin/python benchmarks/bench_download.py [--duration SECONDS] [--rounds N]`` (about
2 minutes with the defaults, 2 s x 7 rounds x 4 measurements x 2 sizes). Needs nginx
(``apt-get install nginx``); wrk (``apt-get install wrk``) is optional.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from suitkit.core import crypto
from suitkit.server.app import nginx_accel_config
from suitkit.server.store import BlobStore

MiB = 1024 * 1024
NGINX = "/usr/sbin/nginx"
WRK = "/usr/bin/wrk"
SUITKIT = [sys.executable, "-c", "from suitkit.cli.main import main; main()"]
CONNECTIONS = 4
START_TIMEOUT = 60.0

ACCEL_PREFIX = "/_suitkit_blobs/"
NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
{servers}
}}
"""
NGINX_DIRECT = """\
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location /firmware/ {{ etag on; }}
    }}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_image(path: Path, size: int) -> str:
    """``size`` pseudo-random bytes written to ``path``; their SHA-256 (hex)."""
    block = hashlib.shake_256(f"suitkit download bench {size}".encode()).digest(MiB)
    hasher = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(0, size, MiB):
            piece = bytes([i // MiB % 251]) + block[1:min(MiB, size - i)]
            f.write(piece)
            hasher.update(piece)
    return hasher.hexdigest()


def wait_until_serving(url: str, process: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode} before serving")
        try:
            if httpx.head(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not serve {url} within {START_TIMEOUT:g} s")
        time.sleep(0.05)


@contextmanager
def process(args: list[str], url: str, what: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        wait_until_serving(url, child, what)
        yield
    finally:  # by pid, then its whole process group (nginx's workers)
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)


def suitkit_data(root: Path, images: list[Path]) -> Path:
    """A data directory under ``root`` holding ``images`` as blobs, and an author key."""
    store = BlobStore(root / "data")
    for image in images:
        with image.open("rb") as f:
            store.put_blob(f)
    key = crypto.generate_private_key("ES256")
    (root / "author.pub").write_bytes(crypto.public_key_to_pem(key.public_key()))
    return root / "data"


@contextmanager
def suitkit_server(root: Path, first: str, *options: str, name: str = "suitkit"
                   ) -> Iterator[str]:
    """``suitkit serve OPTIONS`` on the data directory of ``suitkit_data(root)``; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process([*SUITKIT, "serve", "--data", str(root / "data"), "--author-anchor",
                  str(root / "author.pub"), "--port", str(port), *options],
                 f"{url}/firmware/{first}", f"suitkit serve {' '.join(options)}".strip(),
                 root / f"{name}.log"):
        yield url


@contextmanager
def nginx(root: Path, servers: str, probe: str, what: str) -> Iterator[None]:
    """nginx from the prefix ``root`` with ``servers`` in its http block, until ``probe``
    answers 200."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "nginx.conf").write_text(NGINX_MAIN.format(root=root, servers=servers))
    with process([NGINX, "-p", str(root), "-e", str(root / "error.log"), "-c",
                  str(root / "nginx.conf")], probe, what, root / "nginx.log"):
        yield


@contextmanager
def nginx_both(root: Path, images: list[Path], upstream: str, blobs: Path, first: str
               ) -> Iterator[tuple[str, str]]:
    """One nginx: serving ``images`` at /firmware/<sha256> from a directory of its own
    (direct), and in front of the suitkit at ``upstream`` (run with --accel-redirect),
    configured from suitkit's template, sending the blobs of ``blobs`` (accel); their URLs."""
    (root / "www" / "firmware").mkdir(parents=True)
    for image in images:
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        os.link(image, root / "www" / "firmware" / digest)
    direct_port, accel_port = free_port(), free_port()
    direct = f"http://127.0.0.1:{direct_port}"
    accel = f"http://127.0.0.1:{accel_port}"
    servers = NGINX_DIRECT.format(root=root.resolve(), port=direct_port) + nginx_accel_config(
        listen=f"127.0.0.1:{accel_port}", upstreams=(upstream.removeprefix("http://"),),
        blobs=blobs.resolve(), state=root.resolve(), prefix=ACCEL_PREFIX)
    with nginx(root, servers, f"{accel}/firmware/{first}", "nginx"):
        wait_until_serving(f"{direct}/firmware/{first}", None, "nginx direct")
        yield direct, accel


_UNITS = {"B": 1, "KB": 1024, "MB": MiB, "GB": 1024 * MiB}


def run_wrk(url: str, duration: float) -> tuple[float, float]:
    """(MB/s, requests/s) of full-file GETs with wrk."""
    done = subprocess.run([WRK, "-t1", f"-c{CONNECTIONS}", f"-d{duration:g}s", url],
                          capture_output=True, text=True, timeout=duration + 60, check=True)
    transfer = re.search(r"Transfer/sec:\s*([\d.]+)([KMG]?B)", done.stdout)
    requests = re.search(r"Requests/sec:\s*([\d.]+)", done.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", done.stdout)
    if transfer is None or requests is None:
        raise SystemExit(f"cannot read wrk's output:\n{done.stdout}")
    if errors is not None:
        raise SystemExit(f"wrk saw errors against {url}:\n{done.stdout}")
    return (float(transfer.group(1)) * _UNITS[transfer.group(2)] / 1e6,
            float(requests.group(1)))


def run_httpx(url: str, duration: float) -> tuple[float, float]:
    """(MB/s, requests/s) of full-file GETs with httpx on CONNECTIONS threads (no wrk)."""
    total = [0, 0]
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < stop:
                got = 0
                with client.stream("GET", url) as response:
                    response.raise_for_status()
                    for chunk in response.iter_raw(MiB):
                        got += len(chunk)
                with lock:
                    total[0] += got
                    total[1] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return total[0] / elapsed / 1e6, total[1] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the servers")
    parser.add_argument("--sizes-mib", default="1,16", help="image sizes in MiB, comma separated")
    options = parser.parse_args()
    if not Path(NGINX).exists():
        raise SystemExit("nginx is missing: apt-get install nginx")
    load = run_wrk if Path(WRK).exists() else run_httpx
    client = (f"wrk -t1 -c{CONNECTIONS}" if load is run_wrk
              else f"httpx, {CONNECTIONS} threads (install wrk for the usual figures)")
    sizes = [int(s) for s in options.sizes_mib.split(",")]
    print(f"image download throughput, full-file GETs, {client}, {options.duration:g} s each, "
          f"{options.rounds} rounds interleaved (order alternating, nginx direct first and "
          f"last); {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average {_load()}")
    names = ("nginx direct", "suitkit alone", "nginx+suitkit accel", "nginx direct again")
    with tempfile.TemporaryDirectory(prefix="suitkit-bench-download-") as temp:
        root = Path(temp)
        (root / "images").mkdir()
        images, digests = [], []
        for size in sizes:
            path = root / "images" / f"{size}.bin"
            digests.append(write_image(path, size * MiB))
            images.append(path)
        (root / "suitkit").mkdir()
        data = suitkit_data(root / "suitkit", images)
        with suitkit_server(root / "suitkit", digests[0]) as alone, \
                suitkit_server(root / "suitkit", digests[0], "--accel-redirect", ACCEL_PREFIX,
                               name="suitkit-accel") as behind, \
                nginx_both(root / "nginx", images, behind, data / "blobs",
                           digests[0]) as (direct, accel):
            urls = (direct, alone, accel)
            print(f"{'image':>9} | {'round':>5} | " + " | ".join(f"{n:>20}" for n in names))
            for size, digest in zip(sizes, digests, strict=True):
                for url in urls:  # same bytes from all, then warm caches
                    body = httpx.get(f"{url}/firmware/{digest}", timeout=30).content
                    if hashlib.sha256(body).hexdigest() != digest:
                        raise SystemExit(f"{url} served other bytes than the image")
                figures: list[list[float]] = [[] for _ in names]
                for number in range(options.rounds):
                    # direct first and last; the two others in an order that alternates
                    middle = [1, 2] if number % 2 == 0 else [2, 1]
                    for i in (0, *middle, 3):
                        url = urls[i] if i < 3 else direct
                        figures[i].append(load(f"{url}/firmware/{digest}", options.duration)[0])
                    print(f"{size:>5} MiB | {number + 1:>5} | "
                          + " | ".join(f"{f[-1]:>15.0f} MB/s" for f in figures))
                medians = [statistics.median(f) for f in figures]
                print(f"{size:>5} MiB | {'med.':>5} | "
                      + " | ".join(f"{m:>15.0f} MB/s" for m in medians))
                # per round: each server to the mean of the two nginx direct measurements
                base = [(a + b) / 2 for a, b in zip(figures[0], figures[3], strict=True)]
                alone_r = [x / b for x, b in zip(figures[1], base, strict=True)]
                accel_r = [x / b for x, b in zip(figures[2], base, strict=True)]
                same_r = [b / a for a, b in zip(figures[0], figures[3], strict=True)]
                print(f"{size:>5} MiB | per-round ratios to nginx direct (median, range): "
                      f"suitkit alone {_spread(alone_r)}, nginx+suitkit accel "
                      f"{_spread(accel_r)}; A/A (nginx direct last / first) "
                      f"{_spread(same_r)}; load average {_load()}")


def _spread(values: list[float]) -> str:
    return (f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
