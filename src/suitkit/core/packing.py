"""Compressed and delta payloads: suitkit's two extension parameters and their stream formats.

The current SUIT drafts define no compression and no differential payloads (older manifest
drafts had suit-parameter-compression-info and suit-parameter-unpack-info; both were removed;
RFC 9124 REQ.SEC.AUTH.PRECURSOR only asks that a differential update authenticate its
precursor). suitkit describes both with custom parameters in the private-use range (manifest
§8.4.8.16: a custom parameter's value is an int, bool, tstr or bstr; these are bstr-wrapped
CBOR maps), set with override-parameters next to the uri before a fetch (the old drafts' place):

- ``suitkit-compression-info`` (``COMPRESSION_INFO``, -1024): ``bstr .cbor {1: algorithm}``,
  the algorithm one of ``Codec`` (zlib 1 and zstd 3 keep the numbers of the old drafts; xz 4
  and bzip2 5 are suitkit's). The fetched bytes are one compressed stream of the image.
- ``suitkit-delta-info`` (``DELTA_INFO``, -1025): ``bstr .cbor {1: format, 2: SUIT_Digest of
  the precursor, 3: precursor size}``, format 1 being ``SKD1`` below. The fetched bytes (after
  decompression, when compression-info is set too) are a patch that rebuilds the image from the
  component's current content, the precursor.

image-digest and image-size always describe the image that is written (decompressed, patched):
the digest is checked over what is written, and image-size caps the output of every decoder, so
a decompression bomb or a patch that claims more stops at image-size bytes. Decoders yield at
most ``PIECE`` bytes at a time and hold a bounded window (``DECODER_MEMORY``), so a device's RAM
does not grow with the image. docs/delta.md specifies both formats for third-party devices.

SKD1, a streaming form of bsdiff's copy-with-difference and insert operations::

    patch  = "SKD1" uvarint(source-size) uvarint(target-size) *record
    record = uvarint(diff-len) uvarint(extra-len) svarint(seek) diff-bytes extra-bytes

Starting with the source position at 0, each record outputs ``diff-len`` bytes, each the sum
modulo 256 of the source byte at the position and the diff byte (the position advances by
``diff-len``), then ``extra-len`` bytes as they are, then moves the source position by
``seek``. Every source byte read must lie inside the source; the patch ends exactly when
target-size bytes are out. uvarint is LEB128 (at most 9 bytes), svarint its zigzag form.
Applying reads the patch once, front to back, and the source at random: a device keeps only a
piece of each in RAM.

In-place deltas (docs/delta.md §9): delta-info's optional member 4 says that the patch may be
applied over its own precursor, one flash sector at a time, in a given order, so that no write
destroys source bytes still to be read; it also carries the digest and size of the patch as
it travels (so the device can stage it and authenticate it again before the first destructive
write) and the patch's codec (compression-info is not set with it: the staged bytes are the
compressed ones). ``make_inplace_delta`` makes such a patch; ``apply_delta(inplace=...)``
refuses one that breaks the rule; ``apply_delta_window`` rebuilds one sector of the output.

Not here: where the precursor comes from (the processor hands a reader over the component's
content), the sector-by-sector rewrite and its journal (``bootloader.inplace``).
"""

from __future__ import annotations

import bz2
import hmac
import lzma
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, runtime_checkable

import zstandard

from suitkit.core import cbor, crypto
from suitkit.core.model import Digest
from suitkit.core.processor import (
    CustomParameter,
    RandomAccessComponent,
    UnpackCall,
    Unpacker,
)
from suitkit.errors import AuthenticationError, DecodeError, PolicyError

__all__ = [
    "COMPRESSION_INFO",
    "DECODER_MEMORY",
    "DELTA_INFO",
    "PIECE",
    "Codec",
    "CompressionInfo",
    "DeltaFormat",
    "DeltaInfo",
    "InplaceComponent",
    "InplaceInfo",
    "Order",
    "add_bytes",
    "apply_delta",
    "apply_delta_window",
    "codec_named",
    "compress",
    "compress_best",
    "decompress",
    "make_delta",
    "make_inplace_delta",
    "packed_bound",
    "packing_parameters",
]

COMPRESSION_INFO = -1024
"""suitkit-compression-info: ``bstr .cbor {1: Codec}``."""
DELTA_INFO = -1025
"""suitkit-delta-info: ``bstr .cbor {1: DeltaFormat, 2: SUIT_Digest, 3: uint}``."""

PIECE = 64 * 1024
"""The most bytes a decoder yields at once."""
DECODER_MEMORY = 16 << 20
"""The most memory a decoder's window may need (zstd window, xz dictionary): streams that
need more are refused, not decoded."""

_MAGIC = b"SKD1"


class Codec(IntEnum):
    """Compression algorithms of suitkit-compression-info."""

    ZLIB = 1
    """RFC 1950 zlib stream (deflate, 32 KiB window): every device can afford it."""
    ZSTD = 3
    """RFC 8878 Zstandard frames: the fast one (decodes at memory speed)."""
    XZ = 4
    """The .xz container with LZMA2: the strong one (suitkit's number)."""
    BZIP2 = 5
    """bzip2 (900 KiB blocks, about 3.7 MB to decode): bsdiff's choice, the best on the
    mostly-zero difference bytes of a patch (suitkit's number; the old drafts listed it)."""


_NAMES = {"zlib": Codec.ZLIB, "zstd": Codec.ZSTD, "xz": Codec.XZ, "bzip2": Codec.BZIP2}
_LEVELS = {Codec.ZLIB: 9, Codec.ZSTD: 19, Codec.XZ: 6, Codec.BZIP2: 9}


class DeltaFormat(IntEnum):
    """Patch formats of suitkit-delta-info."""

    SKD1 = 1


def codec_named(name: str, *, path: str = "compress") -> Codec:
    """The codec called ``name`` (zlib, zstd, xz, bzip2).

    Raises:
        DecodeError: an unknown name, listing the known ones.
    """
    try:
        return _NAMES[name.lower()]
    except (KeyError, AttributeError):
        raise DecodeError(path, f"unknown compression {name!r}; expected one of "
                          f"{', '.join(_NAMES)}") from None


@dataclass(frozen=True, slots=True)
class CompressionInfo:
    """The value of suitkit-compression-info."""

    algorithm: int

    def encode(self) -> bytes:
        return cbor.encode({1: self.algorithm})

    @classmethod
    def decode(cls, value: object, *, path: str = "compression-info") -> CompressionInfo:
        """Parse and check the parameter's value.

        Raises:
            DecodeError: not a bstr-wrapped map with a known algorithm.
        """
        doc = _info_map(value, path, required=(1,), allowed=(1,))
        algorithm = doc[1]
        if isinstance(algorithm, bool) or not isinstance(algorithm, int):
            raise DecodeError(f"{path}.algorithm", f"expected an integer, got {algorithm!r}")
        if algorithm not in Codec.__members__.values():
            raise DecodeError(f"{path}.algorithm", f"unsupported compression algorithm "
                              f"{algorithm}; this device decodes "
                              + ", ".join(f"{c.name.lower()} ({int(c)})" for c in Codec))
        return cls(algorithm)


class Order(IntEnum):
    """The order an in-place patch rewrites the slot's sectors in."""

    ASCENDING = 0
    """Lowest sector first: the output of sector j reads source bytes of sectors >= j only."""
    DESCENDING = 1
    """Highest sector first: the output of sector j reads source bytes of sectors <= j only."""


INPLACE_UNITS = range(9, 17)
"""An in-place patch's sector size is a power of two from 512 bytes to 64 KiB."""


@dataclass(frozen=True, slots=True)
class InplaceInfo:
    """Member 4 of suitkit-delta-info: the patch may be applied in place (docs/delta.md §9)."""

    unit: int
    """The sector size the patch is ordered for (bytes, a power of two)."""
    order: int
    """``Order``: which sector is rewritten first."""
    codec: int
    """The codec of the patch as it travels and is stored (0: none; else a ``Codec``)."""
    patch_digest: Digest
    """The digest of the patch as it travels (after decryption, before decompression)."""
    patch_size: int

    def to_map(self) -> dict[int, object]:
        return {1: self.unit, 2: self.order, 3: self.codec,
                4: [self.patch_digest.algorithm, self.patch_digest.value], 5: self.patch_size}

    @classmethod
    def from_map(cls, doc: object, path: str) -> InplaceInfo:
        if not isinstance(doc, dict):
            raise DecodeError(path, "expected a map")
        for key in doc:
            if key not in (1, 2, 3, 4, 5):
                raise DecodeError(path, f"unknown member {key!r}")
        for key in (1, 2, 3, 4, 5):
            if key not in doc:
                raise DecodeError(path, f"member {key} is missing")
        unit, order, codec_, digest, size = (doc[k] for k in (1, 2, 3, 4, 5))
        if isinstance(unit, bool) or not isinstance(unit, int) or unit <= 0 \
                or unit & (unit - 1) or unit.bit_length() - 1 not in INPLACE_UNITS:
            raise DecodeError(f"{path}.unit", f"expected a power of two from 512 to 65536, "
                              f"got {unit!r}")
        if isinstance(order, bool) or order not in (0, 1):
            raise DecodeError(f"{path}.order", f"expected 0 (ascending) or 1 (descending), "
                              f"got {order!r}")
        if isinstance(codec_, bool) or not isinstance(codec_, int) \
                or (codec_ != 0 and codec_ not in Codec.__members__.values()):
            raise DecodeError(f"{path}.codec", f"expected 0 (none) or a codec "
                              f"({', '.join(f'{int(c)}' for c in Codec)}), got {codec_!r}")
        if (not isinstance(digest, list | tuple) or len(digest) != 2
                or isinstance(digest[0], bool) or not isinstance(digest[0], int)
                or not isinstance(digest[1], bytes) or not 16 <= len(digest[1]) <= 64):
            raise DecodeError(f"{path}.patch-digest", "expected [algorithm-id, digest bytes]")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise DecodeError(f"{path}.patch-size", f"expected a positive integer, got "
                              f"{size!r}")
        return cls(unit, int(order), int(codec_), Digest(digest[0], digest[1]), size)


@dataclass(frozen=True, slots=True)
class DeltaInfo:
    """The value of suitkit-delta-info: the patch format and the precursor it applies to."""

    format: int
    precursor_digest: Digest
    precursor_size: int
    inplace: InplaceInfo | None = None
    """Member 4: the patch may be applied in place, and how (docs/delta.md §9)."""

    def encode(self) -> bytes:
        doc: dict[int, object] = {1: self.format, 2: [self.precursor_digest.algorithm,
                                                      self.precursor_digest.value],
                                  3: self.precursor_size}
        if self.inplace is not None:
            doc[4] = self.inplace.to_map()
        return cbor.encode(doc)

    @classmethod
    def decode(cls, value: object, *, path: str = "delta-info") -> DeltaInfo:
        """Parse and check the parameter's value.

        Raises:
            DecodeError: not a bstr-wrapped map of a known format, a digest and a size.
        """
        doc = _info_map(value, path, required=(1, 2, 3), allowed=(1, 2, 3, 4))
        fmt, digest, size = doc[1], doc[2], doc[3]
        if isinstance(fmt, bool) or not isinstance(fmt, int) \
                or fmt not in DeltaFormat.__members__.values():
            raise DecodeError(f"{path}.format", f"unsupported patch format {fmt!r}; this "
                              "device applies 1 (SKD1)")
        if (not isinstance(digest, list | tuple) or len(digest) != 2
                or isinstance(digest[0], bool) or not isinstance(digest[0], int)
                or not isinstance(digest[1], bytes) or not 16 <= len(digest[1]) <= 64):
            raise DecodeError(f"{path}.precursor-digest", "expected [algorithm-id, digest "
                              "bytes]")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise DecodeError(f"{path}.precursor-size", f"expected an unsigned integer, got "
                              f"{size!r}")
        inplace = InplaceInfo.from_map(doc[4], f"{path}.in-place") if 4 in doc else None
        return cls(int(fmt), Digest(digest[0], digest[1]), size, inplace)


def _info_map(value: object, path: str, *, required: tuple[int, ...],
              allowed: tuple[int, ...]) -> dict[int, object]:
    if not isinstance(value, bytes):
        raise DecodeError(path, f"expected a byte string wrapping a CBOR map, got "
                          f"{type(value).__name__}")
    if len(value) > 256:
        raise DecodeError(path, f"{len(value)} bytes; at most 256 expected")
    doc = cbor.decode(value, path=path, max_depth=4)
    if not isinstance(doc, dict):
        raise DecodeError(path, "expected a map")
    for key in doc:
        if key not in allowed:
            raise DecodeError(path, f"unknown member {key!r}")
    for key in required:
        if key not in doc:
            raise DecodeError(path, f"member {key} is missing")
    return dict(doc)


def packed_bound(size: int) -> int:
    """The most bytes a compressed stream or a patch of an image of ``size`` bytes may take
    (incompressible data grows a little in every codec; a patch has a few bytes per record)."""
    return size + size // 64 + 4096


# ---------------------------------------------------------------------------- compression


def compress_best(data: bytes, codecs: Iterable[int] = tuple(Codec)) -> tuple[Codec, bytes]:
    """The smallest of ``data`` compressed with each of ``codecs`` (``compress: best``)."""
    results = [(len(packed), Codec(c), packed) for c in codecs
               for packed in (compress(data, c),)]
    if not results:
        raise DecodeError("compress", "no codec to choose from")
    _size, codec, packed = min(results, key=lambda r: (r[0], r[1]))
    return codec, packed


def compress(data: bytes, algorithm: int, *, level: int | None = None) -> bytes:
    """The author's side: ``data`` as one stream of ``algorithm`` (default levels: zlib 9,
    zstd 19, xz preset 6, bzip2 9; each decodes within ``DECODER_MEMORY``)."""
    codec = Codec(algorithm)
    chosen = _LEVELS[codec] if level is None else level
    if codec is Codec.ZLIB:
        return zlib.compress(data, chosen)
    if codec is Codec.BZIP2:
        return bz2.compress(data, chosen)
    if codec is Codec.ZSTD:
        params = zstandard.ZstdCompressionParameters.from_level(
            chosen, source_size=len(data), window_log=min(23, 10 + max(1, len(data)).bit_length()))
        return zstandard.ZstdCompressor(compression_params=params).compress(data)
    return lzma.compress(data, format=lzma.FORMAT_XZ, preset=chosen)


class _Source:
    """Chunks as a pull-based byte source (for decoders that read)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""
        self.consumed = 0

    def take(self, most: int) -> bytes:
        """Up to ``most`` bytes (fewer at a chunk boundary); ``b""`` at the end."""
        if not self._buffer:
            for chunk in self._chunks:
                if chunk:
                    self._buffer = bytes(chunk)
                    break
        data, self._buffer = self._buffer[:most], self._buffer[most:]
        self.consumed += len(data)
        return data

    def exact(self, n: int, what: str) -> bytes:
        parts: list[bytes] = []
        need = n
        while need:
            data = self.take(need)
            if not data:
                raise DecodeError("patch", f"ends inside {what} (wanted {n} more bytes)")
            parts.append(data)
            need -= len(data)
        return b"".join(parts)

    def byte(self, what: str) -> int:
        return self.exact(1, what)[0]


class _Readable:
    """A file-like ``readinto`` over a ``_Source`` (zstandard's stream_reader reads one)."""

    def __init__(self, source: _Source) -> None:
        self._source = source

    def read(self, size: int = -1) -> bytes:
        return self._source.take(size if size > 0 else PIECE)


def decompress(chunks: Iterable[bytes], algorithm: int, *, max_output: int,
               what: str = "payload") -> Iterator[bytes]:
    """Decode a compressed stream while it arrives: pieces of at most ``PIECE`` bytes, never
    more than ``max_output`` bytes in total (a bomb is refused at that point), within
    ``DECODER_MEMORY`` of window.

    Raises:
        DecodeError: a corrupt or truncated stream, bytes after its end, too much output, or a
            window over the memory bound.
    """
    codec = Codec(algorithm)
    out = 0

    def bounded(piece: bytes) -> bytes:
        nonlocal out
        out += len(piece)
        if out > max_output:
            raise DecodeError(what, f"decompresses to more than the {max_output} bytes "
                              "image-size allows; refused (a decompression bomb?)")
        return piece

    try:
        if codec is Codec.ZSTD:
            source = _Source(chunks)
            reader = zstandard.ZstdDecompressor(max_window_size=DECODER_MEMORY).stream_reader(
                _Readable(source),  # type: ignore[arg-type]  # it only calls read()
                read_size=PIECE, read_across_frames=True)
            while piece := reader.read(PIECE):
                yield bounded(piece)
            return
        decoder: zlib._Decompress | lzma.LZMADecompressor | bz2.BZ2Decompressor = (
            zlib.decompressobj() if codec is Codec.ZLIB
            else bz2.BZ2Decompressor() if codec is Codec.BZIP2
            else lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=DECODER_MEMORY))
        ended = False
        for chunk in chunks:
            if ended and chunk:
                raise DecodeError(what, f"bytes after the end of the {codec.name.lower()} "
                                  "stream")
            pending = bytes(chunk)
            while pending and not ended:
                piece, pending, ended = _step(decoder, pending)
                if piece:
                    yield bounded(piece)
            if ended and pending:
                raise DecodeError(what, f"bytes after the end of the {codec.name.lower()} "
                                  "stream")
        while not ended:  # output still held back by the decoder
            piece, rest, ended = _step(decoder, b"")
            if ended and rest:
                raise DecodeError(what, f"bytes after the end of the {codec.name.lower()} "
                                  "stream")
            if not piece:
                break
            yield bounded(piece)
        if not ended:
            raise DecodeError(what, f"the {codec.name.lower()} stream ends before its end "
                              "marker (truncated)")
    except (zlib.error, lzma.LZMAError, zstandard.ZstdError, OSError, EOFError) as e:
        raise DecodeError(what, f"corrupt {codec.name.lower()} stream: {e}") from e


def _step(decoder: zlib._Decompress | lzma.LZMADecompressor | bz2.BZ2Decompressor,
          data: bytes) -> tuple[bytes, bytes, bool]:
    """One bounded decode step: (output, input left over, stream ended)."""
    if isinstance(decoder, lzma.LZMADecompressor | bz2.BZ2Decompressor):
        if data or not decoder.needs_input:
            piece = decoder.decompress(data, max_length=PIECE)
        else:
            piece = b""
        rest = decoder.unused_data if decoder.eof else b""
        # LZMA- and BZ2Decompressor keep unconsumed input themselves: nothing is left over.
        return piece, rest, decoder.eof
    piece = decoder.decompress(data, PIECE)
    rest = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
    return piece, rest, decoder.eof


# ---------------------------------------------------------------------------- SKD1 deltas


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _svarint(value: int) -> bytes:
    return _uvarint(value * 2 if value >= 0 else -value * 2 - 1)


def _read_uvarint(source: _Source, what: str) -> int:
    value = shift = 0
    for _ in range(9):
        byte = source.byte(what)
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        shift += 7
    raise DecodeError("patch", f"{what}: a varint longer than 9 bytes")


def _read_svarint(source: _Source, what: str) -> int:
    raw = _read_uvarint(source, what)
    return raw >> 1 if not raw & 1 else -((raw + 1) >> 1)


_LOW: dict[int, tuple[int, int]] = {}


def _masks(n: int) -> tuple[int, int]:
    found = _LOW.get(n)
    if found is None:
        found = (int.from_bytes(b"\x7f" * n, "little"), int.from_bytes(b"\x80" * n, "little"))
        if len(_LOW) < 8:
            _LOW[n] = found
    return found


def add_bytes(a: bytes, b: bytes) -> bytes:
    """Bytewise ``(a[i] + b[i]) mod 256`` (SWAR on Python integers: no per-byte loop)."""
    n = len(a)
    low, high = _masks(n)
    x, y = int.from_bytes(a, "little"), int.from_bytes(b, "little")
    return (((x & low) + (y & low)) ^ ((x ^ y) & high)).to_bytes(n, "little")


def make_delta(old: bytes, new: bytes) -> bytes:
    """An SKD1 patch that rebuilds ``new`` from ``old`` (uncompressed; compress it with
    ``compress`` for transport). The matching is bsdiff's (bsdiff4's suffix sort, in C)."""
    import bsdiff4.core  # type: ignore[import-untyped]  # noqa: PLC0415 - author side only

    control, diff, extra = bsdiff4.core.diff(old, new)
    parts = [_MAGIC, _uvarint(len(old)), _uvarint(len(new))]
    pos = dpos = epos = 0
    for i in range(0, len(control), 24):
        x = bsdiff4.core.decode_int64(control[i:i + 8])
        y = bsdiff4.core.decode_int64(control[i + 8:i + 16])
        z = bsdiff4.core.decode_int64(control[i + 16:i + 24])
        d, e = diff[dpos:dpos + x], extra[epos:epos + y]
        dpos += x
        epos += y
        if x and (pos < 0 or pos + x > len(old)):
            # bspatch reads outside the source as zeros; SKD1 forbids it: the bytes go literal
            parts += [_uvarint(0), _uvarint(x + y), _svarint(x + z), d, e]
        else:
            parts += [_uvarint(x), _uvarint(y), _svarint(z), d, e]
        pos += x + z
    return b"".join(parts)


def apply_delta(patch: Iterable[bytes], read_source: Callable[[int, int], bytes], *,
                source_size: int, max_output: int, what: str = "patch",
                inplace: tuple[int, int] | None = None) -> Iterator[bytes]:
    """Rebuild the target from an SKD1 ``patch`` (streamed) and the source (read at random
    with ``read_source(offset, length)``): pieces of at most ``PIECE`` bytes.

    ``inplace``: ``(unit, order)`` of an in-place patch: every diff run must read only source
    bytes that the in-place rewrite (``Order``, sectors of ``unit`` bytes) has not overwritten
    by the time it writes that output byte (docs/delta.md §9).

    Raises:
        DecodeError: a malformed or truncated patch, a patch for another source size, a source
            read outside the source, more output than ``max_output``, bytes after the end, or
            (``inplace``) a read of a source byte already overwritten.
    """
    source = _Source(patch)
    target = _patch_header(source, source_size, what)
    if target > max_output:
        raise DecodeError(what, f"rebuilds {target} bytes, more than the {max_output} bytes "
                          "image-size allows; refused")
    position = produced = 0
    while produced < target:
        diff_len, extra_len, seek = _patch_record(source, produced, position, target=target,
                                                  source_size=source_size, what=what)
        if inplace is not None and diff_len:
            _check_inplace(produced, position, diff_len, inplace, what)
        left = diff_len
        while left:
            n = min(left, PIECE)
            delta = source.exact(n, "diff bytes")
            old = read_source(position, n)
            if len(old) != n:
                raise DecodeError(what, f"the precursor gave {len(old)} bytes at {position}, "
                                  f"{n} were asked")
            yield add_bytes(old, delta)
            position += n
            left -= n
        left = extra_len
        while left:
            n = min(left, PIECE)
            yield source.exact(n, "extra bytes")
            left -= n
        produced += diff_len + extra_len
        position += seek
    if source.take(1):
        raise DecodeError(what, f"bytes after the last record (the patch ended at "
                          f"{source.consumed - 1} bytes)")


def _patch_header(source: _Source, source_size: int, what: str) -> int:
    """Check an SKD1 patch's magic number and source size; its target size."""
    if source.exact(4, "the magic number") != _MAGIC:
        raise DecodeError(what, "not an SKD1 patch (the first bytes are not 'SKD1')")
    declared_source = _read_uvarint(source, "source-size")
    target = _read_uvarint(source, "target-size")
    if declared_source != source_size:
        raise DecodeError(what, f"made for a source of {declared_source} bytes; the "
                          f"precursor has {source_size}")
    return target


def _patch_record(source: _Source, produced: int, position: int, *, target: int,
                  source_size: int, what: str) -> tuple[int, int, int]:
    """The next record's ``(diff-len, extra-len, seek)``, checked against the target size and
    the source's bounds."""
    diff_len = _read_uvarint(source, "diff-len")
    extra_len = _read_uvarint(source, "extra-len")
    seek = _read_svarint(source, "seek")
    if produced + diff_len + extra_len > target:
        raise DecodeError(what, f"a record at output byte {produced} writes past the "
                          f"target-size {target}")
    if diff_len and (position < 0 or position + diff_len > source_size):
        raise DecodeError(what, f"a record reads source bytes {position} to "
                          f"{position + diff_len}, outside the {source_size}-byte source")
    return diff_len, extra_len, seek


def _inplace_ok(out: int, src: int, n: int, unit: int, order: int) -> bool:
    """Whether output bytes ``out..out+n`` may read source bytes ``src..src+n`` in place: each
    source byte lies in a sector the rewrite has not reached before the output byte's own."""
    shift = src - out
    first, last = out // unit, (out + n - 1) // unit
    if order == Order.ASCENDING:
        # the sector of src+i must be >= the sector of out+i
        return shift >= 0 or (first == last and out % unit >= -shift)
    return shift <= 0 or (first == last and (out + n - 1) % unit < unit - shift)


def _check_inplace(out: int, src: int, n: int, inplace: tuple[int, int], what: str) -> None:
    unit, order = inplace
    if not _inplace_ok(out, src, n, unit, order):
        direction = "ascending" if order == Order.ASCENDING else "descending"
        raise DecodeError(what, f"not an in-place patch: output bytes {out} to {out + n} read "
                          f"source bytes {src} to {src + n}, which a {direction} rewrite of "
                          f"{unit}-byte sectors has overwritten by then")


def apply_delta_window(patch: Iterable[bytes], read_source: Callable[[int, int], bytes], *,
                       source_size: int, start: int, end: int, what: str = "patch") -> bytes:
    """Output bytes ``start..end`` of an SKD1 patch (fewer at the target's end), reading only
    the source bytes those need: the bootloader rebuilds one sector of an in-place patch at a
    time, while the sectors it rewrote already hold the new image (docs/delta.md §9).

    Raises:
        DecodeError: as :func:`apply_delta` (the patch is checked up to ``end`` only).
    """
    source = _Source(patch)
    target = _patch_header(source, source_size, what)
    end = min(end, target)
    out = bytearray()
    position = produced = 0
    while produced < end:
        diff_len, extra_len, seek = _patch_record(source, produced, position, target=target,
                                                  source_size=source_size, what=what)
        for kind, length in (("diff", diff_len), ("extra", extra_len)):
            at = produced
            left = length
            while left:
                n = min(left, PIECE)
                data = source.exact(n, f"{kind} bytes")
                lo, hi = max(at, start), min(at + n, end)
                if lo < hi:
                    piece = data[lo - at:hi - at]
                    if kind == "diff":
                        src = position + (lo - produced)
                        old = read_source(src, hi - lo)
                        if len(old) != hi - lo:
                            raise DecodeError(what, f"the precursor gave {len(old)} bytes at "
                                              f"{src}, {hi - lo} were asked")
                        piece = add_bytes(old, piece)
                    out += piece
                at += n
                left -= n
            if kind == "diff":
                position += diff_len
                produced += diff_len
        produced += extra_len
        position += seek
    return bytes(out)


_NEGATE = bytes((-b) & 0xFF for b in range(256))


def make_inplace_delta(old: bytes, new: bytes, unit: int) -> tuple[bytes, Order, int]:
    """An SKD1 patch that rebuilds ``new`` from ``old`` **in place**, one ``unit``-byte sector
    at a time (docs/delta.md §9), with the order that needs fewer literal bytes; returns the
    patch, the order and how many bytes had to go literal (bsdiff's copies that would read a
    source byte the rewrite has overwritten by then)."""
    import bsdiff4.core  # noqa: PLC0415 - author side only

    if unit <= 0 or unit & (unit - 1) or unit.bit_length() - 1 not in INPLACE_UNITS:
        raise DecodeError("in-place", f"the sector size must be a power of two from 512 to "
                          f"65536, got {unit}")
    control, _diff, _extra = bsdiff4.core.diff(old, new)
    segments: list[tuple[int, int, int | None]] = []  # (output, length, source or literal)
    out = pos = 0
    for i in range(0, len(control), 24):
        x = bsdiff4.core.decode_int64(control[i:i + 8])
        y = bsdiff4.core.decode_int64(control[i + 8:i + 16])
        z = bsdiff4.core.decode_int64(control[i + 16:i + 24])
        if x:
            inside = pos >= 0 and pos + x <= len(old)
            segments.append((out, x, pos if inside else None))
        if y:
            segments.append((out + x, y, None))
        out += x + y
        pos += x + z
    best: tuple[int, Order, list[tuple[int, int, int | None]]] | None = None
    for order in Order:
        kept = _inplace_segments(segments, unit, order)
        literal = sum(n for _o, n, src in kept if src is None)
        if best is None or literal < best[0]:
            best = (literal, order, kept)
    assert best is not None
    literal, order, kept = best
    return _encode_segments(kept, old, new), order, literal


def _inplace_segments(segments: list[tuple[int, int, int | None]], unit: int,
                      order: Order) -> list[tuple[int, int, int | None]]:
    """Cut copies at sector boundaries; what would read an overwritten byte goes literal."""
    pieces: list[tuple[int, int, int | None]] = []
    for out, n, src in segments:
        if src is None:
            pieces.append((out, n, None))
            continue
        at = out
        while at < out + n:
            sector = at // unit
            stop = min(out + n, (sector + 1) * unit)
            s0, s1 = src + (at - out), src + (stop - out)
            if order == Order.ASCENDING:
                floor = sector * unit  # sources below this sector are rewritten already
                bad = max(0, min(s1, floor) - s0)
                if bad:
                    pieces.append((at, bad, None))
                if stop - at - bad:
                    pieces.append((at + bad, stop - at - bad, s0 + bad))
            else:
                ceiling = (sector + 1) * unit  # sources above this sector are rewritten
                good = max(0, min(s1, ceiling) - s0)
                if good:
                    pieces.append((at, good, s0))
                if stop - at - good:
                    pieces.append((at + good, stop - at - good, None))
            at = stop
    merged: list[tuple[int, int, int | None]] = []
    for out, n, src in pieces:
        if merged:
            p_out, p_n, p_src = merged[-1]
            if (src is None and p_src is None) or (
                    src is not None and p_src is not None and p_src + p_n == src):
                merged[-1] = (p_out, p_n + n, p_src)
                continue
        merged.append((out, n, src))
    return merged


def _encode_segments(segments: list[tuple[int, int, int | None]], old: bytes,
                     new: bytes) -> bytes:
    """SKD1 records for a list of copies (with a source offset) and literals, in output order."""
    records: list[tuple[int, int, bytes]] = []  # (source, diff length, extra bytes) ...
    diffs: list[bytes] = []
    for out, n, src in segments:
        if src is None:
            if not records:
                records.append((0, 0, b""))
                diffs.append(b"")
            s_, d_, e_ = records[-1]
            records[-1] = (s_, d_, e_ + new[out:out + n])
        else:
            records.append((src, n, b""))
            diffs.append(add_bytes(new[out:out + n], old[src:src + n].translate(_NEGATE)))
    parts = [_MAGIC, _uvarint(len(old)), _uvarint(len(new))]
    position = 0
    if records and records[0][0] != 0:
        parts += [_uvarint(0), _uvarint(0), _svarint(records[0][0])]
        position = records[0][0]
    for k, ((src, n, extra), diff) in enumerate(zip(records, diffs, strict=True)):
        after = src + n
        following = records[k + 1][0] if k + 1 < len(records) else after
        parts += [_uvarint(n), _uvarint(len(extra)), _svarint(following - after), diff, extra]
        position = following
    del position
    return b"".join(parts)


# ---------------------------------------------------------------------------- the device side


def packing_parameters(codecs: Iterable[int] = tuple(Codec), *,
                       delta: bool = True) -> dict[int, CustomParameter]:
    """The two parameters as ``processor.Extensions`` entries, for a device that decodes
    ``codecs`` (and applies SKD1 deltas when ``delta``): what a manifest asks beyond them is
    refused before anything happens (manifest §6.1), the unknown codec named.

    Merge them into the device's ``Extensions(parameters={...})``.
    """
    supported = frozenset(Codec(c) for c in codecs)
    names = ", ".join(f"{c.name.lower()} ({int(c)})" for c in sorted(supported)) or "none"

    def check_compression(value: object) -> None:
        info = CompressionInfo.decode(value)
        if info.algorithm not in supported:
            raise ValueError(f"compression algorithm {Codec(info.algorithm).name.lower()} "
                             f"({info.algorithm}) is not supported by this device; it decodes "
                             f"{names}")

    def unpack_compression(call: UnpackCall) -> Unpacker:
        info = CompressionInfo.decode(call.value)
        bound = call.max_output

        def run(chunks: Iterable[bytes]) -> Iterator[bytes]:
            return decompress(chunks, info.algorithm, max_output=bound,
                              what=f"{Codec(info.algorithm).name.lower()} payload")

        return Unpacker(packed_bound(bound), run)

    params: dict[int, CustomParameter] = {}
    if supported:
        params[COMPRESSION_INFO] = CustomParameter(
            name="suitkit-compression-info", check=check_compression,
            unpack=unpack_compression, stage=0)
    if delta:
        params[DELTA_INFO] = CustomParameter(
            name="suitkit-delta-info", check=_check_delta, unpack=_unpack_delta, stage=1)
    return params


def _check_delta(value: object) -> None:
    DeltaInfo.decode(value)


def _unpack_delta(call: UnpackCall) -> Unpacker:
    """RFC 9124 REQ.SEC.AUTH.PRECURSOR: the component's content is the precursor the signed
    delta-info names (size and digest) before anything is written, or the delta is refused."""
    info = DeltaInfo.decode(call.value)
    component = call.component
    if not isinstance(component, RandomAccessComponent):
        raise PolicyError("this component's content cannot be read at random, so it cannot be "
                          "the precursor of a delta; send the full image")
    size = component.size()
    if size is None:
        raise AuthenticationError("the component holds no image, so no precursor for this "
                                  "delta (REQ.SEC.AUTH.PRECURSOR); send the full image")
    if size != info.precursor_size:
        raise AuthenticationError(f"the precursor is {size} bytes, the delta was made for "
                                  f"{info.precursor_size} bytes (REQ.SEC.AUTH.PRECURSOR)")
    actual = component.digest(info.precursor_digest.algorithm)
    if actual is None or not hmac.compare_digest(actual, info.precursor_digest.value):
        raise AuthenticationError(
            f"the precursor's digest {(actual or b'').hex()[:16]}... is not the "
            f"{info.precursor_digest.value.hex()[:16]}... the delta was made for "
            "(REQ.SEC.AUTH.PRECURSOR)")
    bound = call.max_output
    stager = component if isinstance(component, InplaceComponent) else None
    if stager is not None and not stager.expect_patch(
            call.value if isinstance(call.value, bytes) else b"", info):
        stager = None
    inplace = info.inplace
    if inplace is None:
        def run(chunks: Iterable[bytes]) -> Iterator[bytes]:
            return apply_delta(chunks, component.read_at, source_size=size, max_output=bound,
                               what="delta")

        return Unpacker(packed_bound(bound), run)
    if inplace.patch_size > packed_bound(bound):
        raise DecodeError("delta-info.in-place.patch-size", f"{inplace.patch_size} bytes is "
                          f"more than a patch of a {bound}-byte image may take")
    unit_order = (inplace.unit, inplace.order)

    def run_inplace(chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The patch as it travels: staged (an in-place device), checked against its signed
        digest and size, decoded and applied (a dry run on an in-place device: the processor
        checks the output against image-digest, nothing of the slot is written)."""
        hasher = crypto.new_hasher(inplace.patch_digest.algorithm)
        received = 0

        def raw() -> Iterator[bytes]:
            nonlocal received
            for chunk in chunks:
                received += len(chunk)
                if received > inplace.patch_size:
                    raise AuthenticationError(f"the patch is longer than the "
                                              f"{inplace.patch_size} bytes its delta-info "
                                              "signs; refused")
                hasher.update(chunk)
                if stager is not None:
                    stager.write_patch(chunk)
                yield chunk
            if received != inplace.patch_size:
                raise AuthenticationError(f"the patch is {received} bytes, its delta-info "
                                          f"signs {inplace.patch_size}")
            if not hmac.compare_digest(hasher.digest(), inplace.patch_digest.value):
                raise AuthenticationError("the patch's digest is not the one its delta-info "
                                          "signs; refused")

        source = raw()
        stream: Iterable[bytes] = source
        if inplace.codec:
            stream = decompress(source, inplace.codec, max_output=packed_bound(bound),
                                what=f"{Codec(inplace.codec).name.lower()} patch")
        yield from apply_delta(stream, component.read_at, source_size=size, max_output=bound,
                               what="delta", inplace=unit_order)
        for _ in source:  # the rest of the patch (none, for a good one) is checked too
            pass

    return Unpacker(inplace.patch_size, run_inplace)


@runtime_checkable
class InplaceComponent(Protocol):
    """A component that stages an in-place patch itself (a single-slot device: the patch is
    kept whole, then applied in place by the bootloader; docs/delta.md §9)."""

    def expect_patch(self, value: bytes, info: DeltaInfo) -> bool:
        """Told before anything is written that the fetch carries a delta (``value``: the
        delta-info as signed). True: this component stages the patch (``write_patch``), and
        refuses a delta that is not made for in-place application (raise ``PolicyError``)."""
        ...

    def write_patch(self, data: bytes) -> None:
        """The next bytes of the patch as it travels."""
        ...
