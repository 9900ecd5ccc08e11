"""server.background.running_server: a real server on a free loopback port, stopped on exit."""

from __future__ import annotations

from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

from suitkit.core import crypto  # noqa: E402
from suitkit.core.verify import TrustAnchors  # noqa: E402
from suitkit.server.app import ServerConfig  # noqa: E402
from suitkit.server.background import running_server  # noqa: E402


def test_serves_while_the_block_runs_and_stops_after(tmp_path: Path) -> None:
    anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
    with running_server(ServerConfig(data_dir=tmp_path, anchors=anchors)) as url:
        assert url.startswith("http://127.0.0.1:")
        response = httpx.get(f"{url}/api/v1/releases", timeout=5)
        assert response.status_code == 200
        assert httpx.get(f"{url}/firmware/{'0' * 64}", timeout=5).status_code == 404
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/api/v1/releases", timeout=2)


def test_connections_are_accepted_with_nagle_off() -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto says TCP; with the default proto 0
    # every response's body waited for the client's delayed ACK (44 ms a request).
    import socket

    from suitkit.server.background import listening_socket

    listener = listening_socket()
    try:
        listener.listen()
        with socket.create_connection(listener.getsockname(), timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.proto == socket.IPPROTO_TCP
    finally:
        listener.close()

