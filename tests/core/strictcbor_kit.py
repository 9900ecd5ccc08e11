"""The contract of the compiled CBOR fast path (``cbor.FAST``, src/suitkit/core/_strictcbor.c),
as a check shared by tests/core/test_strictcbor.py and the ``fastpath`` mode of fuzz/fuzz_suit.py.

The contract, for any bytes ``b`` and depth limit ``d``:

- ``FAST(b, d)`` never raises;
- if it returns ``(x,)``, ``decode_reference(b, max_depth=d, preferred=True)`` returns a ``y``
  equal to ``x`` with the same types all the way down (list/tuple, dict/frozendict, CBORTag,
  bool/int, str/bytes);
- if it returns ``None`` and the reference accepts ``b`` with a value in the *common subset*
  (see ``in_subset``), that is a miss: the fast path must decide those.
"""

from __future__ import annotations

import math
import os
import random
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import cbor2
from cbor2 import CBORTag

from suitkit.core import cbor
from suitkit.errors import DecodeError

EXTENSION_MISSING = ("the compiled CBOR fast path is not built: pip install -e . "
                     "(needs gcc and the Python headers)")


def require_extension() -> None:
    """Skip where the fast path is missing; fail instead under SUITKIT_REQUIRE_EXTENSION=1
    (set by .ci/run, so that a failed build cannot pass CI by skipping)."""
    import pytest

    if cbor.FAST is None:
        if os.environ.get("SUITKIT_REQUIRE_EXTENSION") == "1":
            pytest.fail(EXTENSION_MISSING + " (SUITKIT_REQUIRE_EXTENSION=1)", pytrace=False)
        pytest.skip(EXTENSION_MISSING)


DEPTH_CAP = 256
"""The C code decides nesting up to this (``MAX_DEPTH`` in _strictcbor.c)."""

DECIDED_TAGS = frozenset({16, 17, 18, 96, 97, 98, 107, 112, 1070})
"""The tags the C code decides (``decided_tags[]``): COSE's and SUIT's (numbers.Tag less the
epoch time tag 1, plus COSE_Encrypt0 16). Items under any other tag go to the reference."""


def same_typed(x: object, y: object) -> bool:
    """``x == y`` with the same types all the way down, maps in the same order."""
    if type(x) is not type(y):
        return False
    if isinstance(x, list | tuple):
        assert isinstance(y, list | tuple)
        return len(x) == len(y) and all(same_typed(a, b) for a, b in zip(x, y, strict=True))
    if isinstance(x, Mapping):
        assert isinstance(y, Mapping)
        return len(x) == len(y) and all(
            same_typed(ka, kb) and same_typed(va, vb)
            for (ka, va), (kb, vb) in zip(x.items(), y.items(), strict=True))
    if isinstance(x, CBORTag):
        assert isinstance(y, CBORTag)
        return x.tag == y.tag and same_typed(x.value, y.value)
    if isinstance(x, float):
        assert isinstance(y, float)
        return (math.isnan(x) and math.isnan(y)) or struct.pack(">d", x) == struct.pack(">d", y)
    return x == y


def nesting(value: object) -> int:
    """Containers and tags on the deepest path (a leaf is 0, ``[1]`` is 1, ``[[1]]`` 2)."""
    if isinstance(value, CBORTag):
        return 1 + nesting(value.value)
    if isinstance(value, list | tuple):
        return 1 + max((nesting(v) for v in value), default=0)
    if isinstance(value, Mapping):
        return 1 + max((max(nesting(k), nesting(v)) for k, v in value.items()), default=0)
    return 0


def _subset_types(value: object) -> bool:
    if value is None or type(value) in (bool, int, bytes, str):
        return True
    if isinstance(value, CBORTag):
        return value.tag in DECIDED_TAGS and _subset_types(value.value)
    if isinstance(value, list | tuple):
        return all(_subset_types(v) for v in value)
    if isinstance(value, Mapping):
        return all(type(k) in (int, str, bytes) and _subset_types(v) for k, v in value.items())
    return False  # floats, undefined, simple values, whatever a builtin tag became


def in_subset(value: object, max_depth: int) -> bool:
    """Whether the fast path must decide the preferred encoding of ``value`` (which the reference
    accepted): only subset types, and nesting <= min(max_depth, 256) - 1 (the C code refuses a
    container or tag at depth ``k`` when ``k + 1 >= max_depth``, the top item being depth 0)."""
    return (max_depth >= 2 and _subset_types(value)
            and nesting(value) <= min(max_depth, DEPTH_CAP) - 1)


def check_contract(data: bytes, max_depth: int) -> tuple[Any, ...] | None:
    """Run ``FAST`` and the reference on ``data``; raise AssertionError if the contract breaks.

    Returns what ``FAST`` returned.
    """
    fast = cbor.FAST
    assert fast is not None
    got = fast(data, max_depth)  # must not raise: any exception here is a contract break
    try:
        ref: Any = cbor.decode_reference(data, path="t", max_depth=max_depth, preferred=True)
        refused: DecodeError | None = None
    except DecodeError as e:
        ref, refused = None, e
    if got is not None:
        if type(got) is not tuple or len(got) != 1:
            raise AssertionError(f"FAST({data.hex()}, {max_depth}) returned {got!r}, "
                                 "not a 1-tuple")
        if refused is not None:
            raise AssertionError(f"FAST({data.hex()}, {max_depth}) decided {got[0]!r}, the "
                                 f"reference refused it: {refused}")
        if not same_typed(got[0], ref):
            raise AssertionError(f"FAST({data.hex()}, {max_depth}) decided {got[0]!r}, the "
                                 f"reference returned {ref!r}")
    elif refused is None and in_subset(ref, max_depth):
        raise AssertionError(f"FAST({data.hex()}, {max_depth}) returned None for an item in "
                             f"its common subset, which the reference decoded as {ref!r}")
    return got


# --------------------------------------------------------------------------- encoder


class Encoder:
    """Encodes like cbor2.dumps (map order kept), except that with probability ``odd`` each
    choice goes the other way: a head longer than needed, an indefinite length (strings in
    chunks), a repeated map entry (a duplicate key), a float in 8 bytes."""

    def __init__(self, rng: random.Random, odd: float) -> None:
        self.rng, self.odd = rng, odd

    def _flip(self) -> bool:
        return self.odd > 0 and self.rng.random() < self.odd

    def head(self, major: int, arg: int) -> bytes:
        sizes = ([0] if arg < 24 else []) + [n for n in (1, 2, 4, 8) if arg < 1 << (8 * n)]
        n = sizes[0] if not self._flip() else self.rng.choice(sizes)
        if n == 0:
            return bytes([major << 5 | arg])
        info = {1: 24, 2: 25, 4: 26, 8: 27}[n]
        return bytes([major << 5 | info]) + arg.to_bytes(n, "big")

    def encode(self, value: object) -> bytes:
        return b"".join(self._parts(value))

    def _parts(self, value: object) -> Iterator[bytes]:
        if value is None or isinstance(value, bool):
            yield cbor2.dumps(value)
        elif isinstance(value, int):
            yield self.head(0, value) if value >= 0 else self.head(1, -1 - value)
        elif isinstance(value, float):
            yield b"\xfb" + struct.pack(">d", value) if self._flip() else cbor2.dumps(value)
        elif isinstance(value, bytes | str):
            yield from self._string(value)
        elif isinstance(value, CBORTag):
            yield self.head(6, value.tag)
            yield from self._parts(value.value)
        elif isinstance(value, list | tuple):
            yield from self._container(4, len(value), [self.encode(v) for v in value])
        elif isinstance(value, Mapping):
            entries = [self.encode(k) + self.encode(v) for k, v in value.items()]
            if entries and self._flip():
                entries.insert(self.rng.randrange(len(entries) + 1), self.rng.choice(entries))
            yield from self._container(5, len(entries), entries)
        else:  # undefined, simple values
            yield cbor2.dumps(value)

    def _string(self, value: bytes | str) -> Iterator[bytes]:
        major = 2 if isinstance(value, bytes) else 3
        if not self._flip():
            raw = value if isinstance(value, bytes) else value.encode()
            yield self.head(major, len(raw)) + raw
            return
        yield bytes([major << 5 | 31])
        i = 0
        while i < len(value):
            j = i + self.rng.randint(1, 4)
            chunk = value[i:j]
            raw = chunk if isinstance(chunk, bytes) else chunk.encode()
            yield self.head(major, len(raw)) + raw
            i = j
        yield b"\xff"

    def _container(self, major: int, count: int, items: list[bytes]) -> Iterator[bytes]:
        indefinite = self._flip()
        yield bytes([major << 5 | 31]) if indefinite else self.head(major, count)
        yield from items
        if indefinite:
            yield b"\xff"


def nested_items(value: object) -> Iterator[bytes]:
    """Every byte string inside ``value`` (recursively) that is itself one CBOR item the
    reference accepts in preferred form: the ``bstr .cbor`` members of an envelope."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            try:
                inner = cbor.decode_reference(item, path="t", max_depth=64, preferred=True)
            except DecodeError:
                continue
            yield item
            stack.append(inner)
        elif isinstance(item, CBORTag):
            stack.append(item.value)
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
