"""Device shapes from RFC 9019 §5, each a flash layout and a bootloader over the flash model.

- ``mcu`` (§5.1 "Single MCU"): one image that executes in place, so an update is a swap
  between the primary slot and a secondary (staging) slot on the same internal flash.
- ``secure-split`` (§5.2, secure and normal mode partitioning): a secure image and a normal
  image on one internal flash, updated together atomically (both or neither) as one boot set;
  each may have its own trust anchor.
- ``dual-cpu`` (§5.5 "Dual CPU, Other Bus"): the main CPU's image on its internal flash
  (non-uniform: a 16 KiB first sector reserved for the bootloader, then 4 KiB sectors), and a
  co-processor whose executing slot is on the co-processor's own flash (2 KiB sectors, 16-byte
  write unit). The main CPU stages both images on its flash and swaps the co-processor's image
  over the bus; the two images form one set applied atomically. Both flashes share one power
  supply (one board): a cut stops both.

A profile only builds flashes, a layout and a :class:`~suitkit.bootloader.boot.FlashBootloader`;
it does not install images (see :meth:`Device.provision`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from suitkit.bootloader.boot import FlashBootloader
from suitkit.bootloader.flash import Flash, PowerSupply
from suitkit.bootloader.layout import Allocator, BootLayout, ImageSlots, Region
from suitkit.bootloader.records import RecordArea
from suitkit.bootloader.stage0 import Stage0, Stage1Layout, stage1_layout_fits
from suitkit.bootloader.verifier import ImageVerifier

SECTOR = 4096
COMPONENTS: dict[str, tuple[str, ...]] = {
    "mcu": ("app",),
    "secure-split": ("secure", "nonsecure"),
    "dual-cpu": ("main", "coproc"),
}
"""The image names of each shape's boot set, in order (the first one leads)."""
COUNTER_BYTES = 256
"""One counter region per image (2048 values)."""
STAGE1_SECTORS = 2
"""Size of each stage-1 copy (``make_mcu(stage1=...)``) in sectors."""
ANCHOR_SECTORS = 5
"""Size of each copy of the trust-anchor area (``anchors=True``) in sectors: a 16 KiB
document and the recorded manifests (docs/keys.md "Storage")."""


@dataclass
class Device:
    """A simulated device: its power supply, flashes, layout and bootloader."""

    shape: str
    supply: PowerSupply
    flashes: dict[str, Flash]
    layout: BootLayout
    bootloader: FlashBootloader
    stage0: Stage0 | None = None
    """The immutable first stage choosing between two stage-1 copies (``make_mcu(stage1=)``),
    or ``None``: the bootloader is not updatable (as MCUboot)."""
    anchors: RecordArea | None = None
    """The trust-anchor area (``anchors=True``): two copies at the end of the first flash,
    after everything else, so a flash saved without it is a prefix of one with it."""

    def restore_power(self) -> None:
        self.supply.restore()

    def provision(self, images: Mapping[str, tuple[bytes, bytes]]) -> None:
        """Factory state: ``{name: (manifest, image)}`` in the primary slots, counters set.

        Raises:
            StorageError: an image does not fit.
            PolicyError: the factory images do not verify.
        """
        self.bootloader.install_factory(images)

    @property
    def ops(self) -> int:
        return self.supply.ops


def _anchor_area(flashes: Mapping[str, Flash], flash: str) -> RecordArea:
    """The last ``2 * ANCHOR_SECTORS`` sectors of ``flash``: the trust-anchor area."""
    dev = flashes[flash]
    sectors = dev.sectors[-2 * ANCHOR_SECTORS:]
    first, second = sectors[:ANCHOR_SECTORS], sectors[ANCHOR_SECTORS:]
    return RecordArea(flashes, (Region(flash, first[0].offset, sum(x.size for x in first)),
                                Region(flash, second[0].offset, sum(x.size for x in second))),
                      name="trust anchors")


def _counters(alloc: Allocator, flash: str, n: int) -> list[Region]:
    alloc.align(flash)
    return [alloc.bytes(flash, COUNTER_BYTES) for _ in range(n)]


def make_mcu(
    verifier: ImageVerifier | Mapping[str, ImageVerifier],
    *,
    image_sectors: int = 3,
    seed: int = 0,
    chunk: int = 1024,
    stage1: ImageVerifier | None = None,
    anchors: bool = False,
) -> Device:
    """RFC 9019 §5.1: one image, swap through a scratch sector, on one internal flash.

    ``stage1``: stage 0's verifier of stage-1 images: the bootloader is then updatable, two
    stage-1 copies and their flags (``bootloader.stage0``) sit after the scratch sector and a
    stage-1 counter after the application's. ``anchors``: a trust-anchor area at the end.
    """
    supply = PowerSupply()
    extra = (0 if stage1 is None else 2 * (STAGE1_SECTORS + 1)) + (
        2 * ANCHOR_SECTORS if anchors else 0)
    flash = Flash(
        "internal",
        [SECTOR] * (2 * image_sectors + 5 + extra),
        write_align=8,
        page_size=1024,
        supply=supply,
        seed=seed,
    )
    flashes = {"internal": flash}
    a = Allocator(flashes)
    primary = a.sectors("internal", image_sectors)
    status = a.sectors("internal", 1)
    secondary = a.sectors("internal", image_sectors)
    pending = a.sectors("internal", 1)
    scratch = a.sectors("internal", 1)
    if stage1 is None:
        (counter,) = _counters(a, "internal", 1)
    else:
        copies = (a.sectors("internal", STAGE1_SECTORS), a.sectors("internal", STAGE1_SECTORS))
        flags = (a.sectors("internal", 1), a.sectors("internal", 1))
        counter, stage1_counter = _counters(a, "internal", 2)
    layout = BootLayout(
        images=(ImageSlots(COMPONENTS["mcu"][0], primary, secondary, pending, counter),),
        status=status,
        scratch=scratch,
    )
    device = Device(
        "mcu", supply, flashes, layout, FlashBootloader(layout, flashes, verifier, chunk=chunk)
    )
    if stage1 is not None:
        stage1_layout = Stage1Layout(copies, flags, stage1_counter)
        stage1_layout_fits(stage1_layout, layout.regions())
        device.stage0 = Stage0(stage1_layout, flashes, stage1, chunk=chunk)
    if anchors:
        device.anchors = _anchor_area(flashes, "internal")
    return device


def make_secure_split(
    verifier: ImageVerifier | Mapping[str, ImageVerifier],
    *,
    image_sectors: int = 2,
    seed: int = 0,
    chunk: int = 1024,
    anchors: bool = False,
) -> Device:
    """RFC 9019 §5.2: a secure and a normal image on one flash, one atomic boot set
    (``anchors``: a trust-anchor area at the end)."""
    supply = PowerSupply()
    flash = Flash(
        "internal",
        [SECTOR] * (4 * image_sectors + 5 + (2 * ANCHOR_SECTORS if anchors else 0)),
        write_align=8,
        page_size=1024,
        supply=supply,
        seed=seed,
    )
    flashes = {"internal": flash}
    a = Allocator(flashes)
    secure_p = a.sectors("internal", image_sectors)
    status = a.sectors("internal", 1)
    normal_p = a.sectors("internal", image_sectors)
    secure_s = a.sectors("internal", image_sectors)
    secure_pending = a.sectors("internal", 1)
    normal_s = a.sectors("internal", image_sectors)
    normal_pending = a.sectors("internal", 1)
    scratch = a.sectors("internal", 1)
    secure_c, normal_c = _counters(a, "internal", 2)
    layout = BootLayout(
        images=(
            ImageSlots(COMPONENTS["secure-split"][0], secure_p, secure_s, secure_pending, secure_c),
            ImageSlots(COMPONENTS["secure-split"][1], normal_p, normal_s, normal_pending, normal_c),
        ),
        status=status,
        scratch=scratch,
    )
    return Device(
        "secure-split",
        supply,
        flashes,
        layout,
        FlashBootloader(layout, flashes, verifier, chunk=chunk),
        anchors=_anchor_area(flashes, "internal") if anchors else None,
    )


def make_dual_cpu(
    verifier: ImageVerifier | Mapping[str, ImageVerifier],
    *,
    image_sectors: int = 2,
    seed: int = 0,
    chunk: int = 1024,
    anchors: bool = False,
) -> Device:
    """RFC 9019 §5.5: main CPU and co-processor flashes on one supply, one atomic boot set
    (``anchors``: a trust-anchor area at the end of the main CPU's flash)."""
    supply = PowerSupply()
    main = Flash(
        "main",
        [4 * SECTOR] + [SECTOR] * (4 * image_sectors + 5 + (2 * ANCHOR_SECTORS if anchors
                                                             else 0)),
        write_align=8,
        page_size=1024,
        supply=supply,
        seed=seed,
    )
    coproc = Flash(
        "coproc",
        [SECTOR // 2] * (2 * image_sectors + 2),
        write_align=16,
        page_size=512,
        supply=supply,
        seed=seed + 1,
    )
    flashes = {"main": main, "coproc": coproc}
    a = Allocator(flashes)
    a.sectors("main", 1)  # the bootloader itself
    main_p = a.sectors("main", image_sectors)
    status = a.sectors("main", 1)
    main_s = a.sectors("main", image_sectors)
    main_pending = a.sectors("main", 1)
    co_s = a.sectors("main", image_sectors)
    co_pending = a.sectors("main", 1)
    scratch = a.sectors("main", 1)
    main_c, co_c = _counters(a, "main", 2)
    co_p = a.sectors("coproc", 2 * image_sectors)
    layout = BootLayout(
        images=(
            ImageSlots(COMPONENTS["dual-cpu"][0], main_p, main_s, main_pending, main_c),
            ImageSlots(COMPONENTS["dual-cpu"][1], co_p, co_s, co_pending, co_c),
        ),
        status=status,
        scratch=scratch,
    )
    return Device(
        "dual-cpu",
        supply,
        flashes,
        layout,
        FlashBootloader(layout, flashes, verifier, chunk=chunk),
        anchors=_anchor_area(flashes, "main") if anchors else None,
    )


SHAPES: dict[str, Callable[..., Device]] = {
    "mcu": make_mcu,
    "secure-split": make_secure_split,
    "dual-cpu": make_dual_cpu,
}


def make_device(
    shape: str,
    verifier: ImageVerifier | Mapping[str, ImageVerifier],
    *,
    seed: int = 0,
    chunk: int = 1024,
    stage1: ImageVerifier | None = None,
    anchors: bool = False,
) -> Device:
    """Build a device of one of :data:`SHAPES` with its default sizes (``stage1``: an
    updatable bootloader, ``make_mcu``; mcu only; ``anchors``: a trust-anchor area).

    Raises:
        KeyError: unknown shape.
        ValueError: ``stage1`` on a shape other than mcu.
    """
    if shape not in SHAPES:
        raise KeyError(f"unknown device shape {shape!r}; known: {sorted(SHAPES)}")
    if stage1 is None:
        extra = {"anchors": True} if anchors else {}  # shapes without an area take no option
        return SHAPES[shape](verifier, seed=seed, chunk=chunk, **extra)
    if shape != "mcu":
        raise ValueError(f"an updatable bootloader (stage1) is built for the mcu shape only, "
                         f"not {shape!r}")
    return make_mcu(verifier, seed=seed, chunk=chunk, stage1=stage1, anchors=anchors)
