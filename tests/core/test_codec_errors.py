"""Malformed envelopes give one DecodeError that names what is wrong and where."""

from __future__ import annotations

import cbor2
import pytest

from suitkit.core import codec
from suitkit.core.crypto import load_public_key
from suitkit.core.verify import TrustAnchors, verify_envelope
from suitkit.errors import DecodeError
from suitkit.limits import Limits

from helpers import example_public_pem, vector

pytestmark = pytest.mark.usefixtures("both_decoders")  # fast path and reference alone


def envelope_with_manifest(manifest: object, *, raw: bool = False) -> bytes:
    body = manifest if raw else cbor2.dumps(manifest)
    auth = cbor2.dumps([cbor2.dumps([-16, b"\x00" * 32])])
    return cbor2.dumps(cbor2.CBORTag(107, {2: auth, 3: body}))


def common(**extra: object) -> bytes:
    return cbor2.dumps({2: [[b"\x00"]], **extra})


def decode_error(data: bytes, limits: Limits | None = None) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        codec.decode_envelope(data, limits=limits or Limits())
    return info.value


def test_missing_manifest() -> None:
    data = cbor2.dumps(cbor2.CBORTag(107, {2: cbor2.dumps([cbor2.dumps([-16, b""])])}))
    assert str(decode_error(data)) == "envelope: missing manifest (key 3)"


def test_bare_manifest_tag_refused() -> None:
    data = cbor2.dumps(cbor2.CBORTag(1070, {1: 1}))
    assert "has no authentication wrapper" in str(decode_error(data))


def test_wrong_tag() -> None:
    assert str(decode_error(cbor2.dumps(cbor2.CBORTag(18, {})))) == (
        "envelope: expected tag 107 (SUIT_Envelope), got tag 18")


def test_not_cbor() -> None:
    assert decode_error(b"\xff\xff").path == "envelope"


def test_negative_sequence_number() -> None:
    e = decode_error(envelope_with_manifest({1: 1, 2: -1, 3: common()}))
    assert e.path == "manifest.sequence-number"
    assert "expected an unsigned integer, got int -1" in str(e)


def test_component_part_not_a_bstr() -> None:
    e = decode_error(envelope_with_manifest({1: 1, 2: 0, 3: cbor2.dumps({2: [["text"]]})}))
    assert e.path == "manifest.common.components[0][0]"


def test_odd_command_sequence() -> None:
    e = decode_error(envelope_with_manifest({1: 1, 2: 0, 3: common(),
                                             7: cbor2.dumps([3, 15, 3])}))
    assert e.path == "manifest.validate"
    assert "3 items" in str(e)


def test_try_each_needs_two_sequences() -> None:
    seq = cbor2.dumps([15, [cbor2.dumps([3, 15])]])
    e = decode_error(envelope_with_manifest({1: 1, 2: 0, 3: common(), 7: seq}))
    assert e.path == "manifest.validate[0].try-each"
    assert "at least 2 sequences" in str(e)


def test_bad_parameter_names_the_parameter() -> None:
    seq = cbor2.dumps([20, {1: b"short"}])
    e = decode_error(envelope_with_manifest({1: 1, 2: 0, 3: common(), 7: seq}))
    assert e.path == "manifest.validate[0].override-parameters.vendor-identifier"
    assert "16-byte UUID, got 5 bytes" in str(e)


def test_unknown_command_is_kept_for_the_processor_to_refuse() -> None:
    seq = cbor2.dumps([99, {"any": "thing"}])
    envelope = codec.decode_envelope(envelope_with_manifest({1: 1, 2: 0, 3: common(), 7: seq}))
    assert envelope.manifest.validate is not None
    assert envelope.manifest.validate.commands[0].code == 99


def test_missing_common() -> None:
    assert str(decode_error(envelope_with_manifest({1: 1, 2: 0}))) == (
        "manifest: missing common (key 3)")



def test_envelope_size_limit() -> None:
    e = decode_error(vector("example0"), Limits(max_envelope_bytes=100))
    assert "237 bytes is over the limit of 100" in str(e)


def test_component_count_limit() -> None:
    data = envelope_with_manifest({1: 1, 2: 0, 3: cbor2.dumps({2: [[b"\x00"]] * 5})})
    e = decode_error(data, Limits(max_components=4))
    assert e.path == "manifest.common.components"


def test_sequence_nesting_limit() -> None:
    seq = cbor2.dumps([3, 15])
    for _ in range(5):
        seq = cbor2.dumps([32, seq])
    data = envelope_with_manifest({1: 1, 2: 0, 3: common(), 7: seq})
    with pytest.raises(DecodeError, match="nested deeper than 3"):
        codec.decode_envelope(data, limits=Limits(max_sequence_nesting=3))
    codec.decode_envelope(data)  # within the default limit


def test_manifest_trailing_bytes() -> None:
    manifest = cbor2.dumps({1: 1, 2: 0, 3: common()}) + b"\x00"
    e = decode_error(envelope_with_manifest(manifest, raw=True))
    assert e.path == "manifest"
    assert "1 trailing bytes" in str(e)


def test_non_preferred_envelope_head_refused() -> None:
    data = bytearray(vector("example0"))
    # the manifest bstr head 58 71 re-encoded as 59 00 71 (longer than needed)
    index = data.index(bytes.fromhex("035871")) + 1
    longer = bytes(data[:index]) + bytes.fromhex("590071") + bytes(data[index + 2:])
    assert "preferred serialization" in str(decode_error(longer))


def test_command_code_that_is_an_array_or_map_is_a_decode_error() -> None:
    # Regression (found by the device threat tests): an unhashable command code reached a set
    # lookup before the type check and escaped as TypeError.
    for code in ([1], {1: 2}):
        seq = cbor2.dumps([code, 15])
        e = decode_error(envelope_with_manifest({1: 1, 2: 0, 3: common(), 7: seq}))
        assert e.path == "manifest.validate[0]"
        assert "expected a command number" in str(e)


# manifest §8.3: the authentication wrapper MUST come before the manifest, whatever the CBOR
# map order. The envelopes below are assembled byte by byte from example 0's two members.

def _example0_members() -> tuple[bytes, bytes]:
    """The encoded bstr items (head included) at keys 2 and 3 of example 0, as sent."""
    data = vector("example0")
    top = cbor2.loads(data).value
    return cbor2.dumps(top[2]), cbor2.dumps(top[3])


@pytest.mark.parametrize("tagged", [True, False])
def test_manifest_before_authentication_wrapper_refused(tagged: bool) -> None:
    auth, manifest = _example0_members()
    in_order = b"\xa2" + b"\x02" + auth + b"\x03" + manifest
    swapped = b"\xa2" + b"\x03" + manifest + b"\x02" + auth
    tag = b"\xd8\x6b" if tagged else b""
    assert codec.decode_envelope(tag + in_order).authentication.blocks  # the same bytes, in order
    error = decode_error(tag + swapped)
    assert error.path == "envelope"
    assert "authentication-wrapper (key 2) must be the first member" in str(error)
    assert "found the manifest (key 3) first" in str(error)


def test_member_before_authentication_wrapper_refused() -> None:
    auth, manifest = _example0_members()
    text = cbor2.dumps(cbor2.dumps({}))  # an (empty) suit-text member, key 23
    swapped = b"\xd8\x6b\xa3" + b"\x17" + text + b"\x02" + auth + b"\x03" + manifest
    assert "found key 23 first" in str(decode_error(swapped))


def test_manifest_first_refused_by_verify() -> None:
    auth, manifest = _example0_members()
    anchors = TrustAnchors.of(load_public_key(example_public_pem()))
    in_order = b"\xd8\x6b\xa2\x02" + auth + b"\x03" + manifest
    verify_envelope(in_order, anchors)
    with pytest.raises(DecodeError, match="must be the first member"):
        verify_envelope(b"\xd8\x6b\xa2\x03" + manifest + b"\x02" + auth, anchors)
