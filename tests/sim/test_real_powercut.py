"""Power cuts over the real update path (issue #11): every shape, integrated and detached
payloads, a cut before every flash operation and every file step of Consumer.install, boot,
confirm (or the revert boot of an update never confirmed: ``real-SHAPE-revert``) and a second
update, with lost unsynced writes on Linux-class devices.

The default suite runs a seeded sample of each scenario; ``SUITKIT_POWERCUT_FULL=1 pytest -m
slow tests/sim/test_real_powercut.py`` (or ``suitkit device powercut --scenario all-real``)
runs every cut point. The harness is also shown to catch the
defects it was built for, so that "0 failures" means something.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from suitkit.bootloader import boot, fsslots
from suitkit.bootloader.boot import FlashBootloader
from suitkit.bootloader.decide import BootState, Decision, Pending, decide, pending_of
from suitkit.bootloader.inplace import InplaceBootloader
from suitkit.sim.powercut import REAL_SCENARIOS, LostWrites, run_real_scenario

from helpers import run_cli

MINIMUM_EVENTS = {"mcu": 100, "secure-split": 190, "dual-cpu": 200, "linux": 36,
                  "mcu-inplace": 100}
"""Events of a clean run must be at least this many, so a silently shortened scenario fails.
(linux: 38-39 since the records and a small update's slot files are written in place, issue
#16: one overwrite and one fsync step each instead of write, fsync, rename, fsync-dir.)"""


@pytest.mark.parametrize("name", sorted(REAL_SCENARIOS))
def test_real_path_sampled_cut_points_recover(name: str) -> None:
    result = run_real_scenario(name, sample=12, seed=11)
    assert result.failures == []
    assert result.cut_points_tried == 12
    assert result.clean_events >= MINIMUM_EVENTS[result.shape]
    if result.shape == "linux":
        assert result.flash_ops == 0
    else:
        assert result.clean_events - result.flash_ops >= 8  # journal and folder saves
    assert sum(result.outcomes.values()) == 12


@pytest.mark.parametrize("name", ["real-dual-cpu-integrated", "real-linux-detached",
                                  "real-secure-split-detached", "real-dual-cpu-revert",
                                  "real-mcu-inplace-delta"])
def test_real_path_a_second_cut_during_recovery_recovers(name: str) -> None:
    result = run_real_scenario(name, sample=2, second=3, seed=5)
    assert result.failures == []
    # Up to 3 second cuts per first one (a short recovery has fewer events to cut).
    assert 2 < result.cut_points_tried <= 6


@pytest.mark.slow
@pytest.mark.powercut_full  # deselected unless SUITKIT_POWERCUT_FULL=1 (tests/conftest.py)
@pytest.mark.parametrize("name", sorted(REAL_SCENARIOS))
def test_real_path_every_cut_point_recovers(name: str) -> None:
    result = run_real_scenario(name)
    assert result.failures == []
    assert result.cut_points_tried == result.clean_events
    assert set(result.outcomes) == {"old", "new", "next"}


def test_the_harness_catches_a_half_marked_set_taken_for_a_pending_update(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The defect of issue #11 item 2, put back: any live pending trailer counts as pending.
    def any_marked(self: FlashBootloader) -> bool:
        return pending_of(tuple(p.read() for p in self.pending)) is not Pending.NONE

    def partial_is_none(state: BootState) -> Decision:
        if state.pending is Pending.PARTIAL:
            state = replace(state, pending=Pending.NONE)
        return decide(state)

    monkeypatch.setattr(FlashBootloader, "pending_update", any_marked)
    monkeypatch.setattr(boot, "decide", partial_is_none)  # and no boot forgets it
    # The marking writes are the last flash operations of the first install (before its
    # journal and save): cut around there.
    result = run_real_scenario("real-secure-split-integrated", points=range(15, 30))
    # The retried install is refused ("already pending"), or, when the half-marked set is that
    # very update, taken as installed and never booted.
    assert any("an update is already pending" in f or "the update to release 3 booted" in f
               for f in result.failures), result.failures


def test_the_in_place_scenario_cuts_the_rewrite_of_every_sector() -> None:
    """real-mcu-inplace-delta (docs/delta.md §9): its clean run rewrites the slot in place
    (scratch, then the sector, three sectors per update), and the cuts that fall in a rewrite
    end on the new release once the boot finishes it."""
    result = run_real_scenario("real-mcu-inplace-delta", points=range(42, 54), seed=2)
    assert result.failures == []
    assert result.cut_points_tried == 12
    assert result.outcomes.get("new", 0) >= 8


def test_the_harness_catches_an_in_place_rewrite_that_forgets_its_journal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A rewrite resumed from its first step: the sectors rewritten before the cut are read as
    # if they still held the precursor, and the result does not verify (no image to go back to).
    monkeypatch.setattr(InplaceBootloader, "_progress", lambda self: 0)
    result = run_real_scenario("real-mcu-inplace-delta", points=range(42, 54), seed=2)
    assert result.failures
    assert any("NoBootableImage" in f and "flash fault" in f for f in result.failures), \
        result.failures[:2]


def test_the_lost_writes_model_catches_a_missing_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fsync(self: fsslots.FsBootloader, path: object, data: bytes) -> None:
        assert isinstance(path, fsslots.Path)
        tmp = path.with_name(path.name + ".tmp")
        self._step(f"write {self._rel(tmp)}")
        tmp.write_bytes(data)
        self._step(f"rename {self._rel(path)}")
        tmp.replace(path)

    def no_datasync(self: fsslots.FsBootloader, path: fsslots.Path, data: bytes) -> None:
        self._step(f"overwrite {self._rel(path)}")
        path.write_bytes(data)

    monkeypatch.setattr(fsslots.FsBootloader, "_atomic_write", no_fsync)
    monkeypatch.setattr(fsslots.FsBootloader, "_overwrite", no_datasync)  # in place (#16)
    result = run_real_scenario("real-linux-integrated", sample=20, seed=1)
    assert any("state.json is damaged in every copy" in f or "missing" in f
               for f in result.failures), result.failures


def test_cli_runs_a_real_path_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "device", "powercut", "--scenario", "real-mcu-detached",
                             "--sample", "3", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["scenario"], doc["cut-points-tried"], doc["failures"]) == (
        "real-mcu-detached", 3, 0)
    assert doc["flash-operations"] + doc["file-steps"] == doc["clean-run-events"]
    code, _, err = run_cli(capsys, "device", "powercut", "--scenario", "real-nothing")
    assert code == 2 and "--scenario must be one of" in err
    code, _, err = run_cli(capsys, "device", "powercut", "--scenario", "real-mcu-detached",
                           "--second-cuts", "some")
    assert code == 2 and "--second-cuts must be" in err
    code, out, err = run_cli(capsys, "device", "powercut", "--scenario", "real-linux-detached",
                             "--sample", "1", "--second-cuts", "2")
    assert code == 0, err
    assert "2 cut points tried" in out


def test_the_lost_writes_model_tears_an_unsynced_in_place_write(tmp_path: Path) -> None:
    """A file written in place (issue #16: the record copies, the inactive slot's files) may
    hold old, new or mixed content after a cut until it is fsynced; a file created in place is
    gone until its directory is fsynced."""
    fates = set()
    for seed in range(60):
        root = tmp_path / str(seed)
        root.mkdir()
        (root / "rec").write_bytes(b"o" * 64)
        lost = LostWrites(root, random.Random(seed))
        lost.step("overwrite rec")
        (root / "rec").write_bytes(b"n" * 32)
        lost.step("fsync-dir .")  # not the file's fsync: its content is not durable
        lost.cut()
        data = (root / "rec").read_bytes()
        fates.add("old" if data == b"o" * 64 else "new" if data == b"n" * 32 else "torn")
    assert fates == {"old", "new", "torn"}

    synced = LostWrites(tmp_path, random.Random(1))
    (tmp_path / "rec").write_bytes(b"o" * 64)
    synced.step("overwrite rec")
    (tmp_path / "rec").write_bytes(b"n" * 32)
    synced.step("fsync rec")
    synced.step("fsync-dir .")  # the fsync is done
    for _ in range(20):
        assert synced.cut() == []
    assert (tmp_path / "rec").read_bytes() == b"n" * 32

    gone = set()
    for seed in range(20):
        root = tmp_path / f"c{seed}"
        root.mkdir()
        lost = LostWrites(root, random.Random(seed))
        lost.step("create new")
        (root / "new").write_bytes(b"x")
        lost.step("fsync new")
        lost.step("write other")  # the fsync is done; the directory was not fsynced
        lost.cut()
        gone.add((root / "new").exists())
    assert gone == {True, False}


def test_the_lost_writes_model_catches_an_in_place_write_without_its_fsync(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The record copy written in place, its fdatasync left out (and its label with it).
    def no_fsync(self: fsslots.FsBootloader, path: fsslots.Path, data: bytes) -> None:
        self._step(f"overwrite {self._rel(path)}")
        path.write_bytes(data)

    monkeypatch.setattr(fsslots.FsBootloader, "_overwrite", no_fsync)
    result = run_real_scenario("real-linux-integrated", sample=25, seed=1)
    assert result.failures, "an in-place write never made durable went unnoticed"
