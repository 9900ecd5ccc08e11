"""Power cuts around a bootloader update through a device folder's consumer (issue #16,
docs/selfupdate.md): ``real-mcu-bootloader`` installs a stage-1 bootloader with ``Consumer.
install`` (the copy that does not run written, checked, its header programmed), boots it on
trial, confirms it, then updates the application twice. After a cut at any flash operation or
file step of it the device boots (0 bricks), an authentic stage 1 runs, never below a
confirmed one, tried once per install, its counter never down; the interrupted install tried
again installs, and the bootloader and the application still update afterwards."""

from __future__ import annotations

import pytest

from suitkit.device.wiring import Stage1Bootloader
from suitkit.sim.powercut import REAL_SCENARIOS, Broken, run_real_scenario

STAGE1_EVENTS = range(1, 31)
"""The stage-1 install, its trial boot, the confirm and the boot after it, with margin."""


def test_every_cut_around_a_bootloader_update_recovers() -> None:
    assert REAL_SCENARIOS["real-mcu-bootloader"].stage1
    result = run_real_scenario("real-mcu-bootloader", points=STAGE1_EVENTS, seed=3)
    assert result.failures == []
    assert result.cut_points_tried == len(STAGE1_EVENTS)
    assert result.clean_events > 100
    # cuts before the header leave the old stage 1, after it the new one
    assert result.outcomes.get("old, stage 1 old", 0) >= 1
    assert sum(n for k, n in result.outcomes.items() if k.endswith("stage 1 new")) >= 1


def test_a_second_cut_during_the_recovery_of_a_bootloader_update_recovers() -> None:
    result = run_real_scenario("real-mcu-bootloader", points=[4, 9, 14], second=2, seed=7)
    assert result.failures == []
    assert 3 < result.cut_points_tried <= 6


def test_the_harness_catches_a_stage1_the_device_never_confirms(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A confirm that forgets the stage 1 leaves it on trial: stage 0 falls back at the next
    boot to the stage 1 before the one the device confirmed, and the harness says so."""

    def confirm_app_only(self: Stage1Bootloader) -> None:
        self.bootloader.confirm()

    monkeypatch.setattr(Stage1Bootloader, "confirm", confirm_app_only)
    with pytest.raises(Broken, match="stage-1 release 1 runs although stage-1 release 2 was "
                       "confirmed"):
        run_real_scenario("real-mcu-bootloader", points=[1])
