"""``suitkit serve`` as a user runs it: a real child process on loopback, for CLI-level tests.

``serving(argv)`` starts ``suitkit serve ARGV --port P [--coap-port C]`` on free ports (trying
again with new ports if another process took one between the probe and the bind), waits
(bounded) until it answers HTTP, yields a ``Served`` and stops the process at the end of the
block; ``Served.stdout`` and ``Served.stderr`` (its log) then hold what it wrote. Both go to
files, not pipes: a server that logs every request would block on a full pipe nobody reads.

For every child process a test starts (``start_process`` / ``stop_process``): it runs in a new
session (its own process group), it is stopped by its pid and its group in a ``finally``
whatever the test's outcome (SIGTERM, then SIGKILL after a bounded wait), and a readiness wait is
at least ``READY`` seconds and says what it waited for: the suite runs on a busy machine (two
runs of it at once on two shared cores must pass).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SUITKIT = [sys.executable, "-c", "from suitkit.cli.main import main; main()"]
_ATTEMPTS = 5
READY = 60.0
"""The least time a readiness wait allows (a start-up on a loaded machine can take 20 s)."""
STOP = 30.0
"""How long a stopping process gets after SIGTERM, then again after SIGKILL."""


def start_process(argv: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **options)`` in a new session, so that ``stop_process`` can
    stop it with every child it started (its process group)."""
    return subprocess.Popen(list(argv), start_new_session=True, **options)


def stop_process(process: subprocess.Popen[Any], timeout: float = STOP) -> None:
    """Stop ``process`` and its process group by pid: SIGTERM, then SIGKILL after ``timeout``.
    Safe to call twice, and on a process that already exited (its group is still signalled:
    a child it left behind is stopped too)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)  # its group: pgid == pid (start_new_session)
        try:
            process.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    url: str
    coap_port: int | None
    process: subprocess.Popen[str]
    stdout: str = ""
    """What the server printed (filled in when the block ends)."""
    stderr: str = ""
    """Its log (filled in when the block ends; ``log()`` reads it meanwhile)."""
    log_file: Path | None = None

    def log(self) -> str:
        """What the server logged so far."""
        return self.log_file.read_text(errors="replace") if self.log_file else ""


def _wait_ready(process: subprocess.Popen[str], url: str, timeout: float) -> bool:
    """True once ``url`` answers; False if the process exited first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        try:
            httpx.get(f"{url}/api/v1/releases", timeout=5)
            return True
        except httpx.TransportError:
            assert time.monotonic() < deadline, (
                f"suitkit serve did not answer GET {url}/api/v1/releases within {timeout} s")
            time.sleep(0.05)
    return False


@contextmanager
def serving(argv: Sequence[str], *, coap: bool = False, timeout: float = READY
            ) -> Iterator[Served]:
    """``suitkit serve`` with ``argv`` (everything but the ports) until the block ends.

    The readiness wait is ``timeout`` but never less than ``READY``; the process is stopped by
    its pid whatever happens, a failed start included."""
    timeout = max(timeout, READY)
    with tempfile.TemporaryDirectory(prefix="serve-kit-") as folder:
        out_file, err_file = Path(folder) / "stdout", Path(folder) / "stderr"
        for attempt in range(_ATTEMPTS):
            port = free_port()
            coap_port = free_port(socket.SOCK_DGRAM) if coap else None
            ports = ["--port", str(port)]
            if coap_port is not None:
                ports += ["--coap-port", str(coap_port)]
            with out_file.open("w") as out, err_file.open("w") as err:
                process = start_process([*SUITKIT, "serve", *argv, *ports], stdout=out,
                                        stderr=err, text=True)
            url = f"http://127.0.0.1:{port}"
            try:
                ready = _wait_ready(process, url, timeout)
            except BaseException:
                stop_process(process)
                raise
            if ready:
                break
            stop_process(process)
            error = err_file.read_text()
            assert "address already in use" in error.lower() and attempt < _ATTEMPTS - 1, error
        served = Served(url, coap_port, process, log_file=err_file)
        try:
            yield served
        finally:
            stop_process(process)
            served.stdout = out_file.read_text()
            served.stderr = err_file.read_text()
