"""Strict CBOR decoding and deterministic encoding (RFC 8949 §4.2.1) on top of cbor2.

Every byte suitkit reads passes through ``decode``: duplicate map keys, indefinite lengths and
trailing bytes are refused, nesting is bounded, and no tag is given a meaning behind our back
(cbor2 would turn tag 1 into a datetime or tag 2 into an int; here every tag stays a ``CBORTag``).
``encode`` sorts map keys by their encoded bytes, which cbor2's ``canonical=True`` does not do
(it sorts length-first, the RFC 7049 rule).

Not here: any SUIT meaning. This module knows CBOR only.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import cbor2
from cbor2 import CBORTag, frozendict

from suitkit.errors import DecodeError

__all__ = ["FAST", "CBORTag", "Raw", "bstr_header", "decode", "decode_reference", "encode",
           "frozendict", "wrap"]


def _load_fast() -> Callable[[bytes, int], tuple[Any] | None] | None:
    if os.environ.get("SUITKIT_NO_EXTENSION", "") not in ("", "0"):
        return None
    try:
        from suitkit.core._strictcbor import decode as fast  # noqa: PLC0415
    except Exception:  # noqa: BLE001 - not built, or its set-up failed: the reference decides
        return None
    return fast


FAST = _load_fast()
"""The compiled fast path (``_strictcbor.c``): ``FAST(data, max_depth)`` is ``(item,)`` when
it decided the input, ``None`` when it left it to ``decode_reference``. It only decides inputs
that ``decode_reference`` would accept with the same result (preferred serialization included);
``None`` when the extension is not built, or ``SUITKIT_NO_EXTENSION`` is set."""

# Tags cbor2 6 decodes to Python objects by itself (found by trying every tag up to 70000 on
# cbor2 6.2); we keep them as CBORTag.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260,
                 261, 1004, 43000, 55799)


def _keep_tag(tag: int) -> Any:
    def keep(value: object, _immutable: bool) -> CBORTag:
        return CBORTag(tag, value)

    return keep


_RAW_TAGS = {tag: _keep_tag(tag) for tag in _BUILTIN_TAGS}


def decode(data: bytes, *, path: str, max_depth: int = 16, preferred: bool = True) -> Any:
    """Decode exactly one CBOR item from ``data``.

    Refused: malformed CBOR, duplicate map keys, indefinite lengths, nesting deeper than
    ``max_depth``, trailing bytes, and (unless ``preferred=False``) any head or float longer
    than needed (RFC 8949 §4.2.1 preferred serialization), found by re-encoding and comparing
    bytes; this proves that ``wrap(content)`` of every byte string inside equals the bytes
    received. Every SUIT and COSE structure is decoded with it, the bstr-wrapped ones (command
    sequences, common, text, COSE headers, reports) included: the same item must have one
    encoding wherever it is. ``preferred=False`` is for files from other tools (COSE_Key).

    Map key order is not enforced: digests and signatures are always computed over the bytes
    received, so order cannot change what was signed (docs/adr/0002-strict-cbor.md).

    Raises:
        DecodeError: with ``path`` and the reason.
    """
    if type(data) is not bytes:
        if not isinstance(data, bytearray | memoryview):
            raise DecodeError(path, f"expected CBOR bytes, got {type(data).__name__}")
        data = bytes(data)
    if FAST is not None:
        got = FAST(data, max_depth)
        if got is not None:
            return got[0]
    return decode_reference(data, path=path, max_depth=max_depth, preferred=preferred)


def decode_reference(data: bytes, *, path: str, max_depth: int = 16,
                     preferred: bool = True) -> Any:
    """``decode`` without the compiled fast path: cbor2 and the checks here.

    It decides every input the fast path leaves open, and words every error.
    """
    if max_depth < 0:  # a caller's mistake, not bad input (cbor2 would raise OverflowError)
        raise ValueError(f"max_depth must not be negative, got {max_depth}")
    size = len(data)
    if not size:
        raise DecodeError(path, "expected a CBOR item, got 0 bytes")
    decoder, own = _READERS.by_depth.get(max_depth) or _reader(max_depth)
    if size <= _REUSE_UP_TO:
        stream = own  # the decoder already reads from it: no new stream, no fp set-up
        stream.seek(0)
        stream.truncate()
        stream.write(data)
        stream.seek(0)
    else:
        stream = io.BytesIO(data)  # shares ``data``; dropped again below
        decoder.fp = stream
    clean = False
    try:
        obj = decoder.decode()
        end = stream.tell()
        again = cbor2.dumps(obj) if preferred else None
        clean = stream is own
    except cbor2.CBORError as e:
        raise DecodeError(path, f"invalid CBOR: {_cbor2_reason(e)}") from e
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        raise DecodeError(path, f"invalid CBOR: {e}") from e
    finally:
        # Keep no copy of the input (it may be key material) in the thread's stream.
        own.seek(0)
        own.truncate()
        if not clean:
            # After an error, or a large input: setting fp again drops whatever the decoder
            # read ahead, and lets go of the large input.
            decoder.fp = own
    if end != size:
        raise DecodeError(path, f"{size - end} trailing bytes after the CBOR item")
    if again is not None and again != data:
        at = next((i for i, (a, b) in enumerate(zip(again, data, strict=False)) if a != b),
                  min(len(again), size))
        raise DecodeError(path, f"CBOR is not in preferred serialization at byte {at} (a head "
                          "or float is longer than needed, RFC 8949 §4.2.1)")
    return obj


class _Readers(threading.local):
    """Per thread and depth limit: one configured cbor2 decoder and the stream it reads.

    Building a ``CBORDecoder`` (options, the 22 tag overrides) or giving it a new ``fp`` costs
    more than decoding a small item, and verifying a manifest takes nine decodes
    (benchmarks/bench_verify.py). So a small input is written into the decoder's own stream.
    A successful ``decode()`` leaves nothing read ahead (it seeks the stream back to the end of
    the item, which is how trailing bytes are found); after an error ``fp`` is set again, which
    resets the decoder, so nothing carries over from one input to the next. The stream is
    emptied after every call.
    """

    def __init__(self) -> None:
        self.by_depth: dict[int, tuple[cbor2.CBORDecoder, io.BytesIO]] = {}


_READERS = _Readers()
_REUSE_UP_TO = 64 * 1024
"""Inputs up to this size are copied into the thread's stream; larger ones get their own."""


def _reader(max_depth: int) -> tuple[cbor2.CBORDecoder, io.BytesIO]:
    readers = _READERS.by_depth
    reader = readers.get(max_depth)
    if reader is None:
        if len(readers) >= 8:  # depth limits come from Limits: a handful of values
            readers.clear()
        stream = io.BytesIO()
        reader = readers[max_depth] = (cbor2.CBORDecoder(
            stream,
            allow_duplicate_keys=False,
            allow_indefinite=False,
            max_depth=max_depth,
            semantic_decoders=_RAW_TAGS,
        ), stream)
    return reader


def _cbor2_reason(e: BaseException) -> str:
    text = str(e)
    if e.__cause__ is not None and str(e.__cause__):
        text = f"{text} ({e.__cause__})"
    return text


def bstr_header(length: int) -> bytes:
    """The minimal CBOR head of a byte string of ``length`` bytes."""
    return _encode_head(2, length)


def wrap(content: bytes) -> bytes:
    """``content`` as a CBOR byte string (head + content): the "bstr-wrapped" form."""
    size = len(content)
    if size < 24:
        return _BSTR_HEADS[size] + content
    if size < 0x100:
        return b"\x58" + _BYTE[size] + content
    return _encode_head(2, size) + content


_BSTR_HEADS = tuple(bytes([0x40 | n]) for n in range(24))
_BYTE = tuple(bytes([n]) for n in range(256))


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


_LEAVES = frozenset({bytes, str, int, bool, type(None)})


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
    if isinstance(obj, list | tuple):
        if all(type(item) in _LEAVES for item in obj):
            return [cbor2.dumps(obj)]  # no maps inside: cbor2's encoding is already the one
        out = [_encode_head(4, len(obj))]
        for item in obj:
            out.extend(_encode_parts(item))
        return out
    if isinstance(obj, bytearray | memoryview):
        return [cbor2.dumps(bytes(obj))]
    raise TypeError(f"cannot encode {type(obj).__name__} as CBOR")
