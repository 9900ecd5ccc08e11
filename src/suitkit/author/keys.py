"""Key files for the author: read, write, and keep HSS-LMS state safe on disk.

Formats are those of ``suitkit.core.crypto`` (PEM; ``COSE KEY`` PEM armor for HMAC and
HSS-LMS; an optional ``suitkit-algorithm: NAME`` line). Every write is atomic and durable
(``suitkit.fileio.atomic_write``); private and shared-secret files get mode 0600.

HSS-LMS (RFC 8554 §5.2: each one-time key signs once) keeps its state in the key file itself.
``HssLmsFileStore.reserve`` rewrites the file with the advanced state before a signature is
released, then records the number of signatures used in ``KEY.counter``. A key file whose
state is behind its counter (a restored backup would reuse one-time keys) is refused, and so is
an exhausted key. Two processes signing with one key cannot both release a signature from the
same state: ``reserve`` re-reads the counter under an exclusive lock (``KEY.lock``).

Not done: protection when the key file and its counter are restored together (keep the
counter somewhere the backup does not reach), password-protected key files, Windows locking.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from suitkit.core import crypto
from suitkit.core.numbers import CoseAlg
from suitkit.errors import KeyMaterialError, StorageError
from suitkit.fileio import atomic_write

__all__ = [
    "HssLmsFileStore",
    "load_private_key",
    "load_recipient_private",
    "load_recipient_public",
    "load_signer",
    "load_verifier",
    "write_private_key",
    "write_public_key",
    "write_recipient_key",
]

_MAX_KEY_FILE = 1 << 20
_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as e:
        raise KeyMaterialError(f"cannot read key file {path}: {e.strerror or e}") from e
    if len(data) > _MAX_KEY_FILE:
        raise KeyMaterialError(f"{path} is larger than {_MAX_KEY_FILE} bytes; not a key file")
    return data


def load_private_key(path: Path) -> crypto.PrivateKey:
    """The private key in ``path``; KeyMaterialError naming the file if it is not one."""
    try:
        return crypto.load_private_key(_read(path))
    except KeyMaterialError as e:
        raise KeyMaterialError(f"{path}: {e}") from e


def load_verifier(path: Path) -> crypto.Verifier:
    """The public key (trust anchor) in ``path``; a private key file is refused."""
    try:
        return crypto.load_public_key(_read(path))
    except KeyMaterialError as e:
        raise KeyMaterialError(f"{path}: {e}") from e


def load_signer(path: Path, algorithm: str | None = None, *,
                key_id: bytes | None = None) -> crypto.Signer:
    """A signer for the private key in ``path``, using ``algorithm`` if given (e.g. "ESP256").

    For HSS-LMS the signer is backed by an ``HssLmsFileStore`` on ``path``.
    """
    alg = None if algorithm is None else crypto.algorithm_from_name(algorithm)
    key = load_private_key(path)
    try:
        if isinstance(key, crypto.HssLmsPrivateKey):
            return key.signer(alg, key_id=key_id, state_store=HssLmsFileStore(path, key))
        return key.signer(alg, key_id=key_id)
    except KeyMaterialError as e:
        raise KeyMaterialError(f"{path}: {e}") from e


def load_recipient_private(path: Path) -> crypto.RecipientPrivate:
    """A device's recipient key in ``path`` (a KEK, or an ECDH-ES private key)."""
    try:
        return crypto.load_recipient_private(_read(path))
    except KeyMaterialError as e:
        raise KeyMaterialError(f"{path}: {e}") from e


def load_recipient_public(path: Path) -> crypto.RecipientPublic:
    """What an author encrypts for, in ``path`` (a KEK, or a device's ECDH-ES public key)."""
    try:
        return crypto.load_recipient_public(_read(path))
    except KeyMaterialError as e:
        raise KeyMaterialError(f"{path}: {e}") from e


def write_recipient_key(path: Path, key: crypto.RecipientPublic | crypto.RecipientPrivate
                        ) -> None:
    """Write a recipient key (COSE_Key in PEM armor): private keys and KEKs with mode 0600."""
    public = isinstance(key, crypto.EcPublicKey | crypto.X25519PublicKey)
    atomic_write(path, crypto.recipient_to_pem(key),
                 mode=_PUBLIC_MODE if public else _PRIVATE_MODE)


def write_private_key(path: Path, key: crypto.PrivateKey) -> None:
    """Write ``key`` atomically with mode 0600 (and, for HSS-LMS, its counter file).

    Raises:
        KeyMaterialError: an HSS-LMS state older than the counter already on disk for the
            same key (writing it would allow one-time keys to be reused).
        StorageError: the file could not be written.
    """
    if not isinstance(key, crypto.HssLmsPrivateKey):
        atomic_write(path, key.to_pem(), mode=_PRIVATE_MODE)
        return
    counter = _Counter(path, key.public_key().public_bytes)
    with counter.locked():
        recorded = counter.read(other_key_ok=True)
        if recorded is not None and recorded > key.used:
            raise KeyMaterialError(f"{path}: refusing to write an HSS-LMS state with {key.used} "
                                   f"signatures used over a counter of {recorded}")
        atomic_write(path, key.to_pem(), mode=_PRIVATE_MODE)
        counter.write(key.used)


def write_public_key(path: Path, key: crypto.PrivateKey | crypto.Verifier) -> None:
    """Write the public half of ``key`` (an HMAC key is a shared secret: mode 0600)."""
    public = key if isinstance(key, crypto.Verifier) else key.public_key()
    mode = _PRIVATE_MODE if isinstance(public, crypto.HmacKey) else _PUBLIC_MODE
    atomic_write(path, crypto.public_key_to_pem(public), mode=mode)


class _Counter:
    """``KEY.counter``: "<SHA-256 of the HSS public key, hex> <signatures used>\\n"."""

    def __init__(self, key_path: Path, public: bytes) -> None:
        self.path = key_path.with_name(key_path.name + ".counter")
        self._lock_path = key_path.with_name(key_path.name + ".lock")
        self._fingerprint = crypto.digest(CoseAlg.SHA256, public).hex()

    def read(self, *, other_key_ok: bool = False) -> int | None:
        """Signatures used as recorded for this key, or None if there is no record."""
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise KeyMaterialError(f"cannot read HSS-LMS counter {self.path}: {e}") from e
        fields = text.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise KeyMaterialError(f"HSS-LMS counter {self.path} is malformed; the key's state "
                                   "is unknown (remove the file only if you know it is safe)")
        if fields[0] != self._fingerprint:
            if other_key_ok:
                return None
            raise KeyMaterialError(f"HSS-LMS counter {self.path} belongs to a different key; "
                                   "remove it only if the key was replaced on purpose")
        return int(fields[1])

    def write(self, used: int) -> None:
        atomic_write(self.path, f"{self._fingerprint} {used}\n".encode(), mode=_PRIVATE_MODE)

    @contextmanager
    def locked(self) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, _PRIVATE_MODE)
        except OSError as e:
            raise StorageError(f"cannot open lock file {self._lock_path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


class HssLmsFileStore:
    """An ``HssLmsStateStore`` that keeps the state in the key file at ``path``.

    Raises (on creation):
        KeyMaterialError: the key is exhausted, or its state is behind its counter file.
    """

    def __init__(self, path: Path, key: crypto.HssLmsPrivateKey) -> None:
        self.path = path
        self._public = key.public_key().public_bytes
        self._key_id = key.key_id
        self._counter = _Counter(path, self._public)
        recorded = self._counter.read()
        if recorded is not None and key.used < recorded:
            raise KeyMaterialError(
                f"HSS-LMS key file {path} has {key.used} signatures used but its counter "
                f"records {recorded}: an old copy would reuse one-time keys; refusing it")
        if key.remaining <= 0:
            raise KeyMaterialError(f"HSS-LMS key {path} is exhausted: all {key.total} "
                                   "one-time signatures are used")
        self._used = key.used

    def reserve(self, new_state: bytes) -> None:
        """Durably write ``new_state`` (key file, then counter) before a signature leaves."""
        used, _total = crypto.hss_lms_state_usage(new_state)
        with self._counter.locked():
            recorded = self._counter.read()
            if recorded is not None and recorded > self._used:
                raise KeyMaterialError(
                    f"HSS-LMS key {self.path} was used by another signer since it was loaded "
                    f"(counter {recorded}, expected {self._used}); load it again")
            # Key file first: a crash between the two writes leaves the file ahead of the
            # counter, which loads; the other order would lock the key out.
            atomic_write(self.path, crypto.encode_hss_lms_private_key(
                new_state, self._public, key_id=self._key_id), mode=_PRIVATE_MODE)
            self._counter.write(used)
            self._used = used
