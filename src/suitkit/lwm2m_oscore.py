"""OSCORE (RFC 8613) security contexts of suitkit's LwM2M server edge and LwM2M client: one
context per device on each side, kept in a folder (aiocoap's ``FilesystemSecurityContext``:
the sender sequence number and the replay window survive restarts).

The master secret of a device is derived from its tracker credential: the tracker stores
``sha256(secret)`` of the credential ``<device id>.<secret>`` (``hash_secret``) and the device
holds the credential, so both sides compute ``HMAC-SHA256(sha256(secret), LABEL)`` without
any new provisioning step (docs/devices.md "Security" names the trade-off: whoever reads the
tracker's database can also derive the OSCORE keys). The ID Context is the device id (the
LwM2M endpoint name), sent in every request: the server finds the device's context by it and
the keys are bound to it; the Sender IDs are fixed, ``SERVER_ID`` for the server and
``DEVICE_ID`` for the device (each device has its own master secret, so they never collide).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from suitkit.errors import StorageError

__all__ = ["DEVICE_ID", "SERVER_ID", "close_context", "credential_digest", "master_secret",
           "open_context", "stored_secret", "write_context"]

SERVER_ID = b"\x00"
"""The LwM2M server's OSCORE Sender ID (the device's Recipient ID)."""
DEVICE_ID = b"\x01"
"""The device's OSCORE Sender ID (the server's Recipient ID)."""
LABEL = b"suitkit LwM2M OSCORE master secret v1"


def credential_digest(credential: str) -> bytes:
    """``sha256(secret)`` of a credential ``<device id>.<secret>``: what the tracker stores."""
    return hashlib.sha256(credential.strip().partition(".")[2].encode()).digest()


def master_secret(digest: bytes) -> bytes:
    """The OSCORE master secret of the device whose credential hashes to ``digest``."""
    return hmac.new(digest, LABEL, hashlib.sha256).digest()


def write_context(folder: Path, *, device_id: str, secret: bytes, server: bool) -> None:
    """(Re)create the security context in ``folder`` (its sequence numbers start at 0: only
    for a new master secret). Written to a temporary folder, fsynced, renamed into place.

    Raises:
        StorageError: the folder cannot be written (one line).
    """
    sender, recipient = (SERVER_ID, DEVICE_ID) if server else (DEVICE_ID, SERVER_ID)
    settings = {"sender-id_hex": sender.hex(), "recipient-id_hex": recipient.hex(),
                "id-context_hex": device_id.encode("ascii").hex(),
                "algorithm": "AES-CCM-16-64-128", "kdf-hashfun": "sha256"}
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        for name, data in (("settings.json", settings), ("secret.json",
                                                         {"secret_hex": secret.hex()})):
            descriptor = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                json.dump(data, out)
                out.flush()
                os.fsync(out.fileno())
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
        directory = os.open(folder.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as e:
        raise StorageError(f"OSCORE context {folder}: cannot write it: {e.strerror or e}") \
            from e


def stored_secret(folder: Path) -> bytes | None:
    """The master secret of the context in ``folder``, ``None`` when there is none (or it
    cannot be read)."""
    try:
        data = json.loads((folder / "secret.json").read_text())
        return bytes.fromhex(str(data["secret_hex"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_context(folder: Path, *, device_id: str, secret: bytes, server: bool) -> Any:
    """The security context in ``folder``, created (or re-created when its master secret is
    not ``secret``: a new credential) first. One process at a time may hold it.

    Raises:
        StorageError: it cannot be written, read or locked (one line).
    """
    # aiocoap ships no type information (no py.typed): the untyped seam.
    import filelock  # noqa: PLC0415
    from aiocoap.oscore import FilesystemSecurityContext  # type: ignore[import-untyped]  # noqa: PLC0415

    stored = stored_secret(folder)
    if stored is None and folder.exists():
        # re-created with the same master secret, its sequence numbers would start again at
        # 0: nonces reused. A new credential (a new secret) is the way out.
        raise StorageError(f"OSCORE context {folder}: its secret.json is unreadable; give the "
                           "device a new credential (a new context) rather than repair it")
    if stored != secret:
        write_context(folder, device_id=device_id, secret=secret, server=server)
    try:
        return FilesystemSecurityContext(str(folder))
    except filelock.Timeout as e:
        raise StorageError(f"OSCORE context {folder}: in use by another process") from e
    except (OSError, ValueError) as e:
        raise StorageError(f"OSCORE context {folder}: cannot load it: {e}") from e


def close_context(context: Any) -> None:
    """Persist the context's sequence number and replay window and release its lock (a
    context closed so reopens without the replay-window recovery round trip)."""
    if getattr(context, "lockfile", None) is not None:
        context._destroy()  # aiocoap's only deterministic close
