"""One test per RFC 9124 threat (and per processing rule) the command interpreter mitigates.

Rollback (THREAT.IMG.EXPIRED) is the device's job (sequence numbers are device state) and is
tested there. Each test here would fail if the mitigation were removed: it checks both that the
manifest is refused and that nothing was written, fetched or invoked.
"""

from __future__ import annotations

from uuid import UUID

import cbor2

from core.processor_fakes import (
    CLASS,
    COMPATIBILITY,
    EXAMPLE_ANCHORS,
    EXAMPLE_SIGNER,
    SHA256,
    TEST_ANCHORS,
    VENDOR,
    MemoryComponent,
    Rig,
    c,
    digest,
    envelope_bytes,
    index,
    manifest,
    override,
    rewrite,
    rig,
    run_sequence,
    seq,
    set_params,
    sha256,
    try_each,
)
from core.processor_fakes import verified as build
from suitkit.core import codec
from suitkit.core.model import (
    Command,
    Digest,
    FrozenDict,
    Parameters,
    VersionMatch,
)
from suitkit.core.numbers import Command as Cmd
from suitkit.core.numbers import ReportReason
from suitkit.core.processor import ComponentIdentity, ProcessResult
from suitkit.core.report import Record
from suitkit.core.verify import VerifiedManifest, verify_envelope

from helpers import vector

C0, C1, C2 = (b"\x00",), (b"\x01",), (b"\x02",)
IMAGE = bytes(range(256)) * 20  # 5120 bytes


def reason(result: ProcessResult) -> int:
    failure = result.report.result
    assert failure is not True, "expected a failure"
    return failure.reason


def example1_with_real_digest() -> VerifiedManifest:
    m = rewrite(codec.decode_envelope(vector("example1")).manifest,
                {(bytes.fromhex("00112233445566778899aabbccddeeff0123456789abcdeffedcba98"
                                "76543210"), 34768): (sha256(IMAGE), len(IMAGE))})
    return verify_envelope(envelope_bytes(m, signer=EXAMPLE_SIGNER), EXAMPLE_ANCHORS)


# ------------------------------------------------------- THREAT.IMG.INCOMPATIBLE (§4.2.3)


def test_wrong_vendor_id_rejected() -> None:
    other_vendor = ComponentIdentity(vendor_ids=frozenset({UUID(int=1)}),
                                     class_ids=frozenset({CLASS}))
    device = rig({C0: MemoryComponent(identity=other_vendor)},
                 payloads={"http://example.com/file.bin": IMAGE})
    result = device.run(example1_with_real_digest())
    assert result.reason == (
        "shared-sequence[1] condition-vendor-identifier on component [h'00']: "
        f"vendor-identifier {VENDOR} does not match the component's "
        "(00000000-0000-0000-0000-000000000001)")
    assert reason(result) == ReportReason.CONDITION_FAILED
    assert device.fetcher is not None and device.fetcher.requests == []
    assert device.store.untouched


def test_wrong_class_id_rejected() -> None:
    other_class = ComponentIdentity(vendor_ids=frozenset({VENDOR}),
                                    class_ids=frozenset({UUID(int=2)}))
    device = rig({C0: MemoryComponent(identity=other_class)},
                 payloads={"http://example.com/file.bin": IMAGE})
    result = device.run(example1_with_real_digest())
    assert result.reason.startswith("shared-sequence[2] condition-class-identifier on "
                                    f"component [h'00']: class-identifier {CLASS} does not "
                                    "match")
    assert device.fetcher is not None and device.fetcher.requests == []
    assert device.store.untouched
    # The same device with the right class takes the update.
    assert rig(payloads={"http://example.com/file.bin": IMAGE}).run(
        example1_with_real_digest()).succeeded


# ------------------------------------------------------- THREAT.IMG.LOCATION (§4.2.5)


def test_unknown_component_rejected_before_any_write() -> None:
    m = build(manifest((C0, (b"bootloader",)), install=seq(
        index(0), override(content=b"app"), c(Cmd.WRITE),
        index(1), override(content=b"evil"), c(Cmd.WRITE))))
    device = rig({C0: MemoryComponent()})
    result = device.run(m)
    assert result.reason == ("common: component 1 [h'626f6f746c6f61646572'] does not exist "
                             "on this device")
    assert reason(result) == ReportReason.COMPONENT_UNSUPPORTED
    assert device.store.untouched
    failure = result.report.result
    assert failure is not True and failure.record.component_index == 1


# ------------------------------------------------ THREAT.NET.REDIRECT / ONPATH (§4.2.6-7)


def test_tampered_image_digest_mismatch_rejected() -> None:
    tampered = IMAGE[:100] + bytes([IMAGE[100] ^ 0xFF]) + IMAGE[101:]
    m = build(manifest(install=seq(*COMPATIBILITY, override(
        uri="http://cdn/app.bin", image_digest=digest(IMAGE), image_size=len(IMAGE)),
        c(Cmd.FETCH, 2), c(Cmd.IMAGE_MATCH))))
    device = rig({C0: MemoryComponent(b"running image")}, payloads={"http://cdn/app.bin":
                                                                    tampered})
    result = device.run(m)
    assert not result.succeeded
    assert result.reason == (f"install[4] directive-fetch on component [h'00']: digest "
                             f"{sha256(tampered).hex()[:16]}... of payload 'http://cdn/app.bin' "
                             f"does not match expected {sha256(IMAGE).hex()[:16]}...")
    assert device[C0].content == b"running image" and device[C0].commits == 0
    failure = result.report.result
    assert failure is not True
    assert failure.record.properties == Parameters(
        image_digest=Digest(SHA256, sha256(tampered)), image_size=len(tampered))
    # Policy 15 on vendor / class: success records; policy 2 (send-record-on-failure) on the
    # fetch: the failure record follows them. 8c | 14 | a2 01 50 <16> 02 50 <16> (37 bytes) |
    # 01 0f | 02 0f: vendor at byte 39, class at 41.
    assert [r.section_offset for r in result.report.records if isinstance(r, Record)
            ] == [39, 41, failure.record.section_offset]
    assert result.report.records[-1] == failure.record


# ------------------------------------------------------- THREAT.IMG.EXTRA (§4.2.15)


def test_payload_longer_than_image_size_refused_not_truncated() -> None:
    m = build(manifest(install=seq(override(uri="http://cdn/app.bin", image_size=len(IMAGE)),
                                   c(Cmd.FETCH))))
    device = rig({C0: MemoryComponent(b"old")},
                 payloads={"http://cdn/app.bin": IMAGE + b"appended"})
    result = device.run(m)
    assert result.reason == ("install[1] directive-fetch on component [h'00']: payload "
                             "'http://cdn/app.bin' is longer than the 5120 bytes allowed; "
                             "refused")
    assert device.fetcher is not None
    assert device.fetcher.requests == [("http://cdn/app.bin", len(IMAGE), None)]
    component = device[C0]
    assert component.content == b"old" and component.commits == 0 and component.discards == 1
    assert component.overflows == 0 and component.bytes_written <= len(IMAGE)
    # A payload that stops short is refused too: image-size is exact.
    short = rig({C0: MemoryComponent(b"old")},
                payloads={"http://cdn/app.bin": IMAGE[:-1]}).run(m)
    assert "is 5119 bytes, expected image-size 5120" in short.reason
    # Integrated payloads get the same bound.
    m = build(manifest(install=seq(override(uri="#app", image_size=4), c(Cmd.FETCH))),
              integrated={"#app": b"12345"})
    assert "longer than the 4 bytes allowed" in rig().run(m).reason
    # So does a copy from a component holding more than image-size bytes.
    m = build(manifest((C0, C1), install=seq(index(1), override(source_component=0,
                                                                  image_size=len(IMAGE)),
                                              c(Cmd.COPY))))
    device = rig({C0: MemoryComponent(IMAGE + b"appended"), C1: MemoryComponent(b"old")})
    result = device.run(m)
    assert result.reason == ("install[2] directive-copy on component [h'01']: component "
                             "[h'00'] is longer than the 5120 bytes allowed by image-size; "
                             "refused")
    assert device[C1].content == b"old" and device[C1].overflows == 0


# ------------------------------------------------- THREAT.IMG.EXPIRED.OFFLINE (§4.2.2)


def test_use_before_expired_rejected() -> None:
    m = build(manifest(
        shared=seq(override(use_before=1_700_000_000), c(Cmd.USE_BEFORE)),
        install=seq(override(content=b"new"), c(Cmd.WRITE))))
    for now in (1_700_000_000, 1_800_000_000):  # use-before is exclusive
        device = rig(time=now)
        result = device.run(m)
        assert result.reason == ("shared-sequence[1] condition-use-before on component "
                                 "[h'00']: manifest expired: use-before 1700000000 is not after "
                                 f"the device time {now}")
        assert device.store.untouched
    assert rig(time=1_699_999_999).run(m).succeeded


# ------------------------------------------------------- THREAT.MFST.OVERRIDE (§4.2.13)


def test_set_parameters_cannot_override_an_override() -> None:
    def dependent_with(dependency_sets: Command) -> tuple[Rig, ProcessResult]:
        dependency = manifest((C0,), install=seq(dependency_sets, c(Cmd.FETCH)))
        dep_bytes = envelope_bytes(dependency)
        dep_digest = codec.decode_envelope(dep_bytes).authentication.digest
        root = manifest((C0,), dependencies={1: (b"dep.suit",)}, install=seq(
            index(0), override(uri="http://operator/app.bin"),
            index(1), override(uri="#dep", image_digest=dep_digest), c(Cmd.FETCH),
            c(Cmd.DEPENDENCY_INTEGRITY), c(Cmd.PROCESS_DEPENDENCY, 0)))
        device = rig({C0: MemoryComponent(), (b"dep.suit",): MemoryComponent()},
                     payloads={"http://operator/app.bin": b"op", "http://author/app.bin": b"au"},
                     anchors=TEST_ANCHORS)
        return device, device.run(build(root, integrated={"#dep": dep_bytes}))

    device, result = dependent_with(set_params(uri="http://author/app.bin"))
    assert result.succeeded, result.reason
    assert device.fetcher is not None
    assert device.fetcher.requests == [
        ("http://operator/app.bin", 1 << 34, None)]
    assert device[C0].content == b"op"
    # A dependency that must enforce its value uses override-parameters (trust-domains §5.6.1).
    device, result = dependent_with(override(uri="http://author/app.bin"))
    assert device[C0].content == b"au"
    # Within one manifest, set-parameters leaves a value set earlier alone as well.
    m = build(manifest(install=seq(override(content=b"first"), set_params(content=b"second"),
                                   c(Cmd.WRITE))))
    single = rig()
    assert single.run(m).succeeded
    assert single[C0].content == b"first"


# ------------------------------------------------ unsupported input (manifest §6.1, §8.4.9)


def test_unknown_command_rejected_before_side_effects() -> None:
    for code in (99, -300):  # unassigned, and private use (custom)
        m = build(manifest(
            install=seq(override(content=b"x"), c(Cmd.WRITE), Command(code, 0)),
            validate=seq(c(Cmd.IMAGE_MATCH))))
        device = rig()
        result = device.run(m, "invoke")  # the unknown command is in install, not run here
        name = "unknown(99)" if code == 99 else "custom(-300)"
        assert result.reason == (f"install[2] command {name} on component [h'00']: command "
                                 f"{code} is not supported"
                                 + (" (no custom command of that number is registered)"
                                    if code < 0 else ""))
        assert reason(result) == ReportReason.COMMAND_UNSUPPORTED
        assert device.store.untouched


def test_unknown_parameter_rejected() -> None:
    for number in (99, -300):
        m = build(manifest(install=seq(
            override(content=b"x"), c(Cmd.WRITE),
            try_each(seq(Command(Cmd.OVERRIDE_PARAMETERS, Parameters(
                extra=FrozenDict({number: 1})))), seq(c(Cmd.ABORT, 0))))))
        device = rig()
        result = device.run(m)
        assert reason(result) == ReportReason.PARAMETER_UNSUPPORTED
        assert result.reason.startswith("install[2].try-each[0][0] "
                                        "directive-override-parameters")
        assert device.store.untouched
    m = build(manifest(install=seq(Command(Cmd.COPY_PARAMS, FrozenDict({0: (18, 77)})))))
    assert reason(rig().run(m)) == ReportReason.PARAMETER_UNSUPPORTED


# ------------------------------------------------ soft-failure (manifest §8.4.8.15, §6.4)


def test_soft_failure_outside_try_each_aborts() -> None:
    m = build(manifest(install=seq(override(content=b"x"), c(Cmd.WRITE),
                                   override(soft_failure=True), c(Cmd.ABORT))))
    device = rig()
    result = device.run(m)
    assert result.reason == ("install[2] directive-override-parameters on component [h'00']: "
                             "soft-failure may only be set inside try-each or run-sequence")
    assert device.store.untouched
    # Inside run-sequence it is allowed and absorbs the failing condition.
    m = build(manifest(install=seq(run_sequence(override(soft_failure=True), c(Cmd.ABORT)))))
    assert rig().run(m).succeeded


def test_directive_failure_aborts_even_with_soft_failure() -> None:
    m = build(manifest(install=seq(try_each(
        seq(override(soft_failure=True, uri="http://cdn/missing"), c(Cmd.FETCH)),
        seq(override(content=b"fallback"), c(Cmd.WRITE))))))
    device = rig(payloads={})
    result = device.run(m)
    assert result.reason == ("install[0].try-each[0][1] directive-fetch on component [h'00']: "
                             "payload 'http://cdn/missing': FetchError: 404 http://cdn/missing")
    assert reason(result) == ReportReason.OPERATION_FAILED
    assert device[C0].content is None  # the second option never ran


# ------------------------------------------------ try-each (manifest §8.4.10.2)


def test_try_each_falls_through_and_nil_fallback() -> None:
    first_fails = seq(override(content=b"one"), c(Cmd.CHECK_CONTENT), c(Cmd.WRITE))
    second = seq(override(content=b"two"), c(Cmd.WRITE))
    device = rig()
    assert device.run(build(manifest(install=seq(try_each(first_fails, second))))).succeeded
    assert device[C0].content == b"two" and device[C0].commits == 1

    none_match = seq(c(Cmd.ABORT, 0))
    m = build(manifest(install=seq(try_each(none_match, none_match))))
    result = rig().run(m)
    assert result.reason == ("install[0] directive-try-each on component [h'00']: none of the "
                             "2 try-each sequences succeeded")
    m = build(manifest(install=seq(try_each(none_match, none_match, fallback=True),
                                   override(content=b"after"), c(Cmd.WRITE))))
    device = rig()
    assert device.run(m).succeeded and device[C0].content == b"after"

    # An option that turns soft-failure off makes its condition failures fatal.
    strict = seq(override(soft_failure=False), c(Cmd.ABORT, 0))
    m = build(manifest(install=seq(try_each(strict, second))))
    device = rig()
    assert device.run(m).reason.startswith("install[0].try-each[0][1] condition-abort")
    assert device[C0].content is None


# ------------------------------------------------ component index (manifest §6.5)


def test_component_index_true_and_list() -> None:
    ids = (C0, C1, C2)
    m = build(manifest(ids, install=seq(
        index(True), override(content=b"all"), c(Cmd.WRITE, 1),
        index((2, 0)), override(content=b"list"), c(Cmd.WRITE, 0),
        index(True), try_each(seq(override(content=b"list"), c(Cmd.CHECK_CONTENT, 0)),
                              seq(override(content=b"other"), c(Cmd.WRITE, 0))))))
    device = rig({cid: MemoryComponent() for cid in ids})
    result = device.run(m)
    assert result.succeeded, result.reason
    assert result.written == (C0, C1, C2, C2, C0, C1)
    assert [device[cid].content for cid in ids] == [b"list", b"other", b"list"]
    # One success record per component, in order (manifest §8.4.7).
    records = [r for r in result.report.records if isinstance(r, Record)]
    # 90 | 0c f5 | 14 a1 12 43 'all' | 12 01: the write is at byte 10.
    assert [(r.section_offset, r.component_index) for r in records] == [
        (10, 0), (10, 1), (10, 2)]
    # Out-of-range indices are refused before anything runs.
    bad = build(manifest(ids, install=seq(index(0), override(content=b"x"), c(Cmd.WRITE),
                                          index((1, 3)))))
    device = rig({cid: MemoryComponent() for cid in ids})
    result = device.run(bad)
    assert "component index 3 is out of range; the manifest has 3 component(s)" in result.reason
    assert device.store.untouched


# ------------------------------------------------ update management (§5.7, §5.8, §5.5)


def test_override_multiple_and_copy_params() -> None:
    ids = (C0, C1, C2)
    m = build(manifest(ids, install=seq(
        index(1),
        Command(Cmd.OVERRIDE_MULTIPLE, FrozenDict({0: Parameters(content=b"zero"),
                                                   2: Parameters(content=b"two",
                                                                 invoke_args=b"go")})),
        c(Cmd.WRITE),  # the index is now 2, the last listed
        index(1), Command(Cmd.COPY_PARAMS, FrozenDict({0: (18,), 2: (23, 21)})),
        c(Cmd.WRITE), c(Cmd.INVOKE))))
    device = rig({cid: MemoryComponent() for cid in ids})
    result = device.run(m)
    assert result.succeeded, result.reason
    assert [device[cid].content for cid in ids] == [None, b"zero", b"two"]
    # invoke-args copied from 2; uri (21) was unset there and stays unset.
    assert device[C1].invocations == [b"go"]


def test_version_condition_semantics() -> None:
    def check(installed: tuple[int, ...], comparison: int, value: tuple[int, ...]) -> bool:
        m = build(manifest(validate=seq(override(version=VersionMatch(comparison, value)),
                                        c(Cmd.VERSION))))
        result = rig(versions={C0: installed}).run(m, "invoke")
        assert result.succeeded or "condition-version" in result.reason
        return result.succeeded

    greater, greater_equal, equal, lesser_equal, lesser = 1, 2, 3, 4, 5
    assert check((2, 0, -1, 1), lesser, (2, 0, 0))  # 2.0-rc.1 < 2.0.0
    assert not check((2, 0, -1, 1), greater_equal, (2, 0, 0))
    assert check((2, 0, 0), greater, (2, 0, -1, 1))
    assert check((1, 2, 3), equal, (1,))  # "equal [1]" matches every 1.x.y
    assert check((1, 9, 9), greater_equal, (1, 0)) and check((1, 9, 9), lesser, (1, 10))
    assert not check((1, 10, 0), lesser, (1, 10))
    assert check((1, 2, -2), lesser, (1, 2, -1))  # beta < rc
    assert check((1, 2, 3), lesser_equal, (1, 2, 3))
    failed = rig(versions={C0: (2, 0, -1, 1)}).run(build(manifest(validate=seq(
        override(version=VersionMatch(greater_equal, (2, 0, 0))), c(Cmd.VERSION)))), "invoke")
    assert failed.reason.endswith("version [2,0,-1,1] is not greater than or equal to [2,0,0]")
    unknown = rig().run(build(manifest(validate=seq(
        override(version=VersionMatch(1, (1,))), c(Cmd.VERSION)))), "invoke")
    assert unknown.reason.endswith("the device does not know the component's version")


# ------------------------------------------------ reports (draft-ietf-suit-report §4)


def test_report_names_failing_command_section_offset_and_component() -> None:
    expected = b"the image we want"
    m = build(manifest((C0, C1), install=seq(
        index(0), override(content=b"boot"), c(Cmd.WRITE),
        index(1), override(content=b"other image", image_digest=digest(expected)),
        try_each(seq(c(Cmd.WRITE), c(Cmd.IMAGE_MATCH)), seq(c(Cmd.ABORT, 0))))))
    device = rig({C0: MemoryComponent(), C1: MemoryComponent(b"old")})
    result = device.run(m)
    assert not result.succeeded

    # Where the install sequence puts the failing write (install[5].try-each[0][0]), computed
    # independently with cbor2 from the manifest bytes that were signed.
    install = cbor2.loads(m.envelope.manifest_bytes)[20]
    items = cbor2.loads(install)
    try_each_arg = 1 + sum(len(cbor2.dumps(i)) for i in items[:11])
    option = try_each_arg + 1  # the try-each argument's array head
    option_content = option + len(cbor2.dumps(items[11][0])) - len(items[11][0])
    assert cbor2.loads(items[11][0])[0] == Cmd.WRITE
    write_offset = option_content + 1  # after the option's array head

    digest_of_other = sha256(b"other image")
    assert result.reason == (f"install[5].try-each[0][0] directive-write on component [h'01']: "
                             f"digest {digest_of_other.hex()[:16]}... of content does not match "
                             f"expected {sha256(expected).hex()[:16]}...")
    failure = result.report.result
    assert failure is not True
    assert failure.reason == ReportReason.OPERATION_FAILED
    assert failure.record == Record((), 20, write_offset, 1, Parameters(
        image_digest=Digest(SHA256, digest_of_other), image_size=11))
    assert install[write_offset] == Cmd.WRITE
    error = result.error
    assert error is not None
    assert (error.section, error.offset, error.component, error.reason) == (
        20, write_offset, 1, ReportReason.OPERATION_FAILED)
    assert str(error) == result.reason
    # What happened before the failure is reported too.
    assert result.written == (C0,)
    assert device[C1].content == b"old"
