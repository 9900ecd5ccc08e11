"""Downloads from the real suitkit server interrupted at seeded random offsets resume to the
exact image, over HTTP and CoAP (issue #4).

The server is ``running_server`` (uvicorn) with the CoAP site of ``suitkit.server.coap`` on the
same data directory; the release is uploaded through the API. Two levels are cut:

- the fetchers: HTTP through a loopback TCP proxy that drops each connection after a random
  number of response bytes (``HttpFetcher`` resumes by itself with Range and If-Range); CoAP by
  closing the stream after a random number of blocks and fetching again from the offset reached
  (what a device does after a cut);
- the device: the consumer crashes after a random number of bytes; the device is opened again
  and installs the same envelope, resuming from its download journal against the same server.

Offsets come from ``random.Random`` with fixed seeds, so a failure reproduces.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from device.device_kit import CLASS, VENDOR, Author, image_bytes
from suitkit.core.verify import TrustAnchors
from suitkit.device.config import create_device
from suitkit.device.fetch import COAP_BLOCK, CoapFetcher, HttpFetcher
from suitkit.device.wiring import open_device

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install suitkit)")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")
pytest.importorskip("aiocoap", reason="aiocoap is not installed (pip install 'aiocoap>=0.4.17')")

from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.server.coap import CoapServer
from suitkit.server.store import BlobStore

TOKEN = "resume-upload-token"
SIZE = 200_000  # fits an MCU-class device slot; 196 CoAP blocks
WAIT = 10.0


class CuttingProxy:
    """A loopback TCP proxy to ``target``: connection i is dropped after ``cuts[i]`` bytes
    from the server (header bytes included); connections past the list are not cut. Records
    the Range header of every request."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.cuts: list[int] = []
        self.ranges: list[str | None] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.closing = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                budget = self.cuts.pop(0) if self.cuts else None
            threading.Thread(target=self._serve, args=(client, budget), daemon=True).start()

    def _serve(self, client: socket.socket, budget: int | None) -> None:
        upstream = socket.create_connection(self.target, timeout=WAIT)
        client.settimeout(WAIT)
        try:
            request = b""
            while b"\r\n\r\n" not in request:  # GET requests: headers only
                data = client.recv(65536)
                if not data:
                    return
                request += data
            head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            found = [h.split(":", 1)[1].strip() for h in head[1:]
                     if h.lower().startswith("range:")]
            with self.lock:
                self.ranges.append(found[0] if found else None)
            upstream.sendall(request)
            sent = 0
            while budget is None or sent < budget:
                data = upstream.recv(65536)
                if not data:
                    break
                if budget is not None:
                    data = data[:budget - sent]
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            upstream.close()
            client.close()  # one request per connection: the fetcher reconnects to resume

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        self.thread.join(WAIT)


@dataclass
class Served:
    url: str
    coap: str
    author: Author
    image: bytes
    blob: str
    proxy: CuttingProxy
    envelopes: dict[str, bytes] = field(default_factory=dict)

    def firmware(self, scheme: str) -> str:
        base = {"http": self.url, "coap": self.coap, "proxy": self.proxy.url}[scheme]
        return f"{base}/firmware/{self.blob}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("resume-random")
    author = Author.create(base / "author")
    image = image_bytes("resume-random", SIZE)
    blob = hashlib.sha256(image).hexdigest()
    config = ServerConfig(data_dir=base / "data", anchors=TrustAnchors.of(author.key.public_key()),
                          upload_token=TOKEN)
    with running_server(config) as url, CoapServer(BlobStore(base / "data"), "127.0.0.1", 0,
                                                   timeout=WAIT) as coap:
        coap_port = coap.port
        host, port = url.removeprefix("http://").split(":")
        proxy = CuttingProxy((host, int(port)))
        try:
            result = Served(url, f"coap://127.0.0.1:{coap_port}", author, image, blob, proxy)
            for sequence, scheme in enumerate(["http", "coap"], start=1):
                envelope = author.envelope(sequence, [author.component(
                    f"app-{scheme}.bin", image, uri=result.firmware(scheme))])
                files = [("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
                         ("image-0", ("app.bin", image, "application/octet-stream"))]
                answer = httpx.post(f"{url}/api/v1/releases", files=files, timeout=WAIT,
                                    headers={"Authorization": f"Bearer {TOKEN}"})
                assert answer.status_code == 201, answer.text
                assert answer.json()["components"][0]["blob"] == blob
                result.envelopes[scheme] = envelope
            yield result
        finally:
            proxy.close()


# ---------------------------------------------------------------------------- fetchers


@pytest.mark.parametrize("seed", range(10))
def test_http_cut_at_random_offsets_resumes_to_the_exact_image(served: Served,
                                                               seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.randrange(1000, SIZE) for _ in range(rng.randint(1, 3)))
    # budgets per connection: each cut counted from where the previous connection resumed
    served.proxy.cuts = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]
    served.proxy.ranges = []
    fetcher = HttpFetcher(timeout=WAIT, retries=len(cuts) + 1, deadline=30.0, backoff=0.01)
    got = b"".join(fetcher.fetch(served.firmware("proxy"), max_bytes=SIZE))
    assert hashlib.sha256(got).hexdigest() == served.blob
    assert got == served.image
    # The fetcher reconnected after each cut and asked for the rest with a Range header.
    assert len(served.proxy.ranges) == len(cuts) + 1
    assert served.proxy.ranges[0] is None
    assert all(r is not None and r.startswith("bytes=") for r in served.proxy.ranges[1:])
    assert served.proxy.cuts == []


@pytest.mark.parametrize("seed", range(6))
def test_coap_stopped_after_random_blocks_resumes_to_the_exact_image(served: Served,
                                                                     seed: int) -> None:
    rng = random.Random(1000 + seed)
    fetcher = CoapFetcher(timeout=2.0, retries=2, deadline=30.0, backoff=0.05)
    got = bytearray()
    starts = []
    while len(got) < SIZE:
        starts.append(len(got))
        stream = fetcher.fetch(served.firmware("coap"), max_bytes=SIZE, offset=len(got))
        try:
            for _ in range(rng.randint(1, 80)):  # stop after k blocks: the link went down
                chunk = next(stream, None)
                if chunk is None:
                    break
                got += chunk
        finally:
            stream.close()
        if rng.random() < 0.5 and len(got) < SIZE:
            # and sometimes from the middle of a block (a journal's offset need not be aligned)
            del got[max(0, len(got) - rng.randrange(0, COAP_BLOCK)):]
    assert len(starts) > 1
    assert hashlib.sha256(bytes(got)).hexdigest() == served.blob
    assert bytes(got) == served.image


# ---------------------------------------------------------------------------- the device


class Crash(Exception):
    """The device process dies in the middle of a download."""


@dataclass
class Recording:
    """The real fetcher, recording where each fetch starts; crashes after ``budget`` bytes."""

    fetcher: HttpFetcher | CoapFetcher
    budget: int | None = None
    starts: list[int] = field(default_factory=list)
    read: int = 0

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        self.starts.append(offset)
        for chunk in self.fetcher.fetch(uri, max_bytes=max_bytes, offset=offset):
            if self.budget is not None and self.read + len(chunk) > self.budget:
                raise Crash
            self.read += len(chunk)
            yield chunk


@pytest.mark.parametrize(("scheme", "seed"), [("http", 0), ("http", 1), ("coap", 0), ("coap", 1)])
def test_device_crash_at_a_random_offset_resumes_from_its_journal(
        served: Served, tmp_path: Path, scheme: str, seed: int) -> None:
    rng = random.Random(2000 + seed)
    budget = rng.randrange(80_000, SIZE - 10_000)  # past at least one journal entry (64 KiB)
    create_device(tmp_path / "dev", vendor_id=VENDOR, class_id=CLASS,
                  trust_anchors=[served.author.anchor])

    def real() -> HttpFetcher | CoapFetcher:
        if scheme == "http":
            return HttpFetcher(timeout=WAIT, retries=2, deadline=30.0, backoff=0.01)
        return CoapFetcher(timeout=2.0, retries=2, deadline=30.0, backoff=0.05)

    device = open_device(tmp_path / "dev")
    with pytest.raises(Crash):
        device.consumer(Recording(real(), budget=budget)).install(served.envelopes[scheme])
    device.save()  # the flash keeps what was written before the crash
    assert (tmp_path / "dev" / "download.json").exists()

    device = open_device(tmp_path / "dev")  # the device starts again
    resumed = Recording(real())
    outcome = device.consumer(resumed).install(served.envelopes[scheme])
    device.save()
    assert outcome.installed, outcome.reason
    [start] = resumed.starts
    assert 0 < start <= budget, "the download must resume from the journal, not byte 0"
    assert resumed.read == SIZE - start
    assert not (tmp_path / "dev" / "download.json").exists()
    result = device.bootloader.boot()
    assert result.images[0].digest == hashlib.sha256(served.image).digest()

