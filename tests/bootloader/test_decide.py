"""The decision tables, row by row, and properties that hold over every possible state."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from suitkit.bootloader.decide import (
    BOOTS,
    PHASE_TABLE,
    STEADY,
    TABLE,
    Action,
    BootState,
    Pending,
    Phase,
    Verdict,
    combine,
    decide,
    pending_of,
    phase_of,
    render_markdown,
)
from suitkit.bootloader.trailer import Kind, MagicState, Trailer

G, R, B = Verdict.GOOD, Verdict.ROLLBACK, Verdict.BAD
live = Trailer(MagicState.GOOD, Kind.TEST)


@pytest.mark.parametrize(
    ("trailer", "phase", "row"),
    [
        (Trailer(MagicState.UNSET), Phase.NONE, 1),
        (Trailer(MagicState.BAD), Phase.NONE, 1),
        (
            Trailer(MagicState.GOOD, Kind.TEST, copy_done=True, revert=True, revert_done=True),
            Phase.REVERTED,
            2,
        ),
        (
            Trailer(MagicState.GOOD, Kind.TEST, copy_done=True, tried=True, revert=True),
            Phase.REVERTING,
            3,
        ),
        (Trailer(MagicState.GOOD, Kind.TEST, swap_log=4), Phase.SWAPPING, 4),
        (Trailer(MagicState.GOOD, Kind.PERMANENT, swap_log=9), Phase.SWAPPING, 4),
        (Trailer(MagicState.GOOD, Kind.TEST, copy_done=True, image_ok=True), Phase.CONFIRMED, 5),
        (Trailer(MagicState.GOOD, Kind.PERMANENT, copy_done=True), Phase.CONFIRMED, 5),
        (
            Trailer(MagicState.GOOD, Kind.TEST, copy_done=True, tried=True, image_ok=True),
            Phase.CONFIRMED,
            5,
        ),
        (Trailer(MagicState.GOOD, Kind.TEST, copy_done=True, tried=True), Phase.TRIED, 6),
        (Trailer(MagicState.GOOD, Kind.TEST, copy_done=True), Phase.TRIAL, 7),
    ],
)
def test_table_1_row_by_row(trailer: Trailer, phase: Phase, row: int) -> None:
    assert phase_of(trailer) is phase
    assert next(r.number for r in PHASE_TABLE if r.matches(trailer)) == row


def state(
    phase: Phase,
    pending: Pending = Pending.NONE,
    primary: Verdict = G,
    secondary: Verdict = G,
    behind: bool = False,
) -> BootState:
    return BootState(phase, pending, primary, secondary, behind)


# Written out by hand from the design, not derived from the table.
ROWS = [
    (state(Phase.SWAPPING, Pending.TEST, B, B), 1, Action.RESUME_SWAP),
    (state(Phase.SWAPPING, Pending.NONE, G, G, True), 1, Action.RESUME_SWAP),
    (state(Phase.REVERTING, Pending.NONE, B, G), 2, Action.RESUME_REVERT),
    (state(Phase.TRIAL, Pending.NONE, B, G), 3, Action.START_REVERT),
    (state(Phase.TRIED, Pending.TEST, R, G), 3, Action.START_REVERT),
    (state(Phase.TRIAL, Pending.NONE, B, B), 4, Action.PANIC),
    (state(Phase.TRIED, Pending.NONE, R, R), 4, Action.PANIC),
    (state(Phase.TRIED, Pending.NONE, G, G), 5, Action.START_REVERT),
    (state(Phase.TRIED, Pending.NONE, G, B), 6, Action.BOOT_TRIAL),
    (state(Phase.TRIED, Pending.NONE, G, R), 6, Action.BOOT_TRIAL),
    (state(Phase.TRIAL, Pending.NONE, G, G), 7, Action.BOOT_TRIAL),
    (state(Phase.TRIAL, Pending.TEST, G, B, True), 7, Action.BOOT_TRIAL),
    (state(Phase.CONFIRMED, Pending.PERMANENT, G, G), 8, Action.START_PERMANENT_SWAP),
    (state(Phase.NONE, Pending.PERMANENT, B, G), 8, Action.START_PERMANENT_SWAP),
    (state(Phase.NONE, Pending.TEST, G, G), 9, Action.START_TEST_SWAP),
    (state(Phase.REVERTED, Pending.TEST, R, G, True), 9, Action.START_TEST_SWAP),
    (state(Phase.CONFIRMED, Pending.TEST, G, R), 10, Action.DROP_PENDING),
    (state(Phase.NONE, Pending.PERMANENT, G, B), 10, Action.DROP_PENDING),
    (state(Phase.CONFIRMED, Pending.NONE, G, R, True), 11, Action.RAISE_COUNTERS),
    (state(Phase.NONE, Pending.NONE, G, B, True), 11, Action.RAISE_COUNTERS),
    (state(Phase.CONFIRMED, Pending.NONE, G, R), 12, Action.BOOT_PRIMARY),
    (state(Phase.REVERTED, Pending.NONE, G, G), 12, Action.BOOT_PRIMARY),
    (state(Phase.CONFIRMED, Pending.NONE, B, G), 13, Action.PANIC),
    (state(Phase.REVERTED, Pending.NONE, R, G), 13, Action.PANIC),
    (state(Phase.CONFIRMED, Pending.NONE, B, R), 14, Action.PANIC),
    (state(Phase.REVERTED, Pending.NONE, R, B), 14, Action.PANIC),
    (state(Phase.NONE, Pending.PARTIAL, G, B, True), 15, Action.DROP_PENDING),
    (state(Phase.REVERTED, Pending.PARTIAL, G, G), 15, Action.DROP_PENDING),
    (state(Phase.NONE, Pending.PARTIAL, R, G), 15, Action.DROP_PENDING),
]


@pytest.mark.parametrize(("boot_state", "row", "action"), ROWS)
def test_table_2_row_by_row(boot_state: BootState, row: int, action: Action) -> None:
    decision = decide(boot_state)
    assert (decision.row, decision.action) == (row, action)
    assert decision.why == TABLE[row - 1].why


def test_every_row_is_exercised_above() -> None:
    assert {row for _, row, _ in ROWS} == {r.number for r in TABLE}
    assert [r.number for r in TABLE] == list(range(1, len(TABLE) + 1))


ALL_STATES = [
    BootState(*combo)
    for combo in itertools.product(Phase, Pending, Verdict, Verdict, (False, True))
]


def test_every_state_has_a_decision() -> None:
    for s in ALL_STATES:
        decide(s)  # raises if no row matches


def test_nothing_that_does_not_verify_is_booted() -> None:
    for s in ALL_STATES:
        if decide(s).action in BOOTS:
            assert s.primary is Verdict.GOOD


def test_nothing_that_does_not_verify_is_swapped_in() -> None:
    starts = {
        Action.START_TEST_SWAP,
        Action.START_PERMANENT_SWAP,
        Action.START_REVERT,
    }
    for s in ALL_STATES:
        if decide(s).action in starts:
            assert s.secondary is Verdict.GOOD


def test_an_interrupted_swap_or_revert_is_always_resumed() -> None:
    for s in ALL_STATES:
        if s.phase is Phase.SWAPPING:
            assert decide(s).action is Action.RESUME_SWAP
        if s.phase is Phase.REVERTING:
            assert decide(s).action is Action.RESUME_REVERT


def test_a_trial_never_starts_another_update_or_raises_counters() -> None:
    for s in ALL_STATES:
        if s.phase in (Phase.TRIAL, Phase.TRIED):
            assert decide(s).action in {Action.BOOT_TRIAL, Action.START_REVERT, Action.PANIC}


def test_a_partial_request_is_never_started() -> None:
    for s in ALL_STATES:
        if s.pending is Pending.PARTIAL and s.secondary is not Verdict.GOOD:
            assert decide(s).action not in {Action.START_TEST_SWAP, Action.START_PERMANENT_SWAP}
        if s.pending is Pending.PARTIAL:
            assert decide(s).action is not Action.START_TEST_SWAP


def test_a_partial_request_is_forgotten_when_steady() -> None:
    # Issue #11 item 2: a cut while marking a set pending left a half-marked request that no
    # row ever cleared, and the consumer took it for a pending update forever.
    for s in ALL_STATES:
        if s.pending is Pending.PARTIAL and s.phase in STEADY:
            assert decide(s).action is Action.DROP_PENDING


def test_nothing_unconfirmed_is_installed_for_good_without_a_request() -> None:
    # Issue #11 item 5: with nothing pending, the other slots hold a release the application
    # rejected (after a revert) or never saw booted: it is never promoted, whatever the
    # running images look like.
    for s in ALL_STATES:
        if s.phase in STEADY and s.pending in (Pending.NONE, Pending.PARTIAL):
            assert decide(s).action in {Action.BOOT_PRIMARY, Action.RAISE_COUNTERS,
                                        Action.DROP_PENDING, Action.PANIC}
            if s.primary is not Verdict.GOOD:
                assert decide(s).action in {Action.PANIC, Action.DROP_PENDING}


def test_pending_of_and_combine() -> None:
    none = Trailer(MagicState.UNSET)
    perm = Trailer(MagicState.GOOD, Kind.PERMANENT)
    assert pending_of([none, none]) is Pending.NONE
    assert pending_of([live, none]) is Pending.PARTIAL
    assert pending_of([Trailer(MagicState.BAD), live]) is Pending.PARTIAL
    assert pending_of([live, live]) is Pending.TEST
    assert pending_of([perm, live]) is Pending.TEST
    assert pending_of([perm, perm]) is Pending.PERMANENT
    assert combine([G, G]) is G
    assert combine([G, R]) is R
    assert combine([R, B, G]) is B
    assert combine([]) is B


def test_docs_show_the_tables_as_the_code_has_them() -> None:
    docs = Path(__file__).parents[2] / "docs" / "bootloader.md"
    text = docs.read_text()
    phase_part, action_part = render_markdown().split("\n\n")
    assert phase_part in text
    assert action_part in text
