"""SUIT_Capability_Report (draft-ietf-suit-report §6, report key 8) and signed reports (§8).

Every input here is written by hand, byte for byte or with cbor2 and cryptography, not with
suitkit's encoder; the expected Sig_structure is rebuilt in the test (RFC 9052 §4.4).
"""

from __future__ import annotations

import contextlib
import re

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from suitkit.core import crypto
from suitkit.core.model import Digest, FrozenDict
from suitkit.core.report import (
    SIGNED_REPORT_MEDIA_TYPE,
    CapabilityReport,
    ComponentCapability,
    Reference,
    Report,
    capability_json,
    decode_capability_report,
    decode_report,
    encode_capability_report,
    encode_report,
    open_signed_report,
    sign_report,
)
from suitkit.errors import AuthenticationError, DecodeError, PolicyError

# {1: [[h'00'], [h'01', true]], 2: [1, 3, 32, -257], 3: [3, 14, -300], 4: [-9, -16],
#  6: [2, 3, 20], [3, 3, 1]: [3]}  -- keys in RFC 8949 bytewise order, written out by hand
HAND = bytes.fromhex(
    "a6"
    "01" "82" "8141" "00" "82" "4101" "f5"              # 1: components
    "02" "84" "01" "03" "1820" "390100"                # 2: commands 1, 3, 32, -257
    "03" "83" "03" "0e" "39012b"                       # 3: parameters 3, 14, -300
    "04" "82" "28" "2f"                                # 4: algorithms -9, -16
    "06" "83" "02" "03" "14"                           # 6: manifest elements 2, 3, 20
    "83" "03" "03" "01" "81" "03"                      # [3, 3, 1] => [3]
)


def test_a_hand_written_capability_report_decodes_to_its_typed_fields() -> None:
    assert cbor2.loads(HAND)[1] == [[b"\x00"], [b"\x01", True]]  # the bytes say what we mean
    cap = decode_capability_report(HAND)
    assert cap.components == (ComponentCapability((b"\x00",)),
                              ComponentCapability((b"\x01",), wildcard=True))
    assert cap.commands == (1, 3, 32, -257)
    assert cap.parameters == (3, 14, -300)
    assert cap.algorithms == (-9, -16)
    assert cap.manifest == (2, 3, 20)
    assert cap.envelope is None and cap.dependency is None
    assert cap.extensions == FrozenDict({(3, 3, 1): (3,)})
    assert cap.supports_component((b"\x00",)) and not cap.supports_component((b"\x00", b"a"))
    assert cap.supports_component((b"\x01", b"any")) and not cap.supports_component((b"\x02",))
    # deterministic encoding gives the same bytes back
    assert encode_capability_report(cap) == HAND


def test_the_capability_report_rides_in_a_report_as_key_8() -> None:
    body = {99: ["", [-16, b"d" * 32]], 3: [], 4: True, 8: cbor2.loads(HAND)}
    report = decode_report(cbor2.dumps(body))
    assert report.capability_report == decode_capability_report(HAND)
    assert cbor2.loads(encode_report(report))[8] == cbor2.loads(HAND)


def test_capability_json_is_what_the_tracker_shows() -> None:
    doc = capability_json(decode_capability_report(HAND))
    assert doc == {"components": [{"id": ["00"], "wildcard": False},
                                  {"id": ["01"], "wildcard": True}],
                   "commands": [1, 3, 32, -257], "parameters": [3, 14, -300],
                   "algorithms": [-9, -16], "manifest": [2, 3, 20],
                   "extensions": {"3.3.1": [3]}}


def hand(**changes: object) -> bytes:
    body: dict[object, object] = {1: [[b"\x00"]], 2: [1], 3: [1], 4: [-9]}
    for key, value in changes.items():
        if value is None:
            del body[int(key[1:])]
        else:
            body[int(key[1:])] = value
    return cbor2.dumps(body)


@pytest.mark.parametrize(("data", "message"), [
    (hand(k1=None), "missing the component capabilities (key 1)"),
    (hand(k2=None), "missing commands (2) (report §6: mandatory)"),
    (hand(k4=None), "missing algorithms (4)"),
    (hand(k1=[]), "capability-report.components: expected at least one"),
    (hand(k1=[["a"]]), "capability-report.components[0][0]: expected a byte string"),
    (hand(k1=[[b"a", True, True]]), "capability-report.components[0][1]: expected a byte"),
    (hand(k2=[]), "capability-report.commands: expected at least one number"),
    (hand(k3=[1, "x"]), "capability-report.parameters[1]: expected an integer"),
    (hand(k5=7), "capability-report.envelope: expected an array, got int"),
    (hand(k2=list(range(300))), "array of 300 items is over the limit of 256"),
    (cbor2.dumps({1: [[b"\x00"]], 2: [1], 3: [1], 4: [-9], "x": [1]}),
     "map key must be an int or an array of ints"),
    (cbor2.dumps({1: [[b"\x00"]], 2: [1], 3: [1], 4: [-9], (): [1]}),
     "a path key must hold 1 to 16 integers"),
    (cbor2.dumps({1: [[b"\x00"]], 2: [1], 3: [1], 4: [-9], (3, 3): []}),
     "expected at least one number"),
    (cbor2.dumps([1]), "capability-report: expected a map"),
    (b"\xa2\x01\x80\x01\x80", "invalid CBOR"),  # duplicate key 1
    (hand() + b"\x00", "trailing bytes"),
])
def test_malformed_capability_reports_are_refused_with_a_path(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(message)):
        decode_capability_report(data)


def test_capability_reports_are_bounded() -> None:
    with pytest.raises(DecodeError, match="5000 bytes is over the limit of 4096"):
        decode_capability_report(b"\x00" * 5000)
    with pytest.raises(DecodeError, match="over the limit of 2"):
        decode_capability_report(hand(k2=[1, 2, 3]), max_items=2)
    parts = [bytes([i]) for i in range(17)]
    with pytest.raises(DecodeError, match="array of 18 items is over the limit of 17"):
        decode_capability_report(hand(k1=[[*parts, True]]))


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_capability_report(data)


# ----------------------------------------------------------------------------- signed reports

REPORT = Report(reference=Reference("", Digest(-16, b"\x11" * 32)), nonce=b"\x01" * 16)


def test_a_report_signed_by_hand_opens_with_the_public_key() -> None:
    """COSE_Sign1 (tag 18) with the payload attached, ESP256, built with cbor2 and
    cryptography alone: the Sig_structure ["Signature1", protected, h'', payload]."""
    private = ec.generate_private_key(ec.SECP256R1())
    payload = encode_report(REPORT)
    protected = cbor2.dumps({1: -9})
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    der = private.sign(to_sign, ec.ECDSA(hashes.SHA256()))

    r, s = decode_dss_signature(der)
    signed = cbor2.dumps(cbor2.CBORTag(18, [protected, {4: b"dev"}, payload,
                                            r.to_bytes(32, "big") + s.to_bytes(32, "big")]))
    verifier = crypto.EcPublicKey(private.public_key())
    opened = open_signed_report(signed, verifier)
    assert opened.report == REPORT and opened.payload == payload
    assert (opened.kind, opened.algorithm) == ("COSE_Sign1", -9)
    # untagged is allowed too (report §8: "tagged or not")
    untagged = cbor2.dumps([protected, {}, payload,
                            r.to_bytes(32, "big") + s.to_bytes(32, "big")])
    assert open_signed_report(untagged, verifier).report == REPORT


def test_sign_report_makes_what_a_hand_check_verifies() -> None:
    key = crypto.generate_private_key("ESP256")
    signed = sign_report(encode_report(REPORT), key.signer())
    item = cbor2.loads(signed)
    assert item.tag == 18 and cbor2.loads(item.value[0]) == {1: -9}
    assert item.value[2] == encode_report(REPORT)  # the payload is attached
    signature = item.value[3]
    to_sign = cbor2.dumps(["Signature1", item.value[0], b"", item.value[2]])
    public = key.public_key().cryptography_key  # type: ignore[attr-defined]
    public.verify(encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                       int.from_bytes(signature[32:], "big")),
                  to_sign, ec.ECDSA(hashes.SHA256()))
    assert SIGNED_REPORT_MEDIA_TYPE == "application/suit-report+cose"


def test_a_mac0_report_opens_with_the_shared_key() -> None:
    import hmac as std_hmac
    secret = bytes(range(32))
    payload = encode_report(REPORT)
    protected = cbor2.dumps({1: 5})
    tag = std_hmac.new(secret, cbor2.dumps(["MAC0", protected, b"", payload]),
                       "sha256").digest()
    signed = cbor2.dumps(cbor2.CBORTag(17, [protected, {}, payload, tag]))
    opened = open_signed_report(signed, crypto.HmacKey(secret))
    assert opened.kind == "COSE_Mac0" and opened.report == REPORT
    assert sign_report(payload, crypto.HmacKey(secret)) == signed  # HMAC is deterministic
    with pytest.raises(AuthenticationError):
        open_signed_report(signed, crypto.HmacKey(b"\x00" * 32))


def test_forged_altered_or_misfit_signed_reports_are_refused() -> None:
    key = crypto.generate_private_key("ESP256")
    other = crypto.generate_private_key("ESP256")
    signed = sign_report(encode_report(REPORT), key.signer())
    with pytest.raises(AuthenticationError):  # another device's key
        open_signed_report(signed, other.public_key())
    item = cbor2.loads(signed)
    changed = encode_report(Report(reference=REPORT.reference, nonce=b"\x02" * 16))
    with pytest.raises(AuthenticationError):  # the report changed after signing
        open_signed_report(cbor2.dumps(cbor2.CBORTag(18, [item.value[0], {}, changed,
                                                          item.value[3]])), key.public_key())
    ed = crypto.generate_private_key("Ed25519")
    with pytest.raises(PolicyError):  # the key, not the message, picks the algorithm
        open_signed_report(sign_report(encode_report(REPORT), ed.signer()), key.public_key())
    with pytest.raises(DecodeError, match="must be attached"):
        open_signed_report(cbor2.dumps(cbor2.CBORTag(18, [item.value[0], {}, None,
                                                          item.value[3]])), key.public_key())
    with pytest.raises(DecodeError, match=re.escape("expected COSE_Sign1 (tag 18) or COSE_Mac0")):
        open_signed_report(cbor2.dumps(cbor2.CBORTag(98, item.value)), key.public_key())
    with pytest.raises(DecodeError, match="over the limit of 100"):
        open_signed_report(signed, key.public_key(), max_bytes=100)
    with pytest.raises(DecodeError, match=re.escape("alg (1) must be in the protected header")):
        open_signed_report(cbor2.dumps(cbor2.CBORTag(18, [b"\xa0", {1: -9}, item.value[2],
                                                          item.value[3]])), key.public_key())
    # a signature over something that is not a report: verified, then refused as a report
    junk = sign_report(b"\x01", key.signer())
    with pytest.raises(DecodeError, match="report: expected a map"):
        open_signed_report(junk, key.public_key())


def test_capability_report_typed_default_lists() -> None:
    cap = CapabilityReport(components=(ComponentCapability(()),), commands=(1,),
                           parameters=(1,), algorithms=(-9,))
    assert cbor2.loads(encode_capability_report(cap)) == {1: [[]], 2: [1], 3: [1], 4: [-9]}


@pytest.mark.parametrize("unprotected", [1.5, [1], {(1, 2): 3}, {1.5: 1}, {"x": 1.5}])
def test_a_container_with_a_malformed_unprotected_header_is_refused(unprotected: object) -> None:
    """A fuzzer's finds: each raised TypeError (a 500 at the tracker) before."""
    key = crypto.generate_private_key("ESP256")
    item = cbor2.loads(sign_report(encode_report(REPORT), key.signer()))
    data = cbor2.dumps(cbor2.CBORTag(18, [item.value[0], unprotected, item.value[2],
                                          item.value[3]]))
    with pytest.raises(DecodeError):
        open_signed_report(data, key.public_key())


def test_kept_members_with_array_keys_encode_again() -> None:
    """An unknown report member (or capability item) holding a map keyed by an array is kept
    and encoded again (``thaw`` turned the key into an unhashable list: TypeError)."""
    body = {3: [], 4: True, 11: {(1,): 2, (1, (2, 3)): [1]}, 99: ["", [-16, b""]]}
    data = b"\xa4" + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in body.items())
    assert encode_report(decode_report(data)) == data
    cap = decode_capability_report(hand(k11={(5,): 1}))
    assert decode_capability_report(encode_capability_report(cap)) == cap
