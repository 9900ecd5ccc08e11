"""Run the firmware server in a background thread on a free loopback port (demo, tests), or
in several worker processes on one socket (``suitkit serve --workers N``).

``running_server(config)`` binds 127.0.0.1 on a port the system picks, starts uvicorn in a
daemon thread, waits (bounded) until it serves, yields its base URL, and stops it on exit.
``run_workers(sock, n, worker)`` forks ``n`` processes that each build their own application
and serve the one listening socket (the kernel hands each connection to one of them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

from suitkit.errors import StorageError
from suitkit.server.app import ServerConfig, create_app
from suitkit.server.guard import Guards, guarded_protocol

__all__ = ["UVICORN_OPTIONS", "listening_socket", "run_workers", "running_server"]

_log = logging.getLogger(__name__)

UVICORN_OPTIONS: dict[str, object] = {
    "http": guarded_protocol(Guards()),
    "loop": "asyncio",
    "h11_max_incomplete_event_size": 16 * 1024,
    "timeout_keep_alive": 5,
}
"""How suitkit runs uvicorn everywhere (``suitkit serve``, tests, benchmarks).

- HTTP parsed by h11, not httptools: h11 bounds a request's head (16 KiB here, then 431/400);
  httptools as uvicorn uses it does not, so a client could grow the server's memory with
  endless headers (tests/security/test_server_attacks.py).
- The asyncio event loop, not uvloop: under uvloop, the one-line JSON 500 that the application
  sends for an unexpected exception was lost (the client saw a connection reset), measured
  with uvicorn 0.3x and uvloop 0.2x. The cause, found later: uvicorn closes the connection
  after an unhandled exception, and a fast client had already sent its next request on it.
  The 500 now says ``Connection: close`` (server/app.py); uvloop has not been measured again.
- uvicorn's h11 protocol with ``server.guard``'s head, body and send timeouts and its
  connection cap (which evicts connections idle before their request head first), and NOT
  uvicorn's ``limit_concurrency``: it counts every open connection, so a thousand idle sockets
  made it answer 503 to everyone. Requests in progress are bounded by the application instead
  (``ServerConfig.max_requests``; push streams by the tracker's own caps).
- ``timeout_keep_alive``: idle kept-alive connections close after 5 s.
"""


def listening_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1, for uvicorn to listen on.

    Made with ``IPPROTO_TCP`` named: asyncio turns Nagle's algorithm off (``TCP_NODELAY``) only
    on sockets whose ``proto`` says TCP, and a socket made with the default ``proto`` 0 (and
    every connection accepted on it) kept Nagle on. uvicorn writes a response's head and body
    apart, so the body waited for the client's delayed ACK: 44 ms for every request, a 404
    included, where it now takes about 1 ms.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def running_server(config: ServerConfig, *, start_timeout: float = 60.0) -> Iterator[str]:
    """The server for ``config``, running until the block ends; yields ``http://127.0.0.1:N``.
    ``start_timeout`` is generous: a start-up on a loaded machine took more than 10 s.

    Raises:
        StorageError: the server stopped or did not start in time.
    """
    sock = listening_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning",
                                           lifespan="on", **UVICORN_OPTIONS))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    try:
        while not server.started:
            if not thread.is_alive():
                raise StorageError(f"the firmware server on 127.0.0.1:{port} stopped before "
                                   "it served")
            if time.monotonic() > deadline:
                raise StorageError(f"the firmware server on 127.0.0.1:{port} did not start "
                                   f"within {start_timeout} s")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout)
        sock.close()


def run_workers(sock: socket.socket, workers: int, worker: Callable[[int], int], *,
                stop_timeout: float = 30.0) -> int:
    """Serve ``sock`` from ``workers`` forked processes; the exit status.

    Each child runs ``worker(index)`` (index 0 to ``workers - 1``), which builds everything
    of its own (database engine, hub, threads: nothing of that may exist in this process
    before the fork) and serves ``sock`` until it is told to stop; the child exits with what
    it returns (1 for an exception, logged). This process only waits: SIGTERM or SIGINT is
    passed on to every child, and when one child ends by itself (a crash, a failed start)
    the others are stopped too and its status is returned, so that a supervisor (systemd,
    a container runtime) sees the server go rather than run on with fewer workers. Children
    that have not ended ``stop_timeout`` seconds after SIGTERM are killed.
    """
    children: dict[int, int] = {}
    stopping = False

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, forward)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for index in range(workers):
            pid = os.fork()
            if pid == 0:  # the child: never returns into the caller's code
                code = 1
                try:
                    for signum, handler in previous.items():
                        signal.signal(signum, handler)
                    code = worker(index)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                except BaseException:  # noqa: BLE001 - the child must end here
                    _log.exception("worker %d failed", index)
                finally:
                    logging.shutdown()
                    os._exit(code)
            children[pid] = index
        while children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
                continue
            children.pop(pid, None)
            code = os.waitstatus_to_exitcode(wait_status)
            if not stopping:
                _log.error("worker process %d ended (exit status %d); stopping the others",
                           pid, code)
                status = code if code > 0 else 1
                forward(signal.SIGTERM, None)
                _reap(children, stop_timeout)
                break
    finally:
        if children:
            forward(signal.SIGTERM, None)
            _reap(children, stop_timeout)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


def _reap(children: dict[int, int], timeout: float) -> None:
    """Wait for ``children`` (already sent SIGTERM); SIGKILL the ones left after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while children:
        for pid in list(children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
            children.pop(pid, None)
        if children and time.monotonic() > deadline:
            for pid in list(children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                children.pop(pid, None)
        if children:
            time.sleep(0.05)
