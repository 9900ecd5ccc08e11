"""The firmware server over real HTTP: a uvicorn server on 127.0.0.1, httpx as the client.

One test per threat or promise of docs/server.md: uploads are verified against the author trust
anchors and the manifest's image digest and size, tokens and body sizes are enforced, downloads
are immutable and content-addressed with Range / If-Range / ETag, and client names never reach
the file system.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author, image_bytes
from suitkit.core import codec, crypto
from suitkit.core.sign import sign_envelope
from suitkit.core.verify import TrustAnchors
from suitkit.device.fetch import HttpFetcher

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install suitkit)")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

from suitkit.server.app import IMMUTABLE, ServerConfig, create_app  # noqa: E402
from suitkit.server.background import UVICORN_OPTIONS  # noqa: E402

TOKEN = "test-upload-token-123"
MAX_UPLOAD = 256 * 1024


@dataclass
class Running:
    url: str
    data: Path
    author: Author
    client: httpx.Client

    def upload(self, envelope: bytes, *images: tuple[str, bytes], token: str | None = TOKEN
               ) -> httpx.Response:
        files = [("envelope", ("release.suit", envelope, "application/suit-envelope+cose"))]
        files += [(part, (f"{part}.bin", data, "application/octet-stream"))
                  for part, data in images]
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.client.post("/api/v1/releases", files=files, headers=headers)


def serve(app: object) -> Iterator[str]:
    """Run ``app`` on a free port of 127.0.0.1 in a thread; yield its URL; stop it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # Nagle off
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                           **UVICORN_OPTIONS))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60  # generous: a loaded machine
    try:
        while not server.started:  # inside the try: a failed start is stopped too
            assert thread.is_alive(), "uvicorn did not start"
            assert time.monotonic() < deadline, "uvicorn did not start within 60 s"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    base = tmp_path_factory.mktemp("server")
    author = Author.create(base / "author")
    config = ServerConfig(data_dir=base / "data",
                          anchors=TrustAnchors.of(author.key.public_key()),
                          upload_token=TOKEN, max_upload_bytes=MAX_UPLOAD)
    for url in serve(create_app(config)):
        with httpx.Client(base_url=url, timeout=10) as client:
            yield Running(url, base / "data", author, client)


def detached(r: Running, sequence: int, size: int = 3000) -> tuple[bytes, bytes]:
    """(envelope, image) with the image detached (fetched from a URI)."""
    return r.author.release(sequence, "detached", size=size,
                            uri="https://fw.example.com/app.bin")


# ---------------------------------------------------------------------------- uploads


def test_detached_upload_accepted_and_listed(running: Running) -> None:
    envelope, image = detached(running, 1)
    response = running.upload(envelope, ("image-0", image))
    assert response.status_code == 201, response.text
    doc = response.json()
    assert doc["sequence_number"] == 1
    assert len(doc["id"]) == 64
    assert doc["envelope"]["sha256"] == hashlib.sha256(envelope).hexdigest()
    [component] = doc["components"]
    assert component["blob"] == hashlib.sha256(image).hexdigest()
    assert component["size"] == len(image)
    assert running.client.get(component["url"]).content == image
    assert running.client.get(doc["envelope"]["url"]).content == envelope
    listed = running.client.get("/api/v1/releases").json()["releases"]
    assert doc["id"] in [r["id"] for r in listed]
    assert running.client.get(f"/api/v1/releases/{doc['id']}").json() == doc
    # Idempotent: the same upload again is 200 with the same release; blobs are immutable.
    again = running.upload(envelope, ("image", image))
    assert again.status_code == 200
    assert again.json() == doc
    blob = running.data / "blobs" / component["blob"][:2] / component["blob"]
    assert blob.read_bytes() == image


def test_bundled_upload_accepted(running: Running) -> None:
    envelope, image = running.author.release(2, "bundled", size=2500)
    response = running.upload(envelope)
    assert response.status_code == 201, response.text
    doc = response.json()
    sha = hashlib.sha256(image).hexdigest()
    assert doc["components"][0]["blob"] == sha
    assert list(doc["integrated"].values()) == [{"sha256": sha, "url": f"/firmware/{sha}"}]
    served = running.client.get(doc["envelope"]["url"])
    assert served.content == envelope
    assert served.headers["content-type"] == "application/suit-envelope+cose"


def test_unsigned_envelope_refused(running: Running) -> None:
    image = image_bytes("unsigned", 1000)
    envelope = running.author.envelope(
        3, [running.author.component("u.bin", image, uri="https://x/u.bin")], signer=None)
    response = running.upload(envelope, ("image-0", image))
    assert response.status_code == 422
    assert "does not verify against the author trust anchors" in response.json()["error"]


def test_wrong_signer_refused(running: Running, tmp_path: Path) -> None:
    stranger = crypto.generate_private_key("ES256")
    image = image_bytes("stranger", 1000)
    envelope = running.author.envelope(
        4, [running.author.component("s.bin", image, uri="https://x/s.bin")],
        signer=stranger.signer())
    response = running.upload(envelope, ("image-0", image))
    assert response.status_code == 422
    assert "does not verify" in response.json()["error"]


def test_malformed_envelope_refused(running: Running) -> None:
    response = running.upload(b"\xa1\x02not an envelope")
    assert response.status_code == 400
    assert response.json()["error"].startswith("envelope is malformed")


def test_image_digest_mismatch_refused(running: Running) -> None:
    envelope, image = detached(running, 5)
    tampered = bytes([image[0] ^ 1]) + image[1:]
    response = running.upload(envelope, ("image-0", tampered))
    assert response.status_code == 422
    assert "image digest mismatch for component 0" in response.json()["error"]
    auto = running.upload(envelope, ("image", tampered))
    assert auto.status_code == 422
    assert "matches no component" in auto.json()["error"]


def test_image_size_mismatch_refused(running: Running) -> None:
    envelope, image = detached(running, 6)
    response = running.upload(envelope, ("image-0", image + b"\x00"))
    assert response.status_code == 422
    error = response.json()["error"]
    assert "image size mismatch" in error
    assert f"{len(image) + 1} bytes uploaded, the manifest says {len(image)}" in error


def test_unknown_component_refused(running: Running) -> None:
    envelope, image = detached(running, 7)
    response = running.upload(envelope, ("image-3", image))
    assert response.status_code == 422
    assert "unknown component 3" in response.json()["error"]


def test_tampered_integrated_payload_refused(running: Running) -> None:
    image = image_bytes("bundled-bad", 1500)
    envelope = running.author.envelope(
        8, [running.author.component("b.bin", image)],
        payloads={"#b.bin": b"evil" + image[4:]})
    response = running.upload(envelope)
    assert response.status_code == 422
    assert "integrated payload '#b.bin'" in response.json()["error"]


def test_same_manifest_in_a_different_envelope_conflicts(running: Running) -> None:
    envelope, image = detached(running, 12)
    assert running.upload(envelope, ("image-0", image)).status_code == 201
    twice = codec.encode_envelope(sign_envelope(codec.decode_envelope(envelope),
                                                running.author.key.signer()))
    response = running.upload(twice, ("image-0", image))
    assert response.status_code == 409
    assert "already exists with a different envelope" in response.json()["error"]
    blob = hashlib.sha256(twice).hexdigest()
    assert running.client.get(f"/envelopes/{blob}").status_code == 404


def test_missing_token_refused(running: Running) -> None:
    envelope, image = detached(running, 9)
    response = running.upload(envelope, ("image-0", image), token=None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["error"]


def test_wrong_token_refused(running: Running) -> None:
    envelope, image = detached(running, 10)
    response = running.upload(envelope, ("image-0", image), token="wrong")
    assert response.status_code == 403
    assert response.json()["error"] == "the upload token is not valid"
    assert running.client.get("/api/v1/releases").json()["releases"] is not None


def test_oversized_body_refused_by_content_length(running: Running) -> None:
    envelope, image = detached(running, 11, size=MAX_UPLOAD + 1000)
    response = running.upload(envelope, ("image-0", image))
    assert response.status_code == 413
    assert "larger than the 262144 bytes allowed" in response.json()["error"]


def test_oversized_chunked_body_refused_while_streaming(running: Running) -> None:
    def body() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=\"envelope\"; filename=\"e\"\r\n\r\n"
        for _ in range(MAX_UPLOAD // 4096 + 2):
            yield b"\x00" * 4096

    response = running.client.post(
        "/api/v1/releases", content=body(),
        headers={"Authorization": f"Bearer {TOKEN}",
                 "Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413
    assert "request body is larger than" in response.json()["error"]


# ---------------------------------------------------------------------------- downloads


@pytest.fixture(scope="module")
def stored(running: Running) -> tuple[str, bytes]:
    """(firmware URL, image) of an uploaded 5000-byte image."""
    envelope, image = detached(running, 20, size=5000)
    response = running.upload(envelope, ("image-0", image))
    assert response.status_code == 201, response.text
    return response.json()["components"][0]["url"], image


def test_full_download_with_immutable_headers(running: Running,
                                              stored: tuple[str, bytes]) -> None:
    url, image = stored
    response = running.client.get(url)
    assert response.status_code == 200
    assert response.content == image
    sha = hashlib.sha256(image).hexdigest()
    assert response.headers["etag"] == f'"{sha}"'
    assert response.headers["cache-control"] == IMMUTABLE
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["accept-ranges"] == "bytes"


def test_range_206(running: Running, stored: tuple[str, bytes]) -> None:
    url, image = stored
    response = running.client.get(url, headers={"Range": "bytes=1000-1999"})
    assert response.status_code == 206
    assert response.content == image[1000:2000]
    assert response.headers["content-range"] == f"bytes 1000-1999/{len(image)}"


def test_suffix_range(running: Running, stored: tuple[str, bytes]) -> None:
    url, image = stored
    response = running.client.get(url, headers={"Range": "bytes=-100"})
    assert response.status_code == 206
    assert response.content == image[-100:]


def test_if_range_current_etag_206_stale_etag_200(running: Running,
                                                  stored: tuple[str, bytes]) -> None:
    url, image = stored
    etag = running.client.head(url).headers["etag"]
    current = running.client.get(url, headers={"Range": "bytes=10-", "If-Range": etag})
    assert current.status_code == 206
    assert current.content == image[10:]
    stale = running.client.get(url, headers={"Range": "bytes=10-", "If-Range": '"0000"'})
    assert stale.status_code == 200
    assert stale.content == image


def test_head(running: Running, stored: tuple[str, bytes]) -> None:
    url, image = stored
    response = running.client.head(url)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(image))
    assert response.headers["cache-control"] == IMMUTABLE


def test_unknown_and_malformed_digests(running: Running) -> None:
    assert running.client.get("/firmware/" + "0" * 64).status_code == 404
    assert running.client.head("/envelopes/" + "0" * 64).status_code == 404
    bad = running.client.get("/firmware/not-a-digest")
    assert bad.status_code == 400
    assert "not a SHA-256 digest" in bad.json()["error"]
    assert running.client.get("/firmware/" + "A" * 64).status_code == 400
    assert running.client.get("/api/v1/releases/zz").status_code == 400


@pytest.mark.parametrize("path", [
    "/firmware/..%2F..%2Fetc%2Fpasswd",
    "/firmware/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/envelopes/%2E%2E%2Freleases",
    "/firmware/../../etc/passwd",
    "/firmware/%2e%2e",
    "/firmware/blobs",
])
def test_path_traversal_serves_nothing(running: Running, path: str) -> None:
    with socket.create_connection(("127.0.0.1", int(running.url.rsplit(":", 1)[1])),
                                  timeout=5) as conn:
        # Raw request: httpx would normalise the dots away before sending.
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    status = int(raw.split(b" ", 2)[1])
    assert status in (400, 404)
    assert b"root:" not in raw


# ---------------------------------------------------------------------------- device end to end


class CutOnce(httpx.BaseTransport):
    """Cuts the first response after ``after`` bytes; records each request's Range and status."""

    def __init__(self, after: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.after = after
        self.seen: list[tuple[str | None, str | None, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        self.seen.append((request.headers.get("Range"), request.headers.get("If-Range"),
                          response.status_code))
        if len(self.seen) > 1:
            return response
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_Cut(response, self.after))

    def close(self) -> None:
        self.inner.close()


class _Cut(httpx.SyncByteStream):
    def __init__(self, response: httpx.Response, after: int) -> None:
        self.response = response
        self.after = after

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.response.iter_raw(512):
            if sent + len(chunk) > self.after:
                yield chunk[: self.after - sent]
                raise httpx.ReadError("connection cut by the test")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.response.close()


def test_device_fetcher_resumes_from_the_server(running: Running,
                                                stored: tuple[str, bytes]) -> None:
    url, image = stored
    transport = CutOnce(after=1234)
    with httpx.Client(transport=transport, timeout=10) as client:
        fetcher = HttpFetcher(client=client, backoff=0.01, retries=2)
        got = b"".join(fetcher.fetch(running.url + url, max_bytes=len(image)))
    assert got == image
    etag = f'"{hashlib.sha256(image).hexdigest()}"'
    assert transport.seen == [(None, None, 200), ("bytes=1234-", etag, 206)]


def test_device_fetcher_starts_at_an_offset(running: Running,
                                            stored: tuple[str, bytes]) -> None:
    url, image = stored
    fetcher = HttpFetcher(timeout=5, deadline=10)
    got = b"".join(fetcher.fetch(running.url + url, max_bytes=len(image), offset=4000))
    assert got == image[4000:]
