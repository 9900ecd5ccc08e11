"""FlashBootloader: test -> confirm -> revert, anti-rollback, verification at every boot, sets."""

from __future__ import annotations

import pytest

from suitkit.bootloader.api import BootResult, NoBootableImage, stage_set
from suitkit.bootloader.boot import FlashBootloader
from suitkit.bootloader.decide import Action, Phase
from suitkit.bootloader.flash import Flash
from suitkit.bootloader.image import open_slot
from suitkit.bootloader.layout import BootLayout, ImageSlots, Region, swap_blocks
from suitkit.bootloader.powercut import Fixture
from suitkit.bootloader.profiles import COMPONENTS, Device, make_device
from suitkit.bootloader.trailer import Kind
from suitkit.errors import PolicyError, StorageError

FX = Fixture(tuple(name for names in COMPONENTS.values() for name in names))


def device(shape: str = "mcu", factory: int = 1) -> Device:
    dev = make_device(shape, FX.verifiers)
    dev.provision({n: FX.release(n, factory) for n in dev.bootloader.components})
    return dev


def stage(
    bl: FlashBootloader, seq: int, *, size: int | None = None, mark: bool = True, **kw: bool
) -> None:
    stage_set(
        bl, {n: FX.release(n, seq, size=size) for n in bl.components}, mark=mark, piece=777, **kw
    )


def rows(result: BootResult) -> list[int]:
    return [d.row for d in result.steps]


def tamper(dev: Device, name: str, *, secondary: bool = False, where: str = "image") -> None:
    """Flip one bit of an image (or its manifest) in flash, as an attacker or bit rot would."""
    bl = dev.bootloader
    index = bl.components.index(name)
    img = bl.layout.images[index]
    region = img.secondary if secondary else img.primary
    flash = dev.flashes[region.flash]
    manifest, reader = open_slot(flash, region, unit=bl.image_unit(index), limits=bl.limits)
    if where == "image":
        addr = reader.offset + reader.length // 2
    else:
        # Inside the signed manifest body (the manifest follows the 32-byte header).
        addr = region.offset + 32 + len(manifest) // 2
    flash.corrupt(addr, bytes([flash.read(addr, 1)[0] ^ 0x04]))


# -- the basic cycle --------------------------------------------------------------------------


def test_factory_image_boots_and_a_steady_boot_writes_nothing() -> None:
    dev = device()
    ops = dev.ops
    result = dev.bootloader.boot()
    assert (result.sequence_numbers, result.trial, rows(result)) == ({"app": 1}, False, [12])
    assert result.image("app").digest == FX.digest("app", 1)
    assert dev.ops == ops


def test_update_boots_on_trial_and_confirm_makes_it_stick() -> None:
    dev = device()
    bl = dev.bootloader
    stage(bl, 2)
    trial = bl.boot()
    assert (trial.sequence_numbers, trial.trial, rows(trial)) == ({"app": 2}, True, [9, 1, 7])
    assert bl.read_counters() == {"app": 1}  # not raised for a trial
    bl.confirm()
    assert bl.read_counters() == {"app": 2}
    for _ in range(3):
        result = bl.boot()
        assert (result.sequence_numbers, result.trial, rows(result)) == ({"app": 2}, False, [12])
    # The previous release is kept in the secondary slot, but it is now a rollback.
    assert bl.check_slot(0, secondary=True).info is not None
    assert bl.observe().state.secondary.value == "rollback"


def test_not_confirmed_means_reverted_at_the_next_boot() -> None:
    dev = device()
    bl = dev.bootloader
    stage(bl, 2)
    assert bl.boot().trial
    reverted = bl.boot()
    assert (reverted.sequence_numbers, reverted.trial, rows(reverted)) == (
        {"app": 1},
        False,
        [5, 2, 12],
    )
    assert bl.observe().state.phase is Phase.REVERTED
    assert bl.read_counters() == {"app": 1}
    assert bl.boot().sequence_numbers == {"app": 1}
    # The device can take another update after a revert.
    stage(bl, 3)
    assert bl.boot().sequence_numbers == {"app": 3}
    bl.confirm()
    assert bl.boot().sequence_numbers == {"app": 3}


def test_permanent_install_skips_the_trial() -> None:
    dev = device()
    bl = dev.bootloader
    stage(bl, 2, permanent=True)
    result = bl.boot()
    assert (result.sequence_numbers, result.trial, rows(result)) == (
        {"app": 2},
        False,
        [8, 1, 11, 12],
    )
    assert bl.read_counters() == {"app": 2}


def test_swap_wears_each_slot_sector_about_once() -> None:
    dev = device()
    bl = dev.bootloader
    before = list(dev.flashes["internal"].erase_counts)
    stage(bl, 2)
    bl.boot()
    bl.confirm()
    wear = [a - b for a, b in zip(dev.flashes["internal"].erase_counts, before, strict=True)]
    img = bl.layout.images[0]
    flash = dev.flashes["internal"]
    for region in (img.primary, img.secondary, bl.layout.scratch):
        for sector in flash.sectors_in(region.offset, region.size):
            assert wear[sector.index] <= 2, (region, wear)
    assert max(wear) >= 1


# -- staging rules --------------------------------------------------------------------------


def test_staging_is_refused_while_on_trial() -> None:
    bl = device().bootloader
    stage(bl, 2)
    bl.boot()
    manifest, image = FX.release("app", 3)
    with pytest.raises(PolicyError, match="on trial: confirm them"):
        bl.open_inactive("app", manifest=manifest, image_size=len(image))
    bl.confirm()
    bl.open_inactive("app", manifest=manifest, image_size=len(image))


def test_mark_pending_needs_every_member_staged() -> None:
    bl = device("secure-split").bootloader
    with pytest.raises(StorageError, match="not staged"):
        bl.mark_pending()
    stage_set(bl, {"secure": FX.release("secure", 2)}, mark=False)
    with pytest.raises(StorageError, match=r"\['nonsecure'\] not staged"):
        bl.mark_pending()


def test_writer_refuses_more_or_fewer_bytes_than_announced() -> None:
    """Design rule 6: never more than image-size bytes."""
    bl = device().bootloader
    manifest, image = FX.release("app", 2)
    w = bl.open_inactive("app", manifest=manifest, image_size=len(image))
    w.write(image)
    with pytest.raises(StorageError, match="exceeds the announced size"):
        w.write(b"\x00")
    w2 = bl.open_inactive("app", manifest=manifest, image_size=len(image))
    w2.write(image[:-1])
    with pytest.raises(StorageError, match="announced size"):
        w2.finish()


def test_an_image_too_big_for_the_slot_is_refused() -> None:
    bl = device().bootloader
    manifest, image = FX.release("app", 2, size=3 * 4096)
    with pytest.raises(StorageError, match="the slot"):
        bl.open_inactive("app", manifest=manifest, image_size=len(image))
    with pytest.raises(StorageError, match="unknown component"):
        bl.open_inactive("nope", manifest=manifest, image_size=1)


def test_a_staged_but_unmarked_image_is_not_installed() -> None:
    bl = device().bootloader
    stage(bl, 2, mark=False)
    assert bl.boot().sequence_numbers == {"app": 1}


# -- anti-rollback --------------------------------------------------------------------------


def test_rollback_sequence_number_rejected() -> None:
    """RFC 9124 THREAT.IMG.EXPIRED: an authentic but older release is refused."""
    dev = device(factory=5)
    bl = dev.bootloader
    stage(bl, 4)
    result = bl.boot()
    assert (result.sequence_numbers, rows(result)) == ({"app": 5}, [10, 12])
    assert any("sequence number 4 is below the security counter 5" in n for n in result.notes)
    assert bl.pending[0].is_erased()  # the request is dropped, not retried at every boot
    assert bl.read_counters() == {"app": 5}


def test_equal_sequence_number_is_allowed() -> None:
    bl = device(factory=5).bootloader
    stage(bl, 5, size=4321)
    assert bl.boot().sequence_numbers == {"app": 5}


def test_counter_never_decreases_over_updates_and_reverts() -> None:
    bl = device().bootloader
    seen = [bl.read_counters()["app"]]
    for seq, confirm in [(2, True), (3, False), (4, True), (5, False), (6, True)]:
        stage(bl, seq)
        bl.boot()
        if confirm:
            bl.confirm()
        bl.boot()
        seen.append(bl.read_counters()["app"])
    assert seen == sorted(seen)
    assert seen[-1] == 6
    assert bl.boot().sequence_numbers == {"app": 6}


def test_an_old_signed_image_written_into_the_primary_slot_is_not_booted() -> None:
    """Someone writes an authentic old release straight into the executing slot."""
    dev = device()
    bl = dev.bootloader
    stage(bl, 2)
    bl.boot()
    bl.confirm()
    img = bl.layout.images[0]
    flash = dev.flashes[img.primary.flash]
    old = flash.read(img.secondary.offset, img.secondary.size)  # release 1, kept as fallback
    flash.corrupt(img.primary.offset, old)
    with pytest.raises(NoBootableImage, match="nothing authentic and recent enough") as e:
        bl.boot()
    assert any("below the security counter 2" in n for n in e.value.notes)


def test_sequence_number_beyond_counter_capacity_is_refused() -> None:
    bl = device().bootloader
    stage(bl, 5000, size=3000)  # the profile's counters hold 2048 values
    result = bl.boot()
    assert (result.sequence_numbers, rows(result)) == ({"app": 1}, [10, 12])
    assert any("exceeds what the security counter can hold" in n for n in result.notes)


# -- verification at every boot (RFC 9124 THREAT.IMG.REPLACE) ------------------------------


def test_image_replaced_after_install_is_not_booted() -> None:
    dev = device()
    bl = dev.bootloader
    stage(bl, 2)
    bl.boot()
    bl.confirm()
    assert bl.boot().sequence_numbers == {"app": 2}
    tamper(dev, "app")
    # Nothing good to fall back to: release 1 in the other slot is below the counter.
    with pytest.raises(NoBootableImage) as e:
        bl.boot()
    assert any("AuthenticationError" in n and "digest" in n for n in e.value.notes)


def test_manifest_replaced_after_install_is_not_booted() -> None:
    dev = device()
    tamper(dev, "app", where="manifest")
    with pytest.raises(NoBootableImage) as e:
        dev.bootloader.boot()
    assert any("signature" in n for n in e.value.notes)


def test_a_tampered_trial_image_falls_back_to_the_previous_one() -> None:
    dev = device()
    bl = dev.bootloader
    stage(bl, 2)
    assert bl.boot().trial
    tamper(dev, "app")
    result = bl.boot()
    assert (result.sequence_numbers, rows(result)) == ({"app": 1}, [3, 2, 12])
    assert any("app primary" in n for n in result.notes)


def test_a_staged_release_never_marked_pending_is_not_promoted_when_the_running_one_breaks(
) -> None:
    # It was the fallback row: a release nobody asked to install, never tried, never
    # confirmed, was installed for good and its counter raised.
    dev = device()
    bl = dev.bootloader
    stage(bl, 2)
    bl.boot()
    bl.confirm()
    stage(bl, 3, mark=False)  # in the other slot, verified, never marked pending
    tamper(dev, "app")
    before = [f.snapshot() for f in dev.flashes.values()]
    with pytest.raises(NoBootableImage, match=r"row 13: .* refuse to boot") as refused:
        bl.boot()
    assert any("app primary" in n and "digest" in n for n in refused.value.notes)
    assert [f.snapshot() for f in dev.flashes.values()] == before  # nothing promoted
    assert bl.read_counters() == {"app": 2}
    # Recovery: a new update, marked pending, is tried as any other.
    stage(bl, 4)
    result = bl.boot()
    assert (result.sequence_numbers, result.trial) == ({"app": 4}, True)


@pytest.mark.parametrize("shape", ["mcu", "secure-split", "dual-cpu"])
def test_a_flipped_bit_after_a_revert_never_promotes_the_rejected_release(shape: str) -> None:
    """Issue #11 item 5: after a revert, the other slots hold the release the application
    rejected. A bit flipped in the running images made the bootloader install it for good and
    raise the counters, so the good release could never come back. Now the boot is refused
    (the documented safe state), nothing is written, and a recovery update still works."""
    dev = device(shape)
    bl = dev.bootloader
    names = bl.components
    stage(bl, 2)
    assert bl.boot().trial  # on trial, never confirmed
    reverted = bl.boot()
    assert (reverted.sequence_numbers, reverted.trial) == (dict.fromkeys(names, 1), False)
    tamper(dev, names[-1])
    before = [f.snapshot() for f in dev.flashes.values()]
    for _ in range(2):  # and again: the state does not drift
        with pytest.raises(NoBootableImage, match=r"row 13") as refused:
            bl.boot()
        assert any(f"{names[-1]} primary" in n for n in refused.value.notes)
    assert [f.snapshot() for f in dev.flashes.values()] == before
    assert bl.read_counters() == dict.fromkeys(names, 1)
    with pytest.raises(PolicyError, match="do not verify"):
        bl.confirm()
    stage(bl, 3)
    result = bl.boot()
    assert (result.sequence_numbers, result.trial) == (dict.fromkeys(names, 3), True)
    bl.confirm()
    assert bl.read_counters() == dict.fromkeys(names, 3)


def test_a_tampered_installed_image_is_replaced_by_a_pending_update() -> None:
    dev = device()
    bl = dev.bootloader
    stage(bl, 2)
    tamper(dev, "app")
    result = bl.boot()
    assert (result.sequence_numbers, result.trial, rows(result)) == ({"app": 2}, True, [9, 1, 7])


def test_a_tampered_pending_update_is_dropped() -> None:
    dev = device()
    bl = dev.bootloader
    stage(bl, 2)
    tamper(dev, "app", secondary=True)
    result = bl.boot()
    assert (result.sequence_numbers, rows(result)) == ({"app": 1}, [10, 12])
    assert any("app secondary" in n and "digest" in n for n in result.notes)


def test_trial_image_is_kept_when_there_is_nothing_to_revert_to() -> None:
    dev = device()
    bl = dev.bootloader
    stage(bl, 2)
    bl.boot()
    tamper(dev, "app", secondary=True)  # the previous release is gone
    result = bl.boot()
    assert (result.sequence_numbers, result.trial, rows(result)) == ({"app": 2}, True, [6])
    bl.confirm()
    assert bl.boot().trial is False


def test_confirm_refuses_an_image_that_does_not_verify() -> None:
    dev = device()
    bl = dev.bootloader
    stage(bl, 2)
    bl.boot()
    tamper(dev, "app")
    with pytest.raises(PolicyError, match="do not verify"):
        bl.confirm()
    assert bl.read_counters() == {"app": 1}


# -- image sets: both or neither (RFC 9019 §5.2, §5.5) ---------------------------------------


@pytest.mark.parametrize("shape", ["secure-split", "dual-cpu"])
def test_a_set_is_updated_confirmed_and_reverted_together(shape: str) -> None:
    bl = device(shape).bootloader
    names = bl.components
    stage(bl, 2)
    trial = bl.boot()
    assert trial.trial
    assert trial.sequence_numbers == dict.fromkeys(names, 2)
    reverted = bl.boot()
    assert reverted.sequence_numbers == dict.fromkeys(names, 1)
    stage(bl, 3)
    bl.boot()
    bl.confirm()
    assert bl.boot().sequence_numbers == dict.fromkeys(names, 3)
    assert bl.read_counters() == dict.fromkeys(names, 3)


def test_dual_cpu_coprocessor_image_lands_on_its_own_flash() -> None:
    dev = device("dual-cpu")
    bl = dev.bootloader
    stage(bl, 2)
    bl.boot()
    co = bl.layout.images[1]
    assert co.primary.flash == "coproc"
    manifest, reader = open_slot(dev.flashes["coproc"], co.primary, unit=16, limits=bl.limits)
    assert FX.verifiers["coproc"].verify(manifest, reader).sequence_number == 2
    assert reader.read(0, reader.size) == FX.release("coproc", 2)[1]
    assert {b.size for b in bl.blocks} == {4096}  # two co-processor sectors per block


def test_a_partially_marked_set_is_not_started() -> None:
    bl = device("secure-split").bootloader
    stage(bl, 2, mark=False)
    bl.pending[0].start(Kind.TEST)  # as if power failed after marking the first member
    assert bl.pending_update() is False  # an incomplete request is no update waiting
    result = bl.boot()
    # Issue #11 item 2: the half-marked request is forgotten (row 15), not left for ever.
    assert (result.sequence_numbers, rows(result)) == ({"secure": 1, "nonsecure": 1}, [15, 12])
    assert bl.observe().state.pending.value == "none"
    assert rows(bl.boot()) == [12]  # a steady boot


def test_a_set_member_that_does_not_verify_cancels_the_whole_set() -> None:
    dev = device("secure-split")
    bl = dev.bootloader
    stage(bl, 2)
    tamper(dev, "nonsecure", secondary=True)
    result = bl.boot()
    assert (result.sequence_numbers, rows(result)) == ({"secure": 1, "nonsecure": 1}, [10, 12])


def test_an_image_signed_for_the_other_world_is_refused() -> None:
    """Secure and normal worlds have their own trust anchors (RFC 9124 REQ.SEC.AUTH.IMG_LOC)."""
    bl = device("secure-split").bootloader
    normal_key = FX.keys["nonsecure"]
    stage_set(
        bl,
        {
            "secure": FX.release("secure", 2, key=normal_key),
            "nonsecure": FX.release("nonsecure", 2),
        },
    )
    result = bl.boot()
    assert (result.sequence_numbers, rows(result)) == ({"secure": 1, "nonsecure": 1}, [10, 12])
    assert any("secure secondary" in n and "signature" in n for n in result.notes)


# -- layouts ---------------------------------------------------------------------------------


def flashes() -> dict[str, Flash]:
    return {"f": Flash("f", [4096] * 12)}


def layout(**changes: Region) -> BootLayout:
    regions = {
        "primary": Region("f", 0, 8192),
        "status": Region("f", 8192, 4096),
        "secondary": Region("f", 12288, 8192),
        "pending": Region("f", 20480, 4096),
        "scratch": Region("f", 24576, 4096),
        "counter": Region("f", 28672, 64),
    } | changes
    img = ImageSlots(
        "app", regions["primary"], regions["secondary"], regions["pending"], regions["counter"]
    )
    return BootLayout((img,), regions["status"], regions["scratch"])


def test_a_valid_layout_is_cut_into_blocks() -> None:
    blocks = swap_blocks(layout(), flashes())
    assert [(b.offset, b.size) for b in blocks] == [(0, 4096), (4096, 4096)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scratch": Region("f", 8192, 4096)}, "overlaps"),
        (
            {"secondary": Region("f", 12288, 4096), "pending": Region("f", 16384, 4096)},
            "differ in size",
        ),
        ({"status": Region("f", 32768, 4096)}, "must follow"),
        ({"pending": Region("f", 32768, 4096)}, "must follow the secondary"),
        ({"primary": Region("f", 0, 8000)}, "sector boundaries"),
        ({"counter": Region("f", 28673, 64)}, "not aligned"),
        ({"scratch": Region("x", 0, 4096)}, "no flash named"),
    ],
)
def test_bad_layouts_are_refused(changes: dict[str, Region], message: str) -> None:
    with pytest.raises((ValueError, StorageError), match=message):
        swap_blocks(layout(**changes), flashes())


def test_scratch_must_hold_a_block() -> None:
    big = {"f": Flash("f", [8192] * 2 + [4096] + [8192] * 2 + [4096] * 4)}
    lay = BootLayout(
        (
            ImageSlots(
                "app",
                Region("f", 0, 16384),
                Region("f", 20480, 16384),
                Region("f", 36864, 4096),
                Region("f", 45056, 64),
            ),
        ),
        Region("f", 16384, 4096),
        Region("f", 40960, 4096),
    )
    with pytest.raises(ValueError, match="scratch area"):
        swap_blocks(lay, big)


def test_boot_steps_name_their_actions() -> None:
    bl = device().bootloader
    stage(bl, 2)
    steps = bl.boot().steps
    assert [d.action for d in steps] == [
        Action.START_TEST_SWAP,
        Action.RESUME_SWAP,
        Action.BOOT_TRIAL,
    ]
