"""Run the firmware server in a background thread on a free loopback port (demo, tests).

``running_server(config)`` binds 127.0.0.1 on a port the system picks, starts uvicorn in a
daemon thread, waits (bounded) until it serves, yields its base URL, and stops it on exit.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from suitkit.errors import StorageError
from suitkit.server.app import ServerConfig, create_app
from suitkit.server.guard import Guards, guarded_protocol

__all__ = ["UVICORN_OPTIONS", "listening_socket", "running_server"]

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
