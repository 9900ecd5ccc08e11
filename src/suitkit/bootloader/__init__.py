"""The bootloader role (RFC 9019 §4.1, the firmware verifier) and the device's slot storage.

A decision table plus a flash model that fails on purpose (design rule 8)::

    flash.py            NOR flash model: erase to 0xFF, programs only clear bits, alignment,
                        wear counters, numbered operations, power cuts with torn state
    layout.py           slots, trailers, scratch, counters of a boot set; swap blocks
    image.py            slot content: header | manifest | image
    trailer.py          slot trailers: magic, kind, copy_done, tried, image_ok, revert, logs
    counter.py          the anti-rollback security counter (unary, bit-clearing only)
    verifier.py         the ImageVerifier seam (the real SUIT verifier plugs in here)
    simple_manifest.py  a small real (SHA-256 + Ed25519) manifest for tests and the simulator
    decide.py           the ordered, pure decision tables
    swap.py             swap with scratch, resumable from any cut
    boot.py             FlashBootloader: boot(), confirm(), and the slot store
    profiles.py         RFC 9019 §5 device shapes: mcu, secure-split, dual-cpu
    stage0.py           the bootloader updating itself: an immutable stage 0, two stage-1 copies
    records.py          a record in two flash copies, replaced atomically (the trust anchors)
    fsslots.py          FsBootloader: A/B directories with an atomic switch (Linux-class)
    api.py              the API both bootloaders share (SlotStore, Bootloader, BootResult)
    powercut.py         the exhaustive power-cut harness

Not here: manifest parsing or SUIT processing (``suitkit.core``), fetching (``suitkit.device``).
See ``docs/bootloader.md`` for the tables, the trailer layout and the swap argument.
"""

from suitkit.bootloader.api import (
    Bootloader,
    BootResult,
    NoBootableImage,
    RunningImage,
    SlotStore,
    SlotWriter,
)
from suitkit.bootloader.boot import FlashBootloader
from suitkit.bootloader.decide import Action, BootState, Decision, Pending, Phase, Verdict, decide
from suitkit.bootloader.flash import Flash, FlashError, PowerCut, PowerSupply
from suitkit.bootloader.fsslots import FsBootloader
from suitkit.bootloader.verifier import ImageInfo, ImageReader, ImageVerifier

__all__ = [
    "Action",
    "BootResult",
    "BootState",
    "Bootloader",
    "Decision",
    "Flash",
    "FlashBootloader",
    "FlashError",
    "FsBootloader",
    "ImageInfo",
    "ImageReader",
    "ImageVerifier",
    "NoBootableImage",
    "Pending",
    "Phase",
    "PowerCut",
    "PowerSupply",
    "RunningImage",
    "SlotStore",
    "SlotWriter",
    "Verdict",
    "decide",
]
