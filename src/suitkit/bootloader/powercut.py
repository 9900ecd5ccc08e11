"""The exhaustive power-cut harness (mcuboot's ``run_perm_with_fails``, RFC 9019 robustness).

RFC 9019 asks that "a power failure at any time must not cause a failure of the device". For
each scenario the harness:

1. runs it once cleanly on a fresh device and counts its flash operations ``N``;
2. for every ``n`` in ``1..N`` (or a seeded sample): builds a fresh device, replays the scenario
   with the power cut at operation ``n`` (the flash model leaves a torn program or a partly
   erased sector behind), restores the power, and boots again and again as the device would,
   with the application's behaviour (confirm a healthy new image, or never confirm);
3. checks the invariants at every boot and at the end:

   - every boot runs an authentic image set: the harness re-reads the primary slots and verifies
     them itself, and the digests are the ones the author signed;
   - a multi-image set is never mixed: all members come from the same release (both or neither);
   - nothing older than the last confirmed release runs, and security counters never decrease;
   - the update either completes or is cleanly rolled back: after recovery the device is in a
     steady state (no swap in progress, not on trial), boots the same set again without a single
     flash write, its counters equal the running release, a release confirmed before the cut is
     still the one running, and a fresh update afterwards goes through.

``double-cut`` also cuts the power a second time during the first recovery boot, at every (or a
sample of) its operations. Images are a few sectors, so the exhaustive runs take seconds.

The ``bootloader-*`` scenarios update the bootloader itself (an mcu with an immutable stage 0
and two stage-1 copies, :mod:`suitkit.bootloader.stage0`): every boot goes through stage 0,
and the same invariants hold for the stage 1 it starts (authentic, never below a confirmed
stage 1, one trial per release, counter never down and equal to the running stage 1 once
steady), besides the application set's.

What it does not do: cut during factory provisioning, inject faults other than power cuts
(bit rot, attacks: see the tests), model cuts of one flash while the other stays powered, or cut
the consumer's side of an update (the processor, the download journal, the device folder): that
is ``suitkit.sim.powercut``, over the real path.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from suitkit.bootloader.api import BootResult, stage_set
from suitkit.bootloader.decide import STEADY
from suitkit.bootloader.flash import PowerCut
from suitkit.bootloader.image import open_slot
from suitkit.bootloader.profiles import COMPONENTS, Device, make_device
from suitkit.bootloader.simple_manifest import SimpleManifestVerifier, make_manifest
from suitkit.bootloader.stage0 import Stage0, Stage1Boot
from suitkit.bootloader.verifier import ImageVerifier
from suitkit.errors import SuitError

BASE, OLD, NEW, NEXT, LATER = 1, 2, 3, 4, 5
"""Sequence numbers: the factory release; the release installed by an earlier update (so every
scenario starts with live trailers and an old image in the secondary slots, as a device in the
field does); the update under test; a newer one some scenarios stage over it; and the update
that checks the device can still be updated after recovery."""
LABELS = {BASE: "base", OLD: "old", NEW: "new", NEXT: "next", LATER: "later"}
IMAGE_SIZES = {BASE: 4000, OLD: 5000, NEW: 7200, NEXT: 3100, LATER: 6100}
"""Different sizes, so that swaps move blocks of different content and blank areas."""
WRITE_PIECE = 700
"""Images are streamed to the store in pieces of this size (not a multiple of anything)."""
MAX_RECOVERY_BOOTS = 6


class Fixture:
    """Keys (one per component), images and signed manifests, all derived from a seed.

    The harness and the tests use it; every release is deterministic.
    """

    def __init__(self, components: Sequence[str], seed: int = 0) -> None:
        self.components = tuple(components)
        self.seed = seed
        self.keys = {name: self.key(f"{name} {seed}") for name in self.components}
        self.verifiers: dict[str, ImageVerifier] = {
            name: SimpleManifestVerifier(key.public_key()) for name, key in self.keys.items()
        }
        self._cache: dict[tuple[str, int, int, bytes], tuple[bytes, bytes]] = {}

    @staticmethod
    def key(label: str) -> Ed25519PrivateKey:
        """A deterministic Ed25519 key for a label."""
        return Ed25519PrivateKey.from_private_bytes(
            hashlib.sha256(f"suitkit powercut key {label}".encode()).digest()
        )

    def release(
        self, name: str, seq: int, *, size: int | None = None, key: Ed25519PrivateKey | None = None
    ) -> tuple[bytes, bytes]:
        """``(manifest, image)`` of release ``seq`` of component ``name``."""
        size = IMAGE_SIZES.get(seq, 3000 + 97 * seq) if size is None else size
        signer = self.keys[name] if key is None else key
        cache_key = (name, seq, size, signer.public_key().public_bytes_raw())
        if cache_key not in self._cache:
            rng = random.Random(f"{name}/{seq}/{size}/{self.seed}")  # noqa: S311 (test data)
            image = rng.randbytes(size)
            manifest = make_manifest(signer, sequence_number=seq, image=image)
            self._cache[cache_key] = (manifest, image)
        return self._cache[cache_key]

    def releases(self, seq: int, *, size: int | None = None) -> dict[str, tuple[bytes, bytes]]:
        """Release ``seq`` of every component."""
        return {name: self.release(name, seq, size=size) for name in self.components}

    def digest(self, name: str, seq: int) -> bytes:
        return hashlib.sha256(self.release(name, seq)[1]).digest()


class InvariantBroken(Exception):
    """An invariant did not hold (the harness records it as a failure)."""


@dataclass(frozen=True)
class Policy:
    """How the application behaves after a boot."""

    confirms: bool
    """Confirms the new release when it runs on trial (False: it is broken and never does)."""
    forbid_new_after_cut: bool = False
    """The new release must not run at all once the power was cut (revert already decided)."""


class Run:
    """One device going through a scenario, with every invariant checked as it goes."""

    def __init__(self, shape: str, policy: Policy, seed: int, fx: Fixture | None = None, *,
                 stage1: bool = False) -> None:
        self.fx = fx if fx is not None else Fixture(COMPONENTS[shape], seed)
        self.s1fx = Fixture((STAGE1,), seed) if stage1 else None
        self.device: Device = make_device(
            shape, self.fx.verifiers, seed=seed,
            stage1=self.s1fx.verifiers[STAGE1] if self.s1fx is not None else None)
        self.bl = self.device.bootloader
        self.s0: Stage0 | None = self.device.stage0
        self.policy = policy
        self.device.provision(self.fx.releases(BASE))
        self.s1_floor = BASE
        """The highest stage-1 release whose confirm() returned."""
        self.s1_committed: set[int] = {BASE}
        """Stage-1 releases whose staging finished (the header: its commit)."""
        self.s1_boot: Stage1Boot | None = None
        self.s1_trials: Counter[int] = Counter()
        self.s1_counter = BASE
        if self.s0 is not None and self.s1fx is not None:
            self.s0.install_factory(*self.s1fx.release(STAGE1, BASE))
        self.floor = BASE
        """The highest release whose confirm() returned."""
        self.committed: set[int] = set()
        """Releases whose mark_pending() returned."""
        self.counters = self.bl.read_counters()
        self.after_cut = False
        self.boots = 0
        self.trials: Counter[int] = Counter()
        self.marks: dict[str, int] = {}
        # An earlier update in the field: BASE -> OLD, confirmed.
        self.boot()
        self.stage(OLD)
        self.commit(OLD)
        self.boot()
        self.confirm()
        if self.s0 is not None:  # and the bootloader was updated once: BASE -> OLD, confirmed
            self.stage1_stage(OLD)
            self.boot()
            self.stage1_confirm()
        self.check_steady(self.boot())

    def mark(self, name: str) -> None:
        """Remember how many flash operations had happened when the scenario got here."""
        self.marks[name] = self.device.ops

    # -- the application's actions --------------------------------------------------------

    def stage(self, seq: int) -> None:
        stage_set(self.bl, self.fx.releases(seq), mark=False, piece=WRITE_PIECE)

    def commit(self, seq: int) -> None:
        self.bl.mark_pending()
        self.committed.add(seq)

    def confirm(self) -> None:
        running = self.release(self._running())
        self.bl.confirm()
        self.floor = max(self.floor, running)

    def stage1_stage(self, seq: int) -> None:
        """The running stage 1 writes release ``seq`` of itself into its other copy."""
        assert self.s0 is not None and self.s1fx is not None
        manifest, image = self.s1fx.release(STAGE1, seq)
        writer = self.s0.stage(manifest=manifest, image_size=len(image))
        for pos in range(0, len(image), WRITE_PIECE):
            writer.write(image[pos : pos + WRITE_PIECE])
        writer.finish()
        self.s1_committed.add(seq)

    def stage1_confirm(self) -> None:
        assert self.s0 is not None and self.s1_boot is not None
        running = self.s1_boot.sequence_number
        self.s0.confirm()
        self.s1_floor = max(self.s1_floor, running)

    def _running(self) -> dict[str, int]:
        """The sequence numbers in the primary slots (reads only)."""
        obs = self.bl.observe()
        return {
            img.name: (c.info.sequence_number if c.info else -1)
            for img, c in zip(self.bl.layout.images, obs.primary, strict=True)
        }

    def boot(self) -> BootResult:
        if self.s0 is not None:
            self.s1_boot = None
            started = self.s0.boot()
            self.check_stage1(started)
            self.s1_boot = started
        result = self.bl.boot()
        self.boots += 1
        self.check_boot(result)
        return result

    def check_stage1(self, started: Stage1Boot) -> None:
        """Stage 0 started an authentic stage 1, never below a confirmed one, tried once."""
        assert self.s0 is not None and self.s1fx is not None
        seq = started.sequence_number
        if seq not in LABELS:
            raise InvariantBroken(f"unknown stage-1 release {seq} started")
        region = self.s0.layout.copies[started.copy]
        manifest, reader = open_slot(self.device.flashes[region.flash], region,
                                     unit=self.s0._unit(started.copy), limits=self.s0.limits)
        info = self.s1fx.verifiers[STAGE1].verify(manifest, reader)
        if info.sequence_number != seq or info.digest != self.s1fx.digest(STAGE1, seq):
            raise InvariantBroken(f"stage 0 reported stage-1 release {seq} but copy "
                                  f"{started.copy} holds {info.sequence_number}")
        if seq < self.s1_floor:
            raise InvariantBroken(f"stage-1 release {seq} runs although stage-1 release "
                                  f"{self.s1_floor} was confirmed")
        if started.trial:
            self.s1_trials[seq] += 1
            if self.s1_trials[seq] > 1:
                raise InvariantBroken(f"stage-1 release {seq} started on trial a second time")
        counter = self.s0.counter.read()
        if counter < self.s1_counter:
            raise InvariantBroken(f"stage-1 counter went down from {self.s1_counter} to "
                                  f"{counter}")
        if counter > seq or (started.trial and counter >= seq):
            raise InvariantBroken(f"stage-1 counter {counter} with stage-1 release {seq} "
                                  f"{'on trial' if started.trial else 'running'}")
        self.s1_counter = counter

    # -- invariants -----------------------------------------------------------------------

    def release(self, seqs: dict[str, int]) -> int:
        values = set(seqs.values())
        if len(values) != 1:
            raise InvariantBroken(f"mixed image set running: {seqs}")
        return values.pop()

    def check_boot(self, result: BootResult) -> None:
        seq = self.release(result.sequence_numbers)
        if seq not in LABELS:
            raise InvariantBroken(f"unknown release {seq} running")
        if result.trial:
            # The bootloader gives an unconfirmed release one trial boot, not two.
            self.trials[seq] += 1
            if self.trials[seq] > 1:
                raise InvariantBroken(f"release {seq} booted on trial a second time")
        for index, img in enumerate(self.bl.layout.images):
            # Verify independently of the bootloader: read the slot and check it ourselves.
            flash = self.device.flashes[img.primary.flash]
            manifest, reader = open_slot(
                flash, img.primary, unit=self.bl.image_unit(index), limits=self.bl.limits
            )
            info = self.fx.verifiers[img.name].verify(manifest, reader)
            if info.sequence_number != seq or info.digest != self.fx.digest(img.name, seq):
                raise InvariantBroken(
                    f"{img.name}: boot reported release {seq} but the slot holds "
                    f"{info.sequence_number}"
                )
        if seq < self.floor:
            raise InvariantBroken(f"release {seq} runs although release {self.floor} was confirmed")
        if self.after_cut and self.policy.forbid_new_after_cut and seq == NEW:
            raise InvariantBroken("the new release ran again after its revert had started")
        counters = self.bl.read_counters()
        for name, value in counters.items():
            if value < self.counters[name]:
                raise InvariantBroken(
                    f"{name}: security counter went down from {self.counters[name]} to {value}"
                )
            if value > seq:
                raise InvariantBroken(f"{name}: counter {value} is above the running {seq}")
            if result.trial and value >= seq:
                raise InvariantBroken(
                    f"{name}: counter already at {value} while release {seq} is only on trial"
                )
        self.counters = counters

    def recover(self) -> int:
        """Power back on; boot as the device would until steady; check; return the release."""
        self.device.restore_power()
        self.after_cut = True
        result = self.boot()
        for _ in range(MAX_RECOVERY_BOOTS):
            stage1 = self.s1_boot
            s1_trial = stage1 is not None and self.s0 is not None and self.s0.on_trial()
            if not result.trial and not s1_trial:
                break
            if result.trial and self.policy.confirms \
                    and self.release(result.sequence_numbers) in self.committed:
                self.confirm()
            if s1_trial and self.policy.confirms and stage1 is not None \
                    and stage1.sequence_number in self.s1_committed:
                self.stage1_confirm()
            result = self.boot()
        else:
            raise InvariantBroken(f"still on trial after {MAX_RECOVERY_BOOTS} boots")
        return self.check_steady(result)

    def check_steady(self, result: BootResult) -> int:
        seq = self.release(result.sequence_numbers)
        before = self.device.ops
        again = self.boot()
        if again.trial or again.sequence_numbers != result.sequence_numbers:
            raise InvariantBroken(f"not steady: {result.sequence_numbers} then {again}")
        if self.device.ops != before:
            raise InvariantBroken(
                f"a steady boot wrote to flash ({self.device.ops - before} operations)"
            )
        phase = self.bl.observe().state.phase
        if phase not in STEADY:
            raise InvariantBroken(f"recovered into phase {phase.value}")
        if seq < self.floor:
            raise InvariantBroken(f"release {seq} runs although {self.floor} was confirmed")
        if seq not in self.committed | {BASE}:
            raise InvariantBroken(f"release {seq} runs although it was never committed")
        if not self.policy.confirms and seq == NEW:
            raise InvariantBroken("a release the application never confirmed stayed installed")
        if self.bl.read_counters() != dict.fromkeys(self.fx.components, seq):
            raise InvariantBroken(f"counters {self.bl.read_counters()} != running release {seq}")
        if self.s0 is not None:
            self.check_stage1_steady()
        return seq

    def check_stage1_steady(self) -> None:
        assert self.s0 is not None and self.s1_boot is not None
        seq = self.s1_boot.sequence_number
        if self.s0.on_trial():
            raise InvariantBroken(f"stage-1 release {seq} still on trial after recovery")
        if seq < self.s1_floor:
            raise InvariantBroken(f"stage-1 release {seq} runs although {self.s1_floor} was "
                                  "confirmed")
        if seq not in self.s1_committed:
            raise InvariantBroken(f"stage-1 release {seq} runs although it was never staged")
        if not self.policy.confirms and seq == NEW:
            raise InvariantBroken("a stage 1 never confirmed stayed installed")
        if self.s0.counter.read() != seq:
            raise InvariantBroken(f"stage-1 counter {self.s0.counter.read()} != the running "
                                  f"stage 1 {seq}")

    def check_updatable(self) -> None:
        """A fresh update to LATER must go through cleanly after recovery."""
        self.stage(LATER)
        self.commit(LATER)
        result = self.boot()
        if not result.trial or self.release(result.sequence_numbers) != LATER:
            raise InvariantBroken(f"after recovery, an update to {LATER} gave {result}")
        self.confirm()
        self.check_steady(self.boot())
        if self.s0 is not None:
            self.stage1_stage(LATER)
            self.boot()
            if self.s1_boot is None or not self.s1_boot.trial \
                    or self.s1_boot.sequence_number != LATER:
                raise InvariantBroken(f"after recovery, a stage-1 update to {LATER} gave "
                                      f"{self.s1_boot}")
            self.stage1_confirm()
            self.check_steady(self.boot())


Steps = Callable[[Run], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    shape: str
    description: str
    body: Steps
    """The steps whose flash operations are cut, one cut point per operation."""
    policy: Policy
    prefix: Steps | None = None
    """Steps run cleanly before the body (not cut)."""
    target: int = NEW
    """The release the body installs (what a cut between commit and trial must still reach)."""
    stage1: bool = False
    """The device has an updatable bootloader, and the outcome is the stage 1 that runs."""
    double: bool = False
    """Cut a second time during the first recovery boot."""


def _update(run: Run) -> None:
    run.boot()
    run.stage(NEW)
    run.commit(NEW)
    run.mark("committed")
    trial = run.boot()
    run.mark("trial")
    if not trial.trial:
        raise InvariantBroken(f"the new release did not boot on trial: {trial}")
    run.confirm()
    run.boot()


def _restage(run: Run) -> None:
    run.boot()
    run.stage(NEW)
    run.commit(NEW)
    # Before rebooting, the application replaces the pending update with a newer one.
    run.stage(NEXT)
    run.commit(NEXT)
    run.mark("committed")
    trial = run.boot()
    run.mark("trial")
    if not trial.trial:
        raise InvariantBroken(f"the newest release did not boot on trial: {trial}")
    run.confirm()
    run.boot()


def _update_not_confirmed(run: Run) -> None:
    run.boot()
    run.stage(NEW)
    run.commit(NEW)
    run.boot()  # on trial; the application never confirms
    run.boot()  # reverts
    run.boot()


def _to_trial(run: Run) -> None:
    run.boot()
    run.stage(NEW)
    run.commit(NEW)
    run.boot()


def _reboot_unconfirmed(run: Run) -> None:
    run.boot()  # reverts
    run.boot()


def _stage1_update(run: Run) -> None:
    run.boot()
    run.stage1_stage(NEW)
    run.mark("committed")
    run.boot()
    run.mark("trial")
    if run.s1_boot is None or not run.s1_boot.trial or run.s1_boot.sequence_number != NEW:
        raise InvariantBroken(f"the new stage 1 did not start on trial: {run.s1_boot}")
    run.stage1_confirm()
    run.boot()


def _stage1_not_confirmed(run: Run) -> None:
    run.boot()
    run.stage1_stage(NEW)
    run.boot()  # the new stage 1 on trial; it never confirms
    run.boot()  # stage 0 falls back to the confirmed copy
    run.boot()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "single-image",
            "mcu",
            "stage, mark pending, swap and boot on trial, confirm, boot",
            _update,
            Policy(confirms=True),
        ),
        Scenario(
            "secure-split",
            "secure-split",
            "the same update of a secure and a normal image as one atomic set",
            _update,
            Policy(confirms=True),
        ),
        Scenario(
            "dual-cpu",
            "dual-cpu",
            "the same update of a main-CPU and a co-processor image (two flashes) as one set",
            _update,
            Policy(confirms=True),
        ),
        Scenario(
            "revert",
            "mcu",
            "stage, mark pending, boot on trial, never confirm: the bootloader reverts",
            _update_not_confirmed,
            Policy(confirms=False),
        ),
        Scenario(
            "interrupted-revert",
            "mcu",
            "cuts only during the revert boot (and after): the revert must resume, the "
            "unconfirmed release must never run again",
            _reboot_unconfirmed,
            Policy(confirms=False, forbid_new_after_cut=True),
            prefix=_to_trial,
        ),
        Scenario(
            "restage",
            "mcu",
            "mark one update pending, then stage and mark a newer one over it before rebooting",
            _restage,
            Policy(confirms=True),
            target=NEXT,
        ),
        Scenario(
            "double-cut",
            "mcu",
            "the single-image update, cut once, then cut again during the recovery boot",
            _update,
            Policy(confirms=True),
            double=True,
        ),
        Scenario(
            "bootloader-update",
            "mcu",
            "the bootloader updates itself: stage 1 writes a new stage 1 into its other copy, "
            "stage 0 tries it, the new stage 1 confirms",
            _stage1_update,
            Policy(confirms=True),
            stage1=True,
        ),
        Scenario(
            "bootloader-revert",
            "mcu",
            "a new stage 1 that never confirms: stage 0 falls back to the confirmed copy",
            _stage1_not_confirmed,
            Policy(confirms=False),
            stage1=True,
        ),
        Scenario(
            "bootloader-double-cut",
            "mcu",
            "the bootloader update, cut once, then cut again during the recovery boot",
            _stage1_update,
            Policy(confirms=True),
            stage1=True,
            double=True,
        ),
    )
}
STAGE1 = "stage1"
"""The name of the stage-1 image in the ``bootloader-*`` scenarios' fixture."""


@dataclass
class PowerCutResult:
    scenario: str
    shape: str
    clean_ops: int
    """Flash operations of the scenario's cut range in a clean run."""
    cut_points_tried: int
    """Runs with a cut (for double-cut: pairs of first and second cut points)."""
    failures: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    """How many runs ended on each release ("old", "new")."""
    max_boots: int = 0
    """The most boots one run needed after its (last) cut, steady checks included."""
    seconds: float = 0.0


def _choose(total: int, sample: int | None, seed: int) -> list[int]:
    points = list(range(1, total + 1))
    if sample is None or sample >= total:
        return points
    rng = random.Random(seed)  # noqa: S311 (sampling cut points)
    return sorted(rng.sample(points, sample))


def _fresh(scenario: Scenario, seed: int, fx: Fixture) -> Run:
    run = Run(scenario.shape, scenario.policy, seed, fx, stage1=scenario.stage1)
    if scenario.prefix is not None:
        scenario.prefix(run)
    return run


def _clean_run(scenario: Scenario, seed: int, fx: Fixture) -> tuple[int, dict[str, int]]:
    """Operations of the body in a clean run, and where its marks fell (relative to the body)."""
    run = _fresh(scenario, seed, fx)
    start = run.device.ops
    run.marks.clear()
    scenario.body(run)
    return run.device.ops - start, {k: v - start for k, v in run.marks.items()}


def _power_on(run: Run) -> None:
    """One boot as the hardware does it, unchecked: stage 0 (if any), then the bootloader."""
    if run.s0 is not None:
        run.s0.boot()
    run.bl.boot()


def _cut(run: Run, scenario: Scenario, n: int) -> None:
    run.device.supply.cut_after(n)
    try:
        scenario.body(run)
    except PowerCut:
        return
    raise InvariantBroken(f"no power cut happened at operation {n}")


def run_scenario(
    name: str,
    *,
    sample: int | None = None,
    seed: int = 0,
    second_sample: int | None = None,
    check_updatable: bool = True,
) -> PowerCutResult:
    """Cut the power at every operation of a scenario (or a seeded sample) and check recovery.

    Args:
        name: a key of :data:`SCENARIOS`.
        sample: try this many cut points (chosen with ``seed``) instead of all of them; for
            ``double-cut``, the number of first cut points.
        seed: seeds the keys, the images, the torn states and the sampling.
        second_sample: for ``double-cut``, the number of second cut points per first one
            (None: all of them).
        check_updatable: after each recovery, also run a fresh update and check it succeeds.
    """
    scenario = SCENARIOS[name]
    started = time.perf_counter()
    fx = Fixture(COMPONENTS[scenario.shape], seed)
    total, marks = _clean_run(scenario, seed, fx)
    result = PowerCutResult(name, scenario.shape, total, 0)
    outcomes: Counter[str] = Counter()

    def must_finish(n: int) -> bool:
        # Cut after the request was committed and before the trial boot set `tried`: nothing
        # can justify a rollback, the swap must be finished and the new release tried.
        return "committed" in marks and marks["committed"] < n < marks["trial"]

    def attempt(label: str, action: Callable[[Run], None], run: Run, finish: bool) -> None:
        boots_before = run.boots
        try:
            action(run)
            seq = run.recover()
            if scenario.stage1:
                assert run.s1_boot is not None
                seq = run.s1_boot.sequence_number
            result.max_boots = max(result.max_boots, run.boots - boots_before)
            outcomes[LABELS[seq]] += 1
            if finish and seq != scenario.target:
                raise InvariantBroken(f"the committed update ended on release {seq}")
            if check_updatable:
                run.check_updatable()
        except (InvariantBroken, SuitError, PowerCut, AssertionError) as e:
            result.failures.append(f"{label}: {type(e).__name__}: {e}")

    for n in _choose(total, sample, seed):
        if not scenario.double:
            result.cut_points_tried += 1

            def once(run: Run, n: int = n) -> None:
                _cut(run, scenario, n)

            attempt(f"cut at {n}", once, _fresh(scenario, seed, fx), must_finish(n))
            continue
        # Count the operations of the first recovery boot after a cut at n, then cut there too.
        probe = _fresh(scenario, seed, fx)
        try:
            _cut(probe, scenario, n)
            probe.device.restore_power()
            before = probe.device.ops
            _power_on(probe)
            recovery_ops = probe.device.ops - before
        except (InvariantBroken, SuitError, PowerCut, AssertionError) as e:
            result.failures.append(f"cut at {n} (probe): {type(e).__name__}: {e}")
            continue
        for m in _choose(recovery_ops, second_sample, seed + n):
            result.cut_points_tried += 1

            def twice(run: Run, n: int = n, m: int = m) -> None:
                _cut(run, scenario, n)
                run.device.restore_power()
                run.device.supply.cut_after(m)
                try:
                    _power_on(run)
                except PowerCut:
                    return
                raise InvariantBroken(f"no second power cut happened at operation {m}")

            # The recovery boot's last operation sets `tried` when it ends in a trial boot.
            attempt(
                f"cut at {n}, then at {m} of the recovery boot",
                twice,
                _fresh(scenario, seed, fx),
                must_finish(n) and m < recovery_ops,
            )
    result.outcomes = dict(outcomes)
    result.seconds = time.perf_counter() - started
    return result
