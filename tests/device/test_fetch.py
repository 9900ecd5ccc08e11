"""Fetchers against a real HTTP server on 127.0.0.1 that cuts, trickles, lies and changes files."""

from __future__ import annotations

import hashlib
import http.server
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from suitkit.device.fetch import FileFetcher, HttpFetcher, RoutingFetcher
from suitkit.errors import FetchError

IMAGE = random.Random(7).randbytes(300_000)


class Faults:
    """What the server does wrong, set per test."""

    def __init__(self) -> None:
        self.cut_after: list[int] = []  # close the connection after N body bytes, once each
        self.extra = b""  # bytes appended past the file (endless-data attack)
        self.ignore_range = False
        self.trickle: float = 0.0  # seconds between 1 KiB writes
        self.etag = '"v1"'
        self.requests: list[str | None] = []


class Handler(http.server.BaseHTTPRequestHandler):
    faults: Faults

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        f = self.faults
        f.requests.append(self.headers.get("Range"))
        body, status, start = IMAGE + f.extra, 200, 0
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and not f.ignore_range and (if_range is None or if_range == f.etag):
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            status = 206
        payload = body[start:]
        self.send_response(status)
        self.send_header("ETag", f.etag)
        self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        limit = f.cut_after.pop(0) if f.cut_after else None
        sent = 0
        for i in range(0, len(payload), 1024):
            piece = payload[i:i + 1024]
            if limit is not None and sent + len(piece) > limit:
                self.wfile.write(piece[:limit - sent])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(piece)
            sent += len(piece)
            if f.trickle:
                time.sleep(f.trickle)


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the faults above break connections on purpose


@pytest.fixture
def server() -> Iterator[tuple[str, Faults]]:
    faults = Faults()
    handler = type("H", (Handler,), {"faults": faults})
    httpd = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/fw.bin", faults
    finally:
        httpd.shutdown()
        httpd.server_close()


def fetch_all(fetcher: HttpFetcher | FileFetcher | RoutingFetcher, uri: str, *,
              max_bytes: int = len(IMAGE), offset: int = 0) -> bytes:
    return b"".join(fetcher.fetch(uri, max_bytes=max_bytes, offset=offset))


def test_plain_download(server: tuple[str, Faults]) -> None:
    url, _ = server
    assert fetch_all(HttpFetcher(), url) == IMAGE


def test_resumes_after_cuts_at_random_offsets(server: tuple[str, Faults]) -> None:
    url, faults = server
    rng = random.Random(1)
    for _ in range(5):
        faults.cut_after = sorted(rng.randrange(1, 100_000) for _ in range(3))
        faults.requests.clear()
        data = fetch_all(HttpFetcher(backoff=0.01), url)
        assert hashlib.sha256(data).digest() == hashlib.sha256(IMAGE).digest()
        assert len(faults.requests) == 4
        assert all(r is not None and r.startswith("bytes=") for r in faults.requests[1:])


def test_starts_at_an_offset(server: tuple[str, Faults]) -> None:
    url, faults = server
    assert fetch_all(HttpFetcher(), url, offset=123_456) == IMAGE[123_456:]
    assert faults.requests == ["bytes=123456-"]


def test_payload_longer_than_image_size_is_refused_not_truncated(
        server: tuple[str, Faults]) -> None:
    url, _ = server
    with pytest.raises(FetchError, match="more than the 1000 bytes"):
        fetch_all(HttpFetcher(), url, max_bytes=1000)


def test_endless_data_beyond_the_announced_size_is_cut(server: tuple[str, Faults]) -> None:
    url, faults = server
    faults.extra = b"\x00" * 50_000
    got = bytearray()
    with pytest.raises(FetchError, match="more than"):
        for chunk in HttpFetcher().fetch(url, max_bytes=len(IMAGE)):
            got += chunk
    assert len(got) <= len(IMAGE)


def test_changed_file_is_not_spliced(server: tuple[str, Faults]) -> None:
    url, faults = server
    faults.cut_after = [10_000]
    faults.etag = '"v1"'
    fetcher = HttpFetcher(backoff=0.01)
    stream = fetcher.fetch(url, max_bytes=len(IMAGE))
    first = next(stream)
    faults.etag = '"v2"'  # the file is replaced while the device downloads it
    with pytest.raises(FetchError, match="ignored the resume request"):
        for _ in stream:
            pass
    assert first == IMAGE[:len(first)]


def test_retries_are_bounded(server: tuple[str, Faults]) -> None:
    url, faults = server
    faults.cut_after = [1000] * 10
    with pytest.raises(FetchError, match="attempts"):
        fetch_all(HttpFetcher(retries=2, backoff=0.01), url)


def test_slow_retrieval_hits_the_deadline(server: tuple[str, Faults]) -> None:
    url, faults = server
    faults.trickle = 0.02
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"longer than 0\.3 s"):
        fetch_all(HttpFetcher(deadline=0.3), url)
    assert time.monotonic() - started < 5


def test_http_error_status(server: tuple[str, Faults]) -> None:
    url, faults = server
    faults.ignore_range = True  # the server answers 200 to a resume request: refused
    with pytest.raises(FetchError, match="ignored the resume request at byte 5"):
        fetch_all(HttpFetcher(), url, offset=5)


def test_file_fetcher_stays_in_its_root(tmp_path: Path) -> None:
    (tmp_path / "fw").mkdir()
    (tmp_path / "fw" / "a.bin").write_bytes(b"abc")
    (tmp_path / "secret").write_bytes(b"key")
    fetcher = FileFetcher(tmp_path / "fw")
    assert fetch_all(fetcher, "a.bin", max_bytes=3) == b"abc"
    assert fetch_all(fetcher, "file:///a.bin", max_bytes=3, offset=1) == b"bc"
    with pytest.raises(FetchError, match="outside the firmware folder"):
        fetch_all(fetcher, "../secret", max_bytes=10)
    with pytest.raises(FetchError, match="more than the 2 bytes"):
        fetch_all(fetcher, "a.bin", max_bytes=2)
    with pytest.raises(FetchError, match="No such file"):
        fetch_all(fetcher, "b.bin", max_bytes=2)


def test_routing(tmp_path: Path, server: tuple[str, Faults]) -> None:
    url, _ = server
    (tmp_path / "a.bin").write_bytes(b"abc")
    router = RoutingFetcher(HttpFetcher(), FileFetcher(tmp_path))
    assert fetch_all(router, url) == IMAGE
    assert fetch_all(router, "a.bin", max_bytes=3) == b"abc"
    with pytest.raises(FetchError, match="no fetcher for scheme 'coap'"):
        fetch_all(router, "coap://x/y", max_bytes=3)
