"""The API shape shared by the flash bootloader and the filesystem A/B slots.

Two small protocols, so that the device layer (the firmware consumer of RFC 9019 §3) can drive
either a microcontroller's flash slots (:class:`~suitkit.bootloader.boot.FlashBootloader`) or a
Linux-class device's slot directories (:class:`~suitkit.bootloader.fsslots.FsBootloader`):

- :class:`SlotStore`, the write side the SUIT processor will use to install images: open the
  inactive slot of a component for streaming writes (bounded memory; never more than the
  announced image size, as RFC 9124 REQ.SEC.IMG.COMPLETE_DIGEST and design rule 6 ask), finish
  it, and mark the whole set pending in one step.
- :class:`Bootloader`, the boot side: ``boot()`` decides, swaps or reverts as needed, verifies
  and reports what runs; ``confirm()`` is what the running image calls once it is healthy.

Lifecycle of an update, on either implementation (:func:`stage_set` does the first two lines)::

    w = store.open_inactive("app", manifest=m, image_size=len(img)); w.write(...); w.finish()
    store.check_staged()          # optional: would the next boot refuse the staged set?
    store.mark_pending()          # the commit point of staging
    bootloader.boot()             # new image on trial
    bootloader.confirm()          # or not: the next boot reverts

A boot set is staged as a whole: every component is written (an unchanged one with its current
release) before ``mark_pending``, which is what makes the set atomic.

Not here: fetching, manifest processing, or any decision (see :mod:`suitkit.bootloader.decide`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from suitkit.bootloader.decide import Decision, Verdict
from suitkit.bootloader.verifier import ImageInfo, ImageReader
from suitkit.errors import PolicyError, SuitError


@dataclass(frozen=True, slots=True)
class RunningImage:
    """One image the bootloader hands control to."""

    name: str
    sequence_number: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class SlotCheck:
    """The verdict on one slot of one image, with what the verifier vouched for."""

    verdict: Verdict
    info: ImageInfo | None = None
    reason: str | None = None


def check_set(names: Sequence[str], checks: Sequence[SlotCheck],
              where: str) -> tuple[SlotCheck, ...]:
    """The set-level check: the images of one slot of every member must belong together.

    Each slot is verified against its own manifest; a manifest that names another image of the
    set (``ImageInfo.vouches``) must also hold for that image, unless that image's own manifest
    is newer (the consumer re-stages images an update leaves alone with their older manifests,
    and an older manifest names the images as they were then). So a set mixed from two
    releases, say the secure image of release 4 with the non-secure image of release 5 (both
    of which name both images), is refused: release 5 names another secure image.

    ``where`` labels the slot in reasons ("secondary", "in slot b"). A member that breaks the
    rule becomes ``BAD`` with the reason; members without ``info`` are left as they are.
    """
    out = list(checks)
    infos = [c.info for c in checks]
    for j, name in enumerate(names):
        mine = infos[j]
        if mine is None:
            continue
        own = dict(mine.vouches).get(name)
        for i, other in enumerate(infos):
            if i == j or other is None or other.sequence_number < mine.sequence_number:
                continue
            claim = dict(other.vouches).get(name)
            if claim is not None and claim != own:
                out[j] = SlotCheck(
                    Verdict.BAD,
                    mine,
                    f"{name} {where}: the manifest of {names[i]} (sequence number "
                    f"{other.sequence_number}) names another {name} image than this one "
                    f"(sequence number {mine.sequence_number}): the set mixes releases",
                )
                break
    return tuple(out)


def refuse_unbootable(checks: Sequence[SlotCheck]) -> None:
    """Raise if the next boot would refuse a staged set (the checks of its slot, set-checked).

    Raises:
        PolicyError: naming every member that is not ``GOOD`` and why.
    """
    reasons = [c.reason or "refused" for c in checks if c.verdict is not Verdict.GOOD]
    if reasons:
        raise PolicyError("the next boot would refuse the staged set: " + "; ".join(reasons))


@dataclass(frozen=True, slots=True)
class BootResult:
    """What runs after a boot, and how the bootloader got there."""

    images: tuple[RunningImage, ...]
    trial: bool
    """True when the images run on trial: the next boot reverts them unless confirmed."""
    steps: tuple[Decision, ...]
    """Every decision taken during this boot, in order; the last one is the boot."""
    notes: tuple[str, ...] = ()
    """Why candidates were refused (verification failures, rollbacks), for reports."""

    def image(self, name: str) -> RunningImage:
        for img in self.images:
            if img.name == name:
                return img
        raise KeyError(name)

    @property
    def sequence_numbers(self) -> dict[str, int]:
        return {img.name: img.sequence_number for img in self.images}


class NoBootableImage(SuitError):
    """No slot holds an authentic, recent-enough image (Table 2's PANIC rows).

    A real device would stop here or enter a recovery mode; ``notes`` says what was refused.
    """

    def __init__(self, message: str, notes: tuple[str, ...] = ()) -> None:
        self.notes = notes
        super().__init__(message + ("; " + "; ".join(notes) if notes else ""))


class SlotWriter(Protocol):
    """Streams one component's image into its inactive slot."""

    def write(self, data: bytes) -> None:
        """Append image bytes.

        Raises:
            StorageError: more bytes than the announced image size.
        """
        ...

    def finish(self) -> None:
        """Make the slot's content complete (the slot is not pending yet).

        Raises:
            StorageError: fewer bytes than the announced image size.
        """
        ...

    @property
    def offset(self) -> int:
        """Image bytes kept from an interrupted write when this one was opened with
        ``resume_at``: the caller writes from this offset on (0 for a fresh write)."""
        ...

    @property
    def durable(self) -> int:
        """Image bytes that survive a power cut or crash now (a resumable point)."""
        ...

    def read_back(self, offset: int, length: int) -> bytes:
        """Image bytes already written (to re-hash the kept prefix of a resumed download)."""
        ...

    def close(self) -> None:
        """Give up without finishing: what is durable stays in the slot for a later resume."""
        ...


class SlotStore(Protocol):
    """The write side: what the SUIT processor needs to install images."""

    @property
    def components(self) -> tuple[str, ...]:
        """The names of the images in the boot set, in order."""
        ...

    def open_inactive(self, component: str, *, manifest: bytes, image_size: int,
                      resume_at: int = 0) -> SlotWriter:
        """Start writing ``component``'s inactive slot, forgetting any earlier pending request.

        ``resume_at`` > 0 continues an interrupted write of the same manifest and size: the
        writer keeps what it safely can of the slot (its ``offset``).

        Raises:
            PolicyError: the running images are on trial (confirm them first).
            StorageError: the manifest or image does not fit the slot, or an unknown component.
        """
        ...

    def check_staged(self) -> None:
        """Verify the staged set as the next boot will (each slot, then the set check), so that
        a caller can refuse before ``mark_pending`` instead of the boot dropping it.

        Raises:
            PolicyError: the next boot would refuse the staged set (the reasons).
        """
        ...

    def mark_pending(self, *, permanent: bool = False) -> None:
        """Ask the next boot to install every staged component together.

        ``permanent=False`` installs on trial (test -> confirm -> or revert).

        Raises:
            StorageError: a component of the set has not been staged and finished.
        """
        ...


class Bootloader(SlotStore, Protocol):
    """The boot side, plus the store."""

    def boot(self) -> BootResult:
        """Decide, swap or revert if needed, verify, and report what runs.

        Raises:
            NoBootableImage: nothing authentic and recent enough to run.
        """
        ...

    def confirm(self) -> None:
        """Mark the running images good and raise the security counters to them.

        Raises:
            PolicyError: nothing that can be confirmed is running.
        """
        ...

    def pending_update(self) -> bool:
        """Whether staged images wait for the next boot."""
        ...

    def staged(self, component: str) -> bytes | None:
        """The manifest stored with ``component``'s staged image (the secondary or inactive
        slot), unverified; ``None`` when that slot holds no complete image."""
        ...

    def read_counters(self) -> dict[str, int]:
        """The anti-rollback security counter of each image (the last confirmed sequence)."""
        ...

    def counter_capacity(self) -> dict[str, int]:
        """The highest sequence number each image's security counter can hold: an image with
        a higher one can never be confirmed, so the bootloader refuses it at boot."""
        ...

    def running(self, component: str) -> tuple[bytes, ImageReader]:
        """The stored manifest and an image reader of ``component``'s executing slot
        (unverified; ``boot`` verifies).

        Raises:
            SuitError: no image there.
        """
        ...


def stage_set(
    store: SlotStore,
    images: Mapping[str, tuple[bytes, bytes]],
    *,
    permanent: bool = False,
    mark: bool = True,
    piece: int = 4096,
) -> None:
    """Stream ``{component: (manifest, image)}`` into a store and mark the set pending.

    ``piece`` is the size of each ``write`` (what a fetcher would hand over); ``mark=False``
    stages without committing.

    Raises:
        StorageError, PolicyError: as :meth:`SlotStore.open_inactive` and
            :meth:`SlotStore.mark_pending`.
    """
    for name, (manifest, image) in images.items():
        writer = store.open_inactive(name, manifest=manifest, image_size=len(image))
        for pos in range(0, len(image), piece):
            writer.write(image[pos : pos + piece])
        writer.finish()
    if mark:
        store.mark_pending(permanent=permanent)
