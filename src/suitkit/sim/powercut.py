"""The power-cut harness over the real update path (RFC 9019 §4.1: "a power failure at any time
must not cause a failure of the device").

``suitkit.bootloader.powercut`` cuts the bootloader's own steps with a simplified manifest. This
harness cuts everything a device does for an update, as the ``suitkit device`` commands do it:
a device folder (``device.wiring.open_device``), ``Consumer.install`` with a real signed SUIT
envelope (payload integrated, or detached and fetched from a firmware folder) through the
processor, the download journal, staging, the set check and marking pending, then the boot,
the application's confirm (``real-SHAPE-revert``: no confirm, the next boot reverts), a boot,
and a second update the same way; every command saves the folder.

``real-SHAPE-anchors`` starts with a trust-anchor rotation (docs/keys.md) that replaces and
revokes the author key of the running release; the updates are signed by the new key. Its
checks add: the stored anchors are the old ones or exactly the new ones at every boot, the
rotation tried again after a cut installs, and a release of the revoked key is refused.
``real-linux-agent`` is a Linux-class device whose agent is a component updated with the
application (``device.selfupdate``). ``real-mcu-bootloader`` is an mcu device with a stage 0
(``device init --stage1``): the body updates the stage-1 bootloader through the consumer
(component ``['suitkit', 'bootloader']``: the other copy written, checked, its header
programmed), boots it on trial and confirms it, then updates the application; its checks add
the stage 1's: at every boot an authentic stage 1 of a release that was installed, never
below a confirmed one, one trial per install, its counter never down and equal to the running
stage 1 once steady; the interrupted stage-1 install tried again installs, and a later one
still goes through.

For each scenario (per RFC 9019 §5 shape: payload integrated, detached, a revert, or a
rotation first; and the agent's) it:

1. runs the body once cleanly and counts its *events*: every flash operation (erase, program)
   and every durable file step (the download journal, the folder's flash save, every write,
   fsync, rename and directory fsync of the Linux-class slots), numbered on one power supply;
2. for every event ``n`` (or a seeded sample), replays the body on a copy of the same device
   with the power cut at event ``n``, then powers up and boots as the device would: the
   application confirms a release it runs on trial;
3. checks, at every boot and after recovery:

   - the device boots (a brick is a failure), a whole set from one signed release, with the
     digests the author signed;
   - a release that runs steady (not on trial) is one the application confirmed (or the set it
     was provisioned with); a trial release never has its counters raised; counters never go
     down and equal the running release once steady; a confirmed release stays;
   - a steady boot writes nothing;
   - the interrupted install, tried again, installs (when what runs is older), and the next
     valid update installs, boots on trial and is confirmed.

What a cut leaves:

- a flash operation: the torn program or erase of the flash model (``bootloader.flash``); the
  flash is non-volatile, so what it holds is saved to the folder;
- a file step of the device (the download journal): the flash keeps what it holds, the file is
  not written;
- the folder's save (``flash/state.cbor`` or ``state.1.cbor``, in turn): the folder keeps the
  state it had before the command, as after a crash of the process that simulates the device;
- Linux-class devices (no flash): lost unsynced writes. A file written and not yet fsynced is,
  at random (seeded), gone, truncated, ended with garbage, or complete; a rename or an unlink not
  yet made durable by its directory's fsync is, at random, undone (the old file is back).

Not modelled: reordering of metadata between directories, a partial fsync of a file over 1 MiB
(the images here are small), cuts of one flash while the other stays powered.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from suitkit.author.anchors import Edits, initial_document, next_document, rotation_envelope
from suitkit.author.describe import parse_description
from suitkit.bootloader.api import BootResult, NoBootableImage
from suitkit.bootloader.flash import PowerCut, PowerSupply
from suitkit.core import codec, crypto
from suitkit.core.sign import sign_envelope
from suitkit.device.config import (
    AGENT_ID,
    AGENT_IMAGE,
    BOOTLOADER_ID,
    BOOTLOADER_IMAGE,
    SHAPE_COMPONENTS,
    create_device,
)
from suitkit.device.consumer import InstallOutcome
from suitkit.device.fetch import FileFetcher
from suitkit.device.wiring import OpenDevice, Stage1Bootloader, open_device
from suitkit.errors import SuitError

__all__ = ["REAL_SCENARIOS", "RealCutResult", "RealScenario", "run_real_scenario"]

BASE, OLD, NEW, NEXT, LATER = 1, 2, 3, 4, 5
"""The release the device is provisioned with; an earlier update already confirmed (so the
slots and trailers are as in the field); the update under test; the second update of the
body; the update that must still install after recovery."""
LABELS = {BASE: "base", OLD: "old", NEW: "new", NEXT: "next", LATER: "later"}
SIZES = {BASE: 3000, OLD: 4100, NEW: 6200, NEXT: 2700, LATER: 5300}
"""Image sizes (per component, plus 300 bytes per component index): different, so swaps move
blocks of different content and blank areas."""
IMAGE_SECTORS = 3
"""Slot size of the simulated flashes in 4 KiB sectors: the images fit, the runs stay fast."""
MAX_RECOVERY_BOOTS = 6
JOURNAL_EVERY = 2048
"""The download journal is saved every 2 KiB made durable (64 KiB on devices), so that the
small images of the harness write it, and a retried install resumes from it."""
VENDOR_DOMAIN = "example.com"
CLASS_NAME = "powercut-board"


@dataclass(frozen=True, slots=True)
class RealScenario:
    name: str
    shape: str
    detached: bool
    revert: bool = False
    """The first update is never confirmed: the boot after its trial reverts it."""
    anchors: bool = False
    """A trust-anchor rotation first (docs/keys.md): the author key that signed the running
    release is replaced by a new one and revoked; the updates are signed by the new key."""
    delta: bool = False
    """The updates under test are zstd-compressed SKD1 deltas from the release before them,
    fetched (docs/delta.md): the device rebuilds each image from the one it runs."""
    agent: bool = False
    """The device agent is a component too (``device.selfupdate``): every release updates the
    application and the agent."""
    stage1: bool = False
    """An mcu with a stage 0: the body updates the stage-1 bootloader first
    (docs/selfupdate.md)."""

    @property
    def description(self) -> str:
        payload = "detached (fetched from a firmware folder)" if self.detached else "integrated"
        if self.delta:
            payload = "a compressed delta from the running release, fetched"
        first = "boot, boot (revert)" if self.revert else "boot, confirm, boot"
        rotation = ("a trust-anchor rotation revoking the running release's signer, boot; "
                    if self.anchors else "")
        what = " (application and agent)" if self.agent else ""
        if self.stage1:
            rotation = ("Consumer.install of a stage-1 bootloader (stage 0), boot on trial, "
                        "confirm, boot; ")
        return (f"{self.shape}: {rotation}Consumer.install of a signed envelope{what}, payload "
                f"{payload}; {first}; a second update installed, booted and confirmed")


SINGLE_SLOT = frozenset({"mcu-inplace"})
"""Shapes with one slot, updated by in-place deltas only (docs/delta.md §9)."""

REAL_SCENARIOS: dict[str, RealScenario] = {
    **{f"real-{shape}-{kind}": RealScenario(f"real-{shape}-{kind}", shape,
                                            kind in ("detached", "delta"), kind == "revert",
                                            kind == "anchors", kind == "delta")
       for shape in SHAPE_COMPONENTS if shape not in SINGLE_SLOT
       for kind in ("integrated", "detached", "revert", "anchors", "delta")},
    "real-linux-agent": RealScenario("real-linux-agent", "linux", True, agent=True),
    "real-mcu-inplace-delta": RealScenario("real-mcu-inplace-delta", "mcu-inplace", True,
                                           delta=True),
    "real-mcu-bootloader": RealScenario("real-mcu-bootloader", "mcu", False, stage1=True),
}


@dataclass
class RealCutResult:
    scenario: str
    shape: str
    clean_events: int
    """Flash operations and file steps of the body in a clean run."""
    flash_ops: int
    """Of which flash operations."""
    cut_points_tried: int = 0
    failures: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    """How many runs ended (after recovery, before the later update) on each release."""
    seconds: float = 0.0


class Broken(Exception):
    """An invariant did not hold."""


# ---------------------------------------------------------------------------- releases


class Releases:
    """Signed envelopes of every release for one shape, the images in a firmware folder."""

    def __init__(self, folder: Path, shape: str, *, detached: bool, seed: int,
                 anchors: bool = False, delta: bool = False, agent: bool = False,
                 stage1: bool = False) -> None:
        self.folder = folder
        self.components = SHAPE_COMPONENTS[shape] + ((AGENT_IMAGE,) if agent else ())
        self.key = crypto.generate_private_key("ES256")
        self.anchor = folder / "author.pub"
        folder.mkdir(parents=True, exist_ok=True)
        self.anchor.write_bytes(crypto.public_key_to_pem(self.key.public_key()))
        self.rotation: bytes | None = None
        """``anchors``: the rotation (version 1: the author key replaced and revoked)."""
        self.rotation_document = b""
        self.root_anchor: Path | None = None
        self.attack = b""
        """``anchors``: a release signed by the revoked key, which must be refused."""
        new_key = self.key
        if anchors:
            root, new_key = crypto.generate_private_key("ES256"), crypto.generate_private_key(
                "ES256")
            self.root_anchor = folder / "root.pub"
            self.root_anchor.write_bytes(crypto.public_key_to_pem(root.public_key()))
            document = next_document(
                initial_document([("root", root.public_key()),
                                  ("author", self.key.public_key())]),
                Edits(replace=[(self.key.public_key(), new_key.public_key())]))
            vendor = _vendor()
            rotation = rotation_envelope(document, vendor_id=vendor,
                                         class_id=uuid.uuid5(vendor, CLASS_NAME))
            self.rotation = codec.encode_envelope(sign_envelope(rotation, root.signer()))
            self.rotation_document = document.encode()
        self.digests: dict[int, dict[str, bytes]] = {}
        self.envelopes: dict[int, bytes] = {}
        self.inplace = shape in SINGLE_SLOT
        """A single-slot shape: every update is an in-place delta from what runs, so each
        release is made from each release it may be installed over (``envelope``)."""
        self.variants: dict[tuple[int, int], bytes] = {}
        """``(release, precursor)``: the in-place delta of the release from the precursor."""
        sizes = INPLACE_SIZES if self.inplace else SIZES
        delta_from = INPLACE_DELTA_FROM if self.inplace else DELTA_FROM
        for seq in LABELS:
            images: dict[str, bytes] = {}
            for index, name in enumerate(self.components):
                rng = random.Random(f"{shape}/{name}/{seq}/{seed}")  # noqa: S311 (test data)
                size = sizes[seq] + 300 * index
                source = delta_from.get(seq, ()) if delta else ()
                if not source:
                    image = rng.randbytes(size)
                else:  # the release before, edited: what a delta is made for
                    image = _edited((folder / f"{name}-{source[0]}.bin").read_bytes(), size,
                                    rng)
                (folder / f"{name}-{seq}.bin").write_bytes(image)
                images[name] = image
            self.digests[seq] = {name: hashlib.sha256(image).digest()
                                 for name, image in images.items()}
            for precursor in (delta_from.get(seq, ()) if delta else ()) or (None,):
                data, envelope = self._release(seq, precursor, detached=detached,
                                               delta=delta, agent=agent,
                                               signer=new_key if seq in (NEW, NEXT, LATER)
                                               else self.key)
                if precursor is None or precursor == delta_from[seq][0]:
                    self.envelopes[seq] = data
                if precursor is not None:
                    self.variants[(seq, precursor)] = data
            if anchors and seq == LATER:
                self.attack = codec.encode_envelope(sign_envelope(envelope, self.key.signer()))
        self.stage1: dict[int, bytes] = {}
        """``stage1``: the stage-1 bootloader's signed envelope of each release."""
        self.stage1_digests: dict[int, bytes] = {}
        for seq in LABELS if stage1 else ():
            image = random.Random(f"stage1/{seq}/{seed}").randbytes(2000 + 211 * seq)  # noqa: S311
            (folder / f"stage1-{seq}.bin").write_bytes(image)
            description = parse_description(
                {"sequence-number": seq, "vendor-domain": VENDOR_DOMAIN,
                 "class-name": CLASS_NAME,
                 "components": [{"id": [f"0x{p.hex()}" for p in BOOTLOADER_ID],
                                 "image": f"stage1-{seq}.bin"}]}, base=folder)
            envelope = codec.build_envelope(description.manifest,
                                            integrated=description.integrated)
            self.stage1[seq] = codec.encode_envelope(sign_envelope(envelope,
                                                                   self.key.signer()))
            self.stage1_digests[seq] = hashlib.sha256(image).digest()

    def _release(self, seq: int, precursor: int | None, *, detached: bool, delta: bool,
                 agent: bool, signer: Any) -> tuple[bytes, Any]:
        """One signed envelope of release ``seq`` (a delta from ``precursor``, if given)."""
        folder = self.folder
        comps: list[dict[str, Any]] = []
        tag = f"-from-{precursor}" if self.inplace and precursor is not None else ""
        for index, name in enumerate(self.components):
            file = f"{name}-{seq}.bin"
            cid = ([f"0x{p.hex()}" for p in AGENT_ID] if name == AGENT_IMAGE and agent
                   else [f"0x{index:02x}"])
            comp: dict[str, Any] = {"id": cid, "image": file}
            if detached:
                comp["uri"] = f"{file}{tag}.payload" if delta else file
            if precursor is not None:
                comp["delta-from"] = f"{name}-{precursor}.bin"
                comp["compress"] = "zstd"
                if self.inplace:
                    comp["in-place"] = INPLACE_SECTOR
            comps.append(comp)
        description = parse_description(
            {"sequence-number": seq, "vendor-domain": VENDOR_DOMAIN,
             "class-name": CLASS_NAME, "components": comps}, base=folder)
        for index, (_suffix, payload) in description.packed.items():
            (folder / f"{self.components[index]}-{seq}.bin{tag}.payload").write_bytes(payload)
        if delta:
            for index, name in enumerate(self.components):
                if index not in description.packed:
                    (folder / f"{name}-{seq}.bin{tag}.payload").write_bytes(
                        (folder / f"{name}-{seq}.bin").read_bytes())
        envelope = codec.build_envelope(description.manifest,
                                        sever_members=description.sever,
                                        integrated=description.integrated)
        return codec.encode_envelope(sign_envelope(envelope, signer.signer())), envelope

    def envelope(self, seq: int, running: int | None) -> bytes:
        """Release ``seq`` as installed over ``running`` (the in-place delta from it, on a
        single-slot shape, when one was made)."""
        if self.inplace and running is not None:
            found = self.variants.get((seq, running))
            if found is not None:
                return found
        return self.envelopes[seq]


DELTA_FROM: dict[int, tuple[int, ...]] = {NEW: (OLD,), NEXT: (NEW,)}
"""In delta scenarios, the update under test and the second one are deltas from the release
the device runs before each (after recovery, LATER, a full image, must install whatever runs)."""
INPLACE_DELTA_FROM: dict[int, tuple[int, ...]] = {OLD: (BASE,), NEW: (OLD,), NEXT: (NEW,),
                                                  LATER: (NEXT, NEW)}
"""A single-slot shape installs in-place deltas only (its first image, BASE, is programmed
into the blank device): LATER is made from each release the device may run after recovery."""
INPLACE_SIZES = {BASE: 9000, OLD: 9400, NEW: 9900, NEXT: 9500, LATER: 10100}
"""Images of about three sectors (the slot), so the rewrite moves every sector; edits of a
few hundred bytes, so each patch fits the one-sector patch area."""
INPLACE_SECTOR = 4096


def _edited(previous: bytes, size: int, rng: random.Random) -> bytes:
    """``previous`` with a few bytes changed and grown or shrunk in the middle to ``size``."""
    data = bytearray(previous)
    for _ in range(4):
        at = rng.randrange(len(data))
        data[at] ^= 0x5A
    half = len(data) // 2
    if size >= len(data):
        return bytes(data[:half] + rng.randbytes(size - len(data)) + data[half:])
    return bytes(data[:size // 2] + data[len(data) - (size - size // 2):])


def _vendor() -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_DNS, VENDOR_DOMAIN)


# ---------------------------------------------------------------------------- lost writes


class LostWrites:
    """Which files of a Linux-class device hold writes a power cut can lose.

    Fed the labels of ``FsBootloader``'s durable steps (``write P``, ``fsync P``, ``rename P``
    from ``P.tmp``, ``fsync-dir D``, ``symlink P``, ``create P``, ``overwrite P``), each called
    just before its operation: when the next label arrives, the previous operation is done.

    A file written in place (``overwrite P``) and not fsynced since may hold, after the cut, its
    old content, its new content, a mix of both (new blocks then old, or old then new: the page
    cache writes back in any order), either cut short or ended with garbage; a file created in
    place (``create P``) is gone unless its directory was fsynced since, like a rename.
    """

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.unsynced: set[Path] = set()
        self.renamed: dict[Path, tuple[str, bytes | str | None]] = {}
        self._last: str | None = None
        self._before_rename: tuple[str, bytes | str | None] | None = None
        self.overwritten: dict[Path, bytes] = {}
        """Files written in place since their last fsync: their content before."""

    def step(self, label: str) -> None:
        """The operation of the previous label completed; ``label``'s is about to start."""
        self._done(self._last)
        self._last = label
        kind, _, rel = label.partition(" ")
        if kind in ("rename", "unlink", "create"):
            self._before_rename = self._capture(self.root / rel)
        elif kind == "overwrite":
            path = self.root / rel
            if path not in self.overwritten and path.is_file():
                self.overwritten[path] = path.read_bytes()

    def _capture(self, path: Path) -> tuple[str, bytes | str | None]:
        if path.is_symlink():
            return ("link", os.readlink(path))
        if path.is_file():
            return ("file", path.read_bytes())
        return ("none", None)

    def _done(self, label: str | None) -> None:
        if label is None:
            return
        kind, _, rel = label.partition(" ")
        path = self.root / rel
        if kind in ("write", "symlink", "overwrite"):
            self.unsynced.add(path)
        elif kind == "create":
            self.unsynced.add(path)
            if path not in self.renamed and self._before_rename is not None:
                self.renamed[path] = self._before_rename  # its name: durable at fsync-dir
        elif kind == "fsync":
            self.unsynced.discard(path)
            self.overwritten.pop(path, None)
        elif kind == "rename":
            source = path.with_name(path.name + ".tmp")
            if source in self.unsynced:
                self.unsynced.discard(source)
                self.unsynced.add(path)
            if path not in self.renamed and self._before_rename is not None:
                self.renamed[path] = self._before_rename
        elif kind == "unlink":
            # Like a rename, an unlink is durable only once its directory is fsynced.
            if path not in self.renamed and self._before_rename is not None:
                self.renamed[path] = self._before_rename
        elif kind == "fsync-dir":
            directory = path.resolve() if rel != "." else self.root.resolve()
            for renamed in [p for p in self.renamed if p.parent.resolve() == directory]:
                del self.renamed[renamed]
                self.unsynced.discard(renamed)  # a renamed symlink is durable now

    def cut(self) -> list[str]:
        """Apply what the cut loses; return what was lost (for messages)."""
        lost = []
        for path, (kind, old) in sorted(self.renamed.items()):
            if self.rng.random() < 0.5:
                path.unlink(missing_ok=True)
                if kind == "file":
                    assert isinstance(old, bytes)
                    path.write_bytes(old)
                elif kind == "link":
                    assert isinstance(old, str)
                    path.symlink_to(old)
                self.unsynced.discard(path)
                lost.append(f"rename or unlink of {path.name} undone")
        for path in sorted(self.unsynced):
            old = self.overwritten.get(path)
            if old is not None and path.is_file() and not path.is_symlink():
                lost += self._tear_in_place(path, old)
                continue
            if path.is_symlink() or not path.is_file():
                if path.is_symlink() and self.rng.random() < 0.5:
                    path.unlink()
                    lost.append(f"{path.name} gone")
                continue
            data = path.read_bytes()
            fate = self.rng.randrange(4)
            if fate == 0:
                path.unlink()
                lost.append(f"{path.name} gone")
            elif fate == 1:
                path.write_bytes(data[: self.rng.randrange(len(data) + 1)])
                lost.append(f"{path.name} truncated")
            elif fate == 2 and data:
                keep = self.rng.randrange(len(data))
                path.write_bytes(data[:keep] + self.rng.randbytes(len(data) - keep))
                lost.append(f"{path.name} torn")
        return lost

    def _tear_in_place(self, path: Path, old: bytes) -> list[str]:
        """What an unsynced in-place write of ``path`` (``old`` before it) leaves."""
        new = path.read_bytes()
        fate = self.rng.randrange(6)
        if fate == 0:
            path.write_bytes(old)
            return [f"{path.name} overwrite lost (old content)"]
        if fate == 1:
            return []
        size = self.rng.choice([len(old), len(new)])
        at = self.rng.randrange(size + 1)
        first, second = (new, old) if self.rng.random() < 0.5 else (old, new)
        if fate == 2:
            torn = first[:at] + second[at:size]
        elif fate == 3:
            torn = first[:at] + self.rng.randbytes(max(0, size - at))
        elif fate == 4:
            torn = first[:at]
        else:
            torn = bytes(size)  # blocks allocated, data never written: zeroes
        path.write_bytes(torn)
        return [f"{path.name} torn in place"]


# ---------------------------------------------------------------------------- one device


class Cut(Exception):
    """Internal: the cut fell, with how to recover from it."""

    def __init__(self, kind: str, label: str) -> None:
        super().__init__(f"{kind} {label}")
        self.kind = kind
        self.label = label


class Board:
    """A device folder driven as the ``suitkit device`` commands drive it, with the power cut
    at one numbered event (flash operation or file step) across all the commands."""

    def __init__(self, folder: Path, releases: Releases, shape: str, seed: int) -> None:
        self.folder = folder
        self.releases = releases
        self.shape = shape
        self.seed = seed
        self.fetcher = FileFetcher(releases.folder)
        self.remaining: int | None = None
        """Events until the cut (None: no cut armed)."""
        self.events = 0
        """Flash operations and file steps so far (one numbering: the board's supply)."""
        self.file_steps = 0
        self.saves = 0
        """Of the file steps, the folder's saves (the end of every command)."""
        self.lost: LostWrites | None = None
        self.confirmed: set[int] = set()
        """Releases the application confirmed (or called confirm on: a cut may fall inside)."""
        self.floor = 0
        """The highest release whose confirm returned."""
        self.counters: dict[str, int] = {}
        self.trials: dict[int, int] = {}
        self.running: int | None = None
        """The release the last boot ran (what an in-place delta is installed over)."""
        # the stage-1 bootloader (``stage1`` scenarios)
        self.s1_confirmed: set[int] = set()
        """Stage-1 releases the device confirmed (or called confirm on)."""
        self.s1_floor = 0
        self.s1_counter = 0
        self.s1_trials: dict[int, int] = {}
        self.s1_running: int | None = None
        """The stage-1 release the last boot started, and whether on trial."""
        self.s1_trial = False
        self.s1_interrupted: int | None = None

    # -- commands -------------------------------------------------------------------------

    @contextmanager
    def command(self) -> Iterator[OpenDevice]:
        """Open the folder, run one command, save; count and cut its events."""
        supply = PowerSupply()
        if self.remaining is not None:
            supply.cut_after(self.remaining)
        holder: list[PowerSupply] = [supply]

        def step(label: str) -> None:
            if self.lost is not None:
                self.lost.step(label)
            self.file_steps += 1
            self.saves += label.startswith("save ")
            _, cut = holder[0].start_op()
            if cut:
                raise Cut("file", label)

        opened = open_device(self.folder, crash=step)
        if opened.flashes:
            flash_supply = next(iter(opened.flashes.values())).supply
            for flash in opened.flashes.values():
                flash.seed = self.seed  # the torn states of a cut: (seed, operation number)
            if self.remaining is not None:
                flash_supply.cut_after(self.remaining)
            holder[0] = flash_supply
        before = holder[0].ops
        try:
            yield opened
            opened.save()
        except PowerCut as e:
            # A flash operation did not complete: the flash is non-volatile, keep what it holds.
            holder[0].restore()
            opened.crash = None
            opened.save()
            raise Cut("flash", str(e)) from None
        except Cut as cut:
            holder[0].restore()
            if cut.label.startswith("save "):
                raise  # the folder keeps what it held before this command
            if opened.flashes:
                opened.crash = None
                opened.save()
            raise
        finally:
            done = holder[0].ops - before
            self.events += done
            if self.remaining is not None:
                self.remaining -= done

    def install(self, seq: int) -> InstallOutcome:
        with self.command() as opened:
            consumer = replace(opened.consumer(self.fetcher), journal_every=JOURNAL_EVERY)
            outcome = consumer.install(self.releases.envelope(seq, self.running))
        if outcome.installed:
            # A new install (the agent's retry after a cut undid a confirm, so the release
            # was reverted) earns a new trial: the bootloader gives each install one.
            self.trials.pop(seq, None)
        return outcome

    def boot(self) -> BootResult:
        self.s1_running, self.s1_trial = None, False
        with self.command() as opened:
            result = opened.bootloader.boot()
            started = (opened.bootloader.last
                       if isinstance(opened.bootloader, Stage1Bootloader) else None)
            counter = opened.bootloader.read_counters().get(BOOTLOADER_IMAGE)
        if started is not None and counter is not None:
            self.check_stage1(started.sequence_number, started.digest, started.trial, counter)
        self.check_boot(result)
        return result

    def install_stage1(self, seq: int) -> InstallOutcome:
        """Install release ``seq`` of the stage-1 bootloader through the consumer."""
        with self.command() as opened:
            outcome = opened.consumer(self.fetcher).install(self.releases.stage1[seq])
        if outcome.installed:
            self.s1_trials.pop(seq, None)  # each install earns one trial
        return outcome

    def check_stage1(self, seq: int, digest: bytes, trial: bool, counter: int) -> None:
        """Stage 0 started an authentic stage 1, never below a confirmed one, tried once."""
        if seq not in LABELS or digest != self.releases.stage1_digests.get(seq):
            raise Broken(f"stage 0 started a stage 1 (#{seq}) the author never signed")
        if seq < self.s1_floor:
            raise Broken(f"stage-1 release {seq} runs although stage-1 release "
                         f"{self.s1_floor} was confirmed")
        if trial:
            self.s1_trials[seq] = self.s1_trials.get(seq, 0) + 1
            if self.s1_trials[seq] > 1:
                raise Broken(f"stage-1 release {seq} started on trial a second time")
        elif seq not in self.s1_confirmed:
            raise Broken(f"stage-1 release {seq} runs confirmed although the device never "
                         "confirmed it")
        if counter < self.s1_counter:
            raise Broken(f"stage-1 counter went down from {self.s1_counter} to {counter}")
        if counter > seq or (trial and counter >= seq):
            raise Broken(f"stage-1 counter {counter} with stage-1 release {seq} "
                         f"{'on trial' if trial else 'running'}")
        self.s1_counter = counter
        self.s1_running, self.s1_trial = seq, trial

    def rotate(self) -> InstallOutcome:
        """Install the trust-anchor rotation (``anchors`` scenarios)."""
        assert self.releases.rotation is not None
        with self.command() as opened:
            return opened.consumer(self.fetcher).install(self.releases.rotation)

    def anchors_version(self) -> int:
        """0 or 1, and the stored anchors are the old ones or exactly the new ones."""
        try:
            stored = open_device(self.folder).config.stored_anchors()
        except SuitError as e:
            raise Broken(f"the trust anchors are unreadable: {e}") from None
        if stored is None:
            return 0
        if stored.raw != self.releases.rotation_document or stored.document.version != 1:
            raise Broken(f"the trust anchors are neither the old nor the new ones (version "
                         f"{stored.document.version})")
        return 1

    def finish_rotation(self) -> None:
        """After a cut: the rotation, tried again if it did not happen, installs; a release
        signed by the revoked key is refused from then on."""
        if self.releases.rotation is None:
            return
        if self.anchors_version() == 0:
            outcome = self.rotate()
            if not outcome.installed:
                raise Broken(f"the rotation, tried again, did not install: {outcome.reason}")
            self.settle()
        if self.anchors_version() != 1:
            raise Broken("the rotation did not take")
        with self.command() as opened:
            refused = opened.consumer(self.fetcher).install(self.releases.attack)
        if refused.installed or "revoked key" not in refused.reason:
            raise Broken(f"a release signed by the revoked key was not refused as such: "
                         f"{refused.reason}")

    def confirm(self, seq: int) -> None:
        self.confirmed.add(seq)
        stage1 = self.s1_running if self.s1_trial else None
        if stage1 is not None:
            self.s1_confirmed.add(stage1)  # the device is healthy: the new stage 1 booted it
        with self.command() as opened:
            opened.bootloader.confirm()
        self.floor = max(self.floor, seq)
        if stage1 is not None:
            self.s1_floor = max(self.s1_floor, stage1)
            self.s1_trial = False

    def read_counters(self) -> dict[str, int]:
        return open_device(self.folder).bootloader.read_counters()

    # -- invariants -----------------------------------------------------------------------

    def release(self, result: BootResult) -> int:
        seqs = set(result.sequence_numbers.values())
        if len(seqs) != 1:
            raise Broken(f"a mixed set runs: {result.sequence_numbers}")
        seq = seqs.pop()
        if seq not in LABELS:
            raise Broken(f"unknown release {seq} runs")
        for image in result.images:
            if image.digest != self.releases.digests[seq][image.name]:
                raise Broken(f"{image.name}: release {seq} runs with a digest the author never "
                             "signed")
        return seq

    def check_boot(self, result: BootResult) -> None:
        seq = self.release(result)
        self.running = seq
        if self.releases.rotation is not None:
            self.anchors_version()
        counters = {name: value for name, value in self.read_counters().items()
                    if name != BOOTLOADER_IMAGE}  # the stage 1's: check_stage1
        for name, value in counters.items():
            if value < self.counters.get(name, 0):
                raise Broken(f"{name}: counter went down from {self.counters[name]} to {value}")
            if value > seq:
                raise Broken(f"{name}: counter {value} is above the running release {seq}")
            if result.trial and value >= seq:
                raise Broken(f"{name}: counter raised to {value} while release {seq} is only "
                             "on trial")
        self.counters = counters
        if result.trial:
            self.trials[seq] = self.trials.get(seq, 0) + 1
            # A single slot keeps nothing to go back to: a release stays on trial until it
            # is confirmed (docs/delta.md §9), so a cut confirm gives it another trial boot.
            if self.trials[seq] > 1 and not self.releases.inplace:
                raise Broken(f"release {seq} booted on trial a second time")
        elif seq not in self.confirmed:
            raise Broken(f"release {seq} runs steady although the application never confirmed "
                         "it")
        if seq < self.floor:
            raise Broken(f"release {seq} runs although release {self.floor} was confirmed")

    def settle(self) -> int:
        """Boot (confirming what runs on trial) until steady; check; return the release."""
        for _ in range(MAX_RECOVERY_BOOTS):
            result = self.boot()
            seq = self.release(result)
            if not result.trial and not self.s1_trial:
                break
            self.confirm(seq)
        else:
            raise Broken(f"still on trial after {MAX_RECOVERY_BOOTS} boots")
        writes = self.events - self.saves
        stage1 = self.s1_running
        again = self.boot()
        if again.trial or self.release(again) != seq or self.s1_trial \
                or self.s1_running != stage1:
            raise Broken(f"not steady: release {seq}, then {again.sequence_numbers} (stage 1 "
                         f"{stage1}, then {self.s1_running})")
        if self.events - self.saves != writes:
            raise Broken(f"a steady boot wrote ({self.events - self.saves - writes} flash "
                         "operations or file steps)")
        expected = dict.fromkeys(self.releases.components, seq)
        if stage1 is not None:
            expected[BOOTLOADER_IMAGE] = stage1
        if self.read_counters() != expected:
            raise Broken(f"counters {self.read_counters()} != the running release {seq}"
                         + (f" and stage 1 {stage1}" if stage1 is not None else ""))
        return seq

    def finish_stage1(self) -> None:
        """After a cut: the interrupted stage-1 install, tried again, installs when what runs
        is older (the agent's retry)."""
        wanted = self.s1_interrupted
        self.s1_interrupted = None
        if wanted is not None and self.s1_running is not None and wanted > self.s1_running:
            self.update_stage1(wanted)

    def update_stage1(self, seq: int) -> None:
        """Install a stage 1, boot it on trial, confirm, boot: every step must work."""
        outcome = self.install_stage1(seq)
        if not outcome.installed:
            raise Broken(f"the stage-1 update to release {seq} did not install: "
                         f"{outcome.reason}")
        result = self.boot()
        if self.s1_running != seq or not self.s1_trial:
            raise Broken(f"the stage-1 update to release {seq} started stage 1 "
                         f"{self.s1_running} (trial {self.s1_trial})")
        self.confirm(self.release(result))
        self.settle()
        if self.s1_running != seq:
            raise Broken(f"stage-1 release {seq} did not stay after its confirm")


    def update(self, seq: int) -> None:
        """Install, boot on trial, confirm, boot: every step must work."""
        outcome = self.install(seq)
        if not outcome.installed:
            raise Broken(f"the update to release {seq} did not install: {outcome.reason}")
        trial = self.boot()
        if not trial.trial or self.release(trial) != seq:
            raise Broken(f"the update to release {seq} booted {trial.sequence_numbers} "
                         f"(trial {trial.trial})")
        self.confirm(seq)
        if self.settle() != seq:
            raise Broken(f"release {seq} did not stay after its confirm")


# ---------------------------------------------------------------------------- the scenario


def _body(board: Board, interrupted: list[int], *, revert: bool = False) -> None:
    """The cut range: an update to NEW, then one to NEXT, as the device's commands do them;
    with ``revert``, NEW is never confirmed and the boot after its trial reverts it. With a
    rotation (``anchors``), it comes first, then a boot (the running release, signed by the
    key it revokes, keeps booting)."""
    if board.releases.rotation is not None:
        outcome = board.rotate()
        if not outcome.installed:
            raise Broken(f"a clean install of the rotation failed: {outcome.reason}")
        if board.release(board.boot()) != OLD:
            raise Broken("the running release did not boot after the rotation")
    if board.releases.stage1:
        board.s1_interrupted = NEW
        outcome = board.install_stage1(NEW)
        if not outcome.installed:
            raise Broken(f"a clean install of stage-1 release {NEW} failed: {outcome.reason}")
        board.s1_interrupted = None
        board.boot()
        if board.s1_running != NEW or not board.s1_trial:
            raise Broken(f"stage-1 release {NEW} did not start on trial")
        board.confirm(OLD)
        board.boot()
    for seq in (NEW, NEXT):
        interrupted[:] = [seq]
        outcome = board.install(seq)
        if not outcome.installed:
            raise Broken(f"a clean install of release {seq} failed: {outcome.reason}")
        interrupted.clear()
        trial = board.boot()
        if not trial.trial:
            raise Broken(f"release {seq} did not boot on trial: {trial.sequence_numbers}")
        if revert and seq == NEW:
            back = board.boot()
            if back.trial or board.release(back) != OLD:
                raise Broken(f"release {seq}, never confirmed, was not reverted: "
                             f"{back.sequence_numbers} (trial {back.trial})")
            continue
        board.confirm(seq)
        board.boot()


def _recover(board: Board, interrupted: list[int]) -> None:
    """What follows a cut: boot until steady, then the interrupted install tried again (the
    agent's retry, resumed from the download journal) when what runs is older; where a second
    cut falls."""
    seq = board.settle()
    board.finish_rotation()
    board.finish_stage1()
    if interrupted and interrupted[0] > seq:
        board.update(interrupted[0])


def _provision(folder: Path, releases: Releases, shape: str, seed: int, *,
               agent: bool = False) -> None:
    vendor = _vendor()
    anchors: list[Path | tuple[str, Path]] = [releases.anchor]
    if releases.root_anchor is not None:
        anchors = [("root", releases.root_anchor), ("author", releases.anchor)]
    create_device(folder, vendor_id=vendor, class_id=uuid.uuid5(vendor, CLASS_NAME),
                  trust_anchors=anchors, shape=shape,
                  device_id=uuid.UUID(int=seed), image_sectors=IMAGE_SECTORS, agent=agent,
                  stage1=bool(releases.stage1))
    board = Board(folder, releases, shape, seed)
    open_device(folder).save()
    if releases.inplace:
        board.confirmed.add(BASE)  # programmed into the blank device: it runs as it is
    if releases.stage1:  # the factory stage 1, then an earlier stage-1 update, confirmed
        outcome = board.install_stage1(BASE)
        if not outcome.installed:
            raise Broken(f"provisioning stage-1 release {BASE}: {outcome.reason}")
        board.s1_confirmed.add(BASE)
    for seq in (BASE, OLD):
        outcome = board.install(seq)
        if not outcome.installed:
            raise Broken(f"provisioning release {seq}: {outcome.reason}")
        board.boot()
        board.confirm(seq)
    board.settle()
    if releases.stage1:
        board.update_stage1(OLD)


def _choose(total: int, sample: int | None, seed: int) -> list[int]:
    points = list(range(1, total + 1))
    if sample is None or sample >= total:
        return points
    return sorted(random.Random(seed).sample(points, sample))  # noqa: S311 (sampling)


def run_real_scenario(name: str, *, sample: int | None = None, seed: int = 0,
                      points: Iterable[int] | None = None, second: int | None = 0,
                      workdir: Path | None = None,
                      progress: Callable[[int, int], None] | None = None) -> RealCutResult:
    """Cut the power at every event of a real-path scenario (or a seeded sample) and check.

    Args:
        name: a key of :data:`REAL_SCENARIOS`.
        sample: try this many cut points (chosen with ``seed``) instead of all of them.
        points: try exactly these cut points (events numbered from 1; beyond the clean run's
            count are ignored).
        second: after each cut, cut the power again during the recovery (the boots, and the
            confirms of what runs on trial, until steady): ``0`` never, ``None`` at every
            event of that recovery, ``N`` at a seeded sample of ``N`` of them. Each pair counts
            as one cut point tried.
        seed: seeds the images, the torn flash states, the lost writes and the sampling.
        workdir: where device folders are made (default: a temporary directory, removed).
        progress: called with (first cut points done, first cut points to try).
    """
    scenario = REAL_SCENARIOS[name]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="suitkit-powercut-", dir=workdir) as tmp:
        root = Path(tmp)
        releases = Releases(root / "firmware", scenario.shape, detached=scenario.detached,
                            seed=seed, anchors=scenario.anchors, delta=scenario.delta,
                            agent=scenario.agent, stage1=scenario.stage1)
        golden = root / "golden"
        _provision(golden, releases, scenario.shape, seed, agent=scenario.agent)

        def fresh(label: str) -> Board:
            folder = root / label
            if folder.exists():
                shutil.rmtree(folder)
            shutil.copytree(golden, folder, symlinks=True)
            board = Board(folder, releases, scenario.shape, seed)
            board.counters = board.read_counters()
            board.confirmed, board.floor = {BASE, OLD}, OLD
            board.running = OLD
            if scenario.stage1:
                board.s1_confirmed, board.s1_floor = {BASE, OLD}, OLD
                board.s1_counter = OLD
            return board

        def cut(board: Board, steps: Callable[[], object], n: int, salt: str) -> str:
            """Run ``steps`` with the power cut at its ``n``-th event; what the cut left."""
            board.remaining = n
            if scenario.shape == "linux":
                rng = random.Random(f"{seed}/{salt}")  # noqa: S311 (simulation)
                board.lost = LostWrites(board.folder / "slots", rng)
            try:
                steps()
                raise Broken(f"no power cut happened at event {n}")
            except Cut as e:
                what = str(e)
                if board.lost is not None:
                    lost = board.lost.cut()
                    what += f" ({', '.join(lost)})" if lost else ""
                return what
            finally:
                board.remaining = None
                board.lost = None

        clean = fresh("clean")
        _body(clean, [], revert=scenario.revert)
        result = RealCutResult(name, scenario.shape, clean.events,
                               clean.events - clean.file_steps)
        outcomes: dict[str, int] = {}
        chosen = (_choose(clean.events, sample, seed) if points is None
                  else sorted({n for n in points if 1 <= n <= clean.events}))
        for done, n in enumerate(chosen):
            seconds: list[int | None] = [None]
            if second != 0:
                # Count the events of the recovery after a cut at n, to cut there too.
                probe = fresh("probe")
                stopped: list[int] = []
                try:
                    cut(probe, partial(_body, probe, stopped, revert=scenario.revert), n,
                        f"{n}")
                    before = probe.events
                    _recover(probe, stopped)
                    seconds = list(_choose(probe.events - before, second, seed + n))
                except (Broken, SuitError, NoBootableImage, PowerCut, Cut, AssertionError,
                        OSError) as e:
                    result.failures.append(f"cut at event {n} (probe): {type(e).__name__}: {e}")
                    continue
            for m in seconds:
                result.cut_points_tried += 1
                board = fresh("run")
                interrupted: list[int] = []
                what = "?"
                try:
                    what = cut(board, partial(_body, board, interrupted,
                                              revert=scenario.revert), n, f"{n}")
                    if m is not None:
                        what += "; then at event " + str(m) + " of the recovery: " + cut(
                            board, partial(_recover, board, list(interrupted)), m,
                            f"{n}/{m}")
                    seq = board.settle()
                    label = LABELS[seq]
                    if scenario.stage1 and board.s1_running is not None:
                        label += f", stage 1 {LABELS.get(board.s1_running, '?')}"
                    outcomes[label] = outcomes.get(label, 0) + 1
                    board.finish_rotation()
                    board.finish_stage1()
                    if interrupted and interrupted[0] > seq:
                        board.update(interrupted[0])  # the agent tries the install again
                    board.update(LATER)
                    if scenario.stage1:
                        board.update_stage1(LATER)  # the bootloader is still updatable
                except (Broken, SuitError, NoBootableImage, PowerCut, Cut, AssertionError,
                        OSError) as e:
                    result.failures.append(f"cut at event {n} [{what}]: {type(e).__name__}: "
                                           f"{e}")
            if progress is not None:
                progress(done + 1, len(chosen))
        result.outcomes = outcomes
    result.seconds = time.perf_counter() - started
    return result
