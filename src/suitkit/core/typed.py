"""Typed reads of decoded CBOR, with the path of the item in every error.

Shared by every strict decoder of the core (``codec`` for envelopes and manifests, ``report``
for SUIT reports): ``as_uint(value, "manifest.sequence-number")`` returns the value or raises
``DecodeError`` saying what was expected and what was seen. ``freeze`` / ``thaw`` convert decoded
containers to and from the model's immutable forms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from suitkit.core.cbor import CBORTag
from suitkit.core.model import FrozenDict
from suitkit.errors import DecodeError

__all__ = ["as_array", "as_bool", "as_bstr", "as_int", "as_map", "as_tstr", "as_uint",
           "describe", "freeze", "thaw"]



def _type(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if value is None:
        return "null"
    if isinstance(value, CBORTag):
        return f"tag {value.tag}"
    return {
        int: "int",
        bytes: "bstr",
        str: "tstr",
        list: "array",
        tuple: "array",
        dict: "map",
    }.get(type(value), "map" if isinstance(value, Mapping) else type(value).__name__)


def as_uint(value: object, path: str) -> int:
    if type(value) is not int or value < 0:
        raise DecodeError(path, f"expected an unsigned integer, got {describe(value)}")
    return value


def as_int(value: object, path: str) -> int:
    if type(value) is not int:
        raise DecodeError(path, f"expected an integer, got {describe(value)}")
    return value


def as_bstr(value: object, path: str) -> bytes:
    if type(value) is not bytes:
        raise DecodeError(path, f"expected a byte string, got {describe(value)}")
    return value


def as_tstr(value: object, path: str) -> str:
    if type(value) is not str:
        raise DecodeError(path, f"expected a text string, got {describe(value)}")
    return value


def as_bool(value: object, path: str) -> bool:
    if type(value) is not bool:
        raise DecodeError(path, f"expected true or false, got {describe(value)}")
    return value


def as_array(value: object, path: str, *, limit: int) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise DecodeError(path, f"expected an array, got {describe(value)}")
    if len(value) > limit:
        raise DecodeError(path, f"array of {len(value)} items is over the limit of {limit}")
    return value


def as_map(value: object, path: str, *, limit: int) -> Mapping[Any, Any]:
    if type(value) is not dict and not isinstance(value, Mapping):
        raise DecodeError(path, f"expected a map, got {describe(value)}")
    if len(value) > limit:
        raise DecodeError(path, f"map of {len(value)} entries is over the limit of {limit}")
    return value


def describe(value: object) -> str:
    kind = _type(value)
    if isinstance(value, bool | int) or value is None:
        return f"{kind} {value!r}" if kind != "null" else "null"
    if isinstance(value, bytes | str | list | tuple | Mapping):
        return f"{kind} of length {len(value)}"
    return kind


def freeze(value: object, path: str = "") -> object:
    """Decoded CBOR made immutable: arrays to tuples, maps to FrozenDict.

    Used for members suitkit keeps without giving them a meaning (unknown keys, extensions).
    Floating-point numbers, ``undefined`` and other simple values appear nowhere in SUIT and
    are refused, so anything kept can be encoded again deterministically.

    Raises:
        DecodeError: a float, undefined or simple value.
    """
    if isinstance(value, list | tuple):
        return tuple(freeze(v, path) for v in value)
    if isinstance(value, Mapping):
        return FrozenDict({freeze(k, path): freeze(v, path) for k, v in value.items()})
    if isinstance(value, CBORTag):
        return CBORTag(value.tag, freeze(value.value, path))
    if value is None or isinstance(value, bool | int | bytes | str):
        return value
    raise DecodeError(path, f"{describe(value)} values are not used in SUIT")


def thaw(value: object) -> object:
    """The inverse of ``freeze``, for encoding: tuples to lists, FrozenDicts to dicts. Map keys
    stay hashable: an array key stays a tuple (``cbor.encode`` writes it as an array)."""
    if isinstance(value, FrozenDict):
        return {_thaw_key(k): thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    if isinstance(value, CBORTag):
        return CBORTag(value.tag, thaw(value.value))
    return value


def _thaw_key(key: object) -> object:
    """A frozen map key as ``cbor.encode`` takes it: arrays as tuples (a list cannot be a key),
    maps kept frozen."""
    if isinstance(key, tuple):
        return tuple(_thaw_key(k) for k in key)
    if isinstance(key, CBORTag):
        return CBORTag(key.tag, _thaw_key(key.value))
    return key
