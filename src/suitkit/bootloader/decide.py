"""The boot decision: two ordered, pure decision tables (mcuboot ``docs/design.md``, State I-V).

RFC 9019 §4.1 ("The Bootloader") asks the bootloader to boot only an authentic image and to fall
back when it cannot; RFC 9124 REQ.SEC.AUTH.EXEC (THREAT.IMG.REPLACE) asks it to check the image
at every boot, and REQ.SEC.SEQUENCE (THREAT.IMG.EXPIRED) to refuse old ones. This module turns
what the bootloader observed into the next step. It does no I/O and knows nothing about flash:
the same tables drive the flash bootloader (:mod:`suitkit.bootloader.boot`) and the A/B
filesystem slots (:mod:`suitkit.bootloader.fsslots`).

Table 1 (:data:`PHASE_TABLE`) reads the status trailer's flags as a *phase*. Table 2
(:data:`TABLE`) maps (phase, pending request, primary verdict, secondary verdict, counters) to an
:class:`Action`. Both are evaluated top to bottom; the first matching row wins; ``*`` matches
anything. The bootloader applies the action, observes again, and decides again, until the action
is a boot (or a panic): every non-boot action changes the stored state, so a cut at any point
resumes from the row that matches what was left behind.

``docs/bootloader.md`` holds the rendered tables (:func:`render_markdown`); a test keeps them in
sync.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from suitkit.bootloader.trailer import Kind, Trailer


class Phase(enum.Enum):
    """Where the boot set is in its update cycle, read from the status trailer."""

    NONE = "none"
    """No live status record: whatever is in the primary slots is installed for good."""
    SWAPPING = "swapping"
    """A swap (test or permanent) has started and copy_done is not set yet."""
    TRIAL = "trial"
    """The new images are in place, on trial, and have not been booted yet."""
    TRIED = "tried"
    """The new images were booted once on trial and not confirmed."""
    CONFIRMED = "confirmed"
    """The swapped-in images are confirmed (image_ok) or were installed permanently."""
    REVERTING = "reverting"
    """Swapping the previous images back has started."""
    REVERTED = "reverted"
    """The previous images are back in the primary slots."""


STEADY = frozenset({Phase.NONE, Phase.CONFIRMED, Phase.REVERTED})
ON_TRIAL = frozenset({Phase.TRIAL, Phase.TRIED})


class Pending(enum.Enum):
    """What the secondary slots' pending trailers ask for, taken over the whole set."""

    NONE = "none"
    PARTIAL = "partial"
    """Some members are marked pending, not all: the set is not complete, nothing is started."""
    TEST = "test"
    PERMANENT = "permanent"


class Verdict(enum.Enum):
    """The verifier's and the counter's view of the images in one slot of every member."""

    GOOD = "good"
    """Every member verifies and none is below its security counter."""
    ROLLBACK = "rollback"
    """Every member is authentic, but one is below its security counter."""
    BAD = "bad"
    """A member is missing, malformed, or fails its signature or digest check."""


class Action(enum.Enum):
    RESUME_SWAP = "resume-swap"
    RESUME_REVERT = "resume-revert"
    START_REVERT = "start-revert"
    BOOT_TRIAL = "boot-trial"
    START_TEST_SWAP = "start-test-swap"
    START_PERMANENT_SWAP = "start-permanent-swap"
    DROP_PENDING = "drop-pending"
    RAISE_COUNTERS = "raise-counters"
    BOOT_PRIMARY = "boot-primary"
    PANIC = "panic"


BOOTS = frozenset({Action.BOOT_PRIMARY, Action.BOOT_TRIAL})
"""Actions that end a boot by running the primary images."""

REFUSAL_ROWS = frozenset({3, 4, 6, 10, 13, 14})
"""Rows of Table 2 taken because something did not verify: a boot reports why."""


@dataclass(frozen=True, slots=True)
class BootState:
    """Everything the decision depends on."""

    phase: Phase
    pending: Pending
    primary: Verdict
    secondary: Verdict
    counters_behind: bool = False
    """Some primary image's sequence number is above its security counter."""


@dataclass(frozen=True, slots=True)
class Decision:
    row: int
    action: Action
    why: str


# -- Table 1: status trailer -> phase ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhaseRow:
    """One row of Table 1; ``None`` is ``*``. ``ok`` is image_ok set or kind PERMANENT."""

    number: int
    magic_good: bool | None
    revert_done: bool | None
    revert: bool | None
    copy_done: bool | None
    ok: bool | None
    tried: bool | None
    phase: Phase

    def matches(self, t: Trailer) -> bool:
        observed = (
            t.live,
            t.revert_done,
            t.revert,
            t.copy_done,
            t.image_ok or t.kind is Kind.PERMANENT,
            t.tried,
        )
        wanted = (
            self.magic_good,
            self.revert_done,
            self.revert,
            self.copy_done,
            self.ok,
            self.tried,
        )
        return all(w is None or w == o for w, o in zip(wanted, observed, strict=True))


PHASE_TABLE: tuple[PhaseRow, ...] = (
    PhaseRow(1, False, None, None, None, None, None, Phase.NONE),
    PhaseRow(2, True, True, None, None, None, None, Phase.REVERTED),
    PhaseRow(3, True, False, True, None, None, None, Phase.REVERTING),
    PhaseRow(4, True, False, False, False, None, None, Phase.SWAPPING),
    PhaseRow(5, True, False, False, True, True, None, Phase.CONFIRMED),
    PhaseRow(6, True, False, False, True, False, True, Phase.TRIED),
    PhaseRow(7, True, False, False, True, False, False, Phase.TRIAL),
)


def phase_of(status: Trailer) -> Phase:
    """Table 1: the phase a status trailer records."""
    for row in PHASE_TABLE:
        if row.matches(status):
            return row.phase
    raise AssertionError(f"Table 1 has no row for {status}")  # the rows cover every case


def pending_of(trailers: Sequence[Trailer]) -> Pending:
    """What the set's pending trailers (one per member) ask for."""
    live = [t for t in trailers if t.live]
    if not live:
        return Pending.NONE
    if len(live) < len(trailers):
        return Pending.PARTIAL
    if all(t.kind is Kind.PERMANENT for t in live):
        return Pending.PERMANENT
    return Pending.TEST


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """The verdict of a set from its members' verdicts (the worst one)."""
    seen = set(verdicts)
    if Verdict.BAD in seen or not seen:
        return Verdict.BAD
    if Verdict.ROLLBACK in seen:
        return Verdict.ROLLBACK
    return Verdict.GOOD


# -- Table 2: state -> action --------------------------------------------------------------

ANY_PHASE = frozenset(Phase)
ANY_PENDING = frozenset(Pending)
ANY_VERDICT = frozenset(Verdict)
GOOD = frozenset({Verdict.GOOD})
NOT_GOOD = frozenset({Verdict.BAD, Verdict.ROLLBACK})
NO_REQUEST = frozenset({Pending.NONE})


@dataclass(frozen=True, slots=True)
class Row:
    """One row of Table 2."""

    number: int
    phase: frozenset[Phase]
    pending: frozenset[Pending]
    primary: frozenset[Verdict]
    secondary: frozenset[Verdict]
    counters_behind: bool | None
    action: Action
    why: str

    def matches(self, s: BootState) -> bool:
        return (
            s.phase in self.phase
            and s.pending in self.pending
            and s.primary in self.primary
            and s.secondary in self.secondary
            and (self.counters_behind is None or self.counters_behind == s.counters_behind)
        )


TABLE: tuple[Row, ...] = (
    Row(1, frozenset({Phase.SWAPPING}), ANY_PENDING, ANY_VERDICT, ANY_VERDICT, None,
        Action.RESUME_SWAP,
        "a swap was interrupted: finish it from its status log (slots hold mixed content)"),
    Row(2, frozenset({Phase.REVERTING}), ANY_PENDING, ANY_VERDICT, ANY_VERDICT, None,
        Action.RESUME_REVERT,
        "a revert was interrupted: finish it from its status log"),
    Row(3, ON_TRIAL, ANY_PENDING, NOT_GOOD, GOOD, None,
        Action.START_REVERT,
        "the image on trial no longer verifies: go back to the previous one now"),
    Row(4, ON_TRIAL, ANY_PENDING, NOT_GOOD, NOT_GOOD, None,
        Action.PANIC,
        "neither the trial image nor the previous one verifies"),
    Row(5, frozenset({Phase.TRIED}), ANY_PENDING, GOOD, GOOD, None,
        Action.START_REVERT,
        "booted once on trial and not confirmed: revert"),
    Row(6, frozenset({Phase.TRIED}), ANY_PENDING, GOOD, NOT_GOOD, None,
        Action.BOOT_TRIAL,
        "not confirmed, but there is nothing valid to revert to: keep it on trial"),
    Row(7, frozenset({Phase.TRIAL}), ANY_PENDING, GOOD, ANY_VERDICT, None,
        Action.BOOT_TRIAL,
        "first boot of the new image: set tried, boot it on trial"),
    Row(8, STEADY, frozenset({Pending.PERMANENT}), ANY_VERDICT, GOOD, None,
        Action.START_PERMANENT_SWAP,
        "a verified update is pending, to be installed for good"),
    Row(9, STEADY, frozenset({Pending.TEST}), ANY_VERDICT, GOOD, None,
        Action.START_TEST_SWAP,
        "a verified update is pending: swap it in for a trial boot"),
    Row(10, STEADY, frozenset({Pending.TEST, Pending.PERMANENT}), ANY_VERDICT, NOT_GOOD, None,
        Action.DROP_PENDING,
        "the pending update does not verify or is a rollback: forget the request"),
    Row(11, STEADY, NO_REQUEST, GOOD, ANY_VERDICT, True,
        Action.RAISE_COUNTERS,
        "the installed images are final: bring the security counters up to them"),
    Row(12, STEADY, NO_REQUEST, GOOD, ANY_VERDICT, False,
        Action.BOOT_PRIMARY,
        "the installed images verify: boot them"),
    Row(13, STEADY, NO_REQUEST, NOT_GOOD, GOOD, None,
        Action.PANIC,
        "the installed images do not verify and the other slots hold nothing the application "
        "confirmed: refuse to boot, wait for a recovery update"),
    Row(14, STEADY, NO_REQUEST, NOT_GOOD, NOT_GOOD, None,
        Action.PANIC,
        "nothing authentic and recent enough to boot"),
    Row(15, STEADY, frozenset({Pending.PARTIAL}), ANY_VERDICT, ANY_VERDICT, None,
        Action.DROP_PENDING,
        "an incomplete request (cut while the set was being marked pending): forget it"),
)  # fmt: skip


def decide(state: BootState) -> Decision:
    """Table 2: the first row that matches ``state``."""
    for row in TABLE:
        if row.matches(state):
            return Decision(row.number, row.action, row.why)
    raise AssertionError(f"Table 2 has no row for {state}")  # the rows cover every case


# -- documentation -------------------------------------------------------------------------


def _cell(values: frozenset[enum.Enum], universe: frozenset[enum.Enum]) -> str:
    if values == universe:
        return "*"
    order = [m for m in type(next(iter(universe))) if m in values]
    return " / ".join(str(m.value) for m in order)


def _flag(value: bool | None) -> str:
    return "*" if value is None else ("set" if value else "-")


def render_markdown() -> str:
    """Both tables as Markdown, exactly as ``docs/bootloader.md`` shows them."""
    lines = [
        "| # | magic | revert_done | revert | copy_done | image_ok or PERMANENT | tried | phase |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in PHASE_TABLE:
        magic = "*" if p.magic_good is None else ("good" if p.magic_good else "not good")
        lines.append(
            f"| {p.number} | {magic} | {_flag(p.revert_done)} | {_flag(p.revert)} | "
            f"{_flag(p.copy_done)} | {_flag(p.ok)} | {_flag(p.tried)} | {p.phase.value} |"
        )
    lines += [
        "",
        "| # | phase | pending | primary | secondary | counters behind | action | why |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in TABLE:
        behind = "*" if r.counters_behind is None else ("yes" if r.counters_behind else "no")
        lines.append(
            f"| {r.number} | {_cell(r.phase, ANY_PHASE)} | {_cell(r.pending, ANY_PENDING)} | "
            f"{_cell(r.primary, ANY_VERDICT)} | {_cell(r.secondary, ANY_VERDICT)} | {behind} | "
            f"`{r.action.value}` | {r.why} |"
        )
    return "\n".join(lines) + "\n"
