"""core/packing.py: the codecs' bounded streaming decoders and the SKD1 patch format, against
hostile input (docs/delta.md §2-§3): every refusal is a DecodeError naming what is wrong."""

from __future__ import annotations

import contextlib
import lzma
import random
import re

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from suitkit.core import packing
from suitkit.core.model import Digest
from suitkit.errors import DecodeError

IMAGE = b"".join(random.Random("packing").choice([b"mov r0, r1;", b"bl 0x800;", b"\x00" * 7])
                 for _ in range(20_000))


def pieces(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("codec", list(packing.Codec))
def test_each_codec_round_trips_in_bounded_pieces(codec: packing.Codec) -> None:
    packed = packing.compress(IMAGE, codec)
    assert len(packed) < len(IMAGE) // 3
    out = list(packing.decompress(pieces(packed), codec, max_output=len(IMAGE)))
    assert b"".join(out) == IMAGE
    assert max(len(p) for p in out) <= packing.PIECE


@pytest.mark.parametrize("codec", list(packing.Codec))
def test_more_than_image_size_is_refused(codec: packing.Codec) -> None:
    packed = packing.compress(IMAGE, codec)
    with pytest.raises(DecodeError, match=f"more than the {len(IMAGE) - 1} bytes image-size"):
        b"".join(packing.decompress(pieces(packed), codec, max_output=len(IMAGE) - 1))


@pytest.mark.parametrize("codec", [packing.Codec.ZLIB, packing.Codec.XZ, packing.Codec.BZIP2])
def test_truncated_and_trailing_streams_are_refused(codec: packing.Codec) -> None:
    packed = packing.compress(IMAGE, codec)
    with pytest.raises(DecodeError, match=r"truncated|corrupt"):
        b"".join(packing.decompress(pieces(packed[:-3]), codec, max_output=len(IMAGE)))
    with pytest.raises(DecodeError, match="bytes after the end"):
        b"".join(packing.decompress(pieces(packed + b"more"), codec, max_output=len(IMAGE)))


def test_windows_over_the_memory_bound_are_refused() -> None:
    """A stream that would make the device hold a window over DECODER_MEMORY is refused."""
    streaming = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(
        window_log=26, compression_level=3, write_content_size=False)).compressobj()
    big = streaming.compress(IMAGE) + streaming.flush()
    assert zstandard.get_frame_parameters(big).window_size == 64 << 20
    with pytest.raises(DecodeError, match="too much memory"):
        b"".join(packing.decompress([big], packing.Codec.ZSTD, max_output=len(IMAGE)))
    xz = lzma.compress(IMAGE, format=lzma.FORMAT_XZ, filters=[
        {"id": lzma.FILTER_LZMA2, "dict_size": 64 << 20}])
    with pytest.raises(DecodeError, match="corrupt xz stream: Memory usage limit"):
        b"".join(packing.decompress([xz], packing.Codec.XZ, max_output=len(IMAGE)))


def test_compression_and_delta_info_are_checked() -> None:
    assert packing.CompressionInfo.decode(packing.CompressionInfo(3).encode()).algorithm == 3
    for value, message in [(b"\xa1\x01\x02", "unsupported compression algorithm 2"),
                           (b"\xa2\x01\x03\x02\x00", "unknown member 2"),
                           (b"\xa0", "member 1 is missing"), ("x", "expected a byte string"),
                           (b"\xff", "invalid CBOR")]:
        with pytest.raises(DecodeError, match=message):
            packing.CompressionInfo.decode(value)
    info = packing.DeltaInfo(1, Digest(-16, b"\x01" * 32), 10)
    assert packing.DeltaInfo.decode(info.encode()) == info
    with pytest.raises(DecodeError, match="unsupported patch format 2"):
        packing.DeltaInfo.decode(packing.DeltaInfo(2, Digest(-16, b"\x01" * 32), 1).encode())
    with pytest.raises(DecodeError, match="precursor-digest"):
        packing.DeltaInfo.decode(packing.DeltaInfo(1, Digest(-16, b"\x01"), 1).encode())


OLD = random.Random("old").randbytes(50_000)
NEW = OLD[:20_000] + b"inserted" + OLD[20_000:45_000] + random.Random("n").randbytes(99)


def apply(patch: bytes, source: bytes = OLD, max_output: int = len(NEW)) -> bytes:
    return b"".join(packing.apply_delta(
        pieces(patch, 777), lambda offset, length: source[offset:offset + length],
        source_size=len(source), max_output=max_output))


def test_skd1_rebuilds_the_target() -> None:
    patch = packing.make_delta(OLD, NEW)
    assert apply(patch) == NEW
    assert len(packing.compress(patch, packing.Codec.XZ)) < 600


def _record(diff: bytes, extra: bytes, seek: int) -> bytes:
    return (packing._uvarint(len(diff)) + packing._uvarint(len(extra))
            + packing._svarint(seek) + diff + extra)


@pytest.mark.parametrize(("patch", "message"), [
    (b"BSDIFF40", "not an SKD1 patch"),
    (b"SK", "ends inside the magic number"),
    (b"SKD1" + packing._uvarint(10) + packing._uvarint(5), "made for a source of 10 bytes"),
    (b"SKD1" + packing._uvarint(len(OLD)) + packing._uvarint(1 << 40), "rebuilds 1099511627776"),
    (b"SKD1" + packing._uvarint(len(OLD)) + packing._uvarint(5) + _record(b"", b"x" * 9, 0),
     "writes past the target-size 5"),
    (b"SKD1" + packing._uvarint(len(OLD)) + packing._uvarint(5) + _record(b"", b"", -1)
     + _record(b"\x00" * 5, b"", 0), "outside the 50000-byte source"),
    (b"SKD1" + packing._uvarint(len(OLD)) + packing._uvarint(5) + _record(b"", b"x" * 5, 0)
     + b"!", "bytes after the last record"),
    (b"SKD1" + packing._uvarint(len(OLD)) + packing._uvarint(5) + _record(b"", b"x" * 5, 0)[:5],
     "ends inside extra bytes"),
    (b"SKD1" + b"\xff" * 10, "longer than 9 bytes"),
])
def test_malformed_patches_are_refused(patch: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        apply(patch, max_output=1 << 20 if b"\xff" not in patch[4:] else 5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    for patch in (data, b"SKD1" + data):
        with contextlib.suppress(DecodeError):
            apply(patch, max_output=4096)
    for codec in packing.Codec:
        with contextlib.suppress(DecodeError):
            b"".join(packing.decompress([data], codec, max_output=4096))


# ---------------------------------------------------------------------------- in place


def _edit(rng: random.Random, old: bytes, grow: int) -> bytes:
    """``old`` with bytes flipped and ``grow`` bytes inserted (or removed) in the middle."""
    data = bytearray(old)
    for _ in range(5):
        data[rng.randrange(len(data))] ^= 0xA5
    at = len(data) // 3
    if grow >= 0:
        data[at:at] = rng.randbytes(grow)
    else:
        del data[at:at - grow]
    return bytes(data)


def _rewrite_in_place(patch: bytes, old: bytes, size: int, unit: int, order: int) -> bytes:
    """What the bootloader does: one sector at a time, in the patch's order, each computed
    from the slot as it is by then (earlier sectors already hold the new image)."""
    slot = bytearray(old) + bytearray(b"\xff" * (size + unit))
    count = -(-size // unit)
    sectors = range(count) if order == packing.Order.ASCENDING else range(count - 1, -1, -1)
    for j in sectors:
        out = packing.apply_delta_window([patch], lambda o, n: bytes(slot[o:o + n]),
                                         source_size=len(old), start=j * unit,
                                         end=(j + 1) * unit)
        slot[j * unit:j * unit + len(out)] = out
    return bytes(slot[:size])


@pytest.mark.parametrize(("grow", "order"), [(700, packing.Order.DESCENDING),
                                             (-700, packing.Order.ASCENDING),
                                             (0, packing.Order.ASCENDING)])
def test_an_in_place_patch_rebuilds_the_image_over_its_own_precursor(
        grow: int, order: packing.Order) -> None:
    """docs/delta.md §9: growth moves bytes up (rewritten from the top), shrinking moves them
    down (from the bottom); either way no sector is read after it was rewritten."""
    rng = random.Random(grow)
    old = rng.randbytes(30_000)
    new = _edit(rng, old, grow)
    patch, chosen, literal = packing.make_inplace_delta(old, new, 4096)
    assert chosen is order
    assert literal <= max(grow, 0) + 100  # the inserted bytes; bsdiff's copies are kept
    assert len(packing.compress(patch, packing.Codec.ZSTD)) < 2000
    rebuilt = b"".join(packing.apply_delta([patch], lambda o, n: old[o:o + n],
                                           source_size=len(old), max_output=len(new),
                                           inplace=(4096, chosen)))
    assert rebuilt == new
    assert _rewrite_in_place(patch, old, len(new), 4096, chosen) == new


def test_an_ordinary_patch_is_refused_as_an_in_place_one() -> None:
    """bsdiff's matching reads the bytes an insertion moved from the sector below: applied in
    place (ascending), those would be overwritten already. The device checks every record."""
    rng = random.Random(3)
    old = rng.randbytes(20_000)
    new = _edit(rng, old, 500)
    ordinary = packing.make_delta(old, new)
    with pytest.raises(DecodeError, match=r"not an in-place patch: output bytes .* ascending "
                       r"rewrite of 4096-byte sectors"):
        b"".join(packing.apply_delta([ordinary], lambda o, n: old[o:o + n],
                                     source_size=len(old), max_output=len(new),
                                     inplace=(4096, packing.Order.ASCENDING)))
    # And the rewrite that trusted it would build something else.
    assert _rewrite_in_place(ordinary, old, len(new), 4096, packing.Order.ASCENDING) != new


def test_the_in_place_member_of_delta_info_is_checked() -> None:
    inplace = packing.InplaceInfo(4096, 1, 3, Digest(-16, bytes(32)), 812)
    info = packing.DeltaInfo(1, Digest(-16, bytes(range(32))), 9000, inplace)
    assert packing.DeltaInfo.decode(info.encode()) == info
    from suitkit.core import cbor

    def with_member(**changes: object) -> bytes:
        doc = inplace.to_map()
        for key, value in changes.items():
            doc[int(key[1:])] = value
        return cbor.encode({1: 1, 2: [-16, bytes(32)], 3: 9000, 4: doc})

    for changes, message in [({"_1": 4000}, "unit: expected a power of two"),
                             ({"_1": 256}, "unit: expected a power of two"),
                             ({"_2": 2}, "order: expected 0"),
                             ({"_3": 2}, "codec: expected 0"),
                             ({"_5": 0}, "patch-size: expected a positive"),
                             ({"_6": 1}, "unknown member 6")]:
        with pytest.raises(DecodeError, match=re.escape(message)):
            packing.DeltaInfo.decode(with_member(**changes))
