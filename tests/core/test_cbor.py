"""The strict CBOR layer: deterministic encoding (RFC 8949 §4.2.1) and strict decoding."""

from __future__ import annotations

import cbor2
import pytest

from suitkit.core import cbor
from suitkit.errors import DecodeError

pytestmark = pytest.mark.usefixtures("both_decoders")  # fast path and reference alone


def test_map_keys_sorted_bytewise_not_length_first() -> None:
    # RFC 8949 §4.2.1 puts 24 (0x1818) before -1 (0x20); cbor2's canonical mode does not.
    assert cbor.encode({-1: 2, 24: 1}).hex() == "a21818012002"
    assert cbor2.dumps({-1: 2, 24: 1}, canonical=True).hex() == "a22002181801"


def test_text_keys_sort_after_integer_keys() -> None:
    assert cbor.encode({"#a": b"", 3: 0, 2: 0}).hex() == "a302000300622361" + "40"


@pytest.mark.parametrize("length,head", [(0, "40"), (23, "57"), (24, "5818"), (255, "58ff"),
                                         (256, "590100"), (65536, "5a00010000")])
def test_wrap_uses_the_shortest_head(length: int, head: str) -> None:
    data = b"x" * length
    assert cbor.wrap(data) == bytes.fromhex(head) + data
    assert cbor.wrap(data) == cbor2.dumps(data)


def test_duplicate_map_keys_rejected() -> None:
    with pytest.raises(DecodeError, match="here: invalid CBOR"):
        cbor.decode(bytes.fromhex("a201010102"), path="here")


def test_indefinite_length_rejected() -> None:
    with pytest.raises(DecodeError, match="invalid CBOR"):
        cbor.decode(bytes.fromhex("9f01ff"), path="x")


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(DecodeError, match="x: 2 trailing bytes"):
        cbor.decode(bytes.fromhex("010203"), path="x")


def test_non_preferred_head_rejected_unless_allowed() -> None:
    long_head = bytes.fromhex("1801")  # 1 encoded in two bytes
    assert cbor.decode(long_head, path="x", preferred=False) == 1
    with pytest.raises(DecodeError, match="x: CBOR is not in preferred serialization at byte 0"):
        cbor.decode(long_head, path="x")
    with pytest.raises(DecodeError, match="preferred serialization at byte 2"):
        cbor.decode_reference(bytes.fromhex("82011802"), path="x")


def test_depth_limit() -> None:
    nested = bytes.fromhex("81" * 20 + "01")
    with pytest.raises(DecodeError, match="invalid CBOR"):
        cbor.decode(nested, path="x", max_depth=8)
    assert cbor.decode(nested, path="x", max_depth=32) == [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]


@pytest.mark.parametrize("tag,content", [(0, "2020"), (1, 5), (2, b"\x01"), (37, b"0" * 16),
                                         (258, [1]), (55799, 1)])
def test_tags_keep_their_bytes(tag: int, content: object) -> None:
    # cbor2 would turn these into datetime, int, UUID, set...; a SUIT parser must not.
    data = cbor2.dumps(cbor2.CBORTag(tag, content))
    decoded = cbor.decode(data, path="x")
    assert isinstance(decoded, cbor.CBORTag)
    assert decoded.tag == tag
    assert cbor.encode(decoded) == data


def test_empty_and_non_bytes_input() -> None:
    with pytest.raises(DecodeError, match="0 bytes"):
        cbor.decode(b"", path="x")
    with pytest.raises(DecodeError, match="expected CBOR bytes"):
        cbor.decode("text", path="x")  # type: ignore[arg-type]


def test_raw_is_inserted_verbatim() -> None:
    assert cbor.encode([cbor.Raw(b"\x18\x01")]) == b"\x81\x18\x01"
