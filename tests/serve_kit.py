"""``suitkit serve`` as a user runs it: a real child process on loopback, for CLI-level tests.

``serving(argv)`` starts ``suitkit serve ARGV --port P [--coap-port C]`` on free ports (trying
again with new ports if another process took one between the probe and the bind), waits
(bounded) until it answers HTTP, yields a ``Served`` and stops the process at the end of the
block; ``Served.stdout`` and ``Served.stderr`` (its log) then hold what it wrote. Both go to
files, not pipes: a server that logs every request would block on a full pipe nobody reads.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SUITKIT = [sys.executable, "-c", "from suitkit.cli.main import main; main()"]
_ATTEMPTS = 5


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
            httpx.get(f"{url}/api/v1/releases", timeout=1)
            return True
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"suitkit serve did not start within {timeout} s"
            time.sleep(0.05)
    return False


@contextmanager
def serving(argv: Sequence[str], *, coap: bool = False, timeout: float = 20.0
            ) -> Iterator[Served]:
    """``suitkit serve`` with ``argv`` (everything but the ports) until the block ends."""
    with tempfile.TemporaryDirectory(prefix="serve-kit-") as folder:
        out_file, err_file = Path(folder) / "stdout", Path(folder) / "stderr"
        for attempt in range(_ATTEMPTS):
            port = free_port()
            coap_port = free_port(socket.SOCK_DGRAM) if coap else None
            ports = ["--port", str(port)]
            if coap_port is not None:
                ports += ["--coap-port", str(coap_port)]
            with out_file.open("w") as out, err_file.open("w") as err:
                process = subprocess.Popen([*SUITKIT, "serve", *argv, *ports], stdout=out,
                                           stderr=err, text=True)
            url = f"http://127.0.0.1:{port}"
            if _wait_ready(process, url, timeout):
                break
            process.wait(10)
            error = err_file.read_text()
            assert "address already in use" in error.lower() and attempt < _ATTEMPTS - 1, error
        served = Served(url, coap_port, process, log_file=err_file)
        try:
            yield served
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            served.stdout = out_file.read_text()
            served.stderr = err_file.read_text()
