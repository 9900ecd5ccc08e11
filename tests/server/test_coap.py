"""CoAP delivery: a real aiocoap server on 127.0.0.1 and the device's CoapFetcher against it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiocoap",
                    reason="aiocoap is not installed (pip install 'aiocoap>=0.4.17')")

import aiocoap
import aiocoap.resource
from aiocoap.optiontypes import BlockOption

from suitkit.device.fetch import CoapFetcher, HttpFetcher, RoutingFetcher
from suitkit.errors import FetchError
from suitkit.server.coap import (
    CoapServer,
    create_coap_site,
    etag_for,
    render_blob_block,
)
from suitkit.server.store import BlobStore

SIZE = 100 * 1024


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _SwappingResource(aiocoap.resource.Resource, aiocoap.resource.PathCapable):
    """``/swap/<anything>``: serves blob ``first`` for the first request, ``second`` after it
    (as if the resource were replaced between two blocks)."""

    def __init__(self, store: BlobStore, first: str, second: str) -> None:
        super().__init__()
        self.store, self.first, self.second = store, first, second
        self.requests = 0

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        return False

    async def render_get(self, request: Any) -> Any:
        self.requests += 1
        digest = self.first if self.requests == 1 else self.second
        return render_blob_block(self.store, digest, request)


@dataclass
class Served:
    base: str
    data: bytes
    digest: str
    swap: _SwappingResource

    def url(self, digest: str | None = None, kind: str = "firmware") -> str:
        return f"{self.base}/{kind}/{digest or self.digest}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = BlobStore(tmp_path_factory.mktemp("coap-store"))
    data = os.urandom(SIZE)
    other = os.urandom(SIZE)
    digest, other_digest = store.put_blob(data), store.put_blob(other)
    site = create_coap_site(store)
    swap = _SwappingResource(store, digest, other_digest)
    site.add_resource(["swap"], swap)
    server = CoapServer(store, "127.0.0.1", 0, site=site, timeout=5.0)
    server.start()
    port = server.port
    try:
        yield Served(f"coap://127.0.0.1:{port}", data, digest, swap)
    finally:
        server.stop()


def _fetcher() -> CoapFetcher:
    return CoapFetcher(timeout=2.0, retries=1, deadline=10.0, backoff=0.05)


def _coap_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "suitkit-coap-fetch"]


def test_full_download(served: Served) -> None:
    chunks = list(_fetcher().fetch(served.url(), max_bytes=SIZE))
    assert b"".join(chunks) == served.data
    assert all(len(c) == 1024 for c in chunks)
    assert not _coap_threads()


def test_envelopes_path_serves_blobs_too(served: Served) -> None:
    got = b"".join(_fetcher().fetch(served.url(kind="envelopes"), max_bytes=SIZE))
    assert hashlib.sha256(got).hexdigest() == served.digest


@pytest.mark.parametrize("offset", [0, 1, 1023, 1024, 50_000])
def test_resume_at_offset(served: Served, offset: int) -> None:
    got = b"".join(_fetcher().fetch(served.url(), max_bytes=SIZE, offset=offset))
    assert got == served.data[offset:]


def test_resume_at_the_end_is_refused(served: Served) -> None:
    with pytest.raises(FetchError, match=r"4\.02"):
        list(_fetcher().fetch(served.url(), max_bytes=SIZE, offset=SIZE))


def test_more_than_max_bytes_is_refused(served: Served) -> None:
    yielded = 0
    with pytest.raises(FetchError, match="image-size"):
        for chunk in _fetcher().fetch(served.url(), max_bytes=SIZE - 1, offset=0):
            yielded += len(chunk)
    assert yielded <= SIZE - 1


def test_unknown_digest_is_404(served: Served) -> None:
    with pytest.raises(FetchError, match=r"4\.04"):
        list(_fetcher().fetch(served.url("0" * 64), max_bytes=SIZE))


@pytest.mark.parametrize("path", ["firmware/" + "A" * 64, "firmware/xyz", "firmware",
                                  "firmware/a/b", "nothing/here"])
def test_malformed_path_is_refused(served: Served, path: str) -> None:
    with pytest.raises(FetchError, match=r"4\.0[04]"):
        list(_fetcher().fetch(f"{served.base}/{path}", max_bytes=SIZE))


def test_changed_etag_mid_download_is_refused(served: Served) -> None:
    served.swap.requests = 0
    got = bytearray()
    with pytest.raises(FetchError, match="changed during the download"):
        for chunk in _fetcher().fetch(f"{served.base}/swap/x", max_bytes=SIZE):
            got += chunk
    assert bytes(got) == served.data[:1024]  # the first version's block only, nothing spliced
    assert served.swap.requests == 2


def test_stopping_early_leaks_nothing(served: Served) -> None:
    stream = _fetcher().fetch(served.url(), max_bytes=SIZE)
    assert next(stream) == served.data[:1024]
    assert _coap_threads()
    stream.close()
    assert not _coap_threads()


def test_no_server_fails_within_the_retries(served: Served) -> None:
    port = _free_udp_port()
    # The retries end it (about 0.6 s), long before the deadline: the bound checked sits
    # between the two, with a margin for a loaded machine.
    fetcher = CoapFetcher(timeout=0.3, retries=1, deadline=60.0, backoff=0.05)
    started = time.monotonic()
    with pytest.raises(FetchError, match="block 0"):
        list(fetcher.fetch(f"coap://127.0.0.1:{port}/firmware/{served.digest}", max_bytes=SIZE))
    assert time.monotonic() - started < 30.0
    assert not _coap_threads()


def test_not_a_coap_uri() -> None:
    with pytest.raises(FetchError, match="not a coap"):
        list(_fetcher().fetch("http://example.invalid/x", max_bytes=10))


def test_routing_fetcher_dispatches_coap(served: Served) -> None:
    routing = RoutingFetcher(http=HttpFetcher(), coap=_fetcher())
    got = b"".join(routing.fetch(served.url(), max_bytes=SIZE, offset=4096))
    assert got == served.data[4096:]
    with pytest.raises(FetchError, match="no fetcher"):
        RoutingFetcher(http=HttpFetcher()).fetch(served.url(), max_bytes=SIZE)


def test_server_honours_block_size_and_options(served: Served) -> None:
    async def ask(number: int, szx: int) -> Any:
        context = await aiocoap.Context.create_client_context()
        try:
            message = aiocoap.Message(code=aiocoap.GET, uri=served.url())
            message.opt.block2 = BlockOption.BlockwiseTuple(number, False, szx)
            request = context.request(message, handle_blockwise=False)
            return await asyncio.wait_for(request.response, 5.0)
        finally:
            await context.shutdown()

    small = asyncio.run(ask(5, 4))  # 256-byte block 5
    assert small.payload == served.data[1280:1536]
    assert small.opt.block2.block_number == 5 and small.opt.block2.more
    assert small.opt.etag == etag_for(served.digest) == bytes.fromhex(served.digest[:16])
    assert small.opt.size2 == SIZE
    assert small.opt.content_format == 42
    assert small.opt.max_age >= 24 * 3600
    last = asyncio.run(ask(99, 7))  # BERT szx 7 over UDP is served as 1024-byte blocks
    assert last.payload == served.data[99 * 1024:]
    assert not last.opt.block2.more


def test_small_blob_without_block2(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put_blob(b"tiny")
    with CoapServer(store, "127.0.0.1", 0) as server:
        got = b"".join(_fetcher().fetch(f"coap://127.0.0.1:{server.port}/firmware/{digest}",
                                        max_bytes=4))
    assert got == b"tiny"
