"""Power cut at every flash operation of every scenario: the device always recovers.

The harness is also tested against deliberately broken bootloaders, so that "zero failures"
means something.
"""

from __future__ import annotations

import pytest

from suitkit.bootloader.boot import FlashBootloader
from suitkit.bootloader.decide import ON_TRIAL, Action
from suitkit.bootloader.powercut import SCENARIOS, run_scenario
from suitkit.bootloader.swap import SWAP_LOG, SwapEngine
from suitkit.bootloader.trailer import STEPS_PER_BLOCK, Flag

# Flash operations in a clean run of each scenario's cut range must be at least this many, so a
# silently shortened scenario (or a broken counter) fails the test.
MINIMUM_CUT_POINTS = {
    "single-image": 50,
    "secure-split": 90,
    "dual-cpu": 100,
    "revert": 80,
    "interrupted-revert": 30,
    "restage": 60,
}


@pytest.mark.parametrize("name", sorted(MINIMUM_CUT_POINTS))
def test_every_cut_point_recovers(name: str) -> None:
    result = run_scenario(name)
    assert result.failures == []
    assert result.cut_points_tried == result.clean_ops >= MINIMUM_CUT_POINTS[name]
    assert sum(result.outcomes.values()) == result.cut_points_tried
    if SCENARIOS[name].policy.confirms:
        # Cuts before the commit end on the old release, later ones on the new one.
        assert set(result.outcomes) == {"old", "next" if name == "restage" else "new"}
        assert min(result.outcomes.values()) >= 10
    else:
        assert set(result.outcomes) == {"old"}


def test_double_cut_sampled() -> None:
    result = run_scenario("double-cut", sample=10, seed=3)
    assert result.failures == []
    # Ten first cut points, then every operation of each recovery boot.
    assert result.cut_points_tried >= 60
    assert result.outcomes.get("new", 0) > 0


@pytest.mark.slow
def test_double_cut_exhaustive() -> None:
    result = run_scenario("double-cut", check_updatable=False)
    assert result.failures == []
    assert result.cut_points_tried >= 1000


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_other_seeds(name: str, seed: int) -> None:
    """Other keys, images and torn states."""
    sample = 20 if name == "double-cut" else None
    result = run_scenario(name, seed=seed, sample=sample, check_updatable=False)
    assert result.failures == []


def test_runs_are_repeatable_and_samples_are_subsets() -> None:
    a = run_scenario("single-image", sample=8, seed=5, check_updatable=False)
    b = run_scenario("single-image", sample=8, seed=5, check_updatable=False)
    assert (a.cut_points_tried, a.outcomes, a.failures) == (
        b.cut_points_tried,
        b.outcomes,
        b.failures,
    )
    assert a.cut_points_tried == 8


# -- the harness finds real bugs ---------------------------------------------------------------


def test_harness_catches_a_swap_step_recorded_before_it_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def record_first(self: SwapEngine, log: int) -> None:
        done = self.status.read().swap_log if log == SWAP_LOG else self.status.read().revert_log
        for step in range(done, len(self.blocks) * STEPS_PER_BLOCK):
            self.status.record_step(log, step)
            self._step(self.blocks[step // STEPS_PER_BLOCK], step % STEPS_PER_BLOCK)

    monkeypatch.setattr(SwapEngine, "run", record_first)
    result = run_scenario("single-image", check_updatable=False)
    assert any("the committed update ended on release 2" in f for f in result.failures)


def test_harness_catches_copy_done_written_before_the_request_is_consumed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = FlashBootloader._apply

    def early_copy_done(self: FlashBootloader, action: Action, obs: object) -> None:
        if action is Action.RESUME_SWAP:
            self.engine.run(SWAP_LOG)
            self.status.set_flag(Flag.COPY_DONE)
            for area in self.pending:
                area.wipe()
            return
        original(self, action, obs)  # type: ignore[arg-type]

    monkeypatch.setattr(FlashBootloader, "_apply", early_copy_done)
    result = run_scenario("revert", check_updatable=False)
    assert any("booted on trial a second time" in f for f in result.failures)


def test_harness_catches_the_counter_raised_before_the_confirm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def counter_first(self: FlashBootloader) -> None:
        obs = self.observe()
        for counter, check in zip(self.counters, obs.primary, strict=True):
            if check.info is not None:
                counter.raise_to(check.info.sequence_number)
        if obs.state.phase in ON_TRIAL:
            self.status.set_flag(Flag.IMAGE_OK)

    monkeypatch.setattr(FlashBootloader, "confirm", counter_first)
    result = run_scenario("single-image", check_updatable=False)
    assert result.failures
    assert all(
        "booted on trial a second time" in f or "only on trial" in f for f in result.failures
    )
