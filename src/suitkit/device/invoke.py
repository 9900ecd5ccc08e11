"""Starting what was booted: the SUIT Invocation Procedure on the running images.

After the bootloader has chosen and verified the images (``boot``), the device runs the
manifest's Invocation Procedure (manifest §8.4.6: validate, load, invoke) against the images as
they run now. ``suit-directive-invoke`` hands control to a ``Launcher``:

- ``ProcessLauncher`` (Linux-class devices): stops the application started at the previous boot
  and starts the new one from the active slot (RFC 9019: the update takes effect by restarting
  the application), then watches it for a moment; an application that dies at once is reported,
  so the device does not confirm it and the next boot reverts.
- ``RecordingLauncher`` (simulated microcontrollers): records the jump to the image.

The stored envelope is verified again and validate re-checks each image's digest before
anything is started (RFC 9124 THREAT.IMG.REPLACE, REQ.SEC.AUTH.EXEC).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from suitkit.core.model import ComponentIdentifier
from suitkit.core.processor import (
    NO_EXTENSIONS,
    ComponentIdentity,
    Device,
    Extensions,
    InstalledEnvironment,
    ProcessResult,
    process,
    stream_digest,
)
from suitkit.device.config import DeviceConfig
from suitkit.device.consumer import (
    BootStore,
    ImageReaderLike,
    reader_chunks,
    split_slot_record,
    verify_stored,
)
from suitkit.errors import StorageError, SuitError
from suitkit.fileio import atomic_write
from suitkit.limits import Limits

__all__ = [
    "ImageComponent",
    "Launcher",
    "ProcessLauncher",
    "RecordingLauncher",
    "invoke_running",
]

CHUNK = 64 * 1024


class Launcher(Protocol):
    """Hands control to a verified image; returns a line saying what was started."""

    def launch(self, image: str, reader: ImageReaderLike, arguments: bytes | None) -> str: ...


@dataclass
class RecordingLauncher:
    """A simulated microcontroller "jumps" to the image: recorded, nothing runs."""

    started: list[str] = field(default_factory=list)

    def launch(self, image: str, reader: ImageReaderLike, arguments: bytes | None) -> str:
        self.started.append(image)
        return f"jumped to {image} ({reader.size} bytes)"


@dataclass
class ProcessLauncher:
    """Restarts the application of a Linux-class device from its active slot.

    ``command`` is split like a shell would and ``{image}`` is replaced by the image file's path,
    e.g. ``"python3 {image}"``. The process id is kept in ``pid_file`` so the next boot can stop
    it (SIGTERM, then SIGKILL after ``stop_timeout``). ``settle``: seconds the new application
    must stay up (or exit 0) to count as started.
    """

    command: str
    pid_file: Path
    settle: float = 0.5
    stop_timeout: float = 5.0

    def launch(self, image: str, reader: ImageReaderLike, arguments: bytes | None) -> str:
        path = getattr(reader, "path", None)
        if not isinstance(path, Path):
            raise StorageError(f"{image}: not stored in a file; cannot start it as a process")
        path = path.resolve()
        self.stop()
        argv = [part.replace("{image}", str(path)) for part in shlex.split(self.command)]
        if arguments:
            argv.append(arguments.decode("utf-8", "replace"))
        if not argv:
            raise StorageError(f"{image}: the application command is empty")
        try:
            # A session of its own, so that stop() can end the whole application later; no
            # Popen object, since the application outlives this process on purpose.
            pid = os.posix_spawnp(argv[0], argv, os.environ, setsid=True,
                                  file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull,
                                                 os.O_RDONLY, 0)])
        except OSError as e:
            raise StorageError(f"{image}: cannot start {argv[0]!r}: {e.strerror}") from e
        atomic_write(self.pid_file, f"{pid}\n".encode())
        code = None
        deadline = time.monotonic() + self.settle
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.02)
        if code not in (None, 0):
            raise StorageError(f"{image}: the application exited with status {code} at start")
        state = "running" if code is None else "ran and exited 0"
        return f"started {image} from {path.parent.name}/ (pid {pid}, {state})"

    def stop(self) -> None:
        """Stop the application started by the previous launch, if it still runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline and _running(pid):
                time.sleep(0.02)
            if _running(pid):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs; reaps it if it is our child and has exited."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class ImageComponent:
    """An installed image as a SUIT component: read, hashed, and started through a launcher.

    Used while the bootloader checks a slot (no launcher: nothing is started) and while the
    Invocation Procedure runs on the booted images.
    """

    def __init__(self, identity: ComponentIdentity, name: str, reader: ImageReaderLike | None,
                 launcher: Launcher | None = None, log: list[str] | None = None) -> None:
        self._identity, self._name, self._reader = identity, name, reader
        self._launcher, self._log = launcher, log if log is not None else []

    @property
    def identity(self) -> ComponentIdentity:
        return self._identity

    def size(self) -> int | None:
        return self._reader.size if self._reader else None

    def digest(self, algorithm: int) -> bytes | None:
        if self._reader is None:
            return None
        return stream_digest(reader_chunks(self._reader, CHUNK), algorithm)

    def read(self, chunk_size: int) -> Iterator[bytes]:
        return reader_chunks(self._reader, chunk_size) if self._reader else iter(())

    def open_writer(self, max_size: int, *, metadata: Mapping[int, object] | None) -> object:
        raise StorageError(f"{self._name}: installed images are not written here")

    def invoke(self, arguments: bytes | None) -> None:
        if self._launcher is None:
            raise StorageError(f"{self._name}: images are not started while they are checked")
        if self._reader is None:
            raise StorageError(f"{self._name}: no image to start")
        self._log.append(self._launcher.launch(self._name, self._reader, arguments))

    def slot(self) -> int | None:
        return 0  # images run from the primary (active) slot


class _RunningStore:
    def __init__(self, config: DeviceConfig, store: BootStore, launcher: Launcher,
                 log: list[str], identity: ComponentIdentity) -> None:
        self._config, self._store, self._launcher = config, store, launcher
        self._log, self._identity = log, identity

    def component(self, identifier: ComponentIdentifier) -> ImageComponent | None:
        spec = self._config.component(identifier)
        if spec is None:
            return None
        try:
            _, reader = self._store.running(spec.image)
        except SuitError:
            reader = None
        return ImageComponent(self._identity, spec.image, reader, self._launcher, self._log)

    def swap(self, first: ComponentIdentifier, second: ComponentIdentifier) -> None:
        raise StorageError("no swap at invocation")


@dataclass(frozen=True, slots=True)
class Invoked:
    """What ``invoke_running`` started, and the processor results per manifest."""

    started: tuple[str, ...]
    results: tuple[ProcessResult, ...]

    @property
    def succeeded(self) -> bool:
        return all(r.succeeded for r in self.results)


def invoke_running(config: DeviceConfig, store: BootStore, launcher: Launcher, *,
                   limits: Limits | None = None,
                   extensions: Extensions = NO_EXTENSIONS) -> Invoked:
    """Run the Invocation Procedure of each running image's manifest (once per manifest), with
    the device's custom commands (``extensions``).

    Raises:
        SuitError: a stored envelope no longer verifies.
    """
    limits = limits or Limits()
    anchors = config.trust_anchors()
    dependency_anchors = config.dependency_anchors()
    identity = ComponentIdentity(vendor_ids=frozenset({config.vendor_id}),
                                 class_ids=frozenset({config.class_id}),
                                 device_ids=frozenset({config.device_id}))
    seen: set[bytes] = set()
    log: list[str] = []
    results = []
    for spec in config.components:
        try:
            record, _ = store.running(spec.image)
        except SuitError:
            continue
        _, envelope = split_slot_record(record, limits=limits)
        if envelope in seen:
            continue
        seen.add(envelope)
        # trust-domains: an image a dependency manifest installed is kept with that manifest
        verified = verify_stored(envelope, anchors, dependency_anchors, limits=limits)
        device = Device(_RunningStore(config, store, launcher, log, identity),  # type: ignore[arg-type]
                        InstalledEnvironment(dependency_anchors))
        results.append(process(verified, "invoke", device, limits=limits,
                               extensions=extensions))
    return Invoked(tuple(log), tuple(results))
