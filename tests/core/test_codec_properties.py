"""Properties of the codec: decode(encode(m)) == m, and hostile bytes raise only SuitError."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suitkit.core import codec
from suitkit.core.model import (
    Command,
    CommandSequence,
    Common,
    Digest,
    FrozenDict,
    LocalizedText,
    Manifest,
    Parameters,
    Pen,
    Text,
    TryEach,
    VersionMatch,
)
from suitkit.core.numbers import CONDITIONS
from suitkit.core.numbers import Command as Cmd
from suitkit.errors import SuitError

from helpers import ALL_ENVELOPES, vector

component_ids = st.lists(st.binary(min_size=0, max_size=4), min_size=1, max_size=3).map(tuple)
digests = st.builds(Digest, st.just(-16), st.binary(min_size=32, max_size=32))
policies = st.integers(min_value=0, max_value=15)


@st.composite
def parameters(draw: Any) -> Parameters:
    fields = {
        "vendor_identifier": st.one_of(st.uuids(), st.builds(Pen, st.binary(max_size=8))),
        "class_identifier": st.uuids(),
        "image_digest": digests,
        "use_before": st.integers(0, 2**40),
        "component_slot": st.integers(0, 3),
        "strict_order": st.booleans(),
        "soft_failure": st.booleans(),
        "image_size": st.integers(0, 2**32),
        "content": st.binary(max_size=16),
        "uri": st.text(max_size=20),
        "source_component": st.integers(0, 3),
        "invoke_args": st.binary(max_size=8),
        "device_identifier": st.uuids(),
        "fetch_arguments": st.binary(max_size=8),
        "minimum_battery": st.integers(0, 10_000),
        "update_priority": st.integers(-100, 100),
        "version": st.builds(VersionMatch, st.integers(1, 5),
                             st.lists(st.integers(-3, 99), min_size=1, max_size=4).map(tuple)),
    }
    chosen = draw(st.sets(st.sampled_from(sorted(fields)), min_size=1, max_size=5))
    values = {name: draw(fields[name]) for name in chosen}
    if draw(st.booleans()):
        values["extra"] = FrozenDict({-257: draw(st.integers(0, 9))})
    return Parameters(**values)


simple_commands = st.builds(
    Command,
    st.sampled_from([*sorted(int(c) for c in CONDITIONS),
        int(Cmd.FETCH), int(Cmd.COPY), int(Cmd.INVOKE), int(Cmd.WRITE), int(Cmd.SWAP),
        int(Cmd.PROCESS_DEPENDENCY), int(Cmd.UNLINK), int(Cmd.WAIT)]),
    policies,
)
index_commands = st.builds(
    Command, st.just(int(Cmd.SET_COMPONENT_INDEX)),
    st.one_of(st.integers(0, 5), st.just(True),
              st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple)))
parameter_commands = st.builds(
    Command, st.sampled_from([int(Cmd.OVERRIDE_PARAMETERS), int(Cmd.SET_PARAMETERS)]),
    parameters())
custom_commands = st.builds(
    Command, st.integers(-1000, -257),
    st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=5), st.binary(max_size=5)))


def sequences(depth: int = 2) -> st.SearchStrategy[CommandSequence]:
    leaf = st.one_of(simple_commands, index_commands, parameter_commands, custom_commands)
    if depth > 0:
        inner = sequences(depth - 1)
        leaf = st.one_of(
            leaf,
            st.builds(Command, st.just(int(Cmd.RUN_SEQUENCE)), inner),
            st.builds(Command, st.just(int(Cmd.TRY_EACH)),
                      st.builds(TryEach, st.lists(inner, min_size=2, max_size=3).map(tuple),
                                st.booleans())),
        )
    return st.lists(leaf, min_size=1, max_size=5).map(lambda c: CommandSequence(tuple(c)))


texts = st.builds(
    lambda fields, comps: Text(FrozenDict({"en-US": LocalizedText(FrozenDict(fields),
                                                                  FrozenDict(comps))})),
    st.dictionaries(st.integers(1, 4), st.text(max_size=10), max_size=3),
    st.dictionaries(component_ids, st.dictionaries(st.integers(1, 8), st.text(max_size=5),
                                                   min_size=1, max_size=2).map(FrozenDict),
                    max_size=2),
)
severable = st.one_of(st.none(), digests, sequences(1))

manifests = st.builds(
    Manifest,
    sequence_number=st.integers(0, 2**63),
    common=st.builds(Common, components=st.lists(component_ids, min_size=1, max_size=4,
                                                 unique=True).map(tuple),
                     shared_sequence=st.one_of(st.none(), sequences())),
    reference_uri=st.one_of(st.none(), st.text(max_size=20)),
    set_version=st.one_of(st.none(), st.lists(st.integers(0, 9), min_size=1,
                                              max_size=3).map(tuple)),
    validate=st.one_of(st.none(), sequences()),
    load=st.one_of(st.none(), sequences(1)),
    invoke=st.one_of(st.none(), sequences(1)),
    payload_fetch=severable,
    install=severable,
    text=st.one_of(st.none(), digests, texts),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(manifests)
def test_decode_encode_round_trip(manifest: Manifest) -> None:
    encoded = codec.encode_manifest(manifest)
    assert codec.decode_manifest(encoded) == manifest
    assert codec.encode_manifest(codec.decode_manifest(encoded)) == encoded


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(manifests)
def test_built_envelope_round_trip(manifest: Manifest) -> None:
    envelope = codec.build_envelope(manifest, sever_members=frozenset({20, 23}))
    data = codec.encode_envelope(envelope)
    again = codec.decode_envelope(data)
    assert again == envelope
    assert codec.encode_envelope(again) == data


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_suit_errors(data: bytes) -> None:
    with contextlib.suppress(SuitError):
        codec.decode_envelope(data)


@settings(max_examples=1000)
@given(st.sampled_from(ALL_ENVELOPES), st.data())
def test_mutated_envelopes_raise_only_suit_errors(name: str, data: st.DataObject) -> None:
    original = bytearray(vector(name))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(original) - 1))
        original[position] = data.draw(st.integers(0, 255))
    with contextlib.suppress(SuitError):
        codec.decode_envelope(bytes(original))


cbor_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.binary(max_size=8),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.integers(-300, 30), inner, max_size=3)),
    max_leaves=6,
)


def _mutate(obj: object, data: st.DataObject, depth: int = 0) -> object:
    """Replace one node of a decoded CBOR tree (descending into bstr-wrapped CBOR too)."""
    import cbor2

    if depth > 6 or data.draw(st.integers(0, 4)) == 0:
        return data.draw(cbor_values)
    if isinstance(obj, bytes) and obj[:1] and obj[0] >> 5 in (4, 5):
        try:
            inner = cbor2.loads(obj)
        except Exception:  # noqa: BLE001 - not CBOR: treat as a leaf
            return data.draw(cbor_values)
        return cbor2.dumps(_mutate(inner, data, depth + 1))
    if isinstance(obj, list) and obj:
        i = data.draw(st.integers(0, len(obj) - 1))
        return [*obj[:i], _mutate(obj[i], data, depth + 1), *obj[i + 1:]]
    if isinstance(obj, dict) and obj:
        key = data.draw(st.sampled_from(list(obj)))
        return {**obj, key: _mutate(obj[key], data, depth + 1)}
    return data.draw(cbor_values)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_ENVELOPES), st.data())
def test_structurally_mutated_manifests_raise_only_suit_errors(name: str,
                                                                data: st.DataObject) -> None:
    # Type confusion deep inside bstr-wrapped members (a map where a command number belongs,
    # a list where a digest belongs...) must give DecodeError, never a foreign exception.
    import cbor2

    envelope = cbor2.loads(vector(name))
    body = dict(envelope.value)
    body[3] = cbor2.dumps(_mutate(cbor2.loads(body[3]), data))
    mutated = cbor2.dumps(cbor2.CBORTag(107, body))
    with contextlib.suppress(SuitError):
        codec.decode_envelope(mutated)
