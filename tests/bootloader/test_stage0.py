"""The bootloader updates itself (issue #16): an immutable stage 0, two stage-1 copies.

Stage 0 chooses by validity and version, tries a new copy once and falls back to the confirmed
one (``bootloader.stage0``); the power-cut harness cuts at every flash operation of the update
(``bootloader-*`` scenarios): no brick, no stage 1 below a confirmed one. The harness is also
run against deliberately broken stage-1 updates, so that "zero failures" means something.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import suitkit.bootloader.stage0 as stage0_module
from device.device_kit import CLASS, VENDOR, Author, image_bytes
from suitkit.bootloader.api import NoBootableImage, SlotCheck
from suitkit.bootloader.boot import FlashSlotWriter
from suitkit.bootloader.decide import Verdict
from suitkit.bootloader.powercut import STAGE1, Fixture, InvariantBroken, run_scenario
from suitkit.bootloader.profiles import COMPONENTS, make_device
from suitkit.bootloader.stage0 import STAGE1_ID, Copy, Stage0, Step, choose
from suitkit.bootloader.verifier import ImageInfo
from suitkit.core import codec
from suitkit.core.processor import ComponentIdentity
from suitkit.core.verify import TrustAnchors
from suitkit.device.consumer import slot_record
from suitkit.device.wiring import SuitImageVerifier
from suitkit.errors import PolicyError


def _copy(seq: int | None, *, tried: bool = False, confirmed: bool = False,
          verdict: Verdict = Verdict.GOOD) -> Copy:
    if seq is None:
        return Copy(SlotCheck(Verdict.BAD, None, "does not verify"), tried, confirmed)
    return Copy(SlotCheck(verdict, ImageInfo(seq, bytes(32))), tried, confirmed)


def test_stage0_prefers_the_newest_copy_and_tries_it_once() -> None:
    old, new = _copy(2, tried=True, confirmed=True), _copy(3)
    assert choose([old, new], 2)[:2] == (1, Step.TRY)
    index, step, notes = choose([old, _copy(3, tried=True)], 2)
    assert (index, step) == (0, Step.BOOT)
    assert "tried and never confirmed" in notes[0]
    assert choose([old, _copy(3, tried=True, confirmed=True)], 2)[:2] == (1, Step.RAISE_COUNTER)


def test_stage0_never_boots_below_the_counter_nor_an_unverified_copy() -> None:
    below = _copy(1, tried=True, confirmed=True, verdict=Verdict.ROLLBACK)
    assert choose([below, _copy(None)], 2)[:2] == (None, Step.PANIC)
    # a failed trial is not a fallback: stage 0 panics rather than run it again
    assert choose([below, _copy(3, tried=True)], 2)[:2] == (None, Step.PANIC)


def _two_stage() -> tuple[Stage0, Fixture, Fixture]:
    fx, s1 = Fixture(COMPONENTS["mcu"]), Fixture((STAGE1,))
    device = make_device("mcu", fx.verifiers, stage1=s1.verifiers[STAGE1])
    device.provision(fx.releases(1))
    assert device.stage0 is not None
    device.stage0.install_factory(*s1.release(STAGE1, 1))
    return device.stage0, fx, s1


def _stage(stage0: Stage0, s1: Fixture, seq: int) -> None:
    manifest, image = s1.release(STAGE1, seq)
    writer = stage0.stage(manifest=manifest, image_size=len(image))
    writer.write(image)
    writer.finish()


def test_a_new_stage1_is_tried_confirmed_and_the_old_copy_never_runs_again() -> None:
    stage0, _, s1 = _two_stage()
    assert stage0.boot().sequence_number == 1
    _stage(stage0, s1, 2)
    started = stage0.boot()
    assert (started.copy, started.sequence_number, started.trial) == (1, 2, True)
    stage0.confirm()
    assert stage0.counter.read() == 2
    again = stage0.boot()
    assert (again.sequence_number, again.trial) == (2, False)
    assert stage0.check(0).verdict is Verdict.ROLLBACK


def test_a_new_stage1_that_never_confirms_falls_back_to_the_confirmed_copy() -> None:
    stage0, _, s1 = _two_stage()
    stage0.boot()
    _stage(stage0, s1, 2)
    assert stage0.boot().trial
    with pytest.raises(PolicyError, match="on trial"):  # its recovery path is kept
        stage0.stage(manifest=s1.release(STAGE1, 3)[0], image_size=10)
    back = stage0.boot()
    assert (back.copy, back.sequence_number, back.trial) == (0, 1, False)
    assert "never confirmed" in back.notes[0]
    assert stage0.counter.read() == 1
    _stage(stage0, s1, 3)  # the fallback may stage again over the failed copy
    assert stage0.boot().sequence_number == 3


def test_a_stage1_signed_by_another_key_is_never_started() -> None:
    stage0, _, s1 = _two_stage()
    stage0.boot()
    manifest, image = s1.release(STAGE1, 2, key=Fixture.key("attacker"))
    writer = stage0.stage(manifest=manifest, image_size=len(image))
    writer.write(image)
    writer.finish()
    started = stage0.boot()
    assert (started.sequence_number, started.trial) == (1, False)
    check = stage0.check(1)
    assert check.verdict is Verdict.BAD and "AuthenticationError" in str(check.reason)


def test_no_stage1_left_is_a_clear_refusal() -> None:
    stage0, _, _ = _two_stage()
    region = stage0.layout.copies[0]
    stage0.flashes[region.flash].corrupt(region.offset, b"\x00" * 64)
    with pytest.raises(NoBootableImage, match="no stage-1 bootloader"):
        stage0.boot()


@pytest.mark.parametrize("name", ["bootloader-update", "bootloader-revert"])
def test_every_cut_point_of_a_bootloader_update_recovers(name: str) -> None:
    result = run_scenario(name)
    assert result.failures == []
    assert result.cut_points_tried == result.clean_ops >= 14
    assert sum(result.outcomes.values()) == result.cut_points_tried
    if name == "bootloader-update":
        assert set(result.outcomes) == {"old", "new"}
    else:
        assert set(result.outcomes) == {"old"}


def test_bootloader_update_cut_twice() -> None:
    result = run_scenario("bootloader-double-cut")
    assert result.failures == []
    assert result.cut_points_tried >= 1  # the recovery boots that write: a counter raise


# -- the harness finds broken stage-1 updates ---------------------------------------------------


def test_harness_catches_a_new_copy_that_keeps_the_old_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_flag_erase(self: Stage0, *, manifest: bytes, image_size: int) -> object:
        other = 1 - self._running()
        region = self.layout.copies[other]
        writer = FlashSlotWriter(self.flashes[region.flash], region, manifest=manifest,
                                 image_size=image_size, unit=self._unit(other),
                                 chunk=self.chunk, limits=self.limits)
        writer.begin()
        return writer

    monkeypatch.setattr(Stage0, "stage", no_flag_erase)
    result = run_scenario("bootloader-revert", check_updatable=False)
    assert any("never confirmed stayed installed" in f for f in result.failures)


def test_harness_catches_the_counter_raised_before_image_ok(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def counter_first(self: Stage0) -> None:
        index = self._running()
        info = self.check(index).info
        assert info is not None
        self.counter.raise_to(info.sequence_number)
        self._set_flag(index, 1)

    monkeypatch.setattr(Stage0, "confirm", counter_first)
    result = run_scenario("bootloader-update", check_updatable=False)
    assert any("NoBootableImage" in f for f in result.failures)


def test_harness_catches_a_stage0_that_ignores_a_failed_trial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = stage0_module.choose

    def forgetful(copies: list[Copy], counter: int) -> tuple[int | None, Step, tuple[str, ...]]:
        return original([Copy(c.check, False, c.confirmed) for c in copies], counter)

    monkeypatch.setattr(stage0_module, "choose", forgetful)
    with pytest.raises(InvariantBroken, match="stage-1 release 3 started on trial a second"):
        run_scenario("bootloader-revert", check_updatable=False)


def test_stage0_checks_a_real_suit_manifest_for_the_bootloader_component(tmp_path: Path) -> None:
    """Stage 0's verifier seam takes the device's SUIT verifier: the stage-1 image is component
    ['suitkit', 'bootloader'] of a signed envelope, and another component's image is refused."""
    author = Author.create(tmp_path / "author")
    identity = ComponentIdentity(vendor_ids=frozenset({VENDOR}), class_ids=frozenset({CLASS}))
    verifier = SuitImageVerifier(TrustAnchors.of(author.key.public_key()), identity, STAGE1_ID)
    fx = Fixture(COMPONENTS["mcu"])
    device = make_device("mcu", fx.verifiers, stage1=verifier)
    assert device.stage0 is not None
    stage0 = device.stage0
    stage1_hex = ["0x" + part.hex() for part in STAGE1_ID]

    def release(seq: int, cid: list[str]) -> tuple[bytes, bytes]:
        image = image_bytes(f"stage1-{seq}", 5000)
        (author.folder / f"s1-{seq}.bin").write_bytes(image)
        envelope = author.envelope(seq, [{"id": cid, "image": f"s1-{seq}.bin",
                                          "invoke": False}])
        decoded = codec.decode_envelope(envelope)
        return slot_record(tuple(bytes.fromhex(p[2:]) for p in cid), decoded), image

    stage0.install_factory(*release(1, stage1_hex))
    assert stage0.boot().sequence_number == 1
    manifest, image = release(2, ["0x00"])  # signed, but for the application component
    writer = stage0.stage(manifest=manifest, image_size=len(image))
    writer.write(image)
    writer.finish()
    assert stage0.boot().sequence_number == 1
    assert "holds an image for" in str(stage0.check(1).reason)
    manifest, image = release(3, stage1_hex)
    writer = stage0.stage(manifest=manifest, image_size=len(image))
    writer.write(image)
    writer.finish()
    started = stage0.boot()
    assert (started.sequence_number, started.trial) == (3, True)
