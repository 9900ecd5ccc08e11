"""The SUIT command interpreter on the spec's examples and on manifests built for each command.

The device is tests/core/processor_fakes.py: a real in-memory implementation of the processor's
protocols. The manifest examples carry sample image digests (0011.. / 0123..) that no payload
hashes to, so they are run twice: as published (the outcome is then the precise failure the
sample digest causes, or success against a component whose stored digest is the sample, as a
bootloader trailer would report it), and re-signed with real digests (full success).
"""

from __future__ import annotations

from typing import Any

import pytest

from core.processor_fakes import (
    CLASS,
    COMPATIBILITY,
    DEPENDENT_SIGNING_ANCHORS,
    EXAMPLE_ANCHORS,
    EXAMPLE_IDENTITY,
    EXAMPLE_SIGNER,
    KEK,
    PLAINTEXT,
    RECIPIENT_KEY,
    SAMPLE_DIGEST_0,
    SAMPLE_DIGEST_1,
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
    sha256,
    try_each,
    verified,
)
from suitkit.core import codec, cose, crypto
from suitkit.core.model import ComponentIdentifier, Digest, FrozenDict, Parameters, VersionMatch
from suitkit.core.numbers import Command as Cmd
from suitkit.core.numbers import ManifestKey, ReportReason
from suitkit.core.processor import (
    PROCEDURES,
    ComponentIdentity,
    Invocation,
    ProcessorOptions,
    process,
    stream_digest,
    version_matches,
)
from suitkit.core.report import Record, SystemPropertyClaims, decode_report, encode_report
from suitkit.core.verify import TrustAnchors, VerifiedManifest, verify_envelope
from suitkit.errors import PolicyError
from suitkit.limits import Limits

from helpers import vector

C0, C1, C2 = (b"\x00",), (b"\x01",), (b"\x02",)


def payload(size: int, seed: int) -> bytes:
    block = bytes((seed + i) % 256 for i in range(256))
    return (block * (size // 256 + 1))[:size]


P0 = payload(34768, 1)  # example images with the examples' sizes
P1 = payload(76834, 2)


def example(name: str) -> VerifiedManifest:
    return verify_envelope(vector(name), EXAMPLE_ANCHORS)


def resigned(name: str, change: dict[tuple[bytes, int | None], tuple[bytes, int | None]]
             ) -> VerifiedManifest:
    """The example with its sample digests replaced, signed again with the example key."""
    m = rewrite(codec.decode_envelope(vector(name)).manifest, change)
    return verify_envelope(envelope_bytes(m, signer=EXAMPLE_SIGNER), EXAMPLE_ANCHORS)


def trailer(sample: bytes, size: int, content: bytes = b"firmware", **kw: object
            ) -> MemoryComponent:
    """A component whose stored digest (as a bootloader trailer records it) is ``sample``."""
    return MemoryComponent(content, claimed={SHA256: sample}, claimed_size=size,
                           **kw)  # type: ignore[arg-type]


# ================================================================ manifest examples 0-5


def test_example0_invoke_fails_image_match_on_other_content() -> None:
    device = rig({C0: MemoryComponent(b"some other image")})
    result = device.run(example("example0"), "invoke")
    assert not result.succeeded
    assert result.reason.startswith("validate[0] condition-image-match on component [h'00']: "
                                    f"digest {sha256(b'some other image').hex()[:16]}... does "
                                    "not match expected 0011223344556677...")
    assert result.invoked == ()
    assert device[C0].invocations == []
    failure = result.report.result
    assert failure is not True
    assert failure.reason == ReportReason.CONDITION_FAILED
    assert failure.record == Record((), 7, 1, 0, Parameters(
        image_digest=Digest(SHA256, sha256(b"some other image")), image_size=16))


def test_example0_invoke_succeeds_when_the_store_reports_the_matching_digest() -> None:
    device = rig({C0: trailer(SAMPLE_DIGEST_0, 34768)})
    result = device.run(example("example0"), "invoke")
    assert result.succeeded, result.reason
    assert result.invoked == (Invocation(C0, None),)
    assert device[C0].invocations == [None]
    assert result.report.succeeded
    # Policy 15 asks for success records and system information for the conditions.
    records = [r for r in result.report.records if isinstance(r, Record)]
    assert [(r.manifest_section, r.section_offset) for r in records] == [
        (3, 82), (3, 84), (7, 1), (3, 82), (3, 84)]
    claims = [r for r in result.report.records if isinstance(r, SystemPropertyClaims)]
    assert claims == [SystemPropertyClaims(C0, Parameters(
        image_digest=Digest(SHA256, SAMPLE_DIGEST_0), image_size=34768))]
    assert device.env.reported == list(result.report.records)


def test_example0_wrong_size_fails_even_with_matching_digest() -> None:
    result = rig({C0: trailer(SAMPLE_DIGEST_0, 34767)}).run(example("example0"), "invoke")
    assert not result.succeeded
    assert "size 34767 does not match expected image-size 34768" in result.reason


def test_example1_as_published_refuses_the_fetched_image() -> None:
    device = rig(payloads={"http://example.com/file.bin": P0})
    result = device.run(example("example1"))
    assert not result.succeeded
    assert result.reason == (f"install[1] directive-fetch on component [h'00']: digest "
                             f"{sha256(P0).hex()[:16]}... of payload "
                             "'http://example.com/file.bin' does not match expected "
                             "0011223344556677...")
    assert device.fetcher is not None
    assert device.fetcher.requests == [("http://example.com/file.bin", 34768, None)]
    assert device[C0].content is None and device[C0].commits == 0
    assert device[C0].discards == 1


def test_example1_with_a_real_digest_installs_and_validates() -> None:
    m = resigned("example1", {(SAMPLE_DIGEST_0, 34768): (sha256(P0), 34768)})
    device = rig(payloads={"http://example.com/file.bin": P0})
    result = device.run(m)
    assert result.succeeded, result.reason
    assert device[C0].content == P0
    assert result.written == (C0,)
    assert result.reason == "update succeeded (install, validate)"


def test_example2_severed_install_cannot_update_but_can_invoke() -> None:
    m = example("example2-severed")
    assert ManifestKey.INSTALL in m.severed
    device = rig({C0: trailer(SAMPLE_DIGEST_0, 34768)}, payloads={})
    result = device.run(m)
    assert not result.succeeded
    assert "install was severed from the envelope" in result.reason
    assert device.store.untouched and device.fetcher is not None
    assert device.fetcher.requests == []
    assert device.run(m, "invoke").succeeded
    # The unsevered envelope carries install: the update reaches the fetch.
    full = rig(payloads={"http://example.com/file.bin": P0}).run(example("example2"))
    assert full.reason.startswith("install[1] directive-fetch")


@pytest.mark.parametrize(("slot", "uri", "size", "sample"), [
    (0, "http://example.com/file1.bin", 34768, SAMPLE_DIGEST_0),
    (1, "http://example.com/file2.bin", 76834, SAMPLE_DIGEST_1),
])
def test_example3_try_each_picks_the_slot_the_device_runs_from(
        slot: int, uri: str, size: int, sample: bytes) -> None:
    m = example("example3")
    device = rig({C0: MemoryComponent(slot=slot)}, payloads={uri: P0 if slot == 0 else P1})
    result = device.run(m)
    assert device.fetcher is not None
    assert device.fetcher.requests == [(uri, size, None)]
    assert result.reason.startswith("install[1] directive-fetch")  # sample digest, real bytes
    # Validate (the invoke procedure) checks the digest and size chosen for the slot.
    assert rig({C0: trailer(sample, size, slot=slot)}).run(m, "invoke").succeeded
    other = SAMPLE_DIGEST_1 if slot == 0 else SAMPLE_DIGEST_0
    wrong = rig({C0: trailer(other, size, slot=slot)}).run(m, "invoke")
    assert wrong.reason.startswith("validate[0] condition-image-match")


def test_example3_no_matching_slot_fails_the_shared_try_each() -> None:
    result = rig({C0: MemoryComponent(slot=7)}).run(example("example3"), "invoke")
    assert result.reason == ("shared-sequence[1] directive-try-each on component [h'00']: "
                             "none of the 2 try-each sequences succeeded")


def test_example4_as_published_load_needs_a_transformed_image() -> None:
    device = rig({C0: trailer(SAMPLE_DIGEST_0, 34768, P0), C1: MemoryComponent(),
                  C2: MemoryComponent()})
    result = device.run(example("example4"), "invoke")
    # The load copies [h'00'] (34768 bytes) into [h'01'] whose image-size is 76834: the
    # example implies decompression on load, which a plain copy does not do.
    assert result.reason == ("load[2] directive-copy on component [h'01']: component [h'00'] "
                             "is 34768 bytes, expected image-size 76834")
    assert device[C1].content is None and device[C1].discards == 1


def test_example4_with_real_digests_fetches_installs_loads_and_invokes() -> None:
    m = resigned("example4", {(SAMPLE_DIGEST_0, 34768): (sha256(P0), 34768),
                              (SAMPLE_DIGEST_0, None): (sha256(P0), None),
                              (SAMPLE_DIGEST_1, 76834): (sha256(P0), 34768)})
    device = rig({C0: MemoryComponent(), C1: MemoryComponent(), C2: MemoryComponent()},
                 payloads={"http://example.com/file.bin": P0})
    update = device.run(m, "update")
    assert update.succeeded, update.reason
    # payload-fetch into [h'02'] (index 1), install copies it to [h'00'] (index 0).
    assert update.written == (C2, C0)
    assert device[C2].content == P0 and device[C0].content == P0
    invoke = device.run(m, "invoke")
    assert invoke.succeeded, invoke.reason
    assert invoke.written == (C1,)  # load copied [h'00'] into [h'01'] (index 2)
    assert device[C1].content == P0
    assert invoke.invoked == (Invocation(C1, None),)


def test_example5_two_components_fetched_validated_and_invoked() -> None:
    m = resigned("example5", {(SAMPLE_DIGEST_0, 34768): (sha256(P0), 34768),
                              (SAMPLE_DIGEST_1, 76834): (sha256(P1), 76834)})
    device = rig({C0: MemoryComponent(), C1: MemoryComponent()},
                 payloads={"http://example.com/file1.bin": P0,
                           "http://example.com/file2.bin": P1})
    result = device.run(m)
    assert result.succeeded, result.reason
    assert (device[C0].content, device[C1].content) == (P0, P1)
    invoke = device.run(m, "invoke")
    assert invoke.invoked == (Invocation(C0, None),)


def test_example5_as_published_validates_against_stored_digests() -> None:
    m = example("example5")
    device = rig({C0: trailer(SAMPLE_DIGEST_0, 34768), C1: trailer(SAMPLE_DIGEST_1, 76834)})
    assert device.run(m, "invoke").succeeded
    swapped = rig({C0: trailer(SAMPLE_DIGEST_1, 76834), C1: trailer(SAMPLE_DIGEST_0, 34768)})
    result = swapped.run(m, "invoke")
    assert result.reason.startswith("validate[1] condition-image-match on component [h'00']")


# ================================================================ trust domains


def trust_domain_rig(payloads: dict[str, bytes] | None = None) -> Rig:
    return rig({(b"10",): MemoryComponent(identity=ComponentIdentity()),
                (b"dependent.suit",): MemoryComponent(identity=ComponentIdentity()),
                (b"00",): MemoryComponent(identity=ComponentIdentity())},
               payloads=payloads, anchors=EXAMPLE_ANCHORS)


def test_trust_domains_fetched_dependency_is_processed() -> None:
    device = trust_domain_rig(payloads={
        "http://example.com/dependent.suit": vector("trust-domains-example0_dependent")})
    m = example("trust-domains-example1_process")
    result = device.run(m)
    assert result.succeeded, result.reason
    assert device[(b"dependent.suit",)].content == vector(
        "trust-domains-example0_dependent")
    assert device[(b"00",)].content == b"hello world"
    assert device[(b"10",)].content == b" in multiple trust domains"
    invoke = device.run(m, "invoke")
    assert invoke.invoked == (Invocation((b"10",), b"cat 00 10"),)


def test_trust_domains_integrated_dependency_needs_the_lenient_integrity_policy() -> None:
    m = example("trust-domains-example2_integrated")
    strict = trust_domain_rig()
    result = strict.run(m)
    assert result.reason == ("install[1] directive-process-dependency on component "
                             "[h'646570656e64656e742e73756974']: the dependency has not been "
                             "the target of dependency-integrity in this procedure")
    lenient = trust_domain_rig()
    result = lenient.run(
        m, options=ProcessorOptions(require_dependency_integrity=False))
    assert result.succeeded, result.reason
    assert lenient[(b"00",)].content == b"hello world"
    # The staging procedure alone leaves no evidence for a later installation.
    alone = lenient.run(m, "installation",
                        options=ProcessorOptions(require_dependency_integrity=False))
    assert "neither image-digest nor an earlier integrity check" in alone.reason


def test_dependency_signed_by_an_unknown_key_is_unauthorised() -> None:
    device = rig({(b"10",): MemoryComponent(), (b"dependent.suit",): MemoryComponent(),
                  (b"00",): MemoryComponent()},
                 payloads={"http://example.com/dependent.suit":
                           vector("trust-domains-example0_dependent")},
                 anchors=TEST_ANCHORS)
    result = device.run(example("trust-domains-example1_process"))
    assert result.reason.startswith("install[2] condition-dependency-integrity")
    failure = result.report.result
    assert failure is not True and failure.reason == ReportReason.UNAUTHORISED
    assert device[(b"00",)].untouched


def test_dependencies_need_dependency_trust_anchors() -> None:
    device = trust_domain_rig()
    device.env.anchors = None
    result = device.run(example("trust-domains-example2_integrated"))
    assert "declares dependencies and this device has no trust anchors" in result.reason
    assert device.store.untouched


# ================================================================ encryption


ENCRYPTION_CASES = {
    "encryption-suit-manifest-aes-kw-content": (
        TrustAnchors.of(crypto.HmacKey(b"a" * 32)), [(b"plaintext-firmware",)],
        (b"plaintext-firmware",)),
    "encryption-suit-manifest-aes-kw": (
        TrustAnchors.of(crypto.HmacKey(b"a" * 32)),
        [(b"plaintext-firmware",), (b"encrypted-firmware",)], (b"plaintext-firmware",)),
    "encryption-suit-manifest-aes-kw-slot": (
        TrustAnchors.of(crypto.HmacKey(b"a" * 32)), [C0, C1], C0),
    "encryption-suit-manifest-es-ecdh-content": (
        EXAMPLE_ANCHORS, [(b"decrypted-firmware",)], (b"decrypted-firmware",)),
    "encryption-suit-manifest-es-ecdh-dependency": (
        DEPENDENT_SIGNING_ANCHORS, [(b"decrypted-firmware",), (b"dependency-manifest.suit",)],
        (b"decrypted-firmware",)),
}


@pytest.mark.parametrize("name", sorted(ENCRYPTION_CASES))
def test_encrypted_payload_manifests_decrypt_into_the_component(name: str) -> None:
    anchors, components, target = ENCRYPTION_CASES[name]
    device = rig({cid: MemoryComponent() for cid in components},
                 payloads={"coaps://example.com/encrypted-firmware":
                           vector("encryption-encrypted-payload-aes-kw-aes-gcm")},
                 keys=[KEK, RECIPIENT_KEY], anchors=EXAMPLE_ANCHORS)
    result = device.run(verify_envelope(vector(name), anchors))
    assert result.succeeded, result.reason
    assert device[target].content == PLAINTEXT


def test_encrypted_payload_without_the_key_is_not_written() -> None:
    device = rig({(b"plaintext-firmware",): MemoryComponent()},
                 keys=[crypto.AesKwKey(b"b" * 16, key_id=b"kid-1")])
    m = verify_envelope(vector("encryption-suit-manifest-aes-kw-content"),
                        TrustAnchors.of(crypto.HmacKey(b"a" * 32)))
    result = device.run(m)
    assert result.reason.startswith("install[1] directive-write on component "
                                    "[h'706c61696e746578742d6669726d77617265']: cannot open "
                                    "encryption-info (recipients: A128KW kid b'kid-1')")
    assert device[(b"plaintext-firmware",)].untouched
    assert rig({(b"plaintext-firmware",): MemoryComponent()}).run(m).report.result is not True


@pytest.mark.parametrize("content_alg", [1, -65534])
def test_fetch_with_encryption_info_decrypts_while_writing(content_alg: int) -> None:
    image = payload(70_000, 3)
    info, ciphertext = cose.encrypt_payload(image, content_alg=content_alg, recipients=[KEK])
    m = manifest(install=seq(*COMPATIBILITY, override(
        uri="http://x/enc", encryption_info=info, image_digest=digest(image),
        image_size=len(image)), c(Cmd.FETCH), c(Cmd.IMAGE_MATCH)))
    device = rig(payloads={"http://x/enc": ciphertext}, keys=[KEK])
    result = device.run(verified(m), options=ProcessorOptions(chunk_size=4096))
    assert result.succeeded, result.reason
    assert device[C0].content == image
    assert device.fetcher is not None
    assert device.fetcher.requests[0][1] == len(image) + (16 if content_alg == 1 else 0)


def test_tampered_gcm_ciphertext_is_never_committed() -> None:
    info, ciphertext = cose.encrypt_payload(PLAINTEXT, content_alg=1, recipients=[KEK])
    tampered = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    m = manifest(install=seq(override(content=tampered, encryption_info=info), c(Cmd.WRITE)))
    device = rig(keys=[KEK])
    result = device.run(verified(m))
    assert "AES-GCM tag does not verify" in result.reason
    assert device[C0].content is None and device[C0].discards == 1


# ================================================================ commands


def test_write_copy_swap_and_check_content() -> None:
    m = manifest((C0, C1), install=seq(
        index(0), override(content=b"alpha"), c(Cmd.WRITE), c(Cmd.CHECK_CONTENT),
        index(1), override(source_component=0), c(Cmd.COPY),
        override(content=b"alpha"), c(Cmd.CHECK_CONTENT),
        override(content=b"beta"), c(Cmd.WRITE), c(Cmd.SWAP),
        override(content=b"alpha"), c(Cmd.CHECK_CONTENT)))
    device = rig({C0: MemoryComponent(), C1: MemoryComponent()})
    result = device.run(verified(m))
    assert result.succeeded, result.reason
    assert (device[C0].content, device[C1].content) == (b"beta", b"alpha")
    assert device.store.swaps == [(C1, C0)]
    assert result.written == (C0, C1, C1, C1, C0)


def test_check_content_is_exact() -> None:
    for stored in (b"alph", b"alpha!", b"alphb"):
        m = manifest(validate=seq(override(content=b"alpha"), c(Cmd.CHECK_CONTENT)))
        result = rig({C0: MemoryComponent(stored)}).run(verified(m), "invoke")
        assert "content does not match the 5-byte suit-parameter-content" in result.reason


def test_copy_and_swap_need_a_source() -> None:
    m = manifest((C0, C1), install=seq(index(0), c(Cmd.COPY)))
    assert "parameter source-component is not set" in rig(
        {C0: MemoryComponent(), C1: MemoryComponent()}).run(verified(m)).reason
    m = manifest((C0, C1), install=seq(index(0), override(source_component=1), c(Cmd.COPY)))
    assert "source component 1 [h'01'] holds no content" in rig(
        {C0: MemoryComponent(), C1: MemoryComponent()}).run(verified(m)).reason


def test_copy_onto_itself_with_strict_order_false_aborts() -> None:
    m = manifest(install=seq(override(content=b"x"), c(Cmd.WRITE),
                             override(strict_order=False, source_component=0), c(Cmd.COPY)))
    result = rig().run(verified(m))
    assert "same source and target component while strict-order is false" in result.reason
    m = manifest(install=seq(override(content=b"x"), c(Cmd.WRITE),
                             override(source_component=0), c(Cmd.COPY)))
    assert rig().run(verified(m)).succeeded  # strict order: an in-place copy is allowed


def test_run_sequence_with_strict_order_false_must_begin_with_set_component_index() -> None:
    m = manifest(install=seq(override(strict_order=False),
                             run_sequence(override(content=b"x"), c(Cmd.WRITE))))
    result = rig().run(verified(m))
    assert "run-sequence argument must begin with set-component-index" in result.reason
    m = manifest(install=seq(override(strict_order=False),
                             run_sequence(index(0), override(content=b"x"), c(Cmd.WRITE))))
    assert rig().run(verified(m)).succeeded
    m = manifest(install=seq(override(strict_order=False), run_sequence(
        index(0), override(strict_order=False), index(0))))
    assert "set-component-index inside run-sequence while strict-order is false" in rig().run(
        verified(m)).reason


def test_run_sequence_soft_failure_skips_the_rest_and_continues() -> None:
    m = manifest(install=seq(
        run_sequence(override(soft_failure=True), c(Cmd.ABORT), override(content=b"no"),
                     c(Cmd.WRITE)),
        override(content=b"yes"), c(Cmd.WRITE)))
    device = rig()
    assert device.run(verified(m)).succeeded
    assert device[C0].content == b"yes"
    hard = manifest(install=seq(run_sequence(c(Cmd.ABORT)), override(content=b"no"),
                                c(Cmd.WRITE)))
    result = rig().run(verified(hard))
    assert result.reason == ("install[0].run-sequence[0] condition-abort on component [h'00']: "
                             "suit-condition-abort")


def test_component_slot_and_image_not_match() -> None:
    m = manifest(validate=seq(override(component_slot=2), c(Cmd.COMPONENT_SLOT),
                              override(image_digest=digest(b"old")), c(Cmd.IMAGE_NOT_MATCH)))
    assert rig({C0: MemoryComponent(b"new", slot=2)}).run(verified(m), "invoke").succeeded
    result = rig({C0: MemoryComponent(b"old", slot=2)}).run(verified(m), "invoke")
    assert "matches image-digest, expected a different image" in result.reason
    result = rig({C0: MemoryComponent(b"new", slot=1)}).run(verified(m), "invoke")
    assert "component is in slot 1, expected slot 2" in result.reason


def test_conditions_with_an_unset_parameter_fail() -> None:
    for code, parameter in [(Cmd.VENDOR_IDENTIFIER, "vendor-identifier"),
                            (Cmd.IMAGE_MATCH, "image-digest"),
                            (Cmd.USE_BEFORE, "use-before"),
                            (Cmd.VERSION, "version"),
                            (Cmd.COMPONENT_SLOT, "component-slot")]:
        result = rig({C0: MemoryComponent(b"x")}).run(
            verified(manifest(validate=seq(c(code)))), "invoke")
        assert result.reason.endswith(f"parameter {parameter} is not set"), result.reason
        assert result.report.result is not True
        assert result.report.result.reason == ReportReason.CONDITION_FAILED


def test_device_identifier_and_several_vendor_ids() -> None:
    device_id = crypto.digest(SHA256, b"serial")[:16]
    from uuid import UUID
    identity = ComponentIdentity(vendor_ids=frozenset({VENDOR, UUID(int=5)}),
                                 class_ids=frozenset({CLASS}),
                                 device_ids=frozenset({UUID(bytes=device_id)}))
    m = manifest(shared=seq(*COMPATIBILITY, override(device_identifier=UUID(bytes=device_id)),
                            c(Cmd.DEVICE_IDENTIFIER)), validate=seq(c(Cmd.ABORT, 0)))
    result = rig({C0: MemoryComponent(identity=identity)}).run(verified(m), "invoke")
    assert result.reason.endswith("suit-condition-abort")  # identity checks passed
    other = rig({C0: MemoryComponent(identity=EXAMPLE_IDENTITY)}).run(verified(m), "invoke")
    assert "device-identifier" in other.reason and "does not match the component's (none)" \
        in other.reason


def test_minimum_battery_update_authorized_and_wait() -> None:
    m = manifest(install=seq(
        override(minimum_battery=100, update_priority=1, wait_info=FrozenDict({2: 1})),
        c(Cmd.MINIMUM_BATTERY), c(Cmd.UPDATE_AUTHORIZED), c(Cmd.WAIT, 0)))
    ok = rig(battery=100, wait_result=True)
    assert ok.run(verified(m)).succeeded
    assert ok.env.waited == [FrozenDict({2: 1})]
    assert "battery 99 mWh is below the required 100 mWh" in rig(
        battery=99, wait_result=True).run(verified(m)).reason
    assert "cannot measure its battery" in rig(battery=None).run(verified(m)).reason
    assert "did not authorize an update of priority 1" in rig(
        authorized_priorities=frozenset({-1})).run(verified(m)).reason
    unsupported = rig(wait_result=None).run(verified(m))
    assert "cannot wait for events power" in unsupported.reason
    assert unsupported.report.result is not True
    assert unsupported.report.result.reason == ReportReason.COMMAND_UNSUPPORTED
    not_now = rig(wait_result=False).run(verified(m))
    assert not_now.report.result is not True
    assert not_now.report.result.reason == ReportReason.OPERATION_FAILED


def test_use_before_accepts_the_future_and_needs_a_clock() -> None:
    m = manifest(install=seq(override(use_before=1_700_000_001), c(Cmd.USE_BEFORE)))
    assert rig(time=1_700_000_000).run(verified(m)).succeeded
    assert "no trusted time" in rig(time=None).run(verified(m)).reason


def test_invoke_arguments_and_failing_invoke() -> None:
    m = manifest(invoke=seq(override(invoke_args=b"--safe"), c(Cmd.INVOKE)))
    device = rig()
    assert device.run(verified(m), "invoke").invoked == (Invocation(C0, b"--safe"),)
    assert device[C0].invocations == [b"--safe"]
    result = rig({C0: MemoryComponent(fail_invoke=True)}).run(verified(m), "invoke")
    assert result.reason == ("invoke[1] directive-invoke on component [h'00']: StorageError: "
                             "the image does not boot")
    assert result.report.result is not True
    assert result.report.result.reason == ReportReason.OPERATION_FAILED


def test_procedures_run_their_sections_in_order() -> None:
    sections: dict[str, Any] = {name: seq(override(content=name.encode()), c(Cmd.WRITE))
                for name in ("payload_fetch", "install", "validate", "load", "invoke",
                             "candidate_verification", "dependency_resolution", "uninstall")}
    m = manifest(**sections)
    for procedure, keys in PROCEDURES.items():
        device = rig()
        result = device.run(verified(m), procedure)
        assert result.succeeded, result.reason
        assert device[C0].commits == len(keys)
        names = {7: b"validate", 8: b"load", 9: b"invoke", 15: b"dependency_resolution",
                 16: b"payload_fetch", 18: b"candidate_verification", 20: b"install",
                 24: b"uninstall"}
        assert device[C0].content == names[keys[-1]]
    with pytest.raises(ValueError, match="unknown procedure"):
        process(verified(m), "boot", rig().device)  # type: ignore[arg-type]


def test_parameters_are_cleared_between_sections() -> None:
    m = manifest(install=seq(override(content=b"x"), c(Cmd.WRITE)),
                 validate=seq(c(Cmd.CHECK_CONTENT)))
    result = rig().run(verified(m))
    assert result.reason == ("validate[0] condition-check-content on component [h'00']: "
                             "parameter content is not set")


def test_integrated_payload_is_served_from_the_envelope() -> None:
    m = manifest(install=seq(override(uri="#app.bin", image_digest=digest(P0),
                                      image_size=len(P0)), c(Cmd.FETCH)))
    device = rig(payloads={})
    result = device.run(verified(m, integrated={"#app.bin": P0}))
    assert result.succeeded, result.reason
    assert device[C0].content == P0
    assert device.fetcher is not None and device.fetcher.requests == []
    missing = rig().run(verified(m))
    assert "the envelope carries no integrated payload '#app.bin'" in missing.reason


def test_fetch_without_a_fetcher_or_uri_fails() -> None:
    m = manifest(install=seq(override(uri="http://x/a"), c(Cmd.FETCH)))
    assert "this device cannot fetch 'http://x/a'" in rig().run(verified(m)).reason
    assert "FetchError: 404 http://x/a" in rig(payloads={}).run(verified(m)).reason
    m = manifest(install=seq(c(Cmd.FETCH)))
    assert "parameter uri is not set" in rig().run(verified(m)).reason


def test_fetch_arguments_and_component_metadata_reach_the_device() -> None:
    metadata = FrozenDict({5: 1})
    m = manifest(install=seq(override(uri="http://x/a", fetch_arguments=b"range",
                                      component_metadata=metadata), c(Cmd.FETCH)))
    device = rig(payloads={"http://x/a": b"abc"})
    assert device.run(verified(m)).succeeded
    assert device.fetcher is not None
    assert device.fetcher.requests == [("http://x/a", Limits().max_payload_bytes, b"range")]
    assert device[C0].metadata == [metadata]


def test_payloads_stream_in_bounded_chunks() -> None:
    image = payload(200_000, 9)
    m = manifest((C0, C1), install=seq(
        index(0), override(uri="http://x/big", image_digest=digest(image),
                           image_size=len(image)), c(Cmd.FETCH),
        index(1), override(source_component=0, image_digest=digest(image)), c(Cmd.COPY)))
    device = rig({C0: MemoryComponent(), C1: MemoryComponent()},
                 payloads={"http://x/big": image})
    result = device.run(verified(m), options=ProcessorOptions(chunk_size=1024))
    assert result.succeeded, result.reason
    assert device[C1].content == image
    assert device[C0].largest_read_chunk == 1024


def test_unlink_is_recorded() -> None:
    m = manifest(install=seq(c(Cmd.UNLINK, 0)))
    assert rig().run(verified(m)).unlinked == (C0,)


def test_is_dependency_selects_dependencies_with_index_true() -> None:
    dependency = manifest(((b"dep-image",),), install=seq(override(content=b"dep"),
                                                             c(Cmd.WRITE)))
    dep_bytes = envelope_bytes(dependency)
    m = manifest((C0,), dependencies={1: (b"dep.suit",)}, install=seq(
        index(True),
        try_each(seq(c(Cmd.IS_DEPENDENCY), override(uri="#dep"), c(Cmd.FETCH),
                     override(image_digest=codec.decode_envelope(dep_bytes).authentication
                              .digest), c(Cmd.DEPENDENCY_INTEGRITY),
                     c(Cmd.PROCESS_DEPENDENCY, 0)),
                 seq(override(content=b"image"), c(Cmd.WRITE)))))
    device = rig({C0: MemoryComponent(), (b"dep.suit",): MemoryComponent(),
                  (b"dep-image",): MemoryComponent()}, anchors=TEST_ANCHORS)
    result = device.run(verified(m, integrated={"#dep": dep_bytes}))
    assert result.succeeded, result.reason
    assert device[C0].content == b"image"
    assert device[(b"dep-image",)].content == b"dep"
    assert result.written == (C0, (b"dep.suit",), (b"dep-image",))


def test_integrated_dependency_is_processed_without_being_fetched() -> None:
    dep_bytes = envelope_bytes(manifest(((b"dep-image",),), install=seq(
        override(content=b"dep"), c(Cmd.WRITE))))
    dep_digest = codec.decode_envelope(dep_bytes).authentication.digest
    m = manifest((C0,), dependencies={1: (b"dep.suit",)}, install=seq(
        index(1), override(uri="#dep", image_digest=dep_digest),
        c(Cmd.DEPENDENCY_INTEGRITY), c(Cmd.PROCESS_DEPENDENCY, 0)))
    device = rig({C0: MemoryComponent(), (b"dep.suit",): MemoryComponent(),
                  (b"dep-image",): MemoryComponent()}, anchors=TEST_ANCHORS)
    result = device.run(verified(m, integrated={"#dep": dep_bytes}))
    assert result.succeeded, result.reason
    assert result.written == ((b"dep-image",),)
    assert device[(b"dep.suit",)].untouched
    # The same manifest whose integrated dependency was removed cannot process it.
    missing = rig({C0: MemoryComponent(), (b"dep.suit",): MemoryComponent(),
                   (b"dep-image",): MemoryComponent()}, anchors=TEST_ANCHORS).run(verified(m))
    assert missing.reason.endswith("the dependency component holds no envelope")


def test_failure_inside_a_dependency_is_reported_with_its_manifest_id() -> None:
    dependency = manifest(((b"dep-image",),), install=seq(c(Cmd.ABORT)))
    dep_bytes = envelope_bytes(dependency)
    dep_digest = codec.decode_envelope(dep_bytes).authentication.digest
    m = manifest((C0,), dependencies={1: (b"dep.suit",)}, install=seq(
        index(1), override(uri="#dep", image_digest=dep_digest), c(Cmd.FETCH),
        c(Cmd.DEPENDENCY_INTEGRITY), c(Cmd.PROCESS_DEPENDENCY, 0)))
    device = rig({C0: MemoryComponent(), (b"dep.suit",): MemoryComponent(),
                  (b"dep-image",): MemoryComponent()}, anchors=TEST_ANCHORS)
    result = device.run(verified(m, integrated={"#dep": dep_bytes}))
    assert result.reason == ("dependency 1 install[0] condition-abort on component "
                             "[h'6465702d696d616765']: suit-condition-abort")
    failure = result.report.result
    assert failure is not True
    assert failure.record == Record((1,), 20, 1, 0)


def test_dependency_nesting_is_bounded() -> None:
    leaf = envelope_bytes(manifest(((b"leaf",),), install=seq(c(Cmd.ABORT, 0))))
    components: dict[ComponentIdentifier, MemoryComponent] = {
        C0: MemoryComponent(), (b"leaf",): MemoryComponent()}
    inner = leaf
    for level in range(3):
        name = f"dep{level}".encode()
        components[(name,)] = MemoryComponent()
        digest_ = codec.decode_envelope(inner).authentication.digest
        outer = manifest(((b"x" + name,),), dependencies={1: (name,)}, install=seq(
            index(1), override(uri="#d", image_digest=digest_), c(Cmd.FETCH),
            c(Cmd.DEPENDENCY_INTEGRITY), c(Cmd.PROCESS_DEPENDENCY, 0)))
        components[(b"x" + name,)] = MemoryComponent()
        inner = envelope_bytes(outer, integrated={"#d": inner})
    root = verify_envelope(inner, TEST_ANCHORS)
    result = rig(components, anchors=TEST_ANCHORS).run(
        root, options=ProcessorOptions(max_dependency_depth=2))
    assert "dependencies nested deeper than 2" in result.reason
    deep = rig(components, anchors=TEST_ANCHORS).run(root)
    assert deep.reason.startswith("dependency 1/1/1 install[0] condition-abort")


def test_step_budget_bounds_the_work_a_manifest_can_demand() -> None:
    inner = seq(c(Cmd.ABORT, 0))
    nested = try_each(inner, inner, fallback=True)
    for _ in range(4):
        nested = try_each(seq(nested, c(Cmd.ABORT, 0)), seq(nested, c(Cmd.ABORT, 0)),
                          fallback=True)
    m = manifest(install=seq(nested))
    assert rig().run(verified(m)).succeeded
    result = rig().run(verified(m), options=ProcessorOptions(max_steps=50))
    assert result.reason.startswith("install[0].try-each[1][0].try-each[0][0]")
    assert result.reason.endswith(": more than 50 command executions in one procedure")
    assert result.error is not None and result.error.section == 20


def test_too_many_components_for_the_device() -> None:
    ids = tuple((bytes([i]),) for i in range(5))
    m = manifest(ids, install=seq(index(0)))
    device = rig({cid: MemoryComponent() for cid in ids})
    result = device.run(verified(m), limits=Limits(max_components=4))
    assert result.reason == "common: 5 components is over the device limit of 4"


def test_sequences_must_begin_with_set_component_index_with_several_components() -> None:
    m = manifest((C0, C1), install=seq(override(content=b"x"), c(Cmd.WRITE)))
    device = rig({C0: MemoryComponent(), C1: MemoryComponent()})
    result = device.run(verified(m))
    assert result.reason == ("install[0] directive-override-parameters on component [h'00']: "
                             "with 2 components the sequence must begin with "
                             "set-component-index, not directive-override-parameters")
    assert device.store.untouched
    lax = ProcessorOptions(require_initial_set_component_index=False)
    assert device.run(verified(m), options=lax).succeeded


def test_shared_sequence_may_not_have_side_effects() -> None:
    m = manifest(shared=seq(override(content=b"x"), c(Cmd.WRITE)), install=seq(c(Cmd.ABORT)))
    device = rig()
    result = device.run(verified(m))
    assert result.reason == ("shared-sequence[1] directive-write on component [h'00']: "
                             "directive-write is not allowed in the shared sequence, which may "
                             "only set parameters and test conditions (manifest §6.2)")
    assert device.store.untouched


def test_report_round_trips_and_carries_the_nonce() -> None:
    result = rig().run(example("example0"), "invoke", nonce=b"n0")
    report = decode_report(encode_report(result.report))
    assert report == result.report
    assert report.nonce == b"n0"
    assert report.reference.manifest_digest.value.hex().startswith("6658ea56")
    with_uri = rig().run(example("example2-severed"), "invoke")
    assert with_uri.report.reference.manifest_uri == (
        "https://git.io/JJYoj")  # example 2's suit-reference-uri


def test_success_records_follow_the_reporting_policy() -> None:
    m = manifest(install=seq(override(content=b"x"), c(Cmd.WRITE, 1), c(Cmd.WRITE, 0),
                             c(Cmd.WRITE, 4)))
    device = rig()
    result = device.run(verified(m))
    # 88 | 14 | a1 12 41 78 | 12 01 ...: the first write starts at byte 6.
    assert result.report.records == (Record((), 20, 6, 0, Parameters(image_size=1)),
                                     SystemPropertyClaims(C0, Parameters(image_size=1)))


# ================================================================ helpers


def test_version_matches_examples() -> None:
    assert version_matches((1, 2, 3), VersionMatch(3, (1,)))
    assert version_matches((1, 10), VersionMatch(5, (1, 10))) is False
    assert version_matches((1, 9, 9), VersionMatch(5, (1, 10)))
    assert version_matches((2, 0), VersionMatch(1, (2, 0, -1)))  # 2.0 > 2.0-rc
    assert version_matches((1, 2, -2), VersionMatch(5, (1, 2, -1)))  # beta < rc
    assert version_matches((1, 2, -3, 4), VersionMatch(5, (1, 2, -2)))  # alpha < beta
    with pytest.raises(ValueError, match="unknown version comparison type 9"):
        version_matches((1,), VersionMatch(9, (1,)))


def test_stream_digest() -> None:
    assert stream_digest([b"ab", b"c"], SHA256) == sha256(b"abc")
    with pytest.raises(PolicyError):
        stream_digest([b""], 12345)


def test_shared_parameters_give_each_components_expected_image() -> None:
    from core.processor_fakes import (
        EXAMPLE_ANCHORS,
        SAMPLE_DIGEST_0,
        SAMPLE_DIGEST_1,
        MemoryComponent,
    )
    from core.processor_fakes import rig as make_rig
    from suitkit.core.processor import shared_parameters
    from suitkit.core.verify import verify_envelope

    from helpers import vector

    verified = verify_envelope(vector("example0"), EXAMPLE_ANCHORS)
    params = shared_parameters(verified, make_rig().device)[(b"\x00",)]
    assert params.image_size == 34768
    assert params.image_digest is not None and params.image_digest.value == SAMPLE_DIGEST_0
    assert params.vendor_identifier is not None and params.soft_failure is None

    # Example 3 (A/B): the digest depends on the slot the component reports.
    verified = verify_envelope(vector("example3"), EXAMPLE_ANCHORS)
    for slot, expected, size in ((0, SAMPLE_DIGEST_0, 34768), (1, SAMPLE_DIGEST_1, 76834)):
        device = make_rig({(b"\x00",): MemoryComponent(slot=slot)}).device
        params = shared_parameters(verified, device)[(b"\x00",)]
        assert params.image_digest is not None and params.image_digest.value == expected
        assert params.image_size == size


def test_shared_parameters_refuse_the_wrong_class() -> None:
    from uuid import uuid4

    from core.processor_fakes import EXAMPLE_ANCHORS, VENDOR, ComponentIdentity, MemoryComponent
    from core.processor_fakes import rig as make_rig
    from suitkit.core.processor import shared_parameters
    from suitkit.core.verify import verify_envelope
    from suitkit.errors import ProcessingError

    from helpers import vector

    verified = verify_envelope(vector("example0"), EXAMPLE_ANCHORS)
    other = ComponentIdentity(vendor_ids=frozenset({VENDOR}), class_ids=frozenset({uuid4()}))
    device = make_rig({(b"\x00",): MemoryComponent(identity=other)}).device
    with pytest.raises(ProcessingError, match="class-identifier"):
        shared_parameters(verified, device)
