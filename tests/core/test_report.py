"""SUIT_Report (draft-ietf-suit-report-18 §4): deterministic encoding and strict decoding.

The expected bytes are built independently with cbor2 (RFC 8949 bytewise key order by hand), and
the decoder is fed what an untrusted device might send.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from suitkit.core.model import Digest, FrozenDict, Parameters
from suitkit.core.numbers import ReportReason
from suitkit.core.report import (
    CapabilityReport,
    ComponentCapability,
    Record,
    Reference,
    Report,
    ResultFailure,
    SystemPropertyClaims,
    decode_report,
    encode_report,
    reason_name,
)
from suitkit.errors import DecodeError, SuitError
from suitkit.limits import Limits

DIGEST = Digest(-16, bytes(range(32)))
REFERENCE = Reference("https://example.com/app.suit", DIGEST)
MEASURED = Parameters(image_digest=Digest(-16, b"\xaa" * 32), image_size=34768)
FAILED_RECORD = Record((1,), 20, 7, 0, MEASURED)


def failure_report() -> Report:
    return Report(
        reference=REFERENCE, nonce=b"\x01\x02",
        records=(Record((), 7, 1, 0), SystemPropertyClaims((b"\x00",), MEASURED), FAILED_RECORD),
        result=ResultFailure(int(ReportReason.CONDITION_FAILED), FAILED_RECORD,
                             int(ReportReason.CONDITION_FAILED)))


def raw_map(items: list[tuple[bytes, bytes]]) -> bytes:
    """A CBOR map from already-encoded (key, value) pairs, in the order given."""
    return bytes([0xA0 + len(items)]) + b"".join(k + v for k, v in items)


def test_encoding_is_deterministic_and_matches_an_independent_encoding() -> None:
    record = [[1], 20, 7, 0, {3: cbor2.dumps([-16, b"\xaa" * 32]), 14: 34768}]
    expected = raw_map([
        (cbor2.dumps(2), cbor2.dumps(b"\x01\x02")),
        (cbor2.dumps(3), cbor2.dumps([
            [[], 7, 1, 0, {}],
            {0: [b"\x00"], 3: cbor2.dumps([-16, b"\xaa" * 32]), 14: 34768},
            record])),
        (cbor2.dumps(4), cbor2.dumps({5: 10, 6: record, 7: 10})),
        # 99 encodes as 18 63: after every one-byte key (RFC 8949 §4.2.1 bytewise order).
        (cbor2.dumps(99), cbor2.dumps(["https://example.com/app.suit", [-16, bytes(range(32))]])),
    ])
    assert encode_report(failure_report()) == expected


def test_success_report_encodes_result_true() -> None:
    report = Report(reference=REFERENCE)
    data = encode_report(report)
    assert cbor2.loads(data) == {3: [], 4: True, 99: ["https://example.com/app.suit",
                                                       [-16, bytes(range(32))]]}
    assert decode_report(data) == report
    assert report.succeeded and not failure_report().succeeded


def test_round_trip_keeps_everything() -> None:
    report = Report(
        reference=REFERENCE, nonce=b"n", result=failure_report().result,
        records=(Record((0, 2), 15, 12, 3, Parameters(component_slot=1), (b"ext", 5)),
                 SystemPropertyClaims((b"a", b"b"), Parameters(vendor_identifier=None,
                                                               image_size=1))),
        capability_report=CapabilityReport(
            components=(ComponentCapability((b"\x00",), wildcard=True),), commands=(1, 2, 3),
            parameters=(1,), algorithms=(-9,)),
        extra=FrozenDict({-300: "custom"}))
    assert decode_report(encode_report(report)) == report
    assert encode_report(decode_report(encode_report(report))) == encode_report(report)


def test_reason_names() -> None:
    assert reason_name(10) == "condition-failed"
    assert reason_name(99) == "unknown(99)"


def ok() -> dict[int, Any]:
    return {99: ["", [-16, b"d"]], 3: [], 4: True}


def with_(**changes: Any) -> bytes:
    body = ok()
    for key, value in changes.items():
        number = int(key[1:])
        if value is _DROP:
            del body[number]
        else:
            body[number] = value
    return cbor2.dumps(body)


_DROP = object()
RECORD = [[], 20, 0, 0, {}]


@pytest.mark.parametrize(("data", "message"), [
    (b"", "report: expected a CBOR item, got 0 bytes"),
    (cbor2.dumps([1]), "report: expected a map, got array of length 1"),
    (cbor2.dumps({"a": 1}), "report: map key must be an int"),
    (with_(k99=_DROP), "missing suit-reference (key 99)"),
    (with_(k3=_DROP), "missing suit-report-records (key 3)"),
    (with_(k4=_DROP), "missing suit-report-result (key 4)"),
    (with_(k99=["uri"]), "report.reference: expected [manifest-uri, manifest-digest]"),
    (with_(k99=[b"uri", [-16, b""]]), "report.reference.manifest-uri: expected a text string"),
    (with_(k99=["", [-16]]), "report.reference.manifest-digest: expected SUIT_Digest"),
    (with_(k99=["", [-16, "x"]]), "report.reference.manifest-digest.bytes: expected a byte"),
    (with_(k2="nonce"), "report.nonce: expected a byte string"),
    (with_(k3={}), "report.records: expected an array, got map"),
    (with_(k3=[[[], 20, 0, 0]]), "report.records[0]: expected SUIT_Record"),
    (with_(k3=[[[-1], 20, 0, 0, {}]]), "report.records[0].manifest-id[0]: expected an unsigned"),
    (with_(k3=[[[], "install", 0, 0, {}]]), "report.records[0].manifest-section: expected an"),
    (with_(k3=[[[], 20, -1, 0, {}]]), "report.records[0].section-offset: expected an unsigned"),
    (with_(k3=[[[], 20, 0, True, {}]]), "report.records[0].component-index: expected an"),
    (with_(k3=[[[], 20, 0, 0, []]]), "report.records[0].properties: expected a map"),
    (with_(k3=[[[], 20, 0, 0, {3: b"\xff"}]]), "report.records[0].properties.image-digest"),
    (with_(k3=[[[], 20, 0, 0, {"x": 1}]]), "parameter key must be an int"),
    (with_(k3=[{3: cbor2.dumps([-16, b""])}]), "without system-component-id (key 0)"),
    (with_(k3=[{0: [b"a"]}]), "must carry at least one parameter"),
    (with_(k3=[{0: ["a"], 14: 1}]), "report.records[0].system-component-id[0]: expected a"),
    (with_(k4=False), "report.result: expected a map, got bool False"),
    (with_(k4={5: 1, 6: RECORD}), "missing result-reason (7)"),
    (with_(k4={5: 1, 6: RECORD, 7: 10, 8: 1}), "map of 4 entries is over the limit of 3"),
    (with_(k4={5: "x", 6: RECORD, 7: 10}), "report.result.result-code: expected an integer"),
    (with_(k4={5: 1, 6: [], 7: 10}), "report.result.result-record: expected SUIT_Record"),
    (with_(k4={5: 1, 6: RECORD, 7: -1}), "report.result.result-reason: expected an unsigned"),
    (with_(k5=1), "report.result-code: belongs inside suit-report-result"),
    (with_(k8=[1]), "report.capability-report: expected a map"),
    (cbor2.dumps(ok()) + b"\x00", "1 trailing bytes after the CBOR item"),
    (b"\xa2\x03\x80\x03\x80", "report: invalid CBOR"),  # duplicate key 3
    (b"\xbf\xff", "report: invalid CBOR"),  # indefinite-length map
])
def test_malformed_reports_are_refused_with_a_path(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(message)):
        decode_report(data)


def test_decoding_is_bounded() -> None:
    many = with_(k3=[RECORD] * 11)
    assert len(decode_report(many).records) == 11
    with pytest.raises(DecodeError, match="array of 11 items is over the limit of 10"):
        decode_report(many, max_records=10)
    with pytest.raises(DecodeError, match=r"report: \d+ bytes is over the limit of 20"):
        decode_report(many, max_bytes=20)
    deep: object = 1
    for _ in range(20):
        deep = [deep]
    with pytest.raises(DecodeError, match="invalid CBOR"):
        decode_report(with_(k3=[[[], 20, 0, 0, {}, deep]]), limits=Limits(max_depth=16))
    with pytest.raises(DecodeError, match="expected bytes"):
        decode_report("text")  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):  # anything else escapes and fails the test
        decode_report(data)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 300) | st.binary(max_size=8)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
        st.integers(-5, 100), inner, max_size=6),
    max_leaves=25)


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from([2, 3, 4, 5, 8, 99, -300]), cbor_values, max_size=5),
       st.lists(cbor_values, max_size=3))
def test_report_shaped_garbage_raises_only_suit_error(body: dict[int, Any],
                                                      records: list[Any]) -> None:
    body.setdefault(99, ["", [-16, b""]])
    body.setdefault(4, True)
    body[3] = records
    try:
        report = decode_report(cbor2.dumps(body))
    except SuitError:
        return
    assert decode_report(encode_report(report)) == report
