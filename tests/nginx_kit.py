"""Real nginx in front of ``suitkit serve --accel-redirect`` (tests of docs/server.md "Scale out").

``nginx_in_front(folder, upstreams, blobs)`` writes a whole nginx configuration: a small main
part (no daemon, one worker, every path under ``folder``) around suitkit's own template,
``suitkit.server.app.nginx_accel_config`` (the one docs/server.md shows and
bench_download.py uses), starts ``/usr/sbin/nginx`` on a free loopback port, waits (bounded,
``serve_kit.READY``) until it answers, yields its URL and stops it by its pid (and its process
group: the worker) in a ``finally``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from serve_kit import READY, free_port, start_process, stop_process
from suitkit.server.app import nginx_accel_config

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PREFIX = "/_suitkit_blobs/"

_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {files};
{user}
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    default_type application/octet-stream;
{servers}
}}
"""


def have_nginx() -> bool:
    return Path(NGINX).is_file()


@contextmanager
def nginx_in_front(folder: Path, upstreams: tuple[str, ...], blobs: Path, *,
                   connections: int = 256) -> Iterator[str]:
    """nginx in front of the suitkit replicas ``upstreams`` (``http://host:port``) sending the
    blobs of ``blobs``; yields its URL (its master's pid is in ``folder/nginx.pid``).
    ``connections``: its worker's connections (a held client stream is two: the client's and
    the replica's)."""
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()
    for attempt in range(5):
        port = free_port()
        servers = nginx_accel_config(
            listen=f"127.0.0.1:{port}", upstreams=tuple(u.removeprefix("http://")
                                                        for u in upstreams),
            blobs=blobs.resolve(), state=root, prefix=PREFIX)
        # the worker reads the blobs and the test's private temporary folder: as root, it
        # runs as root (nginx's default user, nobody, may not enter pytest's tmp_path)
        user = "user root;" if os.geteuid() == 0 else ""
        (root / "nginx.conf").write_text(_MAIN.format(
            root=root, servers=servers, user=user, connections=connections,
            files=connections * 2 + 64))
        with (root / "nginx.out").open("w") as out:
            process = start_process([NGINX, "-p", str(root), "-e", str(root / "error.log"),
                                     "-c", str(root / "nginx.conf")], stdout=out,
                                    stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + READY
            while process.poll() is None:
                try:
                    httpx.get(f"{url}/_ready", timeout=5)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, (
                        f"nginx did not answer GET {url}/_ready within {READY} s")
                    time.sleep(0.05)
            if process.poll() is None:
                try:
                    yield url
                finally:
                    stop_process(process)
                return
        finally:
            stop_process(process)
        error = (root / "error.log").read_text(errors="replace")
        assert "Address already in use" in error and attempt < 4, error
