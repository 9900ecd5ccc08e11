"""Writing files so that a crash never leaves a half-written one (temp file, fsync, rename).

Used by every role that writes to disk: key files, envelopes, device state. On return the new
content is durable and the old content was replaced atomically; on any error the old file is
untouched and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from suitkit.errors import StorageError, StorageFullError

__all__ = ["atomic_write", "fsync_dir", "storage_error"]

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_error(message: str, error: OSError) -> StorageError:
    """``StorageError(message: reason)`` for ``error``; ``StorageFullError`` when the disk or
    quota is full (ENOSPC, EDQUOT), so that a server can answer 507 rather than 500."""
    kind = StorageFullError if error.errno in _FULL else StorageError
    return kind(f"{message}: {error.strerror or error}")


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Raises:
        StorageError: the file could not be written (the old one, if any, is untouched).
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, path)
        tmp_name = None
        fsync_dir(directory)
    except OSError as e:
        raise storage_error(f"cannot write {path}", e) from e
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so that a rename inside it is durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
