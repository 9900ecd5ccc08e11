"""The one exception tree of suitkit.

::

    SuitError                      anything suitkit refuses, with a message saying what and where
     ├── DecodeError               malformed CBOR, wrong type, over a limit; carries a path
     ├── AuthenticationError       a digest, signature or MAC did not verify
     ├── PolicyError               authentic, but not acceptable here (rollback, algorithm, signer)
     ├── ProcessingError           a condition failed or a directive aborted while processing
     ├── FetchError                a payload could not be fetched
     ├── StorageError              a slot, flash or file write failed
     │    └── StorageFullError     ... because the disk (or database) is full: nothing was written
     └── KeyMaterialError          a key file is unreadable, of the wrong kind, or exhausted

Foreign exceptions (cbor2, cryptography, OS errors) are wrapped at the seam with
``raise ... from e``; nothing else escapes the library. Messages state what was expected and
what was seen: ``"sequence number 4 must not be lower than the installed 5"``.
"""

from __future__ import annotations


class SuitError(Exception):
    """Base of every error suitkit raises on purpose."""


class DecodeError(SuitError):
    """Input is not well-formed: bad CBOR, a wrong type, or over a limit.

    ``path`` names where, e.g. ``manifest.common.components[2]``.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class AuthenticationError(SuitError):
    """A digest, signature or MAC over the received bytes did not verify."""


class PolicyError(SuitError):
    """The input is authentic but not acceptable: rollback, algorithm, signer rights, expiry."""


class ProcessingError(SuitError):
    """A SUIT command failed: a condition did not hold or a directive aborted.

    ``section`` is the manifest member key (e.g. 20 for install), ``offset`` the byte offset of
    the command inside that sequence, ``component`` the component index, ``manifest_id`` the
    path of dependency indices from the root manifest (``()`` for the root), when known.
    """

    def __init__(
        self,
        message: str,
        *,
        section: int | None = None,
        offset: int | None = None,
        component: int | None = None,
        reason: int | None = None,
        manifest_id: tuple[int, ...] = (),
    ) -> None:
        self.manifest_id = manifest_id
        self.section = section
        self.offset = offset
        self.component = component
        self.reason = reason
        super().__init__(message)


class FetchError(SuitError):
    """A payload or manifest could not be fetched (network, missing file, too large)."""


class StorageError(SuitError):
    """A component store, slot or flash operation failed."""


class StorageFullError(StorageError):
    """A write failed because the disk or the database is full (ENOSPC, EDQUOT, SQLITE_FULL,
    PostgreSQL disk_full); nothing of it was kept. Servers answer 507 for it."""


class KeyMaterialError(SuitError):
    """A key is unreadable, of the wrong kind for the operation, or (HSS-LMS) exhausted."""
