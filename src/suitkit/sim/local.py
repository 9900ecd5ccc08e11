"""A local ``suitkit serve`` for the demo and the benchmarks: a child process on loopback.

``local_server(folder, author_pub)`` writes an admin token and an upload token to ``folder``,
starts ``suitkit serve`` (the firmware server with the status tracker on SQLite in
``folder/data``) on a free port of 127.0.0.1, waits (bounded) until it answers, yields a
``LocalServer`` and stops the process (SIGTERM, then SIGKILL) when the block ends. Running it
as a process of its own is what a user does, keeps the fleet's threads from competing with the
server for one interpreter lock, and brings whatever ``suitkit serve`` mounts (notifications,
campaigns, the dashboard).
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from suitkit.errors import SuitError
from suitkit.fileio import atomic_write

__all__ = ["LocalServer", "free_port", "local_server", "raise_open_files"]

_MAX_OPEN_FILES = 65536


def raise_open_files() -> int:
    """Raise this process's soft limit of open files to its hard limit (at most 65536): a fleet
    of a thousand streaming devices holds a thousand sockets, and so does its server (a child
    inherits the limit). Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, _MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft
        return wanted
    return soft


@dataclass(frozen=True, slots=True)
class LocalServer:
    url: str
    admin_token: str
    upload_token: str
    data: Path
    log: Path
    pid: int


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    """A UDP port of 127.0.0.1 that was free a moment ago (for ``--lwm2m-port``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_server(folder: Path, author_pub: Path, *, start_timeout: float = 30.0,
                 extra_args: tuple[str, ...] = (), data: Path | None = None,
                 tokens: tuple[str, str] | None = None) -> Iterator[LocalServer]:
    """``suitkit serve`` on a free loopback port until the block ends. ``data``: its data
    folder (default ``folder/data``); ``tokens``: its admin and upload tokens (default: new
    ones). A replica of another local server shares that one's database (``--db``), data
    folder and tokens.

    Raises:
        SuitError: it did not start (the last lines of its log are in the message).
    """
    folder.mkdir(parents=True, exist_ok=True)
    raise_open_files()
    admin, upload = tokens or (secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    data = data or folder / "data"
    atomic_write(folder / "admin.token", admin.encode() + b"\n", mode=0o600)
    atomic_write(folder / "upload.token", upload.encode() + b"\n", mode=0o600)
    log = folder / "server.log"
    last_error = ""
    for _ in range(3):  # the free port may be taken between the check and the bind
        port = free_port()
        argv = [sys.executable, "-m", "suitkit.cli.main", "serve", "--data",
                str(data), "--port", str(port), "--author-anchor", str(author_pub),
                "--admin-token-file", str(folder / "admin.token"),
                "--upload-token-file", str(folder / "upload.token"),
                "--limit-concurrency", "10000", *extra_args]
        with log.open("ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                       stdin=subprocess.DEVNULL, env={**os.environ})
        url = f"http://127.0.0.1:{port}"
        try:
            if _wait_ready(url, admin, process, start_timeout):
                yield LocalServer(url, admin, upload, data, log, process.pid)
                return
            last_error = _tail(log)
        finally:
            _stop(process)
    raise SuitError(f"the local server did not start: {last_error}")


def _wait_ready(url: str, admin: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            response = httpx.get(f"{url}/api/v1/devices?limit=1", timeout=2.0,
                                 headers={"Authorization": f"Bearer {admin}"})
            if response.status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn shuts down gracefully); SIGINT after a second (uvicorn then stops
    waiting for long-polls whose clients are gone); SIGKILL as the last resort."""
    for signal_, wait in ((signal.SIGTERM, 1.0), (signal.SIGINT, 4.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        process.send_signal(signal_)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        return


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-3:]) or "(empty log)"
