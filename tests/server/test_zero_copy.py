"""Whole-file downloads by ``sendfile`` (issue #12 item 1): the guarded protocol offers the ASGI
``http.response.pathsend`` extension and sends the file with ``loop.sendfile``.

Starlette's ``FileResponse`` sends a whole file by its path when the server offers the
extension (ranges and HEAD still go by reads). What must hold: the extension is offered on
every HTTP request of the guarded protocol; whole files, heads, ranges and several downloads on
one kept-alive connection come back byte for byte (h11 still frames them: Content-Length
counted); a client that goes away in the middle is no error in the log and gives its download
place back; a client that stops reading is aborted after the send timeout
(``test_guard.test_a_response_nobody_reads_is_aborted``, now on this path).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

from fastapi import APIRouter, Request

from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.server.guard import PATHSEND, SENDFILE_PIECE
from suitkit.server.store import BlobStore

SIZE = 5 * SENDFILE_PIECE + 4321  # several pieces and a short last one
BIG = 64 * SENDFILE_PIECE  # more than the kernel's socket buffers take at once


def big() -> bytes:
    return hashlib.shake_256(b"big").digest(BIG)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, bytes, str]]:
    """(URL, a blob's bytes, its digest) of a server with one download place; it also has a
    blob of ``BIG`` bytes (``big_digest``)."""
    probe = APIRouter()

    @probe.get("/probe/extensions")
    async def extensions(request: Request) -> dict[str, list[str]]:
        return {"extensions": sorted(request.scope.get("extensions") or {})}

    blob = hashlib.shake_256(b"zero copy").digest(SIZE)
    store = BlobStore(tmp_path / "data")
    digest = store.put_blob(blob)
    store.put_blob(big())
    author = Author.create(tmp_path / "author")
    config = ServerConfig(data_dir=tmp_path / "data", routers=(probe,), max_downloads=1,
                          anchors=TrustAnchors.of(author.key.public_key()))
    with running_server(config, start_timeout=60) as url:
        yield url, blob, digest


def test_the_guarded_protocol_offers_pathsend(served: tuple[str, bytes, str]) -> None:
    url, _, _ = served
    answer = httpx.get(f"{url}/probe/extensions", timeout=30)
    assert PATHSEND in answer.json()["extensions"]


def test_downloads_on_one_connection_come_back_byte_for_byte(
        served: tuple[str, bytes, str]) -> None:
    url, blob, digest = served
    firmware = f"{url}/firmware/{digest}"
    with httpx.Client(timeout=60) as client:
        for _ in range(3):  # one kept-alive connection: each response framed exactly
            whole = client.get(firmware)
            assert whole.status_code == 200
            assert whole.headers["content-length"] == str(SIZE)
            assert whole.content == blob
            head = client.head(firmware)
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["content-length"] == str(SIZE)
            part = client.get(firmware, headers={"Range": f"bytes={SENDFILE_PIECE - 3}-"})
            assert (part.status_code, part.content) == (206, blob[SENDFILE_PIECE - 3:])
        envelope_path = client.get(f"{url}/envelopes/{digest}")
        assert envelope_path.content == blob  # the same blob namespace


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """What uvicorn and suitkit log at WARNING and up meanwhile (uvicorn's loggers do not
    propagate to the root, so caplog would not see them)."""
    kept = _Kept()
    loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "suitkit")]
    for logger in loggers:
        logger.addHandler(kept)
    try:
        yield kept.lines
    finally:
        for logger in loggers:
            logger.removeHandler(kept)


def test_a_client_gone_in_the_middle_is_no_error_and_gives_its_place_back(
        served: tuple[str, bytes, str], warnings_logged: list[str]) -> None:
    url, _, _ = served
    blob = big()
    digest = hashlib.sha256(blob).hexdigest()
    port = int(url.rsplit(":", 1)[1])
    for _ in range(3):
        deadline = time.monotonic() + 30
        while True:  # the one download place is free (503 while the last one holds it)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
                sock.connect(("127.0.0.1", port))
                sock.sendall(f"GET /firmware/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                sock.settimeout(30)
                head = sock.recv(4096)
                # a reset, not a clean close: the server's next sendfile fails at once
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if not head.startswith(b"HTTP/1.1 503 "):
                break
            assert time.monotonic() < deadline, "the download place was not given back in 30 s"
            time.sleep(0.1)
        assert head.startswith(b"HTTP/1.1 200 "), head[:100]
    answer = httpx.get(f"{url}/firmware/{digest}", timeout=30)
    deadline = time.monotonic() + 30
    while answer.status_code == 503:
        assert time.monotonic() < deadline, "the download place was not given back in 30 s"
        time.sleep(0.1)
        answer = httpx.get(f"{url}/firmware/{digest}", timeout=30)
    assert (answer.status_code, answer.content) == (200, blob)
    assert warnings_logged == []


def test_a_kept_alive_client_gets_its_next_download_at_once(
        served: tuple[str, bytes, str]) -> None:
    """The one download place is given back when a response is complete, not once Starlette
    has closed the file in a worker thread: the next download on the connection, sent as soon
    as the last byte arrived, met 503 before."""
    url, blob, digest = served
    firmware = f"{url}/firmware/{digest}"
    with httpx.Client(timeout=60) as client:
        for n in range(40):
            part = client.get(firmware, headers={"Range": f"bytes={n}-{n + 99}"})
            assert (part.status_code, part.content) == (206, blob[n:n + 100]), n
            head = client.head(firmware)
            assert head.status_code == 200, (n, head.status_code)
