"""Every envelope of the SUIT drafts decodes to the model and re-encodes byte for byte."""

from __future__ import annotations

import hashlib
from uuid import UUID

import pytest

from suitkit.core import cbor, codec
from suitkit.core.model import CommandSequence, Digest, Parameters, TryEach
from suitkit.core.numbers import Command, CoseAlg, ManifestKey

from helpers import (
    ALL_ENVELOPES,
    ENCRYPTION_MANIFESTS,
    SIGNED_EXAMPLES,
    UNSIGNED_EXAMPLES,
    vector,
)

pytestmark = pytest.mark.usefixtures("both_decoders")  # fast path and reference alone

ARM_VENDOR = UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
EXAMPLE_CLASS = UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")

# vectors/README.md: manifest digests of examples 0-5
MANIFEST_DIGESTS = {
    "example0": "6658ea560262696dd1f13b782239a064da7c6c5cbaf52fded428a6fc83c7e5af",
    "example1": "1f2e7acca0dc2786f2fe4eb947f50873a6a3cfaa98866c5b02e621f42074daf2",
    "example2": "6a5197ed8f9dccf733d1c89a359441708e070b4c6dcb9a1c2c82c6165f609b90",
    "example3": "f6d44a62ec906b392500c242e78e908e9cc5057f3f04104a06a8566200da2ee0",
    "example4": "5b5f6586b1e6cdf19ee479a5adabf206581000bd584b0832a9bdaf4f72cdbdd6",
    "example5": "15ce60f77657e4531dc329155f8b0ed78f94bdc6d165b2665473693dcc34f470",
}


@pytest.mark.parametrize("name", ALL_ENVELOPES)
def test_envelope_round_trips_byte_for_byte(name: str) -> None:
    data = vector(name)
    envelope = codec.decode_envelope(data)
    assert codec.encode_envelope(envelope) == data
    assert codec.encode_manifest(envelope.manifest) == envelope.manifest_bytes


@pytest.mark.parametrize("name", ALL_ENVELOPES)
def test_auth_digest_covers_the_bstr_wrapped_manifest(name: str) -> None:
    envelope = codec.decode_envelope(vector(name))
    digest = envelope.authentication.digest
    assert digest.algorithm == CoseAlg.SHA256
    assert hashlib.sha256(cbor.wrap(envelope.manifest_bytes)).digest() == digest.value


@pytest.mark.parametrize("name", sorted(MANIFEST_DIGESTS))
def test_manifest_digest_matches_the_spec(name: str) -> None:
    envelope = codec.decode_envelope(vector(name))
    assert envelope.authentication.digest.value.hex() == MANIFEST_DIGESTS[name]


@pytest.mark.parametrize("name", SIGNED_EXAMPLES)
def test_signed_examples_carry_one_sign1_block(name: str) -> None:
    envelope = codec.decode_envelope(vector(name))
    assert len(envelope.authentication.blocks) == 1
    assert envelope.authentication.blocks[0][:1] == b"\xd2"  # tag 18, COSE_Sign1
    assert envelope.tagged


@pytest.mark.parametrize("name", UNSIGNED_EXAMPLES)
def test_unsigned_examples_have_no_block(name: str) -> None:
    assert codec.decode_envelope(vector(name)).authentication.blocks == ()


def test_example0_model() -> None:
    m = codec.decode_envelope(vector("example0")).manifest
    assert (m.version, m.sequence_number) == (1, 0)
    assert m.common.components == ((b"\x00",),)
    assert m.common.shared_sequence is not None
    override, vendor, klass = m.common.shared_sequence.commands
    assert override.code == Command.OVERRIDE_PARAMETERS
    params = override.argument
    assert isinstance(params, Parameters)
    assert params.vendor_identifier == ARM_VENDOR
    assert params.class_identifier == EXAMPLE_CLASS
    assert params.image_size == 34768
    assert params.image_digest == Digest(-16, bytes.fromhex(
        "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210"))
    assert (vendor.code, vendor.argument) == (Command.VENDOR_IDENTIFIER, 15)
    assert (klass.code, klass.argument) == (Command.CLASS_IDENTIFIER, 15)
    assert m.validate == CommandSequence((codec.Command(Command.IMAGE_MATCH, 15),))
    assert m.invoke == CommandSequence((codec.Command(Command.INVOKE, 2),))
    assert m.install is None and m.text is None



def test_example2_severable_members_are_digests_and_in_the_envelope() -> None:
    envelope = codec.decode_envelope(vector("example2"))
    m = envelope.manifest
    assert isinstance(m.install, Digest) and isinstance(m.text, Digest)
    assert set(envelope.severable) == {ManifestKey.INSTALL, ManifestKey.TEXT}
    for key, digest in ((ManifestKey.INSTALL, m.install), (ManifestKey.TEXT, m.text)):
        assert hashlib.sha256(cbor.wrap(envelope.severable[key])).digest() == digest.value
    text = codec.decode_text(envelope.severable[ManifestKey.TEXT])
    en = text.languages["en-US"]
    assert en.components[(b"\x00",)][3] == "arm.com"
    assert en.fields[1].startswith("## Example 2")
    assert m.reference_uri == "https://git.io/JJYoj"


def test_example2_severed_has_no_members_but_the_same_manifest() -> None:
    full = codec.decode_envelope(vector("example2"))
    severed = codec.decode_envelope(vector("example2-severed"))
    assert severed.manifest_bytes == full.manifest_bytes
    assert not severed.severable
    assert codec.encode_envelope(codec.sever(full)) == vector("example2-severed")


def test_example3_try_each_over_slots() -> None:
    m = codec.decode_envelope(vector("example3")).manifest
    assert m.common.shared_sequence is not None
    try_each = m.common.shared_sequence.commands[1]
    assert try_each.code == Command.TRY_EACH
    assert isinstance(try_each.argument, TryEach)
    slots = [seq.commands[0].argument for seq in try_each.argument.sequences]
    assert [p.component_slot for p in slots if isinstance(p, Parameters)] == [0, 1]


def test_example4_three_components_and_payload_fetch() -> None:
    m = codec.decode_envelope(vector("example4")).manifest
    assert m.common.components == ((b"\x00",), (b"\x02",), (b"\x01",))
    assert isinstance(m.payload_fetch, CommandSequence)
    assert isinstance(m.load, CommandSequence)


def test_trust_domains_dependency_metadata() -> None:
    m = codec.decode_envelope(vector("trust-domains-example1_process")).manifest
    assert m.common.dependencies is not None
    assert set(m.common.dependencies) == {1}
    integrated = codec.decode_envelope(vector("trust-domains-example2_integrated"))
    assert list(integrated.integrated) == ["#dependent.suit"]
    inner = codec.decode_envelope(integrated.integrated["#dependent.suit"])
    assert inner.authentication.digest.value.hex().startswith("0f02caf6")


@pytest.mark.parametrize("name", ENCRYPTION_MANIFESTS)
def test_encryption_manifests_carry_encryption_info(name: str) -> None:
    envelope = codec.decode_envelope(vector(name))
    found = []

    def walk(seq: CommandSequence | None) -> None:
        for command in seq or ():
            if isinstance(command.argument, Parameters) and command.argument.encryption_info:
                found.append(command.argument.encryption_info)

    m = envelope.manifest
    for seq in (m.common.shared_sequence, m.install, m.payload_fetch, m.validate):
        walk(seq if isinstance(seq, CommandSequence) else None)
    if not found:  # the dependency example supplies it from the dependent's shared sequence
        assert envelope.integrated
    else:
        assert all(info[:1] == b"\xd8" for info in found)  # tag 96 (COSE_Encrypt)
