"""suitkit: the IETF SUIT firmware update architecture (RFC 9019) in Python.

The pure core (``suitkit.core``) holds the manifest model, the byte-exact codec, COSE and the
verifier; the roles (author, firmware server, status tracker, device, bootloader) sit around it.

As a library (docs/python.md)::

    import suitkit
    key = suitkit.generate_key()
    envelope = suitkit.sign(suitkit.build(description), key)
    manifest = suitkit.verify(envelope, key.public_key()).manifest

``build``, ``sign``, ``verify``, ``process``, ``generate_key``, ``MemoryDevice`` (from
``suitkit.api``) and the error tree (``SuitError`` and its kinds) are loaded on first use, so
that ``import suitkit`` stays cheap for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

SPEC = "draft-ietf-suit-manifest-34"
"""The manifest draft whose numbers and rules this implementation follows."""

if TYPE_CHECKING:
    from suitkit.api import MemoryDevice, build, generate_key, process, sign, verify
    from suitkit.errors import (
        AuthenticationError,
        DecodeError,
        FetchError,
        PolicyError,
        ProcessingError,
        StorageError,
        SuitError,
    )

_LAZY = {
    **{name: "suitkit.api" for name in ("MemoryDevice", "build", "generate_key", "process",
                                        "sign", "verify")},
    **{name: "suitkit.errors" for name in ("AuthenticationError", "DecodeError", "FetchError",
                                           "PolicyError", "ProcessingError", "StorageError",
                                           "SuitError")},
}

__all__ = [
    "SPEC", "AuthenticationError", "DecodeError", "FetchError", "MemoryDevice", "PolicyError",
    "ProcessingError", "StorageError", "SuitError", "__version__", "build", "generate_key",
    "process", "sign", "verify",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'suitkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
