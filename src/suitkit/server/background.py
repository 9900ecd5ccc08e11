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

__all__ = ["running_server"]


@contextmanager
def running_server(config: ServerConfig, *, start_timeout: float = 10.0) -> Iterator[str]:
    """The server for ``config``, running until the block ends; yields ``http://127.0.0.1:N``.

    Raises:
        StorageError: the server did not start in time.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise StorageError(f"the firmware server did not start within {start_timeout} s")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout)
        sock.close()
