"""Preferred serialization inside every bstr-wrapped structure (RFC 8949 §4.2.1; manifest §8.1:
"minimal-length integer, length and header encodings" for all CBOR of the envelope).

The envelope's own re-encoding check stops at its byte strings, so each ``bstr .cbor`` member
(command sequences, common, text, the authentication wrapper, COSE protected headers, digests,
reports) is checked where it is decoded, by the compiled fast path (which decides preferred
input only) and by the reference path (which re-encodes): a non-preferred head anywhere is a
``DecodeError`` naming the member and the byte, even in a correctly signed envelope.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import cbor2
import pytest

from core.strictcbor_kit import require_extension
from core.test_report import failure_report
from suitkit.core import cbor, codec, crypto
from suitkit.core.report import decode_report, encode_report
from suitkit.core.verify import TrustAnchors, verify_envelope
from suitkit.errors import DecodeError

from helpers import example_private_pem, vector

PRIVATE = crypto.load_private_key(example_private_pem())
ANCHORS = TrustAnchors.of(PRIVATE.public_key())


@pytest.fixture(params=["fast", "reference"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run each case on the compiled fast path and on the reference path alone."""
    if request.param == "fast":
        require_extension()
    else:
        monkeypatch.setattr(cbor, "FAST", None)
        monkeypatch.setattr(codec, "_FAST", None)
    yield request.param


def longer_head(item: bytes, at: int = 0) -> bytes:
    """``item`` with the head at byte ``at`` (argument < 24) written in two bytes instead."""
    first = item[at]
    assert first & 0x1F < 24, "the head must hold its argument in its first byte"
    return item[:at] + bytes([(first & 0xE0) | 24, first & 0x1F]) + item[at + 1:]


def signed(change: Callable[[dict[int, Any]], None], *,
           protected: bytes = b"\xa1\x01\x26", wrap_auth: Callable[[bytes], bytes] = bytes,
           manifest_bytes: Callable[[bytes], bytes] = bytes) -> bytes:
    """Example 0's manifest changed by ``change``, correctly digested and signed (ES256)."""
    top = cbor2.loads(vector("example0")).value
    manifest = cbor2.loads(top[3])
    change(manifest)
    body = manifest_bytes(cbor.encode(manifest))
    digest = cbor.encode([-16, hashlib.sha256(cbor.wrap(body)).digest()])
    to_sign = cbor2.dumps(["Signature1", protected, b"", digest])
    block = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, None,
                                           PRIVATE.signer().sign(to_sign)]))
    auth = wrap_auth(cbor.encode([digest, block]))
    return cbor.encode(cbor2.CBORTag(107, {2: auth, 3: body}))


def common_with(change: Callable[[dict[int, Any]], None]) -> Callable[[dict[int, Any]], None]:
    def apply(manifest: dict[int, Any]) -> None:
        common = cbor2.loads(manifest[3])
        change(common)
        manifest[3] = cbor.encode(common)
    return apply


def _set(key: int, value: bytes) -> Callable[[dict[int, Any]], None]:
    def apply(target: dict[int, Any]) -> None:
        target[key] = value
    return apply


def _longer(key: int, at: int = 0) -> Callable[[dict[int, Any]], None]:
    def apply(target: dict[int, Any]) -> None:
        target[key] = longer_head(target[key], at)
    return apply


TEXT = cbor.encode({"en": {1: "a thermostat", 2: "https://example.com/model"}})

# (what is changed, the envelope with a preferred encoding, with one head longer, the error)
CASES: dict[str, tuple[Callable[[], bytes], Callable[[], bytes], str]] = {
    "integer in the validate sequence": (
        lambda: signed(_set(7, bytes.fromhex("82030f"))),
        lambda: signed(_set(7, bytes.fromhex("8218030f"))),  # condition-image-match as 18 03
        r"manifest\.validate: CBOR is not in preferred serialization at byte 1"),
    "array head of the invoke sequence": (
        lambda: signed(lambda m: None),
        lambda: signed(_longer(9)),
        r"manifest\.invoke: CBOR is not in preferred serialization at byte 0"),
    "map head of the common block": (
        lambda: signed(lambda m: None),
        lambda: signed(_longer(3)),
        r"manifest\.common: CBOR is not in preferred serialization at byte 0"),
    "parameters map inside the shared sequence": (
        lambda: signed(lambda m: None),
        lambda: signed(common_with(_longer(4, 2))),  # 86 14 [a4] ...: override-parameters
        r"manifest\.common\.shared-sequence: CBOR is not in preferred serialization at byte 2"),
    "text map": (
        lambda: signed(_set(23, TEXT)),
        lambda: signed(_set(23, longer_head(TEXT))),
        r"manifest\.text: CBOR is not in preferred serialization at byte 0"),
    "the manifest itself": (
        lambda: signed(lambda m: None),
        lambda: signed(lambda m: None, manifest_bytes=longer_head),
        r"manifest: CBOR is not in preferred serialization at byte 0"),
    "the authentication wrapper": (
        lambda: signed(lambda m: None),
        lambda: signed(lambda m: None, wrap_auth=longer_head),
        r"authentication-wrapper: CBOR is not in preferred serialization at byte 0"),
    "a COSE protected header": (
        lambda: signed(lambda m: None, protected=bytes.fromhex("a10126")),
        lambda: signed(lambda m: None, protected=bytes.fromhex("a1013806")),  # -7 as 38 06
        r"protected: CBOR is not in preferred serialization at byte 2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_non_preferred_cbor_inside_a_signed_envelope_is_refused(decoder: str,
                                                                case: str) -> None:
    preferred, longer, error = CASES[case]
    verify_envelope(preferred(), ANCHORS)  # the same envelope, preferred: it verifies
    data = longer()
    with pytest.raises(DecodeError, match=error):
        verify_envelope(data, ANCHORS)
    if "COSE" not in case:  # decode alone leaves the signature blocks to verify
        with pytest.raises(DecodeError, match=error):
            codec.decode_envelope(data)


def test_non_preferred_cbor_inside_a_report_is_refused(decoder: str) -> None:
    """A device's SUIT_Report, and the digest bstr inside its measured parameters."""
    data = encode_report(failure_report())
    assert decode_report(data) == failure_report()
    with pytest.raises(DecodeError, match=r"^report: CBOR is not in preferred serialization"):
        decode_report(longer_head(data))
    digest = cbor.encode([-16, b"\xaa" * 32])
    assert data.count(cbor.wrap(digest)) >= 1
    inner = data.replace(cbor.wrap(digest), cbor.wrap(longer_head(digest)))
    with pytest.raises(DecodeError, match="image-digest: CBOR is not in preferred"):
        decode_report(inner)
