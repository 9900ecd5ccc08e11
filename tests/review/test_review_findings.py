"""Security review of suitkit: one test per finding, plus the properties checked that hold.

Every finding was first a failing test; all twelve are fixed, and the tests now guard against
regressions. Tests after "Properties checked that hold" guarded what already held.

Findings (details in each test's docstring):

  F1  verify/processor: a component-scoped signer writes outside its scope through a
      dependency-prefix component slot (the scope check only looks at suit-components).
  F2  wiring: the boot verifier raises KeyError (the device cannot boot) for a manifest whose
      shared sequence sets no parameters for the slot's component; the consumer installs it.
  F3  consumer: an on-path attacker (no key) crashes Consumer.install with TypeError by adding
      an unknown envelope member holding a float / undefined / simple value.
  F4  processor: an unknown command whose argument cannot be re-encoded (float, map with
      non-int keys) makes process() / shared_parameters() raise TypeError / ValueError.
  F5  report: decode_report accepts reports that encode_report cannot encode (TypeError).
  F6  wiring: the boot verifier does not bind a slot to its component: an authentic image of
      one component boots from another component's slot (REQ.SEC.AUTH.IMG_LOC).
  F7  fetch: HttpFetcher honours the server's Content-Encoding: a hostile server makes
      httpx.DecodingError escape, and a gzip bomb allocates far more than max_bytes.
  F8  fetch: HttpFetcher's deadline is not enforced while the server trickles the headers.
  F9  fetch: malformed URIs make the fetchers (and so process() and Consumer.install) raise
      ValueError / UnicodeError / httpx.InvalidURL instead of FetchError.
  F10 fetch: FileFetcher yields more than max_bytes when the file grows after its size check.
  F11 consumer: the rollback check ignores dependency-prefix component slots, so a manifest
      with a lower sequence number is staged and reported installed.
  F12 processor: fetch commits network bytes into a component when no image-digest is set.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.processor_fakes import (
    CLASS,
    TEST_ANCHORS,
    TEST_KEY,
    VENDOR,
    MemoryComponent,
    c,
    digest,
    envelope_bytes,
    index,
    manifest,
    override,
    rig,
    seq,
    try_each,
)
from device.device_kit import (
    Author,
    boot,
    confirm,
    image_bytes,
    install,
    new_device,
    running,
)
from suitkit.bootloader.api import stage_set
from suitkit.core import cbor, codec, cose, crypto
from suitkit.core.cbor import CBORTag
from suitkit.core.model import Authentication, Envelope
from suitkit.core.numbers import Command as Cmd
from suitkit.core.processor import Device, ProcessorOptions, process, shared_parameters
from suitkit.core.report import decode_report, encode_report
from suitkit.core.sign import sign_envelope
from suitkit.core.verify import TrustAnchor, TrustAnchors, verify_envelope
from suitkit.device.consumer import slot_record
from suitkit.device.fetch import FileFetcher, HttpFetcher, RoutingFetcher
from suitkit.device.wiring import open_device
from suitkit.errors import (
    AuthenticationError,
    DecodeError,
    PolicyError,
    ProcessingError,
    SuitError,
)

from helpers import ALL_ENVELOPES, SIGNED_EXAMPLES, example_public_pem, vector

APP = (b"app",)
BOOT = (b"boot",)
FETCH_POLICY = 2


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def signed_raw_manifest(manifest_bytes: bytes, key: crypto.HmacKey = TEST_KEY) -> bytes:
    """An envelope around manifest bytes built by hand (so they can hold what our encoder
    refuses), with a correct digest and a valid MAC: what an authorised author could sign."""
    dg = codec.member_digest(manifest_bytes)
    envelope = Envelope(
        authentication=Authentication(dg, cbor.encode([dg.algorithm, dg.value]), ()),
        manifest=codec.decode_manifest(manifest_bytes), manifest_bytes=manifest_bytes)
    return codec.encode_envelope(sign_envelope(envelope, key))


@pytest.fixture
def author(tmp_path: Path) -> Author:
    return Author.create(tmp_path / "author")


def running_device(folder: Path, author: Author, shape: str = "mcu", sequence: int = 1) -> Path:
    """A device running a confirmed release ``sequence`` of every image of its shape."""
    new_device(folder, [author.anchor], shape)
    count = {"mcu": 1, "linux": 1}.get(shape, 2)
    images = [image_bytes(f"base-{i}", 2000 + 500 * i) for i in range(count)]
    envelope = author.envelope(sequence, [author.component(f"base-{i}.bin", images[i], index=i)
                                          for i in range(count)])
    outcome = install(folder, envelope)
    assert outcome.installed, outcome.reason
    boot(folder)
    confirm(folder)
    return folder


# ============================================================================================
# F1  (high) scope bypass through a dependency-prefix component slot
# ============================================================================================


def test_scoped_signer_cannot_write_out_of_scope_through_a_dependency_slot() -> None:
    """verify.py:198 ``_check_policy`` vs processor.py:669-680 (``ids.append(prefix)``).

    A signer allowed to update only ``['app']`` names ``['boot']`` as the prefix of a
    dependency at index len(components). The processor turns that into a component slot backed
    by the device's real ``['boot']`` component, and ``_store`` (processor.py:1400) skips the
    image-digest for dependency slots, so the write is committed with no check at all. Naming
    ``['boot']`` in suit-components is correctly refused (first assertion).
    """
    app_key = crypto.HmacKey(b"s" * 32, key_id=b"app-signer")
    anchors = TrustAnchors((TrustAnchor(app_key, role="app-vendor", components=(APP,)),))
    direct = manifest((APP, BOOT), install=seq(index(1), override(content=b"evil"),
                                                c(Cmd.WRITE)))
    with pytest.raises(PolicyError):
        verify_envelope(envelope_bytes(direct, signer=app_key), anchors)

    sneaky = manifest((APP,), dependencies={1: BOOT},
                      install=seq(index(1), override(content=b"evil"), c(Cmd.WRITE)))
    device = rig({APP: MemoryComponent(b"app"), BOOT: MemoryComponent(b"bootloader")},
                 anchors=anchors)
    try:
        verified = verify_envelope(envelope_bytes(sneaky, signer=app_key), anchors)
    except PolicyError:
        return  # fixed in the verifier
    result = device.run(verified, "installation")
    assert device[BOOT].content == b"bootloader", result.reason
    assert not result.succeeded


# ============================================================================================
# F2  (high) boot verifier KeyError: a validly signed, installed manifest bricks the boot
# ============================================================================================


def test_boot_survives_manifest_without_shared_parameters(author: Author,
                                                          tmp_path: Path) -> None:
    """F2, fixed: a manifest whose shared sequence gives a component no image-digest and
    image-size (legal: install sets them) cannot be checked by the bootloader at boot. The
    consumer refuses it up front, and the boot verifier, given such a slot anyway, refuses it
    with a SuitError (it used to raise KeyError and crash every boot)."""
    folder = running_device(tmp_path / "dev", author)
    image = image_bytes("no-shared", 3000)
    m = manifest(((b"\x00",),), sequence_number=3, install=seq(
        override(vendor_identifier=VENDOR, class_identifier=CLASS),
        override(image_digest=digest(image), image_size=len(image), uri="#app.bin"),
        c(Cmd.FETCH, FETCH_POLICY), c(Cmd.IMAGE_MATCH)))
    envelope = sign_envelope(codec.build_envelope(m, integrated={"#app.bin": image}),
                             author.key.signer())
    outcome = install(folder, codec.encode_envelope(envelope))
    assert not outcome.installed
    assert "the bootloader could not check it at boot" in outcome.reason

    verifier = open_device(folder).bootloader._verifiers["app"]  # type: ignore[attr-defined]
    with pytest.raises(SuitError):
        verifier.verify(slot_record((b"\x00",), envelope), image)
    result = boot(folder)  # the device still boots its current release
    assert running(result)["app"][0] == 1


# ============================================================================================
# F3  (medium) unauthenticated envelope member crashes Consumer.install
# ============================================================================================


@pytest.mark.parametrize("junk", [1.5, cbor2.undefined, cbor2.CBORSimpleValue(99)],
                         ids=["float", "undefined", "simple"])
def test_unauthenticated_envelope_member_does_not_crash_install(author: Author, tmp_path: Path,
                                                                junk: object) -> None:
    """F3, fixed: values SUIT never uses (floats, undefined, simple values) are refused by the
    decoder wherever suitkit keeps a member it gives no meaning, so an on-path attacker who adds
    ``99: 1.5`` to a genuine release gets a clear rejection, and Consumer.install returns an
    outcome instead of raising TypeError."""
    folder = running_device(tmp_path / "dev", author)
    genuine, _ = author.release(2)
    top = cbor2.loads(genuine)
    body = dict(top.value)
    body[99] = junk
    tampered = cbor2.dumps(CBORTag(107, body))
    with pytest.raises(SuitError, match="not used in SUIT"):
        codec.decode_envelope(tampered)

    outcome = install(folder, tampered)

    assert not outcome.installed and "not used in SUIT" in outcome.reason


# ============================================================================================
# F4  (low) unknown command with an argument that does not re-encode crashes the processor
# ============================================================================================


@pytest.mark.parametrize("argument", [1.5, {"a": 1}, {None: 1}],
                         ids=["float", "text-key-map", "null-key-map"])
def test_unknown_command_with_odd_argument_is_reported_not_raised(argument: object) -> None:
    """F4, fixed: an unknown command's argument is re-encoded as decoded (only override-multiple
    and copy-params maps are given integer keys), so the failure is reported with its offset;
    a float argument is refused by the decoder already."""
    manifest_bytes = cbor2.dumps({1: 1, 2: 1, 3: cbor2.dumps({2: [[b"\x00"]]}),
                                  20: cbor2.dumps([99, argument])})
    if isinstance(argument, float):
        with pytest.raises(SuitError, match="not used in SUIT"):
            verify_envelope(signed_raw_manifest(manifest_bytes), TEST_ANCHORS)
        return
    verified = verify_envelope(signed_raw_manifest(manifest_bytes), TEST_ANCHORS)

    result = rig().run(verified, "installation")

    assert not result.succeeded
    assert "not supported" in result.reason


# ============================================================================================
# F5  (low) decode_report accepts what encode_report cannot encode
# ============================================================================================


def test_decoded_report_reencodes_or_is_refused() -> None:
    """report.py:269 (``extensions=tuple(_freeze(e) ...)``) and report.py:215.

    The status tracker decodes reports from devices it does not trust. A report whose record
    carries a float extension decodes fine and then cannot be re-encoded (stored, forwarded).
    Either decode_report refuses it with DecodeError, or the round trip works.
    """
    report = {99: ["", [-16, b"\x00" * 32]], 3: [[[], 20, 0, 0, {}, 1.5]], 4: True}
    data = cbor2.dumps(report)
    try:
        decoded = decode_report(data)
    except DecodeError:
        return
    assert decode_report(encode_report(decoded)) == decoded


# ============================================================================================
# F6  (medium) boot verifier does not bind the slot to its component
# ============================================================================================


def test_boot_refuses_an_image_of_another_component_in_a_slot(author: Author,
                                                              tmp_path: Path) -> None:
    """wiring.py:78-84: ``component`` comes from the flash-resident slot record and is only
    checked to be *some* component of the manifest; open_device gives the same verifier to
    every image (boot.py:121), so nothing says which component the slot belongs to.

    Under RFC 9124 THREAT.IMG.REPLACE (storage written behind the consumer's back, as the
    existing rollback test simulates with ``stage_set``) an attacker puts the genuine coproc
    image with a record naming ``[h'01']`` into the *main* slot. The bootloader verifies it as
    GOOD and runs the coprocessor's firmware on the main CPU (REQ.SEC.AUTH.IMG_LOC).
    """
    folder = new_device(tmp_path / "dev", [author.anchor], "dual-cpu")
    images = [image_bytes("main", 3000), image_bytes("coproc", 4000)]
    envelope = author.envelope(5, [author.component("main.bin", images[0], index=0),
                                   author.component("coproc.bin", images[1], index=1)])
    assert install(folder, envelope).installed
    boot(folder)
    confirm(folder)

    decoded = codec.decode_envelope(envelope)
    opened = open_device(folder)
    coproc_record = slot_record((b"\x01",), decoded)
    stage_set(opened.bootloader, {"main": (coproc_record, images[1]),
                                  "coproc": (coproc_record, images[1])})
    opened.save()
    result = boot(folder)

    assert running(result)["main"][1] == sha256(images[0]), "main runs the coproc image"


# ============================================================================================
# F7  (medium) HTTP fetcher honours Content-Encoding from an untrusted server
# ============================================================================================


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass


@contextmanager
def serving(body: bytes, headers: dict[str, str]) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = _QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/image.bin"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_hostile_content_encoding_is_a_fetch_error() -> None:
    """fetch.py:121 ``response.iter_bytes()`` decodes per the server's Content-Encoding even
    though the request says ``Accept-Encoding: identity``; only TransportError/StreamError are
    caught (fetch.py:131). The network is untrusted (design.md §1): any server can do this."""
    with serving(b"certainly not gzip", {"Content-Encoding": "gzip"}) as url:
        with pytest.raises(SuitError):
            list(HttpFetcher(retries=0).fetch(url, max_bytes=1000))


def test_gzip_bomb_does_not_inflate_past_max_bytes() -> None:
    """fetch.py:121-123: the bound is checked on the *decoded* chunk after it was inflated in
    memory (about 1000:1 for zeros), and the Content-Length check sees the compressed size."""
    bomb = gzip.compress(bytes(32 << 20), compresslevel=9)  # ~32 KiB on the wire
    with serving(bomb, {"Content-Encoding": "gzip"}) as url:
        tracemalloc.start()
        try:
            with pytest.raises(SuitError):
                list(HttpFetcher(retries=0).fetch(url, max_bytes=1 << 20))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak >> 20} MiB for a 1 MiB bound"


# ============================================================================================
# F8  (medium) the fetch deadline does not cover the response headers
# ============================================================================================


def test_deadline_holds_while_headers_trickle() -> None:
    """fetch.py:114-137: ``deadline`` is compared after each yielded body chunk and after a
    transport failure. While headers arrive one byte at a time, each socket read succeeds
    within ``timeout``, so nothing stops the request (with the defaults, 10 s per byte of up to
    ~64 KiB of headers: days). Here: deadline 0.3 s, the server takes 20 s; the bound checked is
    10 s, a margin for a loaded machine that still tells the deadline from its absence."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(200):
                    time.sleep(0.1)
                    conn.sendall(b"a")
                conn.sendall(b"\r\nContent-Length: 2\r\n\r\nok")
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(SuitError):
            list(HttpFetcher(timeout=0.5, deadline=0.3, retries=0).fetch(
                f"http://127.0.0.1:{listener.getsockname()[1]}/x", max_bytes=100))
    finally:
        elapsed = time.monotonic() - started
        listener.close()
        thread.join(30)
    assert elapsed < 10.0, f"fetch took {elapsed:.1f} s with a 0.3 s deadline"


# ============================================================================================
# F9  (low) malformed URIs escape the fetchers as ValueError / UnicodeError / InvalidURL
# ============================================================================================


@pytest.mark.parametrize("which,uri", [
    ("file", "app%00.bin"),                      # ValueError: embedded null byte
    ("file", "file://[x/app.bin"),               # ValueError: Invalid IPv6 URL
    ("routing", "http://[::1/app.bin"),          # ValueError from urlparse
    ("http", "http://a/\x00"),                   # httpx.InvalidURL
    ("http", "http://" + "a" * 300 + "/app"),    # UnicodeError (idna label too long)
])
def test_malformed_uri_is_a_fetch_error(tmp_path: Path, which: str, uri: str) -> None:
    """fetch.py:51-55 (FileFetcher: ``urlparse``, ``Path.resolve`` outside the try; ``stat``
    raising ValueError, not OSError), fetch.py:179 (RoutingFetcher ``urlparse``), fetch.py:114
    (``client.stream`` raising
    InvalidURL / UnicodeError, which are neither TransportError nor StreamError)."""
    files = FileFetcher(tmp_path)
    http_fetcher = HttpFetcher(retries=0, timeout=0.5)
    fetcher: FileFetcher | HttpFetcher | RoutingFetcher = {
        "file": files, "http": http_fetcher, "routing": RoutingFetcher(http_fetcher, files)}[which]
    with pytest.raises(SuitError):
        list(fetcher.fetch(uri, max_bytes=100))


def test_malformed_uri_fails_processing_with_a_report(tmp_path: Path) -> None:
    """The processor only converts SuitError from fetchers (processor.py:1454), so F9 reaches
    the caller of ``process`` (and ``Consumer.install``) as a raw ValueError."""
    image = b"payload"
    m = manifest(install=seq(override(uri="app%00.bin", image_digest=digest(image),
                                      image_size=len(image)), c(Cmd.FETCH, FETCH_POLICY)))
    verified = verify_envelope(envelope_bytes(m), TEST_ANCHORS)
    device = rig()
    result = process(verified, "installation",
                     Device(device.store, device.env, FileFetcher(tmp_path)))
    assert not result.succeeded


# ============================================================================================
# F10 (low) FileFetcher checks the size once, then reads to EOF
# ============================================================================================


def test_file_fetcher_never_yields_more_than_max_bytes(tmp_path: Path) -> None:
    """fetch.py:59-66. The fetcher's contract (module docstring) is to never yield more
    than ``max_bytes`` in total; the processor happens to stop reading, other callers may not."""
    path = tmp_path / "image.bin"
    path.write_bytes(bytes(100_000))
    chunks = FileFetcher(tmp_path).fetch("image.bin", max_bytes=100_000)
    total = len(next(chunks))
    with path.open("ab") as f:
        f.write(bytes(1_000_000))
    with suppress(SuitError):
        for chunk in chunks:
            total += len(chunk)
    assert total <= 100_000, f"yielded {total} bytes"


# ============================================================================================
# F11 (low) consumer rollback check ignores dependency-prefix component slots
# ============================================================================================


def test_consumer_rollback_check_covers_dependency_slots(author: Author,
                                                         tmp_path: Path) -> None:
    """consumer.py:550. The device runs and has confirmed sequence 7; a manifest with sequence
    1 and no suit-components writes ``[h'00']`` through dependency index 0 (prefix
    ``[h'00']``), without an image digest (F1's skip). The consumer stages it, overwriting the
    inactive slot, and reports it installed; only the boot verifier's "stored component is not
    in its manifest" check (wiring.py:80) stops it later."""
    folder = running_device(tmp_path / "dev", author, sequence=7)
    old = image_bytes("old", 1000)
    m = manifest((), dependencies={0: (b"\x00",)}, sequence_number=1,
                 install=seq(override(uri="#old.bin", image_size=len(old)),
                             c(Cmd.FETCH, FETCH_POLICY)))
    envelope = sign_envelope(codec.build_envelope(m, integrated={"#old.bin": old}),
                             author.key.signer())

    outcome = install(folder, codec.encode_envelope(envelope))

    assert not outcome.installed, outcome.reason


# ============================================================================================
# F12 (low) fetch commits unauthenticated bytes when image-digest is unset
# ============================================================================================


def test_fetch_without_image_digest_is_not_committed() -> None:
    """F12, fixed: with ``allow_unverified_staging=False`` (what devices use) a fetch into a
    component with no image-digest commits nothing (manifest §7: a digest MUST always be set).
    The processor's default stays permissive because the encryption draft's own example stages
    ciphertext without a digest and authenticates it with AES-GCM at copy time."""
    m = manifest(install=seq(override(uri="http://example.com/app.bin", image_size=4),
                             c(Cmd.FETCH, FETCH_POLICY)))
    device = rig(payloads={"http://example.com/app.bin": b"evil"})
    result = device.run(verify_envelope(envelope_bytes(m), TEST_ANCHORS), "installation",
                        options=ProcessorOptions(allow_unverified_staging=False))
    assert not result.succeeded and "no image-digest is set" in result.reason
    assert device[(b"\x00",)].content is None


# ============================================================================================
# Properties checked that hold
# ============================================================================================

_ANCHORS = TrustAnchors.of(crypto.load_public_key(example_public_pem()),
                           crypto.HmacKey(b"a" * 32))
_VECTORS = [vector(name) for name in ALL_ENVELOPES]


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        if not out:
            break
        at = where % len(out)
        if kind == 0:
            out[at] = value
        elif kind == 1:
            out.insert(at, value)
        elif kind == 2:
            del out[at]
        else:
            del out[at:]
    return bytes(out)


_EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)),
                  min_size=1, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_VECTORS), _EDITS)
def test_mutated_envelopes_raise_only_suit_errors(data: bytes,
                                                  edits: list[tuple[int, int, int]]) -> None:
    """decode_envelope, verify_envelope and decode_report on mutated spec vectors raise nothing
    but SuitError (run locally with 60,000 examples and with structure-aware mutation)."""
    mutated = _mutate(data, edits)
    for decoder in (codec.decode_envelope, lambda d: verify_envelope(d, _ANCHORS),
                    decode_report):
        with suppress(SuitError):
            decoder(mutated)


_MEMBERS = ("dependency_resolution", "payload_fetch", "candidate_verification", "install",
            "text")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(SIGNED_EXAMPLES), st.integers(0, 1 << 16), st.integers(1, 255))
def test_any_byte_flip_of_a_signed_example_is_rejected_or_only_severs(name: str, where: int,
                                                                      flip: int) -> None:
    """THREAT.NET.ONPATH: the signed examples carry no integrated payload, so a flipped byte is
    refused, except one that renames a severable member's envelope key (e.g. install 20 -> 21):
    that only severs the member, which anyone may do (§5, §8.4.12). Then the manifest is the
    one signed and every member is the original or absent. Checked exhaustively locally
    (11,784 flips: 4 accepted, all of that kind)."""
    original = verify_envelope(vector(name), _ANCHORS)
    data = bytearray(vector(name))
    data[where % len(data)] ^= flip
    try:
        verified = verify_envelope(bytes(data), _ANCHORS)
    except SuitError:
        return
    assert verified.envelope.manifest_bytes == original.envelope.manifest_bytes
    assert verified.severed > original.severed
    for member in _MEMBERS:
        assert getattr(verified, member) in (getattr(original, member), None), member


def test_cbor_tags_are_never_interpreted() -> None:
    """cbor.decode keeps every tag as CBORTag (no datetime/bignum/regex/sharedref meaning
    behind our back), for tags 0-299 and the common larger ones."""
    bodies = [b"\x40", b"\x60", b"\x00", b"\x80", b"\xa0", b"\x41\x01", b"\x82\x00\x00",
              b"\x50" + bytes(16)]
    for tag in [*range(300), 1004, 55799]:
        for body in bodies:
            data = cbor2.dumps(CBORTag(tag, None))[:-1] + body
            try:
                value = cbor.decode(data, path="x", preferred=True)
            except DecodeError:
                continue
            assert isinstance(value, CBORTag), (tag, body)


@pytest.mark.parametrize("head", ["9b0000000100000000", "bb0000000100000000",
                                  "5b0000000100000000", "d86b9a10000000"])
def test_declared_huge_lengths_do_not_allocate(head: str) -> None:
    """A container or string head announcing 2^32 items in a few bytes is refused at once."""
    started = time.monotonic()
    with pytest.raises(DecodeError):
        cbor.decode(bytes.fromhex(head), path="x")
    assert time.monotonic() - started < 5  # allocating 2^32 items would take far longer


def _block(protected: dict[int, object], tag: int, signature: bytes,
           unprotected: dict[int, object] | None = None) -> bytes:
    return cbor.encode(CBORTag(tag, [cbor.encode(protected), unprotected or {}, None,
                                     signature]))


def _with_blocks(envelope_data: bytes, blocks: list[bytes]) -> bytes:
    env = codec.decode_envelope(envelope_data)
    auth = Authentication(env.authentication.digest, env.authentication.digest_bytes,
                          tuple(blocks))
    return codec.encode_envelope(replace(env, authentication=auth))


def test_mac_in_a_sign1_and_signature_alg_in_a_mac0_are_refused() -> None:
    """MAC/signature confusion: a COSE_Sign1 whose alg is HMAC 256/256 (tag computed with the
    HMAC anchor's key) and a COSE_Mac0 with ES256 are both refused."""
    data = envelope_bytes(manifest(install=seq(c(Cmd.ABORT))))
    payload = codec.decode_envelope(data).authentication.digest_bytes
    tag = TEST_KEY.sign(cose.sig_structure(cbor.encode({1: 5}), payload))
    with pytest.raises(AuthenticationError):
        verify_envelope(_with_blocks(data, [_block({1: 5}, 18, tag)]), TEST_ANCHORS)
    # A COSE_Mac0 claiming ES256, with an ES256 anchor present: refused for its type.
    both = TrustAnchors.of(TEST_KEY, crypto.load_public_key(example_public_pem()))
    mac = TEST_KEY.sign(cose.mac_structure(cbor.encode({1: -7}), payload))
    with pytest.raises(AuthenticationError):
        verify_envelope(_with_blocks(data, [_block({1: -7}, 17, mac)]), both)
    block = cose.decode_auth_block(_block({1: -7}, 17, mac), path="b")
    with pytest.raises(PolicyError):
        cose.verify_detached(block, payload, both.anchors[1].key)


@pytest.mark.parametrize("algorithm", ["ES256", "Ed25519", "HMAC-256"])
def test_empty_and_truncated_signatures_are_refused(algorithm: str) -> None:
    key = crypto.generate_private_key(algorithm)
    signer = key.signer()
    anchors = TrustAnchors.of(key.public_key())
    data = envelope_bytes(manifest(install=seq(c(Cmd.ABORT))), signer=signer)
    block = cose.decode_auth_block(codec.decode_envelope(data).authentication.blocks[0],
                                   path="b")
    tag = 17 if isinstance(block, cose.CoseMac0) else 18
    good = block.tag if isinstance(block, cose.CoseMac0) else block.signature
    for bad in (b"", good[:-1], good[:1]):
        with pytest.raises(AuthenticationError):
            verify_envelope(_with_blocks(data, [_block({1: block.algorithm}, tag, bad)]),
                            anchors)


def test_kid_naming_an_anchor_must_verify_with_that_anchor() -> None:
    """Key id confusion: a block naming anchor B's kid but made with anchor A's key is refused,
    even though A alone would have verified it."""
    a, b = crypto.HmacKey(b"A" * 32, key_id=b"a"), crypto.HmacKey(b"B" * 32, key_id=b"b")
    anchors = TrustAnchors((TrustAnchor(a, role="author"), TrustAnchor(b, role="operator")))
    data = envelope_bytes(manifest(install=seq(c(Cmd.ABORT))), signer=a)
    payload = codec.decode_envelope(data).authentication.digest_bytes
    forged = _block({1: 5}, 17, a.sign(cose.mac_structure(cbor.encode({1: 5}), payload)),
                    {4: b"b"})
    with pytest.raises(AuthenticationError):
        verify_envelope(_with_blocks(data, [forged]), anchors)


def test_one_signer_twice_does_not_satisfy_two_roles() -> None:
    a, b = crypto.HmacKey(b"A" * 32), crypto.HmacKey(b"B" * 32)
    anchors = TrustAnchors((TrustAnchor(a, role="author"), TrustAnchor(b, role="operator")),
                           required_roles=("author", "operator"))
    data = envelope_bytes(manifest(install=seq(c(Cmd.ABORT))), signer=a)
    block = codec.decode_envelope(data).authentication.blocks[0]
    with pytest.raises(PolicyError):
        verify_envelope(_with_blocks(data, [block, block]), anchors)


def test_attached_payload_is_refused() -> None:
    data = envelope_bytes(manifest(install=seq(c(Cmd.ABORT))))
    env = codec.decode_envelope(data)
    payload = env.authentication.digest_bytes
    protected = cbor.encode({1: 5})
    tag = TEST_KEY.sign(cose.mac_structure(protected, payload))
    attached = cbor.encode(CBORTag(17, [protected, {}, payload, tag]))
    with pytest.raises(DecodeError):
        verify_envelope(_with_blocks(data, [attached]), TEST_ANCHORS)


def test_envelope_member_without_digest_in_manifest_is_refused() -> None:
    """Severable-member confusion: an install sequence carried in the envelope is refused when
    the manifest has install inline (no digest to bind it), and a member under the wrong key
    fails its digest."""
    inline = manifest(install=seq(c(Cmd.ABORT)))
    env = codec.decode_envelope(envelope_bytes(inline))
    carried = replace(env, severable=cbor2.loads(cbor2.dumps({20: codec.encode_command_sequence(
        seq(c(Cmd.INVOKE, 2)))})))
    with pytest.raises(AuthenticationError):
        verify_envelope(codec.encode_envelope(carried), TEST_ANCHORS)

    severed = manifest(install=seq(c(Cmd.ABORT)), payload_fetch=seq(c(Cmd.INVOKE, 2)))
    built = codec.build_envelope(severed, sever_members=frozenset({16, 20}))
    signed = sign_envelope(built, TEST_KEY)
    swapped = replace(signed, severable=type(signed.severable)(
        {16: signed.severable[20], 20: signed.severable[16]}))
    with pytest.raises(AuthenticationError):
        verify_envelope(codec.encode_envelope(swapped), TEST_ANCHORS)


def test_try_each_absorbs_conditions_but_not_directive_failures() -> None:
    """§8.4.10.2: soft-failure is True in each try-each option (a failed condition moves on),
    a directive failure inside an option aborts, and soft-failure set at the top aborts."""
    ok = manifest(install=seq(try_each(seq(c(Cmd.ABORT)), seq(override(content=b"x"),
                                                             c(Cmd.WRITE)))))
    device = rig()
    assert device.run(verify_envelope(envelope_bytes(ok), TEST_ANCHORS), "installation").succeeded
    assert device[(b"\x00",)].content == b"x"

    directive = manifest(install=seq(try_each(seq(c(Cmd.WRITE)), seq(override(content=b"y"),
                                                                     c(Cmd.WRITE)))))
    device = rig()
    result = device.run(verify_envelope(envelope_bytes(directive), TEST_ANCHORS), "installation")
    assert not result.succeeded and device[(b"\x00",)].content is None

    top = manifest(install=seq(override(soft_failure=True), c(Cmd.ABORT)))
    result = rig().run(verify_envelope(envelope_bytes(top), TEST_ANCHORS), "installation")
    assert not result.succeeded and "soft-failure" in result.reason


def test_payload_with_wrong_digest_or_extra_bytes_is_never_committed() -> None:
    image = b"the real image"
    for served in (b"the evil image", image + b"!", image[:-1]):
        m = manifest(install=seq(override(uri="http://x/app", image_digest=digest(image),
                                          image_size=len(image)), c(Cmd.FETCH, FETCH_POLICY)))
        device = rig(payloads={"http://x/app": served})
        result = device.run(verify_envelope(envelope_bytes(m), TEST_ANCHORS), "installation")
        assert not result.succeeded
        assert device[(b"\x00",)].content is None and device[(b"\x00",)].overflows == 0


@pytest.mark.parametrize("uri", ["../secret", "%2e%2e/secret", "/../secret",
                                 "file:///../secret", "link/secret"])
def test_file_fetcher_stays_inside_its_root(tmp_path: Path, uri: str) -> None:
    root = tmp_path / "firmware"
    root.mkdir()
    (tmp_path / "secret").write_bytes(b"key material")
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(SuitError):
        list(FileFetcher(root).fetch(uri, max_bytes=100))


def test_shared_parameters_raises_only_processing_errors_for_bad_conditions() -> None:
    """The boot verifier's other entry: a failing compatibility condition is a
    ProcessingError (a SuitError), so the bootloader treats the slot as bad."""
    m = manifest(shared=seq(override(vendor_identifier=CLASS), c(Cmd.VENDOR_IDENTIFIER)))
    verified = verify_envelope(envelope_bytes(m), TEST_ANCHORS)
    with pytest.raises(ProcessingError):
        shared_parameters(verified, rig().device)
