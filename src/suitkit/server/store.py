"""Content-addressed, immutable storage for the firmware server (RFC 9019 §3 firmware server).

Layout of the data directory::

    blobs/ab/abcdef...        one file per blob, named by the SHA-256 of its bytes (lower-case hex)
    releases/<id>.json        release metadata, <id> the manifest digest in hex
    tmp/                      temporary files (same file system, so rename is atomic)

A blob is written to ``tmp/``, fsynced, then renamed into place (``os.link``: never replaces an
existing file, so a blob, once stored, never changes). Storing the same bytes twice is a no-op.
Release metadata is JSON written with ``fileio.atomic_write``. ``add_release`` checks and
writes a record under an exclusive ``flock`` of ``releases/.lock``, so two uploads of one release
(threads or processes sharing the directory) cannot both create it: the second one either adds
its images to the same envelope's record or is refused (``ReleaseConflict``).

A crash (SIGKILL, power cut) in the middle of a write leaves at worst a temporary file in
``tmp/``, never a partial blob or record: opening the store removes the temporary blobs no
living process is writing (each writer holds an ``flock`` on its file, which the kernel drops
when the process dies, and checks once it holds it that no sweep removed the file just
before: then it makes another).

Several processes (``suitkit serve`` replicas, on one host or on several over a shared file
system) may use one data directory at once; what the file system must provide for that is in
docs/server.md, "Scale out": atomic ``link`` and ``rename``, ``fsync``, ``flock`` between all
of them, and lookups that do not cache a file's absence.

No name from a client ever becomes a path: blobs are looked up only by validated 64-character
lower-case hex digests, releases only by validated hex ids.

Release records elsewhere: ``ReleaseRecords`` is what the app needs of them (``add_release``,
``get_release``, ``releases``); ``BlobStore`` is the one on disk. ``suitkit serve`` with the
status tracker hands the app the tracker's database instead (``ServerConfig.releases``), so
replicas on a shared blob directory agree on which releases exist; ``store_release`` is the
rule both apply (the same envelope again merges its images, another envelope conflicts).

Not here: verification (the app checks envelopes and images before storing), garbage
collection of blobs no release refers to, replication.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from suitkit.errors import StorageError
from suitkit.fileio import atomic_write, fsync_dir, storage_error

__all__ = [
    "MAX_NOTES",
    "MAX_VERSION_TEXT",
    "BlobStore",
    "ClassText",
    "ComponentRecord",
    "ReleaseConflict",
    "ReleaseRecord",
    "ReleaseRecords",
    "is_digest",
    "is_release_id",
    "store_release",
]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_RELEASE_ID = re.compile(r"[0-9a-f]{32,128}")  # digests from SHA-256 up to SHA-512
_CHUNK = 64 * 1024


def is_digest(text: str) -> bool:
    """Whether ``text`` is a SHA-256 digest as the store names blobs (64 lower-case hex)."""
    return _SHA256_HEX.fullmatch(text) is not None


def is_release_id(text: str) -> bool:
    """Whether ``text`` is a release id (a manifest digest in lower-case hex)."""
    return _RELEASE_ID.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class ComponentRecord:
    """One component of a release: its identifier (hex parts), what the manifest expects
    (digest algorithm, digest hex, size) and the SHA-256 of the stored image, if any."""

    index: int
    identifier: tuple[str, ...]
    digest_algorithm: int | None
    digest: str | None
    size: int | None
    blob: str | None
    dependency: bool = False
    """A dependency manifest (trust-domains): ``digest`` is its manifest digest (the id of
    its own release), ``size`` and ``blob`` its envelope's."""

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in the release file."""
        doc: dict[str, Any] = {"index": self.index, "identifier": list(self.identifier),
                               "digest_algorithm": self.digest_algorithm, "digest": self.digest,
                               "size": self.size, "blob": self.blob}
        if self.dependency:
            doc["dependency"] = True
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ComponentRecord:
        """Inverse of ``to_json``."""
        return cls(int(doc["index"]), tuple(doc["identifier"]), doc["digest_algorithm"],
                   doc["digest"], doc["size"], doc["blob"], bool(doc.get("dependency", False)))


MAX_VERSION_TEXT = 64
"""The longest release version (``ReleaseRecord.version``)."""
MAX_NOTES = 4096
"""The longest release notes (``ReleaseRecord.notes``), in characters."""


@dataclass(frozen=True, slots=True)
class ClassText:
    """The names a manifest's text gives the class of a component (manifest §8.4.4
    vendor-name, model-name, vendor-domain) with the vendor and class IDs its shared sequence
    sets for that component (UUID text)."""

    vendor_id: str
    class_id: str
    vendor_name: str | None
    class_name: str | None
    vendor_domain: str | None

    def to_json(self) -> dict[str, Any]:
        return {"vendor_id": self.vendor_id, "class_id": self.class_id,
                "vendor_name": self.vendor_name, "class_name": self.class_name,
                "vendor_domain": self.vendor_domain}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ClassText:
        return cls(str(doc["vendor_id"]), str(doc["class_id"]), doc.get("vendor_name"),
                   doc.get("class_name"), doc.get("vendor_domain"))


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    """A stored release: the manifest digest (its id), sequence number, the envelope blob and
    its components. ``integrated`` maps integrated payload keys (``"#app.bin"``) to blobs.
    ``version`` (the manifest text's component-version, else the uploader's; at most
    ``MAX_VERSION_TEXT``) and ``notes`` (the uploader's, at most ``MAX_NOTES``) name it for
    people; ``classes``: the class names its manifest text gives (issue #17)."""

    release_id: str
    sequence_number: int
    envelope: str
    components: tuple[ComponentRecord, ...]
    integrated: dict[str, str]
    version: str | None = None
    notes: str | None = None
    classes: tuple[ClassText, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in ``releases/<id>.json``."""
        doc = {"id": self.release_id, "sequence_number": self.sequence_number,
               "envelope": self.envelope,
               "components": [c.to_json() for c in self.components],
               "integrated": dict(self.integrated),
               "version": self.version, "notes": self.notes}
        if self.classes:
            doc["classes"] = [c.to_json() for c in self.classes]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ReleaseRecord:
        """Inverse of ``to_json`` (a record from before versions and notes has neither)."""
        version, notes = doc.get("version"), doc.get("notes")
        return cls(str(doc["id"]), int(doc["sequence_number"]), str(doc["envelope"]),
                   tuple(ComponentRecord.from_json(c) for c in doc["components"]),
                   {str(k): str(v) for k, v in doc["integrated"].items()},
                   str(version) if version is not None else None,
                   str(notes) if notes is not None else None,
                   tuple(ClassText.from_json(c) for c in doc.get("classes", ())))


class ReleaseConflict(StorageError):
    """A release with this id is already stored with another envelope (``existing``)."""

    def __init__(self, existing: ReleaseRecord, message: str | None = None) -> None:
        self.existing = existing
        super().__init__(message or f"release {existing.release_id} already exists with a "
                         f"different envelope ({existing.envelope})")


class ReleaseRecords(Protocol):
    """Where release records live (``BlobStore``'s files, or a database shared by replicas).

    Every method raises ``StorageError`` when the records cannot be read or written."""

    def add_release(self, record: ReleaseRecord) -> tuple[ReleaseRecord, bool]:
        """Store ``record`` by ``store_release``'s rule, atomically; (stored, created)."""
        ...

    def get_release(self, release_id: str) -> ReleaseRecord | None: ...

    def releases(self) -> list[ReleaseRecord]:
        """Every release, by sequence number then id."""
        ...


def store_release(previous: ReleaseRecord | None, record: ReleaseRecord) -> ReleaseRecord:
    """The record to keep when ``record`` is stored over ``previous``: ``record`` itself when
    there is none; the same envelope stored again keeps every image the stored record refers to
    and adds the ones ``record`` has (an upload of the envelope alone never drops an image; a
    stored image is never replaced by another).

    Raises:
        ReleaseConflict: ``previous`` has a different envelope, another image for a
            component that has one, or another version or notes than the stored ones (each
            is set once).
    """
    if previous is None:
        return record
    if previous.envelope != record.envelope:
        raise ReleaseConflict(previous)
    for what, stored_text, given in (("version", previous.version, record.version),
                                     ("notes", previous.notes, record.notes)):
        if stored_text is not None and given is not None and stored_text != given:
            raise ReleaseConflict(previous, (
                f"release {previous.release_id} already has {what} "
                f"{_shown(stored_text)}; another ({_shown(given)}) is refused (a release's "
                f"{what} is set once)"))
    stored = {c.index: c.blob for c in previous.components}
    for c in record.components:
        # An encrypted image is only size-checked (its digest is the plaintext's): another
        # upload of the same public envelope must not swap it for other bytes.
        if c.blob is not None and stored.get(c.index) not in (None, c.blob):
            raise ReleaseConflict(previous, (
                f"release {previous.release_id} component {c.index} already has image "
                f"{stored[c.index]}; another image ({c.blob}) is refused (a stored "
                "image is never replaced)"))
    return _merged(previous, record)


def _merged(previous: ReleaseRecord, new: ReleaseRecord) -> ReleaseRecord:
    """``previous`` with the images ``new`` adds (a stored image reference is never dropped)."""
    blobs = {c.index: c.blob for c in previous.components}
    components = tuple(replace(c, blob=c.blob or blobs.get(c.index)) for c in new.components)
    return replace(new, components=components,
                   integrated={**previous.integrated, **new.integrated},
                   version=new.version or previous.version, notes=new.notes or previous.notes,
                   classes=new.classes or previous.classes)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


class BlobStore:
    """The data directory: blobs by SHA-256 and release metadata. Safe for several processes
    (writes are temp + rename; nothing is cached in memory)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._releases = self.root / "releases"
        self._tmp = self.root / "tmp"
        try:
            for folder in (self._blobs, self._releases, self._tmp):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the data directory {self.root}: "
                               f"{e.strerror or e}") from e
        self._sweep_tmp()

    def check_writable(self) -> None:
        """Whether blobs and records can be written here (an unnamed file made and fsynced in
        ``tmp/`` and in ``releases/``: ``O_TMPFILE``, so a crash leaves nothing behind).

        Raises:
            StorageError: the data directory is read-only, full or otherwise not writable.
        """
        for folder in (self._tmp, self._releases):
            try:
                with tempfile.TemporaryFile(dir=folder, prefix=".probe.") as probe:
                    probe.write(b"suitkit")
                    probe.flush()
                    os.fsync(probe.fileno())
            except OSError as e:
                raise StorageError(f"the data directory {self.root} is not writable: "
                                   f"{e.strerror or e}") from e

    def _sweep_tmp(self) -> None:
        """Remove temporary blobs left by a writer that died (unlocked ones: a living writer
        holds an exclusive ``flock`` on its temporary file until it is linked into place)."""
        for path in self._tmp.glob("blob.*.tmp"):
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.unlink()
                finally:
                    os.close(fd)

    # ------------------------------------------------------------------ blobs

    def blob_path(self, digest: str) -> Path:
        """Where the blob named ``digest`` lives (whether or not it exists).

        Raises:
            StorageError: ``digest`` is not 64 lower-case hex characters.
        """
        if not is_digest(digest):
            raise StorageError(f"not a SHA-256 digest: {digest[:80]!r}")
        return self._blobs / digest[:2] / digest

    def has_blob(self, digest: str) -> bool:
        """Whether a blob with this digest is stored (False for a malformed digest)."""
        return is_digest(digest) and self.blob_path(digest).is_file()

    def open_blob(self, digest: str) -> BinaryIO:
        """Open a stored blob for reading.

        Raises:
            StorageError: malformed digest, or no such blob.
        """
        path = self.blob_path(digest)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise StorageError(f"no blob {digest}") from None
        except OSError as e:
            raise StorageError(f"cannot read blob {digest}: {e.strerror or e}") from e

    def put_blob(self, source: bytes | BinaryIO | Iterable[bytes]) -> str:
        """Store bytes (or a binary file, or an iterable of chunks); return their SHA-256 hex.

        Idempotent: storing bytes already present leaves the existing blob untouched.

        Raises:
            StorageError: the blob could not be written.
        """
        hasher = hashlib.sha256()
        tmp_name: str | None = None
        try:
            fd, tmp_name = self._locked_temp()
            with os.fdopen(fd, "wb") as out:  # open (so locked) until linked into place
                for chunk in _chunks(source):
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
                os.chmod(tmp_name, 0o444)
                digest = hasher.hexdigest()
                final = self.blob_path(digest)
                final.parent.mkdir(exist_ok=True)
                try:
                    # link, not rename: never replaces a blob that is already there (immutable).
                    os.link(tmp_name, final)
                except FileExistsError:
                    pass
                else:
                    fsync_dir(final.parent)
            return digest
        except OSError as e:  # a full disk: StorageFullError (nothing kept, 507)
            raise storage_error("cannot store a blob", e) from e
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)

    def _locked_temp(self) -> tuple[int, str]:
        """A new temporary blob file in ``tmp/``, open and under an exclusive ``flock`` ("being
        written": ``_sweep_tmp`` leaves it alone).

        Between the file's creation and its lock, another process opening this data directory
        may sweep it away (it is not locked yet): the file is then checked to be still in place
        once locked (the sweeper unlinks under the lock, so after it the check is certain),
        and another one made if it is not.

        Raises:
            OSError: ``tmp/`` cannot be written.
            StorageError: every file made was swept away at once (100 times).
        """
        for _ in range(100):
            fd, name = tempfile.mkstemp(prefix="blob.", suffix=".tmp", dir=self._tmp)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                mine = os.fstat(fd)
                try:
                    there = os.stat(name)
                except FileNotFoundError:
                    there = None
            except BaseException:
                os.close(fd)
                raise
            if there is not None and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
                return fd, name
            os.close(fd)  # swept away (the name, if taken again, is another writer's)
        raise StorageError(f"cannot make a temporary blob file in {self._tmp}: another "
                           "process removed each one at once")

    # ------------------------------------------------------------------ releases

    def _release_path(self, release_id: str) -> Path:
        if not is_release_id(release_id):
            raise StorageError(f"not a release id: {release_id[:80]!r}")
        return self._releases / f"{release_id}.json"

    def put_release(self, record: ReleaseRecord) -> None:
        """Write the metadata of a release atomically (replacing the same id's record).

        Raises:
            StorageError: malformed id, or the file could not be written.
        """
        data = json.dumps(record.to_json(), indent=2, sort_keys=True).encode()
        atomic_write(self._release_path(record.release_id), data)

    @contextlib.contextmanager
    def _records_locked(self) -> Iterator[None]:
        """Hold the exclusive lock of the release records (threads and processes alike: each
        holder opens the lock file itself, and ``flock`` excludes open file descriptions)."""
        try:
            fd = os.open(self._releases / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(f"cannot lock the release records: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the lock

    def add_release(self, record: ReleaseRecord) -> tuple[ReleaseRecord, bool]:
        """Store ``record`` unless its id is taken by another envelope, atomically with respect
        to every other ``add_release`` on this data directory; ``(stored record, created)``.

        The same envelope stored again keeps every image the stored record refers to and adds
        the ones ``record`` has (an upload of the envelope alone never drops an image).

        Raises:
            ReleaseConflict: the id is stored with a different envelope, or a component's
                stored image with other bytes.
            StorageError: malformed id, or the record could not be read or written.
        """
        with self._records_locked():
            previous = self.get_release(record.release_id)
            kept = store_release(previous, record)
            if kept != previous:
                self.put_release(kept)
            return kept, previous is None

    def get_release(self, release_id: str) -> ReleaseRecord | None:
        """The release with this id, or ``None``.

        Raises:
            StorageError: malformed id, or an unreadable record.
        """
        path = self._release_path(release_id)
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StorageError(f"cannot read release {release_id}: {e}") from e
        try:
            return ReleaseRecord.from_json(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StorageError(f"release record {release_id} is malformed: {e}") from e

    def releases(self) -> list[ReleaseRecord]:
        """Every release, by sequence number then id."""
        found = []
        for path in self._releases.glob("*.json"):
            if is_release_id(path.stem):
                record = self.get_release(path.stem)
                if record is not None:
                    found.append(record)
        return sorted(found, key=lambda r: (r.sequence_number, r.release_id))


def _chunks(source: bytes | BinaryIO | Iterable[bytes]) -> Iterable[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
        return
    read = getattr(source, "read", None)
    if read is not None:
        while chunk := read(_CHUNK):
            yield chunk
        return
    yield from source
