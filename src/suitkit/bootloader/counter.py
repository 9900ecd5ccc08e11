"""The anti-rollback security counter, kept in flash so that it can only go up.

RFC 9124 REQ.SEC.SEQUENCE / THREAT.IMG.EXPIRED: a device must refuse an image whose sequence
number is lower than one it has accepted. The bootloader keeps, per image, the highest sequence
number it has *confirmed* (mcuboot's hardware security counter), and refuses to boot or install
anything below it.

Encoding: a unary counter. Bit ``i`` of the region (byte ``i // 8``, most significant bit first)
is cleared when the counter has passed ``i``; the value is the number of **leading** cleared
bits. Raising the counter programs the bytes that hold the new bits, i.e. it only clears bits:
no erase, ever, so the counter cannot decrease without an erase (which the bootloader never
issues on this region) and a torn raise leaves a value between the old and the new one.
Re-raising after a cut programs 0 over 0, which NOR allows.

Capacity is ``8 * region size`` (32768 with a 4 KiB region): sequence numbers must be small
integers, not timestamps. A raise beyond the capacity is refused with
:class:`~suitkit.errors.StorageError`, and the bootloader refuses to install an image it could
never confirm.

Not done here: secure storage (OTP, RPMB, a TPM NV counter); on a real part this region should
live in memory the application cannot erase.
"""

from __future__ import annotations

from suitkit.bootloader.flash import Flash
from suitkit.bootloader.layout import Region, program_split
from suitkit.errors import StorageError


class SecurityCounter:
    """A monotonic counter over a write-aligned flash region."""

    def __init__(self, flash: Flash, region: Region) -> None:
        self.flash = flash
        self.region = region

    @property
    def capacity(self) -> int:
        return self.region.size * 8

    def read(self) -> int:
        """The number of leading cleared bits."""
        raw = self.flash.read(self.region.offset, self.region.size)
        value = 0
        for byte in raw:
            if byte == 0:
                value += 8
                continue
            # Leading zero bits of a non-zero byte, most significant first.
            value += 8 - byte.bit_length()
            break
        return value

    def raise_to(self, value: int) -> None:
        """Raise the counter to at least ``value``: one program operation (per page touched).

        Raises:
            StorageError: ``value`` exceeds the capacity.
        """
        if value > self.capacity:
            raise StorageError(
                f"security counter {self.region} holds at most {self.capacity}, asked {value}"
            )
        current = self.read()
        if value <= current:
            return
        align = self.flash.write_align
        first = (current // 8) // align * align
        last = -(-((value + 7) // 8) // align) * align
        old = self.flash.read(self.region.offset + first, last - first)
        new = bytearray(old)
        for bit in range(current, value):
            pos = bit // 8 - first
            new[pos] &= ~(0x80 >> (bit % 8)) & 0xFF
        program_split(self.flash, self.region.offset + first, bytes(new))
