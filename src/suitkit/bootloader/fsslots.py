"""A/B slot directories on a filesystem: the Linux-class bootloader (RFC 9019 §5.3 devices).

Devices with a filesystem (RAUC, SWUpdate, Mender style) keep two complete slots and switch
between them atomically instead of swapping flash sectors. Layout under ``root``::

    slots/a/<component>.manifest   slots/a/<component>.image
    slots/b/<component>.manifest   slots/b/<component>.image
    current -> slots/a             the switch the OS boots from (a symlink replaced by rename)
    state.json, state.1.json       {"active", "phase", "pending"} -- the authority
    counters.json, counters.1.json security counters (highest confirmed sequence numbers)

Each record is kept in two copies that writes alternate between (``RECORDS``), each with a
generation and a checksum: the newest intact copy is read, so one damaged copy (a flipped bit)
costs at most the last write, never the device. A full disk leaves no partial file behind.

Every durable change is one atomic step. A file that does not exist yet is created as a
temporary file, fsynced, ``rename``d over and its directory fsynced (POSIX ``rename`` is
atomic). A file that exists is written IN PLACE and fdatasynced (no temporary file, rename or
directory fsync: issue #16's fixed cost) when nothing trusts its content torn: the record
copies (the older copy is written, with its generation and checksum: a torn one leaves the
newest intact copy, the state before the write) and the inactive slot's image and manifest of an
update without resume checkpoints (verified against the signed digest at every boot, and never
pending while being written: ``open_inactive`` drops the request first). ``state.json`` decides
what runs; ``current`` is brought in line with it at every boot, so a crash between the two
writes is repaired. A slot's files are verified before use (at every boot: RFC 9124
REQ.SEC.AUTH.EXEC), so a crash while staging leaves at worst a stray ``*.tmp`` or a slot that
does not verify.

The decisions are exactly :mod:`suitkit.bootloader.decide`'s table with *primary* = the active
slot and *secondary* = the inactive one; since switching is atomic there is never a swap or a
revert in progress (phases SWAPPING and REVERTING do not occur). The store API is the flash
bootloader's (:mod:`suitkit.bootloader.api`): ``open_inactive`` -> ``write``/``finish`` ->
``mark_pending``, then ``boot`` (on trial) and ``confirm``, or an automatic revert.

What it does not do: simulate lost writes that were not fsynced (a crash here is the process
stopping between durable steps, see ``crash``; ``suitkit.sim.powercut`` loses the unsynced ones
from the labels the hook is given), manage partitions or a real bootloader's
environment (U-Boot, GRUB), or protect ``counters.json`` from a root user (real devices keep it
in a TPM or RPMB).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from suitkit.bootloader.api import (
    BootResult,
    NoBootableImage,
    RunningImage,
    SlotCheck,
    check_set,
    refuse_unbootable,
)
from suitkit.bootloader.decide import (
    BOOTS,
    ON_TRIAL,
    REFUSAL_ROWS,
    STEADY,
    Action,
    BootState,
    Decision,
    Pending,
    Phase,
    Verdict,
    combine,
    decide,
)
from suitkit.bootloader.verifier import ImageVerifier
from suitkit.errors import PolicyError, StorageError, SuitError
from suitkit.limits import Limits

SLOTS = ("a", "b")
STATE_FORMAT = 1
MAX_STEPS = 8
_CHUNK = 64 * 1024
SEQUENCE_MAX = 2**64 - 1
"""The largest sequence number a manifest can carry (a CBOR unsigned integer)."""


@dataclass(frozen=True, slots=True)
class FsState:
    """The content of ``state.json``."""

    active: str
    phase: Phase
    pending: Pending

    @property
    def inactive(self) -> str:
        return SLOTS[1 - SLOTS.index(self.active)]

    def to_doc(self) -> dict[str, object]:
        return {
            "format": STATE_FORMAT,
            "active": self.active,
            "phase": self.phase.value,
            "pending": self.pending.value,
        }

    @classmethod
    def from_doc(cls, obj: Mapping[str, object]) -> FsState:
        """Raises: ValueError: not a valid or a possible slot state."""
        try:
            if obj["format"] != STATE_FORMAT or obj["active"] not in SLOTS:
                raise ValueError(f"format {obj['format']!r}, active {obj['active']!r}")
            state = cls(str(obj["active"]), Phase(obj["phase"]), Pending(obj["pending"]))
        except KeyError as e:
            raise ValueError(f"no {e}") from None
        if state.phase in (Phase.SWAPPING, Phase.REVERTING) or state.pending is Pending.PARTIAL:
            raise ValueError(f"an impossible state: {state}")
        return state


RECORDS = {"state.json": "state.1.json", "counters.json": "counters.1.json"}
"""Each record the bootloader keeps, and the second copy it alternates with (U-Boot's
redundant environment): a write goes to the copy that is not the newest intact one, with the
next generation and a checksum, so a copy that is damaged (a flipped bit, a torn write the
filesystem lost) leaves the other to read."""


def _seal(doc: Mapping[str, object], generation: int) -> bytes:
    body = {**doc, "generation": generation}
    check = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]
    return json.dumps({**body, "check": check}, sort_keys=True).encode()


def _unseal(data: bytes) -> tuple[dict[str, object], int]:
    """The record and its generation (a record written before the copies: generation 0).

    Raises:
        ValueError: not JSON, not an object, or the checksum does not match.
    """
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "check" not in obj:
        return obj, 0
    check = obj.pop("check")
    expected = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]
    generation = obj.pop("generation", None)
    if check != expected or not isinstance(generation, int) or generation < 1:
        raise ValueError("its checksum does not match its content (damaged)")
    return obj, generation


_RACY_NS = 50_000_000
"""File times come from a coarse clock (a jiffy, at most 10 ms): a file last changed longer
ago than this cannot change again without its times changing."""


@dataclass(frozen=True, slots=True)
class _Cached:
    """A record copy as read: its file's identity (inode, size, mtime, ctime), its bytes and
    their content. ``settled``: the file's times were older than ``_RACY_NS`` when it was read,
    so the same identity means the same bytes (git's "racily clean" rule); otherwise a write
    within the same clock tick could leave the identity as it was, and the bytes are read and
    compared (only the parsing and the checksum are saved)."""

    key: tuple[int, int, int, int]
    settled: bool
    data: bytes
    doc: dict[str, object]
    generation: int


@dataclass(frozen=True, slots=True)
class FileImageReader:
    """An :class:`~suitkit.bootloader.verifier.ImageReader` over a file (bounded memory)."""

    path: Path
    length: int
    vouched: tuple[int, bytes] | None = None
    """``(algorithm, digest)`` the processor checked these bytes against as they were written
    (``VouchedReader``); set for the set check before marking pending only."""

    @property
    def size(self) -> int:
        return self.length

    def known_digest(self, algorithm: int) -> bytes | None:
        if self.vouched is not None and self.vouched[0] == algorithm:
            return self.vouched[1]
        return None

    def read(self, offset: int, length: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(offset)
            return f.read(length)


@dataclass(frozen=True, slots=True)
class FsObservation:
    state: FsState
    primary: tuple[SlotCheck, ...]
    secondary: tuple[SlotCheck, ...]
    counters: dict[str, int]
    boot_state: BootState

    def reasons(self) -> tuple[str, ...]:
        return tuple(c.reason for c in self.primary + self.secondary if c.reason)


class FsBootloader:
    """A/B slot directories with an atomic switch, test -> confirm -> automatic revert.

    Args:
        root: the directory holding ``slots/``, ``current``, ``state.json``, ``counters.json``.
        components: the image names every slot holds (one set, switched together).
        verifier: one verifier for all components, or one per component.
        limits: bounds on what is read from a slot (the manifest size).
        crash: called with a label (``"rename state.json"``) before every durable step; a test
            raises :class:`~suitkit.bootloader.flash.PowerCut` from it to simulate a crash.
            The labels: ``write P`` (P.tmp or a new file's content), ``create P`` (a new file
            in place: its name is durable at the next ``fsync-dir``), ``overwrite P`` (an
            existing file written in place: until ``fsync P`` it may hold old, new or torn
            content), ``fsync P``, ``rename P`` (from P.tmp), ``unlink P``, ``symlink P``,
            ``fsync-dir D``.
    """

    def __init__(
        self,
        root: Path,
        components: Sequence[str],
        verifier: ImageVerifier | Mapping[str, ImageVerifier],
        *,
        limits: Limits | None = None,
        crash: Callable[[str], None] | None = None,
    ) -> None:
        if not components or len(set(components)) != len(components):
            raise ValueError(f"components must be unique and not empty: {components}")
        for name in components:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"component name {name!r} is not a plain file name")
        self.root = Path(root)
        self._components = tuple(components)
        if isinstance(verifier, Mapping):
            missing = set(components) - set(verifier)
            if missing:
                raise ValueError(f"no verifier for {sorted(missing)}")
            self._verifiers = {n: verifier[n] for n in components}
        else:
            self._verifiers = dict.fromkeys(components, verifier)
        self.limits = limits if limits is not None else Limits()
        self._crash = crash
        self._staged: set[str] = set()
        self._vouched: dict[str, tuple[tuple[int, int, int, int], int, bytes]] = {}
        """Per staged component: the image file's identity (device, inode, size, mtime) when
        this process finished writing it, and the digest the processor checked its bytes
        against (``FsSlotWriter.vouch``). ``check_staged`` uses it instead of hashing the image
        a second time while the file is still that one; ``boot`` never does."""
        self._slot_dirs = {slot: self.root / "slots" / slot for slot in SLOTS}
        self._record_paths = {f: self.root / f for pair in RECORDS.items() for f in pair}
        self._read_cache: dict[str, _Cached] = {}
        """Per record copy read intact: what it held. An install reads the state about ten
        times; a ``stat`` tells whether the file changed since (see ``_Cached``)."""
        for slot in SLOTS:
            self._slot_dirs[slot].mkdir(parents=True, exist_ok=True)

    @property
    def components(self) -> tuple[str, ...]:
        return self._components

    # -- durable steps ---------------------------------------------------------------------

    def _step(self, label: str) -> None:
        if self._crash is not None:
            self._crash(label)

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def _fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        self._read_cache.pop(path.name if path.parent == self.root else "", None)
        tmp = path.with_name(path.name + ".tmp")
        self._step(f"write {self._rel(tmp)}")
        try:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                self._step(f"fsync {self._rel(tmp)}")
                os.fsync(f.fileno())
        except OSError:
            # A full disk (or a failing one): the half-written file would keep it full.
            _remove(tmp)
            raise
        self._step(f"rename {self._rel(path)}")
        tmp.replace(path)
        self._step(f"fsync-dir {self._rel(path.parent)}")
        self._fsync_dir(path.parent)

    def _overwrite(self, path: Path, data: bytes) -> None:
        """Write ``data`` over the existing file ``path`` in place, then fdatasync it: no
        temporary file, no rename, no directory fsync (its name is durable already). Only for a
        file whose torn content nothing trusts (see the module docstring). Not truncated first,
        so that the blocks it overwrites stay allocated (the fdatasync then writes data only)."""
        self._read_cache.pop(path.name if path.parent == self.root else "", None)
        rel = self._rel(path)
        self._step(f"overwrite {rel}")
        fd = os.open(path, os.O_WRONLY)
        try:
            old_size = os.fstat(fd).st_size
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if old_size > len(data):
                os.ftruncate(fd, len(data))
            self._step(f"fsync {rel}")
            _datasync(fd)
        finally:
            os.close(fd)

    def _read_record(self, name: str, parse: Callable[[Mapping[str, object]], object]
                     ) -> tuple[object | None, int, str]:
        """The newest intact copy of record ``name`` parsed (``None``: never written), its
        generation, and the file the next write goes to.

        Raises:
            StorageError: every copy there is is damaged.
        """
        best: tuple[object | None, int, str] = (None, -1, name)
        damaged = []
        for file in (name, RECORDS[name]):
            path = self._record_paths[file]
            try:
                st = os.stat(path)
                key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                cached = self._read_cache.get(file)
                data = None
                if cached is None or cached.key != key or not cached.settled:
                    data = path.read_bytes()
                settled = max(st.st_mtime_ns, st.st_ctime_ns) < time.time_ns() - _RACY_NS
                if cached is not None and cached.key == key and data in (None, cached.data):
                    doc, generation = dict(cached.doc), cached.generation
                    if settled and not cached.settled:
                        self._read_cache[file] = dataclasses.replace(cached, settled=True)
                else:
                    assert data is not None
                    doc, generation = _unseal(data)
                    if len(data) == st.st_size:  # not written while it was read
                        self._read_cache[file] = _Cached(key, settled, data, dict(doc),
                                                         generation)
            except FileNotFoundError:
                self._read_cache.pop(file, None)
                continue
            except OSError as e:
                damaged.append(f"{file}: unreadable ({e.strerror})")
                continue
            except ValueError as e:
                damaged.append(f"{file}: {e}")
                continue
            try:
                parsed = parse(doc)
            except (ValueError, TypeError) as e:
                damaged.append(f"{file}: {e}")
                continue
            if generation > best[1]:
                best = (parsed, generation, file)
        if best[1] < 0:
            if damaged:
                raise StorageError(f"{name} is damaged in every copy: {'; '.join(damaged)}")
            return None, 0, name
        other = RECORDS[name] if best[2] == name else name
        return best[0], best[1], other

    def _write_record(self, name: str, doc: Mapping[str, object]) -> None:
        try:
            _, generation, target = self._read_record(name, lambda d: d)
        except StorageError:  # nothing intact to keep: either copy will do
            generation, target = 0, name
        path, sealed = self.root / target, _seal(doc, generation + 1)
        if path.is_file() and not path.is_symlink():
            # The copy that is not the newest intact one: a torn write leaves the other.
            self._overwrite(path, sealed)
        else:
            self._atomic_write(path, sealed)

    def _write_state(self, state: FsState) -> None:
        self._write_record("state.json", state.to_doc())

    def _switch(self, slot: str) -> None:
        """Point ``current`` at a slot: a new symlink renamed over the old one."""
        link = self.root / "current"
        target = os.path.join("slots", slot)
        if link.is_symlink() and os.readlink(link) == target:
            return
        tmp = self.root / "current.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        self._step("symlink current.tmp")
        tmp.symlink_to(target)
        self._step("rename current")
        tmp.replace(link)
        self._step("fsync-dir .")
        self._fsync_dir(self.root)

    # -- reading ---------------------------------------------------------------------------

    def read_state(self) -> FsState:
        """The slot state (``state.json``, the newest intact copy).

        Raises:
            StorageError: every copy is damaged.
        """
        state, _, _ = self._read_record("state.json", FsState.from_doc)
        if state is None:
            return FsState("a", Phase.NONE, Pending.NONE)
        assert isinstance(state, FsState)
        return state

    def read_counters(self) -> dict[str, int]:
        """The security counters (``counters.json``, the newest intact copy).

        Raises:
            StorageError: every copy is damaged.
        """
        found, _, _ = self._read_record("counters.json", _counters)
        raw = found if isinstance(found, dict) else {}
        return {n: int(raw.get(n, 0)) for n in self._components}

    def counter_capacity(self) -> dict[str, int]:
        """``counters.json`` holds any number: every sequence number a manifest can carry
        (an unsigned 64-bit integer) fits."""
        return dict.fromkeys(self._components, SEQUENCE_MAX)

    def slot_dir(self, slot: str) -> Path:
        return self._slot_dirs[slot]

    def check_slot(self, slot: str, component: str, counters: Mapping[str, int], *,
                   vouched: bool = False) -> SlotCheck:
        """Verify one component in one slot and compare it with its security counter.

        ``vouched``: use the digest this process's writer was vouched for (``check_staged``),
        when the image file is still the one it finished, instead of hashing it again.
        """
        where = f"{component} in slot {slot}"
        manifest_path = self.slot_dir(slot) / f"{component}.manifest"
        image_path = self.slot_dir(slot) / f"{component}.image"
        try:
            msize = manifest_path.stat().st_size
            if msize > self.limits.max_manifest_bytes:
                return SlotCheck(
                    Verdict.BAD,
                    None,
                    f"{where}: manifest of {msize} bytes exceeds the limit of "
                    f"{self.limits.max_manifest_bytes}",
                )
            manifest = manifest_path.read_bytes()
            st = image_path.stat()
            known = self._vouched.get(component) if vouched else None
            reader = FileImageReader(
                image_path, st.st_size,
                known[1:] if known is not None and known[0] == _identity(st) else None)
            info = self._verifiers[component].verify(manifest, reader)
        except FileNotFoundError:
            return SlotCheck(Verdict.BAD, None, f"{where}: missing")
        except SuitError as e:
            return SlotCheck(Verdict.BAD, None, f"{where}: {type(e).__name__}: {e}")
        floor = counters[component]
        # RFC 9124 REQ.SEC.SEQUENCE: never run anything older than what was confirmed.
        if info.sequence_number < floor:
            return SlotCheck(
                Verdict.ROLLBACK,
                info,
                f"{where}: sequence number {info.sequence_number} is below the security "
                f"counter {floor}",
            )
        return SlotCheck(Verdict.GOOD, info)

    def observe(self) -> FsObservation:
        state = self.read_state()
        counters = self.read_counters()
        names = self._components
        primary = check_set(
            names,
            [self.check_slot(state.active, c, counters) for c in names],
            f"in slot {state.active}",
        )
        secondary = check_set(
            names,
            [self.check_slot(state.inactive, c, counters) for c in names],
            f"in slot {state.inactive}",
        )
        behind = any(
            c.info is not None and c.info.sequence_number > counters[name]
            for name, c in zip(self._components, primary, strict=True)
        )
        boot_state = BootState(
            phase=state.phase,
            pending=state.pending,
            primary=combine(c.verdict for c in primary),
            secondary=combine(c.verdict for c in secondary),
            counters_behind=behind,
        )
        return FsObservation(state, primary, secondary, counters, boot_state)

    # -- boot ------------------------------------------------------------------------------

    def boot(self) -> BootResult:
        """Decide and switch until the active slot can run; report it.

        Raises:
            NoBootableImage: neither slot holds an authentic, recent-enough set.
            StorageError: unreadable state.
        """
        for pattern in ("*.tmp", "slots/*/*.tmp"):
            for stray in self.root.glob(pattern):
                stray.unlink()
        steps: list[Decision] = []
        notes: list[str] = []
        for _ in range(MAX_STEPS):
            obs = self.observe()
            decision = decide(obs.boot_state)
            steps.append(decision)
            if decision.row in REFUSAL_ROWS:
                notes += [r for r in obs.reasons() if r not in notes]
            if decision.action is Action.PANIC:
                raise NoBootableImage(
                    f"no bootable slot (row {decision.row}: {decision.why})", tuple(notes)
                )
            if decision.action in BOOTS:
                state = obs.state
                trial = decision.action is Action.BOOT_TRIAL
                if trial and state.phase is Phase.TRIAL:
                    self._write_state(FsState(state.active, Phase.TRIED, state.pending))
                self._switch(state.active)
                images = []
                for name, check in zip(self._components, obs.primary, strict=True):
                    if check.info is None:  # pragma: no cover - BOOT rows need a GOOD primary
                        raise AssertionError(f"row {decision.row} boots an unverified slot")
                    images.append(RunningImage(name, check.info.sequence_number, check.info.digest))
                return BootResult(tuple(images), trial, tuple(steps), tuple(notes))
            self._apply(decision.action, obs)
        raise StorageError(
            f"boot did not settle after {MAX_STEPS} decisions: "
            f"{[f'row {d.row} {d.action.value}' for d in steps]}"
        )

    def _apply(self, action: Action, obs: FsObservation) -> None:
        state = obs.state
        if action is Action.START_TEST_SWAP:
            self._write_state(FsState(state.inactive, Phase.TRIAL, Pending.NONE))
        elif action is Action.START_PERMANENT_SWAP:
            self._write_state(FsState(state.inactive, Phase.CONFIRMED, Pending.NONE))
        elif action is Action.START_REVERT:
            self._write_state(FsState(state.inactive, Phase.REVERTED, Pending.NONE))
        elif action is Action.DROP_PENDING:
            self._write_state(FsState(state.active, state.phase, Pending.NONE))
        elif action is Action.RAISE_COUNTERS:
            self._raise_counters(obs)
        else:
            raise StorageError(f"{action.value} cannot happen with atomic slot switching")

    def _raise_counters(self, obs: FsObservation) -> None:
        counters = dict(obs.counters)
        for name, check in zip(self._components, obs.primary, strict=True):
            if check.info is not None:
                counters[name] = max(counters[name], check.info.sequence_number)
        if counters != obs.counters:
            self._write_record("counters.json", {"counters": counters})

    def confirm(self) -> None:
        """Mark the running slot good (one atomic state write), then raise the counters.

        Raises:
            PolicyError: the running slot does not verify.
        """
        obs = self.observe()
        state = obs.state
        if obs.boot_state.primary is not Verdict.GOOD:
            raise PolicyError(
                "the running slot does not verify; not confirming: " + "; ".join(obs.reasons())
            )
        if state.phase in ON_TRIAL:
            self._write_state(FsState(state.active, Phase.CONFIRMED, state.pending))
        self._raise_counters(obs)

    # -- staging (SlotStore) ---------------------------------------------------------------

    def open_inactive(self, component: str, *, manifest: bytes, image_size: int,
                      resume_at: int = 0) -> FsSlotWriter:
        """Start streaming ``component`` into the inactive slot.

        ``resume_at``: image bytes an interrupted write of the same image made durable; the
        partial file is kept up to there (see ``FsSlotWriter.offset``).

        Raises:
            PolicyError: the active slot is on trial.
            StorageError: unknown component, or a manifest over the limit.
        """
        if component not in self._components:
            raise StorageError(f"unknown component {component!r}; this set has {self.components}")
        if len(manifest) > self.limits.max_manifest_bytes:
            raise StorageError(
                f"manifest of {len(manifest)} bytes exceeds the limit of "
                f"{self.limits.max_manifest_bytes}"
            )
        if image_size < 0:
            raise StorageError(f"image size must not be negative, got {image_size}")
        state = self.read_state()
        if state.phase not in STEADY:
            raise PolicyError(
                "the running slot is on trial: confirm it (or let it revert) before staging "
                "another update"
            )
        if state.pending is not Pending.NONE:
            # The old request goes first, so it never points at a half-written slot.
            self._write_state(FsState(state.active, state.phase, Pending.NONE))
        self._staged.discard(component)
        self._vouched.pop(component, None)
        slot = self.slot_dir(state.inactive)
        # An image with no resume checkpoint (see ``_SYNC_MIN``) is written in place over the
        # slot's files: the request was dropped above, and the boot verifies them.
        in_place = resume_at == 0 and image_size <= _SYNC_MIN
        if not in_place:
            for suffix in (".manifest", ".image"):
                path = slot / f"{component}{suffix}"
                if path.exists():
                    self._step(f"unlink {self._rel(path)}")
                    path.unlink()
        return FsSlotWriter(self, slot, component, manifest, image_size, resume_at=resume_at,
                            in_place=in_place)

    def mark_pending(self, *, permanent: bool = False) -> None:
        """One atomic state write asks the next boot to switch to the inactive slot.

        Raises:
            StorageError: some component was not staged and finished since the last commit.
            PolicyError: the active slot is on trial.
        """
        missing = [c for c in self._components if c not in self._staged]
        if missing:
            raise StorageError(f"cannot mark pending: {missing} not staged")
        state = self.read_state()
        if state.phase not in STEADY:
            raise PolicyError("the running slot is on trial: confirm it before marking pending")
        pending = Pending.PERMANENT if permanent else Pending.TEST
        self._write_state(FsState(state.active, state.phase, pending))
        self._staged.clear()
        self._vouched.clear()

    def check_staged(self) -> None:
        """Verify the inactive slot as the next boot will.

        Raises:
            PolicyError: the next boot would refuse the staged set.
        """
        slot, counters = self.read_state().inactive, self.read_counters()
        refuse_unbootable(check_set(
            self._components,
            [self.check_slot(slot, c, counters, vouched=True) for c in self._components],
            f"in slot {slot}",
        ))

    def pending_update(self) -> bool:
        """Whether staged images wait for the next boot."""
        return self.read_state().pending is not Pending.NONE

    def staged(self, component: str) -> bytes | None:
        """The manifest stored with ``component``'s image in the inactive slot (unverified), or
        ``None`` when there is none (a slot's manifest is written after its image; while an
        image is written in place, the slot's earlier manifest stays until ``finish``: only
        a pending slot's manifest goes with its image).

        Raises:
            StorageError: unknown component, or unreadable state.
        """
        if component not in self.components:
            raise StorageError(f"unknown component {component!r}; known: "
                               f"{', '.join(self.components)}")
        path = self.slot_dir(self.read_state().inactive) / f"{component}.manifest"
        try:
            if path.stat().st_size > self.limits.max_manifest_bytes:
                return None
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def running(self, component: str) -> tuple[bytes, FileImageReader]:
        """The manifest and an image reader of ``component`` in the active slot (unverified).

        Raises:
            StorageError: unknown component or no image in the active slot.
        """
        if component not in self.components:
            raise StorageError(f"unknown component {component!r}; known: "
                               f"{', '.join(self.components)}")
        slot = self.slot_dir(self.read_state().active)
        try:
            manifest = (slot / f"{component}.manifest").read_bytes()
            image = slot / f"{component}.image"
            return manifest, FileImageReader(image, image.stat().st_size)
        except OSError as e:
            raise StorageError(f"{component}: no image in the active slot ({e.strerror})") from e

    def install_factory(self, images: Mapping[str, tuple[bytes, bytes]]) -> None:
        """Factory state: ``{name: (manifest, image)}`` in slot ``a``, active, counters set.

        Raises:
            PolicyError: the images do not verify.
        """
        slot = self.slot_dir("a")
        for name, (manifest, image) in images.items():
            self._atomic_write(slot / f"{name}.image", image)
            self._atomic_write(slot / f"{name}.manifest", manifest)
        self._write_state(FsState("a", Phase.NONE, Pending.NONE))
        self._switch("a")
        self.confirm()

    def _finished(self, component: str, image: Path, vouched: tuple[int, bytes] | None) -> None:
        self._staged.add(component)
        if vouched is not None:
            self._vouched[component] = (_identity(image.stat()), *vouched)


def _datasync(fd: int) -> None:
    """fdatasync: the data and what reading it back needs (the size), not the times."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS has no fdatasync
        os.fsync(fd)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _counters(doc: Mapping[str, object]) -> dict[str, int]:
    """The counters of a ``counters.json`` record (before the copies: the bare mapping).

    Raises:
        ValueError: a counter is not a count.
    """
    raw = doc.get("counters", doc)
    if not isinstance(raw, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= SEQUENCE_MAX
            for v in raw.values()):
        raise ValueError(f"expected counts for the components, got {str(raw)[:80]}")
    return raw


_SYNC_MIN = 1 << 20
_CHECKPOINTS = 2
"""A partial image is fsynced at a checkpoint: half-way through the image, or at 1 MiB if
that is later (so none for an image up to 1 MiB, none at its end), so that an interrupted
download resumes from there; the consumer's download journal records it.

No crash-consistency argument needs these fsyncs: the partial file is ``*.image.tmp``, which
no boot reads (it is removed at boot) and which becomes the image only by ``finish``'s fsync
then rename; and the journal names only bytes fsynced before it is written, so a cut leaves it
naming fewer bytes at worst (a resumed download re-hashes the kept prefix with the rest, against
the signed digest). They only bound what a cut costs in downloading again: at most half the
image. A checkpoint was three fsyncs (the image, the journal and its directory) every MiB,
which made a 64 MiB install 8x slower than copying, hashing and fsyncing it once; quarters cost
1.35x at 16 MiB against 1.15x for halves. None is taken at the image's end, where ``finish``
fsyncs anyway."""


class FsSlotWriter:
    """Streams an image into ``<slot>/<component>.image.tmp``; ``finish`` renames it in place.

    ``in_place``: write ``<slot>/<component>.image`` itself (over its earlier content when it
    exists, not truncated first, so that its blocks stay allocated) and the manifest over the
    slot's earlier one: ``finish`` fdatasyncs both and fsyncs the directory only if it created
    either. For an image that takes no resume checkpoint, in a slot that is not pending.
    """

    def __init__(
        self, owner: FsBootloader, slot: Path, component: str, manifest: bytes, image_size: int,
        *, resume_at: int = 0, in_place: bool = False,
    ) -> None:
        self._owner = owner
        self._slot = slot
        self._component = component
        self._manifest = manifest
        self._size = image_size
        self._in_place = in_place
        self._tmp = slot / f"{component}.image{'' if in_place else '.tmp'}"
        self._label = owner._rel(self._tmp)
        self._vouched: tuple[int, bytes] | None = None
        self._sync_every = max(_SYNC_MIN, -(-image_size // _CHECKPOINTS))
        self._created = False
        self._kind = "write"
        start = 0
        self._file: BinaryIO
        if in_place:
            if self._tmp.is_file() and not self._tmp.is_symlink():
                self._kind = "overwrite"
                owner._step(f"overwrite {self._label}")
                self._file = self._tmp.open("r+b")
            else:
                self._created = True
                owner._step(f"create {self._label}")
                self._file = self._tmp.open("wb")
        else:
            owner._step(f"write {self._label}")
            if 0 < resume_at <= image_size and self._tmp.exists() \
                    and self._tmp.stat().st_size >= resume_at:
                start = resume_at  # the caller vouches these bytes were fsynced (``durable``)
                self._file = self._tmp.open("r+b")
                self._file.truncate(start)
                self._file.seek(start)
            else:
                self._file = self._tmp.open("wb")
        self._start = self._written = self._durable = start
        self._done = False

    @property
    def offset(self) -> int:
        """Image bytes already in the slot when writing (re)started: write from here on."""
        return self._start

    @property
    def durable(self) -> int:
        """Image bytes written and fsynced so far (they survive a crash)."""
        return self._durable

    def read_back(self, offset: int, length: int) -> bytes:
        """Image bytes already written (for a resumed download to re-hash its prefix)."""
        if offset < 0 or offset + length > self._written:
            raise StorageError(f"bytes {offset}..{offset + length} are not written yet")
        self._file.flush()
        with self._tmp.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    def write(self, data: bytes) -> None:
        if self._done:
            raise StorageError("write after finish")
        if self._written + len(data) > self._size:
            self._abort()
            raise StorageError(f"image data exceeds the announced size of {self._size} bytes")
        with self._writing():
            if self._owner._crash is None:
                self._file.write(data)
            else:  # one cut point every 64 KiB for the power-cut harnesses
                for pos in range(0, len(data), _CHUNK):
                    self._owner._step(f"{self._kind} {self._label}")
                    self._file.write(data[pos : pos + _CHUNK])
            end = self._written + len(data)
            # Not at the image's end: ``finish`` fsyncs it there at once.
            if end - self._durable >= self._sync_every and end < self._size:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._durable = self._written + len(data)
        self._written += len(data)

    def vouch(self, algorithm: int, digest: bytes) -> None:
        """The digest the update processor checked the written bytes against (the consumer's
        ``VouchingSlotWriter``): ``check_staged`` uses it instead of hashing the image again,
        while the image file is still the one ``finish`` made."""
        self._vouched = (algorithm, digest)

    def finish(self) -> None:
        if self._done:
            raise StorageError("finish called twice")
        if self._written != self._size:
            self._abort()
            raise StorageError(
                f"image has {self._written} bytes, the announced size is {self._size}"
            )
        owner = self._owner
        with self._writing():
            self._file.flush()
            if self._in_place and self._file.seek(0, os.SEEK_END) > self._size:
                self._file.truncate(self._size)  # the earlier image was longer
            owner._step(f"fsync {owner._rel(self._tmp)}")
            if self._in_place:
                _datasync(self._file.fileno())
            else:
                os.fsync(self._file.fileno())
        self._file.close()
        image = self._slot / f"{self._component}.image"
        manifest = self._slot / f"{self._component}.manifest"
        try:
            if not self._in_place:
                owner._step(f"rename {owner._rel(image)}")
                self._tmp.replace(image)
                owner._atomic_write(manifest, self._manifest)
            elif manifest.is_file() and not manifest.is_symlink():
                owner._overwrite(manifest, self._manifest)
                if self._created:  # the image's name
                    owner._step(f"fsync-dir {owner._rel(self._slot)}")
                    owner._fsync_dir(self._slot)
            else:  # new names: the image's, the manifest's (one directory fsync for both)
                _remove(manifest)
                owner._atomic_write(manifest, self._manifest)
        except OSError:
            # Not pending, and useless without its manifest: give the space back.
            self._done = True
            _remove(image)
            raise
        self._done = True
        owner._finished(self._component, image, self._vouched)

    def close(self) -> None:
        """Let go of the partial image without finishing it (it stays, for a resume; not when
        the disk is full, so that the space comes back)."""
        try:
            self._file.close()
        except OSError:  # the last buffered bytes did not fit: the caller is failing already
            _remove(self._tmp)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Writes to the partial image. An OSError (a full disk) removes it: it would keep the
        disk full (the agent's retry, the tracker's reports and the next boot need the space)
        and the download starts over. Anything else (a crash) leaves it behind, as a power cut
        would, for a resume."""
        try:
            yield
        except OSError:
            self._abort()
            raise
        except BaseException:
            self._file.close()
            raise

    def _abort(self) -> None:
        self._done = True
        with contextlib.suppress(OSError):  # the file is closed even when its flush fails
            self._file.close()
        _remove(self._tmp)


def _remove(path: Path) -> None:
    """Remove a file this store was writing, if it is there (best effort: the caller is
    already failing with the reason)."""
    with contextlib.suppress(OSError):
        path.unlink()
