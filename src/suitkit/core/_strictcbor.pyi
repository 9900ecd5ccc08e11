"""The compiled fast path of ``suitkit.core.cbor.decode`` (``_strictcbor.c``)."""

from typing import Any

def decode(data: bytes, max_depth: int, /) -> tuple[Any] | None:
    """``(item,)`` when decided here, ``None`` when left to the reference decoder."""
