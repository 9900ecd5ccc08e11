"""Swap with a scratch area, resumable from any cut (the idea of mcuboot's swap-scratch).

For every swap block ``b`` (see :func:`~suitkit.bootloader.layout.swap_blocks`) of every image of
the set, in order, three steps, each recorded in the status trailer's log *after* it completes::

    step 3b+0   scratch  <- primary[b]     (primary[b] is still intact)
    step 3b+1   primary[b] <- secondary[b] (primary[b]'s old content is safe in scratch)
    step 3b+2   secondary[b] <- scratch    (secondary[b]'s old content is safe in primary[b])

Each step is "erase the destination, program it from the source", so it can be redone from the
start any number of times, as long as its source is intact. The source of step *j* is only
overwritten by a later step, which cannot start before step *j* is recorded. So after a cut at
any operation -- and after any number of further cuts during the recovery -- running the log
from its first unrecorded step finishes the swap. A torn log unit reads as recorded, which is
safe because a unit is programmed only after its step is complete.

Swapping twice restores the original content, so a revert is the same procedure with the second
log. Sectors whose contents are already erased are not erased again; chunks of 0xFF are not
programmed (both save wear and operations; neither changes the result).

Not done here: deciding whether to swap (:mod:`suitkit.bootloader.decide`), verification, the
flags around a swap (:mod:`suitkit.bootloader.boot`).
"""

from __future__ import annotations

from collections.abc import Mapping

from suitkit.bootloader.flash import ERASED, Flash
from suitkit.bootloader.layout import Block, BootLayout, program_split
from suitkit.bootloader.trailer import STEPS_PER_BLOCK, TrailerArea

SWAP_LOG = 0
REVERT_LOG = 1


class SwapEngine:
    """Runs a swap (or a revert) of a boot set from wherever its log stopped."""

    def __init__(
        self,
        layout: BootLayout,
        flashes: Mapping[str, Flash],
        blocks: tuple[Block, ...],
        status: TrailerArea,
        *,
        chunk: int,
    ) -> None:
        self.layout = layout
        self.flashes = flashes
        self.blocks = blocks
        self.status = status
        self.chunk = chunk

    def run(self, log: int) -> None:
        """Complete every unrecorded step of ``log`` (SWAP_LOG or REVERT_LOG)."""
        trailer = self.status.read()
        done = trailer.swap_log if log == SWAP_LOG else trailer.revert_log
        for step in range(done, len(self.blocks) * STEPS_PER_BLOCK):
            self._step(self.blocks[step // STEPS_PER_BLOCK], step % STEPS_PER_BLOCK)
            self.status.record_step(log, step)

    def _step(self, block: Block, sub: int) -> None:
        img = self.layout.images[block.image]
        primary = (self.flashes[img.primary.flash], img.primary.offset + block.offset)
        secondary = (self.flashes[img.secondary.flash], img.secondary.offset + block.offset)
        scratch = (self.flashes[self.layout.scratch.flash], self.layout.scratch.offset)
        src, dst = {0: (primary, scratch), 1: (secondary, primary), 2: (scratch, secondary)}[sub]
        self._copy(src[0], src[1], dst[0], dst[1], block.size)

    def _copy(self, src: Flash, src_addr: int, dst: Flash, dst_addr: int, size: int) -> None:
        for sector in dst.sectors_in(dst_addr, size):
            if not dst.is_erased(sector.offset, sector.size):
                dst.erase(sector.offset)
        for offset in range(0, size, self.chunk):
            n = min(self.chunk, size - offset)
            data = src.read(src_addr + offset, n)
            if data.count(ERASED) != n:
                program_split(dst, dst_addr + offset, data)
