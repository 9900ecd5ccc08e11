"""The model classes the decoder builds without their ``__init__`` (model.Decoded, Command):
instances made by the decoder behave exactly as instances made by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from suitkit.core import codec, crypto
from suitkit.core.model import (
    Command,
    CommandSequence,
    Common,
    Decoded,
    Envelope,
    Manifest,
    Parameters,
)
from suitkit.core.verify import TrustAnchors, VerifiedManifest, verify_envelope

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def _example0() -> bytes:
    return bytes.fromhex((VECTORS / "example0.hex").read_text().strip())


def _by_hand(envelope: Envelope) -> Envelope:
    """The same envelope rebuilt through every dataclass ``__init__``."""
    m = envelope.manifest
    manifest = Manifest(**{f.name: getattr(m, f.name) for f in dataclasses.fields(Manifest)})
    common = Common(**{f.name: getattr(m.common, f.name) for f in dataclasses.fields(Common)})
    manifest = dataclasses.replace(manifest, common=common)
    return Envelope(**{f.name: getattr(envelope, f.name) for f in dataclasses.fields(Envelope)
                       if f.name != "manifest"}, manifest=manifest)


def test_decoded_instances_equal_and_hash_as_instances_built_by_hand() -> None:
    decoded = codec.decode_envelope(_example0())
    by_hand = _by_hand(decoded)
    assert decoded == by_hand
    assert hash(decoded.manifest) == hash(by_hand.manifest)
    assert hash(decoded.manifest.common) == hash(by_hand.manifest.common)
    # Every member is readable: set ones from the instance, unset ones from the class defaults.
    for cls, obj in ((Manifest, decoded.manifest), (Common, decoded.manifest.common),
                     (Envelope, decoded)):
        assert isinstance(obj, Decoded)
        for f in dataclasses.fields(cls):
            getattr(obj, f.name)
    assert decoded.manifest.reference_uri is None
    assert decoded.manifest.extra == {}


@pytest.mark.parametrize("attribute", ["sequence_number", "common", "install", "not_a_member"])
def test_decoded_instances_stay_frozen(attribute: str) -> None:
    manifest = codec.decode_envelope(_example0()).manifest
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(manifest, attribute, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(manifest, "sequence_number")


def test_replace_on_a_decoded_manifest_changes_one_member() -> None:
    manifest = codec.decode_envelope(_example0()).manifest
    later = dataclasses.replace(manifest, sequence_number=manifest.sequence_number + 1)
    assert later.sequence_number == manifest.sequence_number + 1
    assert dataclasses.replace(later, sequence_number=manifest.sequence_number) == manifest


def test_verified_manifest_from_the_fast_path_has_every_member() -> None:
    anchors = TrustAnchors.of(crypto.load_public_key(
        (VECTORS / "example-key-public.pem").read_bytes()))
    verified = verify_envelope(_example0(), anchors)
    assert isinstance(verified, VerifiedManifest)
    assert verified.severed == frozenset()
    assert verified.install is None and verified.text is None
    assert verified.digest == verified.envelope.authentication.digest
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.install = None  # type: ignore[misc]


def test_commands_decode_as_commands_with_named_members() -> None:
    manifest = codec.decode_envelope(_example0()).manifest
    assert manifest.validate is not None
    command = manifest.validate.commands[0]
    assert type(command) is Command
    assert (command.code, command.argument) == (3, 15)  # image-match, report all
    assert command == Command(3, 15)
    assert isinstance(manifest.validate, CommandSequence)
    with pytest.raises(AttributeError):
        command.code = 4  # type: ignore[misc]


def test_parameters_from_decoded_map_keep_unset_members_none() -> None:
    manifest = codec.decode_envelope(_example0()).manifest
    assert manifest.common.shared_sequence is not None
    params = manifest.common.shared_sequence.commands[0].argument
    assert isinstance(params, Parameters)
    assert params.image_size == 34768 and params.uri is None
    assert params == Parameters(**{name: getattr(params, name)
                                   for name in ("vendor_identifier", "class_identifier",
                                                "image_digest", "image_size")})
