"""Attacks on the server half (issue #6): the firmware server and the status tracker as
``suitkit serve --admin-token-file --coap-port`` wires them (real uvicorn on 127.0.0.1, the real
aiocoap site on a free UDP port), one test per attack, named after it.

Who may call which route, with every kind of credential, is walked exhaustively by
``tests/tracker/test_authz.py``; token hashing, expiry and revocation by
``tests/tracker/test_tokens.py``. The tests here mount the attacks those tables do not: forged
and mismatched uploads, names that try to leave the data directory, oversized and hostile
bodies, spliced credentials, cross-device writes, replays, injection strings.

Every refusal is also checked for the project rule: a JSON ``{"error": ...}`` of one line, no
traceback, no internal path (``assert_refused``), and nothing half-written (``Snapshot``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import VENDOR, Author, image_bytes
from suitkit.core import codec, crypto
from suitkit.core.model import Digest
from suitkit.core.report import Record, Reference, Report, ResultFailure, encode_report
from suitkit.core.verify import TrustAnchors
from suitkit.errors import StorageError
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges.http_api import REPORT_MEDIA_TYPE
from suitkit.tracker.service import TrackerDB, open_db

aiocoap = pytest.importorskip("aiocoap", reason="aiocoap is not installed (pip install aiocoap)")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

from suitkit.cli.notices import TrackerWiring, tracker_routes  # noqa: E402
from suitkit.server.app import ServerConfig  # noqa: E402
from suitkit.server.background import running_server  # noqa: E402
from suitkit.server.coap import CoapServer, create_coap_site  # noqa: E402
from suitkit.server.store import BlobStore  # noqa: E402

ADMIN = "bootstrap-admin-token-for-attack-tests"
MAX_UPLOAD = 256 * 1024
MAX_REPORT = 8 * 1024
CANARY = "CANARY-7f3a-must-never-be-served"


@dataclass
class Site:
    """The running combined application and what the attacks need."""

    url: str
    port: int
    coap_port: int
    tmp: Path
    data: Path
    author: Author
    db: TrackerDB
    wiring: TrackerWiring
    client: httpx.Client
    tokens: dict[str, str]
    device_a: str
    device_b: str

    def upload(self, envelope: bytes, *images: tuple[str, bytes],
               token: str | None = None) -> httpx.Response:
        files = [("envelope", ("release.suit", envelope, "application/suit-envelope+cose"))]
        files += [(part, (f"{part}.bin", data, "application/octet-stream"))
                  for part, data in images]
        return self.client.post("/api/v1/releases", files=files,
                                headers=bearer(token or self.tokens["author"]))

    def as_(self, who: str) -> dict[str, str]:
        return bearer(self.tokens[who])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("attacks")
    author = Author.create(tmp / "author")
    # canaries next to the data directory: what a path that escapes it would reach
    (tmp / "canary.json").write_text(json.dumps({"id": CANARY}))
    (tmp / "secret.txt").write_text(CANARY)
    db_url = f"sqlite:///{tmp / 'tracker.db'}"
    wiring = tracker_routes(TrackerConfig(db_url, ADMIN, max_report_bytes=MAX_REPORT), coap=True,
                            heartbeat=0.5)
    data = tmp / "data"
    config = ServerConfig(data_dir=data, anchors=TrustAnchors.of(author.key.public_key()),
                          max_upload_bytes=MAX_UPLOAD, routers=wiring.routers,
                          authorizer=wiring.authorizer)
    db = open_db(db_url)
    now = datetime.now(UTC)
    tokens = {"admin": ADMIN}
    for role in ("author", "operator"):
        token_id, secret = db.create_token(role, role, now + timedelta(days=1), "t")
        tokens[role] = f"tok_{token_id}.{secret}"
    token_id, secret = db.create_token("old", "admin", now - timedelta(seconds=1), "t")
    tokens["expired"] = f"tok_{token_id}.{secret}"
    device_a, secret_a = db.register("a")
    device_b, secret_b = db.register("b")
    tokens["device_a"], tokens["device_b"] = f"{device_a}.{secret_a}", f"{device_b}.{secret_b}"
    coap_site = create_coap_site(BlobStore(data), extra_resources=wiring.coap_resources)
    coap: CoapServer | None = None
    try:
        with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
            for attempt in range(5):  # a free port may be taken by a parallel run before bind
                coap_port = free_udp_port()
                coap = CoapServer(BlobStore(data), "127.0.0.1", coap_port, timeout=5.0,
                                  site=coap_site)
                try:
                    coap.start()
                    break
                except StorageError:
                    if attempt == 4:
                        raise
            yield Site(url, int(url.rsplit(":", 1)[1]), coap_port, tmp, data, author, db, wiring,
                       client, tokens, device_a, device_b)
    finally:
        if coap is not None:
            coap.stop()
        wiring.close()
        db.engine.dispose()


# ============================================================================ shared checks


def assert_refused(response: httpx.Response, status: int, fragment: str, site: Site) -> str:
    """A one-line JSON error with ``status`` containing ``fragment``; no traceback, no path."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json", response.headers
    error = response.json()["error"]
    assert fragment in error, error
    assert_clean(error, site)
    return str(error)


def assert_clean(text: str, site: Site) -> None:
    assert "\n" not in text and "Traceback" not in text and 'File "' not in text, text
    assert str(site.tmp) not in text and "site-packages" not in text, text
    assert CANARY not in text, text


class Snapshot:
    """Every file under the test's directory: a refused request changes none of them."""

    def __init__(self, site: Site) -> None:
        self.root = site.tmp
        self.files = self._files()

    def _files(self) -> dict[str, int]:
        return {str(p.relative_to(self.root)): p.stat().st_size for p in self.root.rglob("*")
                if p.is_file() and not p.name.startswith("tracker.db")}

    def assert_unchanged(self) -> None:
        assert self._files() == self.files


def raw_http(site: Site, request: bytes, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are (httpx would normalise paths); the status and the whole answer."""
    with socket.create_connection(("127.0.0.1", site.port), timeout=timeout) as conn:
        with contextlib.suppress(OSError):  # the server may answer and close before the end
            conn.sendall(request)
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer


def detached(site: Site, sequence: int, size: int = 3000) -> tuple[bytes, bytes]:
    return site.author.release(sequence, "attack", size=size, uri="https://fw.example/app.bin")


# ============================================================================ forged uploads


def test_unsigned_upload(site: Site) -> None:
    image = image_bytes("unsigned", 1000)
    envelope = site.author.envelope(
        101, [site.author.component("u.bin", image, uri="https://x/u.bin")], signer=None)
    before = Snapshot(site)
    response = site.upload(envelope, ("image-0", image))
    assert_refused(response, 422, "does not verify against the author trust anchors", site)
    before.assert_unchanged()


def test_wrong_signer_upload(site: Site) -> None:
    stranger = crypto.generate_private_key("ES256")
    image = image_bytes("stranger", 1000)
    envelope = site.author.envelope(
        102, [site.author.component("s.bin", image, uri="https://x/s.bin")],
        signer=stranger.signer())
    before = Snapshot(site)
    response = site.upload(envelope, ("image-0", image))
    assert_refused(response, 422, "does not verify", site)
    before.assert_unchanged()


def test_signature_stripped_upload(site: Site) -> None:
    envelope, image = detached(site, 103)
    signed = codec.decode_envelope(envelope)
    stripped = codec.encode_envelope(replace(signed, authentication=replace(
        signed.authentication, blocks=())))
    before = Snapshot(site)
    response = site.upload(stripped, ("image-0", image))
    assert_refused(response, 422, "does not verify", site)
    before.assert_unchanged()


@pytest.mark.parametrize("part", ["image-0", "image"])
def test_digest_mismatched_image_upload(site: Site, part: str) -> None:
    envelope, image = detached(site, 104)
    tampered = image[:-1] + bytes([image[-1] ^ 0x80])  # same size, one bit off
    before = Snapshot(site)
    response = site.upload(envelope, (part, tampered))
    assert_refused(response, 422, "digest mismatch" if part == "image-0" else
                   "matches no component", site)
    before.assert_unchanged()


def test_oversize_image_against_the_manifest_size(site: Site) -> None:
    envelope, image = detached(site, 105, size=2000)
    before = Snapshot(site)
    response = site.upload(envelope, ("image-0", image + image_bytes("tail", 50_000)))
    assert_refused(response, 422, f"52000 bytes uploaded, the manifest says {len(image)}", site)
    before.assert_unchanged()


def test_bundled_payload_mismatch(site: Site) -> None:
    image = image_bytes("bundled", 1500)
    other = image_bytes("other", 1500)
    envelope = site.author.envelope(106, [site.author.component("b.bin", image)],
                                    payloads={"#b.bin": other})
    before = Snapshot(site)
    response = site.upload(envelope)
    assert_refused(response, 422, "integrated payload '#b.bin'", site)
    before.assert_unchanged()


# ============================================================================ names and paths


def multipart(parts: list[tuple[bytes, bytes, bytes]]) -> tuple[bytes, str]:
    """A multipart body written by hand: (part name, file name, content), bytes as they are."""
    boundary = b"attackboundary"
    body = b""
    for name, filename, content in parts:
        body += (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + name
                 + b"\"; filename=\"" + filename
                 + b"\"\r\nContent-Type: application/octet-stream\r\n\r\n" + content + b"\r\n")
    return body + b"--" + boundary + b"--\r\n", f"multipart/form-data; boundary={boundary.decode()}"


HOSTILE_NAMES = [b"../../../escaped", b"..\\..\\..\\escaped", b"/etc/passwd", b"%2e%2e%2fescaped",
                 b"a\x00b", b"x" * 5000, b"blobs", b"../data/releases/" + b"a" * 64 + b".json"]


def test_part_and_file_names_never_become_paths(site: Site) -> None:
    envelope, image = detached(site, 107)
    # hostile *file names* on valid parts: the upload succeeds and no name reaches the disk
    for i, filename in enumerate(HOSTILE_NAMES):
        body, media = multipart([(b"envelope", filename, envelope), (b"image-0", filename, image)])
        response = site.client.post("/api/v1/releases", content=body, headers={
            **site.as_("author"), "Content-Type": media})
        if len(filename) > 1000:  # the multipart parser's header bound: refused, one line
            assert_refused(response, 400, "Invalid multipart data", site)
            continue
        assert response.status_code == (201 if i == 0 else 200), (filename, response.text)
    stored = {str(p.relative_to(site.data)) for p in site.data.rglob("*") if p.is_file()}
    for path in stored:
        first, *rest = path.split("/")
        assert ((first == "blobs" and len(rest) == 2 and len(rest[1]) == 64)
                or (first == "releases" and len(rest) == 1 and rest[0].endswith(".json"))
                or path == "releases/.lock"), path  # the records' lock (a fixed name)
    assert not list(site.tmp.rglob("escaped*")) and not (site.tmp / "etc").exists()
    # hostile *part names*: refused, nothing stored
    before = Snapshot(site)
    for name in [b"../envelope", b"envelope\x00", b"image-../../x", b"image-0/../../x",
                 b"image--1", b"image-99999", b"..\\image", b"x" * 5000]:
        body, media = multipart([(b"envelope", b"e", envelope), (name, b"i", image)])
        response = site.client.post("/api/v1/releases", content=body, headers={
            **site.as_("author"), "Content-Type": media})
        assert_refused(response, 400, "unexpected part" if len(name) < 1000 else
                       "Invalid multipart data", site)
    before.assert_unchanged()


TRAVERSALS = [
    "..%2F..%2Fcanary.json", "..%2f..%2f..%2fsecret.txt", "%2e%2e", "%2E%2E%2Fsecret.txt",
    "..", "..%5C..%5Csecret.txt", "..\\..\\secret.txt", "%00", "ab%00cd", "a" * 8000,
    "%2e%2e%2f%2e%2e%2fcanary", "....%2F%2F....%2F%2Fsecret.txt", "%252e%252e%252fsecret.txt",
]
ID_ROUTES = [("GET", "/api/v1/releases/"), ("GET", "/firmware/"), ("HEAD", "/firmware/"),
             ("GET", "/envelopes/"), ("GET", "/api/v1/devices/"),
             ("GET", "/api/v1/devices/{}/history"), ("DELETE", "/api/v1/tokens/"),
             ("GET", "/api/v1/campaigns/"), ("PUT", "/api/v1/devices/{}/tags")]


@pytest.mark.parametrize(("method", "route"), ID_ROUTES)
def test_ids_in_urls_cannot_escape_the_data_directory(site: Site, method: str,
                                                      route: str) -> None:
    """Release ids, digests, device, token and campaign ids with encoded ../, %2e%2e,
    backslashes, NUL and overlong text: 4xx and a one-line JSON error, never a file."""
    before = Snapshot(site)
    for evil in TRAVERSALS:
        path = route.format(evil) if "{}" in route else route + evil
        body = b'{"tags": []}' if method == "PUT" else b""
        status, answer = raw_http(site, (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body)
        assert status in (400, 404, 405), (path[:80], answer[:300])
        assert CANARY.encode() not in answer and b"Traceback" not in answer
        if method != "HEAD":
            error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
            assert_clean(error, site)
    before.assert_unchanged()


def coap_get(site: Site, *segments: str) -> Any:
    """One CoAP GET with these Uri-Path segments (each sent as it is, slashes included)."""

    async def get() -> Any:
        context = await aiocoap.Context.create_client_context()
        try:
            request = aiocoap.Message(code=aiocoap.GET,
                                      uri=f"coap://127.0.0.1:{site.coap_port}/")
            request.opt.uri_path = segments
            return await asyncio.wait_for(context.request(request).response, 5)
        finally:
            await context.shutdown()

    return asyncio.run(get())


@pytest.mark.parametrize("segments", [
    ("firmware", "..", "..", "secret.txt"), ("firmware", "../../secret.txt"),
    ("envelopes", "%2e%2e%2fsecret.txt"), ("firmware", "..\\..\\secret.txt"),
    ("firmware", "\x00"), ("firmware", "a" * 255), ("envelopes", ".."),
    ("firmware", "blobs", "..", "..", "canary.json"), ("..", "secret.txt"),
    ("notices", "..", "..", "secret.txt"),
])
def test_coap_uri_path_traversal(site: Site, segments: tuple[str, ...]) -> None:
    response = coap_get(site, *segments)
    assert not response.code.is_successful(), (segments, response.code)
    assert response.code.class_ == 4, response.code  # 4.xx, never 5.xx
    assert CANARY.encode() not in response.payload and len(response.payload) <= 200


def test_coap_notices_for_made_up_device_ids_stay_bounded(site: Site,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """/notices/<id> is unauthenticated (plain UDP; see tracker.notices.coap): a flood of
    made-up ids must not grow the hub's memory without bound, and answers only an empty
    notice."""
    from suitkit.tracker import notices

    monkeypatch.setattr(notices, "_MAX_CACHED", 8)
    for i in range(20):
        response = coap_get(site, "notices", f"made-up-{i}")
        assert response.code.is_successful()
        notice = json.loads(response.payload)
        assert set(notice) == {"release", "serial"} and notice["release"] is None
    # an id no device can have (the HTTP routes' ids) is not even remembered
    assert coap_get(site, "notices", "made-up' OR '1'='1").code.class_ == 4
    # nor kept by the hub (nothing is republished to MQTT at a reconnection any more: each
    # made-up id was a retained message on the broker for good)
    assert all(site.wiring.hub.serial(f"made-up-{i}") is None for i in range(20))


def test_coap_observations_are_bounded_per_device(site: Site) -> None:
    """Each CoAP observation holds a registration and a hub watcher, and anyone may register
    (plain UDP): beyond 8 per device id the GET is answered once, without Observe."""

    async def observe(count: int) -> list[bool]:
        context = await aiocoap.Context.create_client_context()
        requests = []
        try:
            observed = []
            for _ in range(count):
                request = aiocoap.Message(code=aiocoap.GET, observe=0,
                                          uri=f"coap://127.0.0.1:{site.coap_port}/")
                request.opt.uri_path = ("notices", "observed-by-a-flood")
                requests.append(context.request(request))
                response = await asyncio.wait_for(requests[-1].response, 10)
                assert response.code.is_successful(), response.code
                observed.append(response.opt.observe is not None)
            return observed
        finally:
            for sent in requests:
                with contextlib.suppress(Exception):
                    sent.observation.cancel()
            await context.shutdown()

    assert asyncio.run(observe(10)) == [True] * 8 + [False] * 2


# ============================================================================ sizes


def test_oversized_bodies_are_refused_before_they_are_read(site: Site) -> None:
    """A body announced as 10 GB is answered at once (nothing of it was sent): JSON, a report,
    an upload; a chunked JSON body past its limit is cut off while streaming."""
    routes = [("POST", "/api/v1/devices", "admin", "application/json", "65536"),
              ("PUT", f"/api/v1/devices/{site.device_a}/inventory", "device_a",
               "application/json", "65536"),
              ("POST", f"/api/v1/devices/{site.device_a}/reports", "device_a",
               REPORT_MEDIA_TYPE, str(MAX_REPORT)),
              ("POST", "/api/v1/releases", "author", "multipart/form-data; boundary=b",
               str(MAX_UPLOAD)),
              ("POST", "/api/v1/campaigns", "operator", "application/json", "65536")]
    before = Snapshot(site)
    for method, path, who, media, limit in routes:
        status, answer = raw_http(site, (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {site.tokens[who]}"
            f"\r\nContent-Type: {media}\r\nContent-Length: 10000000000\r\n"
            "Connection: close\r\n\r\n").encode(), timeout=5)  # waiting for a body: timeout
        assert status == 413, (path, answer[:300])
        error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        assert f"larger than the {limit} bytes allowed" in error, error
    # an unauthenticated upload is refused before its size is even looked at
    status, answer = raw_http(site, (
        b"POST /api/v1/releases HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        b"boundary=b\r\nContent-Length: 10000000000\r\nConnection: close\r\n\r\n"))
    assert status == 401

    def endless() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(200):  # 800 KB if the server read it all
            yield b"a" * 4096

    response = site.client.post("/api/v1/devices", content=endless(), headers={
        **site.as_("admin"), "Content-Type": "application/json"})
    assert_refused(response, 413, "request body is larger than the 65536 bytes allowed", site)
    before.assert_unchanged()


def test_oversized_headers_are_refused_by_the_http_layer(site: Site) -> None:
    """Headers beyond uvicorn's (h11) buffer are refused before any route runs: 400, plain
    text from uvicorn (the application never sees the request). The server stays up."""
    for header in (b"X-Big: " + b"a" * 1_000_000 + b"\r\n",
                   b"".join(b"X-%d: a\r\n" % i for i in range(50_000))):
        status, answer = raw_http(site, b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n" + header
                                  + b"Connection: close\r\n\r\n")
        assert status in (400, 431), answer[:200]
        assert b"Traceback" not in answer
    assert site.client.get("/api/v1/whoami", headers=site.as_("admin")).status_code == 200


def test_slowloris_connections_do_not_starve_other_clients(site: Site) -> None:
    """Connections that trickle half a request header hold a socket each until the head
    timeout (server/guard.py; tests/security/test_slow_clients.py waits for it), and they
    block nobody else meanwhile: the event loop serves other clients."""
    slow = []
    try:
        for _ in range(64):
            conn = socket.create_connection(("127.0.0.1", site.port), timeout=5)
            conn.sendall(b"POST /api/v1/devices HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(conn)
        for conn in slow:
            conn.sendall(b"a")
        response = site.client.get("/api/v1/whoami", headers=site.as_("operator"), timeout=5)
        assert response.status_code == 200
    finally:
        for conn in slow:
            conn.close()


# ============================================================================ hostile JSON


@pytest.mark.parametrize(("body", "fragment"), [
    (b"[" * 50_000, "not valid JSON"),
    (b'{"hardware": ' * 3_000 + b"1" + b"}" * 3_000, "not valid JSON"),
    (b'{"hardware": {"x": ' + b"9" * 50_000 + b"}}", "not valid JSON"),
    (b'{"hardware": {"x": NaN}}', "NaN is not a JSON number"),
    (b'{"hardware": {"x": Infinity}}', "Infinity is not a JSON number"),
    (b'{"hardware": {"x": -Infinity}}', "-Infinity is not a JSON number"),
    (b'{"hardware": {"x": 1e999}}', "the number 1e999 is out of range"),
    (b'{"hardware": {"x": "\\ud800"}}', "lone surrogates"),
    (b'{"hardware": {"x": "\xff\xfe"}}', "not valid JSON"),
    (b'{"vendor_id": null, "vendor_id": "' + str(VENDOR).encode() + b'"}',
     "member 'vendor_id' appears more than once"),
    (b'{"hardware": {"a": 1, "a": 2}}', "member 'a' appears more than once"),
])
def test_json_bombs_and_non_json_numbers(site: Site, body: bytes, fragment: str) -> None:
    """Deep nesting, huge numbers, NaN and infinities (Python's json reads them; no JSON
    encoder can write them back, so a stored NaN would break every later read of the device)
    and duplicate members (two readers, two documents): 400 before anything is stored."""
    response = site.client.put(f"/api/v1/devices/{site.device_a}/inventory", content=body,
                               headers={**site.as_("device_a"),
                                        "Content-Type": "application/json"})
    assert_refused(response, 400, fragment, site)
    device = site.client.get(f"/api/v1/devices/{site.device_a}", headers=site.as_("admin"))
    assert device.status_code == 200, device.text


def test_duplicate_json_keys_cannot_smuggle_a_role(site: Site) -> None:
    """``{"role": "author", "role": "admin"}``: a checker reading the first member and the
    server reading the last would disagree; the server refuses the document."""
    before = site.client.get("/api/v1/tokens", headers=site.as_("admin")).json()["tokens"]
    response = site.client.post("/api/v1/tokens", headers={
        **site.as_("admin"), "Content-Type": "application/json"},
        content=b'{"name": "dup", "role": "author", "role": "admin"}')
    assert_refused(response, 400, "member 'role' appears more than once", site)
    after = site.client.get("/api/v1/tokens", headers=site.as_("admin")).json()["tokens"]
    assert after == before


def test_query_parameters_out_of_range(site: Site) -> None:
    """A campaign page offset beyond SQL's 64-bit OFFSET was a 500; malformed query values
    name the parameter."""
    created = site.client.post("/api/v1/campaigns", headers=site.as_("operator"), json={
        "name": "paged", "release": "ab" * 32, "envelope_url": "https://fw.example/e.suit",
        "target": {"devices": [site.device_b]}})
    assert created.status_code == 201, created.text
    campaign = created.json()["id"]
    for offset in ("9223372036854775808", "99999999999999999999999", "-1"):
        response = site.client.get(f"/api/v1/campaigns/{campaign}",
                                   params={"offset": offset}, headers=site.as_("operator"))
        assert_refused(response, 400, "offset", site)
    response = site.client.get("/api/v1/audit", params={"limit": "many"},
                               headers=site.as_("admin"))
    assert_refused(response, 400, "limit: expected a whole number from 1 to 1000", site)
    cancelled = site.client.post(f"/api/v1/campaigns/{campaign}/cancel",
                                 headers=site.as_("operator"))
    assert cancelled.status_code == 200, cancelled.text


# ============================================================================ credentials


def test_token_guessing_costs_a_hash_for_unknown_ids_too(site: Site,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Guessing costs the same work whether the id exists or not (one hash each; counted,
    not timed), and the answer never tells an unknown id from a wrong secret."""
    import suitkit.tracker.service as trackerdb

    calls: list[str] = []
    real = trackerdb.verify_secret

    def counting(secret: str, stored: str) -> bool:
        calls.append(stored.split("$", maxsplit=1)[0])
        return real(secret, stored)

    monkeypatch.setattr(trackerdb, "verify_secret", counting)
    known_token = site.tokens["author"].partition(".")[0]
    guesses = [f"{known_token}.{'A' * 43}", f"tok_{'0' * 16}.{'A' * 43}",
               f"tok_{'0' * 40}.{'A' * 43}", f"{site.device_a}.{'A' * 43}",
               f"00000000-0000-4000-8000-000000000000.{'A' * 43}", f"{'x' * 200}.{'A' * 43}"]
    answers = set()
    for guess in guesses:
        calls.clear()
        response = site.client.get("/api/v1/whoami", headers=bearer(guess))
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        answers.add(response.text)
        assert calls == ["sha256"], (guess, calls)
    assert len(answers) == 1  # byte for byte the same answer, whatever the guess
    assert json.loads(answers.pop())["error"] == "the credential is not valid"


def test_expired_and_revoked_tokens_open_nothing(site: Site) -> None:
    """Expired: 401 on the tracker and on the firmware server's hook. Revoked while in use:
    the very next request is refused on both."""
    for path in ("/api/v1/whoami", "/api/v1/releases"):
        response = site.client.get(path, headers=site.as_("expired"))
        assert response.status_code == 401
    made = site.client.post("/api/v1/tokens", headers=site.as_("admin"), json={
        "name": "soon-revoked", "role": "author"}).json()
    envelope, image = detached(site, 108)
    assert site.upload(envelope, ("image-0", image), token=made["token"]).status_code == 201
    assert site.client.delete(f"/api/v1/tokens/{made['id']}",
                              headers=site.as_("admin")).status_code == 204
    envelope, image = detached(site, 109)
    before = Snapshot(site)
    assert_refused(site.upload(envelope, ("image-0", image), token=made["token"]), 401,
                   "the token is not valid", site)
    assert_refused(site.client.get("/api/v1/whoami", headers=bearer(made["token"])), 401,
                   "has been revoked", site)
    before.assert_unchanged()


def test_a_token_of_one_role_used_for_another_roles_action(site: Site) -> None:
    """Roles do not stretch (test_authz walks every route); here the crossings an attacker
    tries first, and credentials spliced from two others."""
    envelope, image = detached(site, 110)
    before = Snapshot(site)
    assert_refused(site.upload(envelope, ("image-0", image), token=site.tokens["operator"]),
                   403, "may not upload releases", site)
    assert_refused(site.upload(envelope, ("image-0", image), token=site.tokens["device_a"]),
                   403, "may not upload releases", site)
    deploy = {"release": "cd" * 32, "envelope_url": "https://fw.example/e.suit",
              "devices": [site.device_a]}
    assert_refused(site.client.post("/api/v1/deployments", json=deploy,
                                    headers=site.as_("author")), 403, "admin or operator", site)
    assert_refused(site.client.post("/api/v1/tokens", headers=site.as_("operator"),
                                    json={"name": "esc", "role": "admin"}), 403, "admin", site)
    assert_refused(site.client.post("/api/v1/devices", headers=site.as_("device_a"),
                                    json={"name": "rogue"}), 403, "admin", site)
    author_id, _, author_secret = site.tokens["author"].partition(".")
    operator_id, _, _ = site.tokens["operator"].partition(".")
    device_secret = site.tokens["device_a"].partition(".")[2]
    spliced = [f"{operator_id}.{author_secret}",        # author's secret under the operator id
               f"tok_{site.device_a}.{device_secret}",   # a device credential as an API token
               f"{site.device_b}.{device_secret}",       # device A's secret under device B
               f"{author_id.removeprefix('tok_')}.{author_secret}",  # API token as a device
               f"{ADMIN}x", f" {ADMIN[:-1]}", ADMIN.upper()]
    for token in spliced:
        response = site.client.get("/api/v1/whoami", headers=bearer(token))
        assert_refused(response, 401, "not valid", site)
    before.assert_unchanged()


def report_bytes() -> bytes:
    record = Record(manifest_id=(), manifest_section=20, section_offset=7, component_index=0)
    return encode_report(Report(
        reference=Reference("https://fw.example/e.suit", Digest(-16, bytes(32))),
        records=(record,), result=ResultFailure(code=1, record=record, reason=1)))


def test_device_a_reads_or_writes_device_b(site: Site) -> None:
    """Every per-device route (long-poll, server-sent events included) with device A's
    credential on device B: 403, and B's records are unchanged."""
    b = f"/api/v1/devices/{site.device_b}"
    history = site.client.get(f"{b}/history", headers=site.as_("admin")).json()
    device = site.client.get(b, headers=site.as_("admin")).json()
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", b, {}), ("GET", f"{b}/history", {}), ("GET", f"{b}/update", {}),
        ("GET", f"{b}/notifications", {"params": {"wait": "0"}}),
        ("GET", f"{b}/notifications", {"headers": {"Accept": "text/event-stream"}}),
        ("PUT", f"{b}/inventory", {"json": {"vendor_id": str(VENDOR)}}),
        ("POST", f"{b}/events", {"json": {"state": "failed", "detail": "forged"}}),
        ("POST", f"{b}/reports", {"content": report_bytes(),
                                  "headers": {"Content-Type": REPORT_MEDIA_TYPE}}),
        ("PUT", f"{b}/tags", {"json": {"tags": ["forged"]}}),
    ]
    for method, path, kwargs in attempts:
        headers = {**kwargs.pop("headers", {}), **site.as_("device_a")}
        response = site.client.request(method, path, headers=headers, **kwargs)
        assert_refused(response, 403, "", site)
    assert site.client.get(f"{b}/history", headers=site.as_("admin")).json() == history
    after = site.client.get(b, headers=site.as_("admin")).json()
    assert after == device


def test_replayed_device_event(site: Site) -> None:
    """A captured event sent again (by the device or anyone replaying its credential) cannot
    move the device backwards: the state machine refuses it and the history is unchanged."""
    a = f"/api/v1/devices/{site.device_a}"
    deployed = site.client.post("/api/v1/deployments", headers=site.as_("operator"), json={
        "release": "ef" * 32, "envelope_url": "https://fw.example/e.suit",
        "devices": [site.device_a]})
    assert deployed.status_code == 201, deployed.text
    for state in ("downloading", "downloaded", "installing"):
        response = site.client.post(f"{a}/events", json={"state": state},
                                    headers=site.as_("device_a"))
        assert response.status_code == 201, response.text
    history = site.client.get(f"{a}/history", headers=site.as_("admin")).json()
    for state, fragment in (("downloading", "is not allowed"),
                            ("notified", "the tracker sets it"),
                            ("downloaded", "is not allowed")):
        response = site.client.post(f"{a}/events", json={"state": state},
                                    headers=site.as_("device_a"))
        assert_refused(response, 409, fragment, site)
    assert site.client.get(f"{a}/history", headers=site.as_("admin")).json() == history


INJECTIONS = ["x'); DROP TABLE devices;--", "' OR '1'='1", "\"; DELETE FROM api_tokens; --",
              "%", "_", "\\", "a' UNION SELECT secret_hash FROM api_tokens--"]


def test_sql_injection_strings_are_stored_verbatim_and_harmless(site: Site) -> None:
    names = {}
    for text in INJECTIONS:
        made = site.client.post("/api/v1/devices", json={"name": text},
                                headers=site.as_("admin"))
        assert made.status_code == 201, made.text
        names[made.json()["id"]] = text
        token = site.client.post("/api/v1/tokens", headers=site.as_("admin"),
                                 json={"name": text, "role": "operator", "expires_in_days": 1})
        assert token.status_code == 201 and token.json()["name"] == text
        assert site.client.get("/api/v1/whoami", headers=bearer(token.json()["token"])
                               ).json()["name"] == text
    listed = {d["id"]: d["name"]
              for d in site.client.get("/api/v1/devices", headers=site.as_("admin")
                                       ).json()["devices"]}
    assert {i: listed[i] for i in names} == names
    assert {site.device_a, site.device_b} <= set(listed)
    tokens = site.client.get("/api/v1/tokens", headers=site.as_("admin")).json()["tokens"]
    assert "sha256$" not in json.dumps(tokens)
    # a filter: a campaign whose target tag is an injection string is refused by the grammar;
    # one whose device list holds one matches nothing
    for target in ({"tags": ["' OR '1'='1"]}, {"devices": ["' OR '1'='1"]}):
        response = site.client.post("/api/v1/campaigns", headers=site.as_("operator"), json={
            "name": "inj", "release": "ab" * 32, "envelope_url": "https://fw.example/e.suit",
            "target": target})
        assert_refused(response, 400, "' OR '1'='1", site)
    assert site.client.get("/api/v1/whoami", headers=site.as_("author")).status_code == 200


def test_error_responses_carry_no_traceback_or_path(site: Site) -> None:
    """Internal failures answer a generic one-line JSON 500 (the handler for every exception),
    never the exception text, a traceback or a path. Forced here by a release record on disk
    that no longer parses (a damaged data directory, not a client's input)."""
    envelope, image = detached(site, 111)
    uploaded = site.upload(envelope, ("image-0", image))
    assert uploaded.status_code == 201
    record = site.data / "releases" / f"{uploaded.json()['id']}.json"
    saved = record.read_bytes()
    try:
        record.write_bytes(b'{"id": 7, "components": "' + str(site.tmp).encode() + b'"}')
        for path in ("/api/v1/releases", f"/api/v1/releases/{uploaded.json()['id']}"):
            response = site.client.get(path, headers=site.as_("operator"))
            assert response.status_code in (400, 500)
            assert_clean(response.json()["error"], site)
            if response.status_code == 500:
                # uvicorn closes the connection after it: the client must not reuse it
                assert response.headers["connection"] == "close"
    finally:
        record.write_bytes(saved)
    assert site.client.get("/api/v1/releases", headers=site.as_("operator")).status_code == 200
    digest = hashlib.sha256(envelope).hexdigest()
    assert site.client.get(f"/envelopes/{digest}").content == envelope
