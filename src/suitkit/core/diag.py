"""CBOR diagnostic notation (RFC 8949 §8, with the ``<< >>`` embedded-CBOR form of RFC 8610
Appendix G) for people reading envelopes.

A byte string whose content is itself a CBOR array, map or tag is shown embedded, as the SUIT
drafts print their examples; other byte strings as ``h'..'``. Byte strings longer than
``max_bytes`` (integrated payloads) are cut, with a comment saying so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import cbor2

from suitkit.core import cbor
from suitkit.errors import DecodeError

__all__ = ["diag"]


def diag(obj: object, *, max_bytes: int = 4096) -> str:
    """Render a decoded CBOR item in diagnostic notation, indented two spaces per level."""
    return _render(obj, 0, max_bytes, embed=True)


def _render(obj: Any, level: int, max_bytes: int, *, embed: bool) -> str:
    pad, inner = "  " * level, "  " * (level + 1)
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if obj is None:
        return "null"
    if obj is cbor2.undefined:
        return "undefined"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, bytes):
        return _bytes(obj, level, max_bytes, embed=embed)
    if isinstance(obj, cbor.CBORTag):
        return f"{obj.tag}({_render(obj.value, level, max_bytes, embed=embed)})"
    if isinstance(obj, Mapping):
        if not obj:
            return "{}"
        items = []
        for k, v in obj.items():
            # text keys in an envelope are integrated payloads: never shown as embedded CBOR
            value = _render(v, level + 1, max_bytes, embed=embed and not isinstance(k, str))
            items.append(f"{inner}{_render(k, level + 1, max_bytes, embed=False)}: {value}")
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list | tuple):
        if not obj:
            return "[]"
        if all(isinstance(x, int | bool) or x is None for x in obj):
            return "[" + ", ".join(_render(x, level, max_bytes, embed=embed) for x in obj) + "]"
        items = [f"{inner}{_render(x, level + 1, max_bytes, embed=embed)}" for x in obj]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    if isinstance(obj, float):
        return repr(obj)
    return f"/ {type(obj).__name__} /"


def _bytes(data: bytes, level: int, max_bytes: int, *, embed: bool) -> str:
    if embed and data and data[0] >> 5 in (4, 5, 6):
        try:
            inner = cbor.decode(data, path="", max_depth=32, preferred=False)  # show as is
        except DecodeError:
            inner = None
        if inner is not None:
            return "<< " + _render(inner, level, max_bytes, embed=True) + " >>"
    if len(data) > max_bytes:
        return f"h'{data[:max_bytes].hex()}' / first {max_bytes} of {len(data)} bytes /"
    return f"h'{data.hex()}'"
