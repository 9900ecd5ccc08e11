"""The compiled CBOR fast path (``cbor.FAST``, src/suitkit/core/_strictcbor.c) against the
reference decoder (``cbor.decode_reference``).

The contract (the header comment of the C file; checked by ``core.strictcbor_kit``): whatever
``FAST`` decides, the reference decides the same, with the same types all the way down; it
never raises; and it decides every input of its common subset (one preferred, definite item of
ints, strings, arrays, maps with unique int/str/bytes keys, false/true/null and the tags of COSE
and SUIT, nested fewer than ``max_depth`` levels). The same check runs coverage-guided as
``fuzz/fuzz_suit.py --mode=fastpath``.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import random
import sys
import threading
import tracemalloc
from pathlib import Path
from types import ModuleType
from typing import Any

import cbor2
import pytest
from cbor2 import CBORTag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.strictcbor_kit import (
    DECIDED_TAGS,
    DEPTH_CAP,
    EXTENSION_MISSING,
    Encoder,
    check_contract,
    nested_items,
    nesting,
    same_typed,
)
from suitkit.core import cbor, codec
from suitkit.core.numbers import Tag
from suitkit.errors import DecodeError

if cbor.FAST is None:
    if os.environ.get("SUITKIT_REQUIRE_EXTENSION") == "1":
        pytest.fail(f"{EXTENSION_MISSING} (SUITKIT_REQUIRE_EXTENSION=1)", pytrace=False)
    pytest.skip(EXTENSION_MISSING, allow_module_level=True)

FAST: Any = cbor.FAST
VECTORS = Path(__file__).resolve().parent.parent / "vectors"
FAST_SETTINGS = settings(max_examples=800, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])

INT_EDGES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
             -1, -24, -25, -256, -257, -65536, -65537, -2**32, -2**32 - 1, -2**63, -2**63 - 1,
             -2**64]

ints = st.sampled_from(INT_EDGES) | st.integers(-2**64, 2**64 - 1)
texts = st.text(st.characters(codec="utf-8"), max_size=10)
blobs = st.binary(max_size=16)
decided_tags = st.sampled_from(sorted(DECIDED_TAGS))
any_tags = (decided_tags | st.sampled_from(cbor._BUILTIN_TAGS)
            | st.sampled_from([6, 15, 19, 24, 99, 1071, 9999, 55800, 2**16, 2**32, 2**64 - 1])
            | st.integers(0, 2**64 - 1))
simple_values = st.builds(cbor2.CBORSimpleValue, st.sampled_from([0, 19, 32, 99, 255]))

leaves = (ints | blobs | texts | st.booleans() | st.none() | st.floats() | st.just(cbor2.undefined)
          | simple_values)
keys = ints | texts | st.binary(max_size=6) | st.booleans() | st.none() | st.tuples(ints)
values = st.recursive(
    leaves,
    lambda inner: (st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4)
                   | st.builds(CBORTag, any_tags, inner)),
    max_leaves=12)

subset_values = st.recursive(
    ints | blobs | texts | st.booleans() | st.none(),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(ints | texts | st.binary(max_size=6), inner, max_size=4)
                   | st.builds(CBORTag, decided_tags, inner)),
    max_leaves=12)


def _dumps(value: object) -> bytes:
    return cbor2.dumps(value)


def _vector_items() -> list[bytes]:
    """Every vector's bytes and every nested CBOR item in them (bstr .cbor members)."""
    items: list[bytes] = []
    for path in sorted(VECTORS.glob("*.hex")):
        data = bytes.fromhex(path.read_text().strip())
        items.append(data)
        try:
            top = cbor.decode_reference(data, path="t", max_depth=64, preferred=True)
        except DecodeError:
            continue  # some vectors are ciphertext, or two items in a row
        items.extend(nested_items(top))
    return items


VECTOR_ITEMS = _vector_items()


# ----------------------------------------------------------------------- 1. generated values


@FAST_SETTINGS
@given(values, st.randoms(use_true_random=False), st.sampled_from([0.0, 0.15, 0.5]),
       st.integers(1, 20))
def test_generated_values_keep_the_contract(value: object, rng: random.Random, odd: float,
                                            max_depth: int) -> None:
    check_contract(_dumps(value), max_depth)
    check_contract(Encoder(rng, odd).encode(value), max_depth)


# ----------------------------------------------------------------------------- 2. mutations

mutations = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate", "append"]),
                               st.integers(0, 1 << 16), st.integers(0, 255)),
                     min_size=1, max_size=4)


def _mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, where, byte in ops:
        i = where % (len(out) + 1)
        if op == "flip" and out:
            out[i % len(out)] ^= byte or 1
        elif op == "insert":
            out.insert(i, byte)
        elif op == "delete" and out:
            del out[i % len(out)]
        elif op == "truncate":
            del out[i:]
        elif op == "append":
            out += bytes([byte]) * (1 + where % 3)
    return bytes(out)


@FAST_SETTINGS
@given(st.sampled_from(VECTOR_ITEMS) | values.map(_dumps), mutations, st.integers(1, 20))
def test_mutated_encodings_keep_the_contract(data: bytes, ops: list[tuple[str, int, int]],
                                             max_depth: int) -> None:
    check_contract(_mutate(data, ops), max_depth)


# ------------------------------------------------------------------------------- 3. raw bytes


@FAST_SETTINGS
@given(st.binary(max_size=64), st.integers(0, 24))
def test_random_bytes_keep_the_contract(data: bytes, max_depth: int) -> None:
    check_contract(data, max_depth)


# ------------------------------------------------------------------- 4. the common subset


@FAST_SETTINGS
@given(subset_values, st.integers(0, 5))
def test_the_common_subset_is_decided(value: object, slack: int) -> None:
    depth = nesting(value)
    enough = max(2, depth + 1) + slack  # the C code decides nothing below max_depth 2
    for data in {cbor.encode(value), _dumps(value)}:
        got = FAST(data, enough)
        assert got is not None, f"{data.hex()} at max_depth {enough}"
        ref = cbor.decode_reference(data, path="t", max_depth=enough, preferred=True)
        assert same_typed(got[0], ref)
        assert got[0] == cbor2.loads(data)
        # One level fewer: the C code defers (nesting == max_depth), the reference decides.
        assert FAST(data, depth) is None
        check_contract(data, depth)


def _chain(kinds: str) -> bytes:
    """Containers nested in the order of ``kinds`` (a=array, m=map value, t=tag) around 1."""
    out = b"\x01"
    for kind in reversed(kinds):
        out = {"a": b"\x81", "m": b"\xa1\x61k", "t": b"\xd8\x62"}[kind] + out  # t: tag 98
    return out


@pytest.mark.parametrize("kinds", ["a", "m", "t", "at", "ta", "mt", "amt", "tmat", "aaaaaaa",
                                   "tttttt", "mamamam"])
def test_depth_boundary_is_exact(kinds: str) -> None:
    data, n = _chain(kinds), len(kinds)
    assert nesting(cbor.decode_reference(data, path="t", max_depth=n)) == n
    assert FAST(data, n + 1) is not None  # n levels fit in max_depth n + 1
    assert FAST(data, n) is None  # the reference accepts these, the C code leaves them
    assert cbor.decode_reference(data, path="t", max_depth=n, preferred=True) == \
        cbor.decode(data, path="t", max_depth=n)
    if n >= 2:
        with pytest.raises(DecodeError, match="depth"):
            cbor.decode(data, path="t", max_depth=n - 1)
    for d in range(n + 3):
        check_contract(data, d)


def test_max_depth_is_capped_at_256() -> None:
    # Deeper nesting is left to the reference: the C recursion stays within the smallest
    # thread stacks (about 150 bytes a level).
    for n in (254, 255, 256):
        data = b"\x81" * n + b"\x01"
        got = FAST(data, 5000)
        assert (got is not None) == (n <= DEPTH_CAP - 1)
        assert check_contract(data, 5000) == got
    assert FAST(b"\x01", 2**31) == (1,)
    assert FAST(b"\x01", 1) is None and FAST(b"\x01", -(2**40)) is None


def test_deep_nesting_in_a_small_thread_stack() -> None:
    data = b"\x81" * 300 + b"\x01"
    out: list[object] = []
    size = threading.stack_size(128 * 1024)  # musl's default
    try:
        thread = threading.Thread(target=lambda: out.append(FAST(data, 5000)))
        thread.start()
        thread.join(timeout=30)
    finally:
        threading.stack_size(size)
    assert out == [None]  # deferred at the cap, without a crash


def test_a_max_depth_beyond_a_c_long_does_not_raise() -> None:
    assert FAST(b"\x01", 2**63) == (1,)
    assert FAST(b"\x81" * (DEPTH_CAP - 1) + b"\x01", 2**200) is not None
    assert FAST(b"\x01", -(2**63) - 1) is None


def test_other_arguments_are_left_to_the_reference() -> None:
    # The fast path never raises: other buffers and odd depths are simply not decided here.
    assert FAST(bytearray(b"\x01"), 16) is None  # type: ignore[arg-type]
    assert FAST(b"\x01", True) is None or FAST(b"\x01", True) == (1,)
    assert FAST(b"\x01", "16") is None  # type: ignore[arg-type]


def test_nested_length_claims_cannot_multiply_memory() -> None:
    # 15 nested arrays, each head claiming every byte left, then zeros: without the bytes the
    # outer arrays already claimed counted, each level allocated a slot per input byte again
    # (a review found 1.7 GB for a 16 MB envelope). Now all containers together hold at most
    # one slot per input byte.
    size = 1 << 20
    head = bytearray(b"\xd8\x6b")
    for _ in range(15):
        head += b"\x9a" + (size - len(head) - 5).to_bytes(4, "big")
    data = bytes(head.ljust(size, b"\x00"))
    tracemalloc.start()
    try:
        assert FAST(data, 16) is None  # the inner claims do not fit: left to the reference
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * size, f"peak {peak} bytes for a {size}-byte input"


def test_a_long_array_head_costs_nothing_before_its_items() -> None:
    # One head claiming every byte left, then a reserved head (0x1c) that the reference refuses
    # at once: the fast path must not have set aside a slot per claimed item meanwhile (a review
    # measured 8 bytes per input byte).
    size = 1 << 20
    data = (b"\xd8\x6b\x9a" + (size - 7).to_bytes(4, "big") + b"\x1c").ljust(size, b"\x00")
    tracemalloc.start()
    try:
        assert FAST(data, 16) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"peak {peak} bytes for a {size}-byte input"


@pytest.mark.parametrize("count", [1023, 1024, 1025, 5000])
@pytest.mark.parametrize("tagged", [False, True])
def test_long_arrays_decode_as_the_reference_does(count: int, tagged: bool) -> None:
    # Arrays longer than PREALLOCATE_UP_TO grow item by item (a tuple inside a tag).
    value: object = list(range(count))
    if tagged:
        value = CBORTag(18, value)
    data = cbor2.dumps(value)
    got = FAST(data, 16)
    assert got is not None
    assert check_contract(data, 16) == got
    inner = got[0].value if tagged else got[0]
    assert type(inner) is (tuple if tagged else list) and len(inner) == count


# -------------------------------------------------------------------------- 5. spec vectors


def _has_array_key(value: object) -> bool:
    return isinstance(value, dict) and any(
        isinstance(k, tuple) or _has_array_key(v) for k, v in value.items())


def test_every_nested_item_of_the_vectors_is_decided() -> None:
    decided, left = 0, []
    for data in VECTOR_ITEMS:
        got = check_contract(data, 16)  # decides every item of the common subset
        try:
            ref = cbor.decode_reference(data, path="t", max_depth=16, preferred=True)
        except DecodeError:
            assert got is None
            continue
        if got is None:
            left.append(ref)
        decided += got is not None
    assert decided >= 250  # 25 envelopes, their manifests, sequences, COSE blocks...
    # The one item left to the reference: example 2's text member, keyed by a component
    # identifier (an array key, outside the subset; codec.decode_envelope does not decode it).
    assert len(left) == 1 and _has_array_key(left[0])


def _envelopes() -> list[bytes]:
    out = []
    for path in sorted(VECTORS.glob("*.hex")):
        data = bytes.fromhex(path.read_text().strip())
        try:
            codec.decode_envelope(data)
        except DecodeError:
            continue
        out.append(data)
    return out


def test_decode_envelope_never_falls_back_on_the_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    results: list[object] = []

    def counting(data: bytes, max_depth: int) -> Any:
        got = FAST(data, max_depth)
        results.append(got)
        return got

    envelopes = _envelopes()
    assert len(envelopes) >= 20
    monkeypatch.setattr(cbor, "FAST", counting)
    monkeypatch.setattr(codec, "_FAST", counting)
    for data in envelopes:
        before = len(results)
        codec.decode_envelope(data)
        assert len(results) - before >= 2  # the envelope and its nested members
    assert None not in results


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_envelopes_in_other_buffers_decode_as_bytes(kind: type) -> None:
    # The fast path takes bytes only; the codec's direct calls must not hand it a bytearray
    # slice (the consumer receives bytearrays: tests/security test_threat_mfst_toctou).
    for data in _envelopes():
        assert codec.decode_envelope(kind(data)) == codec.decode_envelope(data)


def test_the_reference_alone_decodes_every_vector_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    envelopes = _envelopes()
    fast = [codec.decode_envelope(data) for data in envelopes]
    monkeypatch.setattr(cbor, "FAST", None)
    monkeypatch.setattr(codec, "_FAST", None)
    slow = [codec.decode_envelope(data) for data in envelopes]
    assert slow == fast


# ------------------------------------------------------------------------------- 6. no leak


TAGGED = cbor2.dumps(CBORTag(98, {1: [1, -2**64, {"a": b"x"}], "k": CBORTag(1070, {3: 4})}))
DUPLICATE_DEEP = bytes.fromhex("d862" "a2" "01" "82" "01" "a2616101616102" "0200")
"""98({1: [1, {"a": 1, "a": 2}], 2: 0}): a duplicate key deep inside a tag."""


def _leak_inputs() -> list[bytes]:
    tagged = TAGGED
    last_text = cbor2.dumps([1, {"k": "vvv"}, CBORTag(18, [b"x", "ok"])])
    assert last_text.endswith(b"ok")
    inputs = [
        *VECTOR_ITEMS[:40],
        tagged,
        tagged[:-1],  # truncated in the last item
        tagged + b"\x00",  # trailing byte after a decided item
        DUPLICATE_DEEP,
        last_text[:-2] + b"\xff\xfe",  # invalid UTF-8 in the last item
        cbor2.dumps([-2**64, 2**64 - 1, -2**63 - 1]) + b"\x18\x01",  # big ints, then a long head
        cbor2.dumps({b"k": [True, False, None], "x": 1.5}),  # a float in the last value
        cbor2.dumps(CBORTag(107, [CBORTag(1, 0)])),  # an undecided tag inside a decided one
        b"\x9b" + (2**64 - 1).to_bytes(8, "big"),  # an array longer than the input
        b"\x81" * 30 + b"\x01",  # too deep for max_depth 16
    ]
    decided = [FAST(data, 16) is not None for data in inputs]
    assert any(decided) and not all(decided)
    return inputs


def test_no_memory_grows_over_20000_calls() -> None:
    inputs = _leak_inputs()
    for data in inputs * 20:  # warm up caches (small ints, interned strings, free lists)
        FAST(data, 16)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            FAST(inputs[i % len(inputs)], 16)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A leak of the smallest object the C code makes (a 28-byte int, or the 56-byte result
    # tuple) once per call would be 560 KiB or more; 64 KiB leaves room for tracemalloc's own
    # bookkeeping and free lists, but not for one leaked object per call, or per 10 calls.
    assert grown < 64 * 1024, f"{grown} bytes more after 20000 calls"


def test_reference_counts_are_unchanged() -> None:
    deferred, decided = DUPLICATE_DEEP, TAGGED  # fails after building a frozendict; decided
    bools = cbor2.dumps([True, False, {"k": True}])
    bools_deferred = cbor2.dumps([True, False, {"k": True}, 1.5])  # a float last
    assert FAST(deferred, 16) is None and FAST(decided, 16) is not None
    assert FAST(bools_deferred, 16) is None and FAST(bools, 16) is not None

    def counts() -> list[int]:
        return [sys.getrefcount(deferred), sys.getrefcount(decided), sys.getrefcount(CBORTag),
                sys.getrefcount(cbor2.frozendict), sys.getrefcount(True),
                sys.getrefcount(False)]

    gc.collect()
    kept = counts()
    for _ in range(5000):
        FAST(deferred, 16)
        FAST(decided, 16)
        FAST(bools, 16)
        FAST(bools_deferred, 16)
    gc.collect()
    assert counts() == kept


# ------------------------------------------------------------------------ the fuzz target


def _fuzz_target() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_suit.py"
    spec = importlib.util.spec_from_file_location("fuzz_suit", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_suit", module)
    spec.loader.exec_module(module)
    return module


def test_fuzz_fastpath_mode_passes_its_seeds_and_catches_a_broken_fast_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _fuzz_target()
    assert target.write_seeds("fastpath", tmp_path) >= 250
    seeds = [seed.read_bytes() for seed in sorted(tmp_path.iterdir())]
    for seed in seeds:
        target.one_input("fastpath", seed)

    def lists_for_tuples(data: bytes, max_depth: int) -> Any:  # wrong types inside tags
        got = FAST(data, max_depth)
        if got is None or not isinstance(got[0], CBORTag) or not isinstance(got[0].value, tuple):
            return got
        return (CBORTag(got[0].tag, list(got[0].value)),)

    monkeypatch.setattr(cbor, "FAST", lists_for_tuples)
    with pytest.raises(AssertionError, match="the reference returned"):
        target.one_input("fastpath", b"\x10" + cbor2.dumps(CBORTag(98, [1, b""])))


# ------------------------------------------------------------------------------------ 7. tags


@pytest.mark.parametrize("tag", cbor._BUILTIN_TAGS)
def test_builtin_tags_are_left_to_the_reference(tag: int) -> None:
    for content in (0, b"\x01", "x", [1], {1: 2}):
        data = cbor2.dumps(CBORTag(tag, content))
        assert FAST(data, 16) is None
        check_contract(data, 16)


def test_the_c_tag_list_is_the_cose_and_suit_tags() -> None:
    candidates = [*range(65536 + 1), 2**32 - 1, 2**32, 2**64 - 1]
    decided = {tag for tag in candidates if FAST(cbor2.dumps(CBORTag(tag, 0)), 16) is not None}
    assert decided == DECIDED_TAGS
    assert set(Tag) - {Tag.EPOCH_TIME} <= DECIDED_TAGS
    assert not DECIDED_TAGS & set(cbor._BUILTIN_TAGS)
    for tag in sorted(DECIDED_TAGS):
        got = FAST(cbor2.dumps(CBORTag(tag, [1, {2: [b""]}])), 16)
        assert got is not None
        assert same_typed(got[0], CBORTag(tag, (1, cbor2.frozendict({2: (b"",)}))))


def _cbor2_interprets(tag: int) -> bool:
    for content in (0, b"\x00" * 16, [1, 2], {1: 2}):
        try:
            if type(cbor2.loads(cbor2.dumps(CBORTag(tag, content)))) is not CBORTag:
                return True
        except cbor2.CBORDecodeError:
            return True
    return False


def test_every_tag_cbor2_interprets_is_builtin_and_left_to_the_reference() -> None:
    interpreted = {tag for tag in range(65536) if _cbor2_interprets(tag)}
    assert interpreted == set(cbor._BUILTIN_TAGS)
    for tag in interpreted:
        assert FAST(cbor2.dumps(CBORTag(tag, 0)), 16) is None
    check_contract(bytes.fromhex("d9a7f800"), 16)  # 43000(0): cbor2 wants a complex number
