"""Strict CBOR decoding and deterministic encoding (RFC 8949 §4.2.1) on top of cbor2.

Every byte suitkit reads passes through ``decode``: duplicate map keys, indefinite lengths and
trailing bytes are refused, nesting is bounded, and no tag is given a meaning behind our back
(cbor2 would turn tag 1 into a datetime or tag 2 into an int; here every tag stays a ``CBORTag``).
``encode`` sorts map keys by their encoded bytes, which cbor2's ``canonical=True`` does not do
(it sorts length-first, the RFC 7049 rule).

``map_spans`` walks only the heads of a top-level map and returns the exact byte slice of each
value, so digests can be computed over the bytes received rather than over a re-encoding.

Not here: any SUIT meaning. This module knows CBOR only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cbor2
from cbor2 import CBORTag

from suitkit.errors import DecodeError

__all__ = ["CBORTag", "bstr_header", "decode", "encode", "map_spans", "wrap"]

# Tags cbor2 decodes to Python objects by itself; we keep them as CBORTag.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260,
                 261, 1004, 55799)


def _keep_tag(tag: int) -> Any:
    def keep(value: object, _immutable: bool) -> CBORTag:
        return CBORTag(tag, value)

    return keep


_RAW_TAGS = {tag: _keep_tag(tag) for tag in _BUILTIN_TAGS}


def decode(data: bytes, *, path: str, max_depth: int = 16) -> Any:
    """Decode exactly one CBOR item from ``data``.

    Raises:
        DecodeError: malformed CBOR, duplicate keys, indefinite lengths, too deep, trailing bytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(path, f"expected CBOR bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise DecodeError(path, "expected a CBOR item, got 0 bytes")
    # cbor2.loads ignores trailing data, so we measure the first item's extent ourselves.
    try:
        end = _skip(data, 0, 0, max_depth)
    except DecodeError as e:
        raise DecodeError(path, e.reason) from None
    if end != len(data):
        raise DecodeError(path, f"{len(data) - end} trailing bytes after the CBOR item")
    try:
        return cbor2.loads(
            data,
            allow_duplicate_keys=False,
            allow_indefinite=False,
            max_depth=max_depth + 1,
            semantic_decoders=_RAW_TAGS,
        )
    except cbor2.CBORDecodeError as e:
        raise DecodeError(path, f"invalid CBOR: {_cbor2_reason(e)}") from e
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise DecodeError(path, f"invalid CBOR: {e}") from e


def _cbor2_reason(e: BaseException) -> str:
    text = str(e)
    if e.__cause__ is not None:
        text = f"{text} ({e.__cause__})"
    return text


def _head(data: bytes, pos: int) -> tuple[int, int, int, int]:
    """Parse a CBOR head at ``pos``: (major type, additional info, argument, next position)."""
    if pos >= len(data):
        raise DecodeError("", f"truncated CBOR at byte {pos}")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        return major, info, info, pos
    if info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise DecodeError("", f"truncated CBOR head at byte {pos - 1}")
        return major, info, int.from_bytes(data[pos:pos + size], "big"), pos + size
    if info == 31:
        raise DecodeError("", f"indefinite-length item at byte {pos - 1} is not allowed")
    raise DecodeError("", f"reserved additional information {info} at byte {pos - 1}")


def _skip(data: bytes, pos: int, depth: int, max_depth: int) -> int:
    """Return the position just after the CBOR item starting at ``pos``."""
    if depth > max_depth:
        raise DecodeError("", f"nesting deeper than {max_depth} at byte {pos}")
    major, _info, arg, pos = _head(data, pos)
    if major in (2, 3):
        end = pos + arg
        if end > len(data):
            raise DecodeError("", f"string of {arg} bytes runs past the end at byte {pos}")
        return end
    if major == 4:
        if arg > len(data) - pos:
            raise DecodeError("", f"array of {arg} items cannot fit in the data")
        for _ in range(arg):
            pos = _skip(data, pos, depth + 1, max_depth)
        return pos
    if major == 5:
        if arg > (len(data) - pos) // 2:
            raise DecodeError("", f"map of {arg} entries cannot fit in the data")
        for _ in range(2 * arg):
            pos = _skip(data, pos, depth + 1, max_depth)
        return pos
    if major == 6:
        return _skip(data, pos, depth + 1, max_depth)
    return pos  # 0, 1 ints; 7 simple/float (head already consumed the argument)


def map_spans(data: bytes, *, path: str, tag: int | None = None,
              max_entries: int = 64) -> tuple[bool, dict[object, tuple[int, int]]]:
    """Spans of the values of a top-level map, optionally wrapped in ``tag``.

    Returns ``(tagged, {key: (start, end)})`` where ``data[start:end]`` is the exact encoding of
    that key's value. Only integer and text keys are supported; the caller decodes the values.

    Raises:
        DecodeError: not a (tagged) map, malformed heads, unsupported key types.
    """
    try:
        pos = 0
        major, _, arg, nxt = _head(data, pos)
        tagged = False
        if major == 6:
            if tag is None or arg != tag:
                raise DecodeError(path, f"expected tag {tag} or a map, got tag {arg}")
            tagged, pos = True, nxt
            major, _, arg, nxt = _head(data, pos)
        if major != 5:
            raise DecodeError(path, f"expected a map, got {_MAJOR_NAMES[major]}")
        if arg > max_entries:
            raise DecodeError(path, f"map has {arg} entries, limit is {max_entries}")
        pos = nxt
        spans: dict[object, tuple[int, int]] = {}
        for _ in range(arg):
            kmajor, _, karg, kend = _head(data, pos)
            key: object
            if kmajor == 0:
                key = karg
            elif kmajor == 1:
                key = -1 - karg
            elif kmajor == 3:
                if kend + karg > len(data):
                    raise DecodeError(path, "text key runs past the end")
                try:
                    key = data[kend:kend + karg].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DecodeError(path, "text key is not UTF-8") from e
                kend += karg
            else:
                raise DecodeError(path, f"map key of type {_MAJOR_NAMES[kmajor]} is not allowed")
            if key in spans:
                raise DecodeError(path, f"duplicate map key {key!r}")
            vend = _skip(data, kend, 1, 64)
            spans[key] = (kend, vend)
            pos = vend
        if pos != len(data):
            raise DecodeError(path, f"{len(data) - pos} trailing bytes after the map")
        return tagged, spans
    except DecodeError as e:
        if e.path:
            raise
        raise DecodeError(path, e.reason) from None


_MAJOR_NAMES = ("unsigned int", "negative int", "bstr", "tstr", "array", "map", "tag",
                "simple value")


def bstr_header(length: int) -> bytes:
    """The minimal CBOR head of a byte string of ``length`` bytes."""
    return _encode_head(2, length)


def wrap(content: bytes) -> bytes:
    """``content`` as a CBOR byte string (head + content): the "bstr-wrapped" form."""
    return _encode_head(2, len(content)) + content


def _encode_head(major: int, arg: int) -> bytes:
    if arg < 24:
        return bytes([(major << 5) | arg])
    if arg < 0x100:
        return bytes([(major << 5) | 24, arg])
    if arg < 0x10000:
        return bytes([(major << 5) | 25]) + arg.to_bytes(2, "big")
    if arg < 0x100000000:
        return bytes([(major << 5) | 26]) + arg.to_bytes(4, "big")
    return bytes([(major << 5) | 27]) + arg.to_bytes(8, "big")


def encode(obj: object) -> bytes:
    """Deterministic CBOR (RFC 8949 §4.2.1): shortest heads, map keys in bytewise order.

    Accepts ``None``, ``bool``, ``int``, ``bytes``, ``str``, sequences (list/tuple), mappings and
    ``CBORTag``. ``Raw`` values are inserted verbatim.
    """
    return b"".join(_encode_parts(obj))


class Raw(bytes):
    """Already-encoded CBOR inserted verbatim by ``encode`` (e.g. a value kept as received)."""

    __slots__ = ()


def _encode_parts(obj: object) -> list[bytes]:
    # Leaves go straight to cbor2 (Rust, shortest form); containers are assembled here so that
    # maps can be sorted by encoded key.
    if isinstance(obj, Raw):
        return [bytes(obj)]
    if obj is None or isinstance(obj, bool | int | bytes | str):
        return [cbor2.dumps(obj)]
    if isinstance(obj, CBORTag):
        return [_encode_head(6, obj.tag), *_encode_parts(obj.value)]
    if isinstance(obj, Mapping):
        items = sorted((encode(k), encode(v)) for k, v in obj.items())
        out = [_encode_head(5, len(items))]
        for k, v in items:
            out.append(k)
            out.append(v)
        return out
    if isinstance(obj, Sequence):
        out = [_encode_head(4, len(obj))]
        for item in obj:
            out.extend(_encode_parts(item))
        return out
    if isinstance(obj, bytearray | memoryview):
        return [cbor2.dumps(bytes(obj))]
    raise TypeError(f"cannot encode {type(obj).__name__} as CBOR")
