"""Boot sets through the SUIT verifier, and the counter's capacity seen by the consumer.

- The bootloader's set check (``bootloader.api.check_set``) with the real SUIT envelopes the
  consumer stores in slots: partial updates (one image of a two-image set, the other re-staged
  with its older manifest) boot; a set mixed from two releases behind the consumer's back does
  not, whether staged or written over the running slots.
- A sequence number beyond what the security counter holds is refused before anything is
  staged, with a SUIT report pointing at the sequence number (the bootloader would refuse it at
  boot, and the tracker would hear only "did not start").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from device.device_kit import (
    Author,
    boot,
    confirm,
    counters,
    flash_bytes,
    image_bytes,
    install,
    new_device,
    running,
)
from suitkit.bootloader.api import NoBootableImage, stage_set
from suitkit.bootloader.boot import FlashBootloader
from suitkit.bootloader.profiles import COMPONENTS
from suitkit.core import codec
from suitkit.core.numbers import ManifestKey, ReportReason
from suitkit.core.report import ResultFailure, decode_report, encode_report
from suitkit.core.verify import verify_envelope
from suitkit.device.consumer import slot_record
from suitkit.device.wiring import open_device
from suitkit.errors import PolicyError

TWO = ["secure-split", "dual-cpu"]


@pytest.fixture
def author(tmp_path: Path) -> Author:
    return Author.create(tmp_path / "author")


def img(sequence: int, index: int) -> bytes:
    return image_bytes(f"set-{sequence}-{index}", 3000 + 500 * index)


def release(author: Author, sequence: int, indices: tuple[int, ...] = (0, 1)) -> bytes:
    """A release whose one manifest installs the images ``indices``."""
    return author.envelope(sequence, [author.component(f"i{index}-{sequence}.bin",
                                                       img(sequence, index), index=index)
                                      for index in indices])


def updated(folder: Path, author: Author, sequence: int, indices: tuple[int, ...]) -> None:
    outcome = install(folder, release(author, sequence, indices))
    assert outcome.installed, outcome.reason
    assert boot(folder).trial
    confirm(folder)


def versions(folder: Path) -> dict[str, int]:
    return {name: seq for name, (seq, _) in running(boot(folder)).items()}


@pytest.mark.parametrize("shape", TWO)
def test_partial_updates_boot_with_the_older_manifest_alongside(tmp_path: Path, author: Author,
                                                                 shape: str) -> None:
    """Release 2 updates the second image only, release 3 the first only: the consumer
    re-stages the other image with the manifest it runs with, which names an older version of
    the updated image; a newer manifest takes precedence, so the set boots."""
    folder = new_device(tmp_path / "dev", [author.anchor], shape)
    first, second = COMPONENTS[shape]
    updated(folder, author, 1, (0, 1))
    updated(folder, author, 2, (1,))
    assert versions(folder) == {first: 1, second: 2}
    updated(folder, author, 3, (0,))
    assert versions(folder) == {first: 3, second: 2}
    assert counters(folder) == {first: 3, second: 2}
    updated(folder, author, 4, (0, 1))
    assert versions(folder) == {first: 4, second: 4}


@pytest.mark.parametrize("shape", TWO)
def test_the_consumer_refuses_a_set_the_boot_would_refuse(tmp_path: Path, author: Author,
                                                         shape: str) -> None:
    """Release 5 again for the second image only, with another image: release 5's manifest of
    the first image names the old one, and no newer manifest decides. The consumer asks the
    bootloader to check the staged set (``check_staged``) and refuses it before marking it
    pending, instead of reporting it installed and the boot dropping it."""
    folder = new_device(tmp_path / "dev", [author.anchor], shape)
    first, second = COMPONENTS[shape]
    updated(folder, author, 5, (0, 1))
    again = author.envelope(5, [author.component("again.bin", image_bytes("again", 3500),
                                                 index=1)])

    outcome = install(folder, again)

    assert not outcome.installed
    assert outcome.reason == (
        f"failed: the next boot would refuse the staged set: {second} secondary: the manifest "
        f"of {first} (sequence number 5) names another {second} image than this one (sequence "
        "number 5): the set mixes releases")
    assert not open_device(folder).bootloader.pending_update()
    assert versions(folder) == {first: 5, second: 5}
    updated(folder, author, 6, (1,))  # a newer number for the one image goes through
    assert versions(folder) == {first: 5, second: 6}


def stage_mixed(folder: Path, author: Author, shape: str, lead: int, other: int) -> None:
    """Flash access: the first image of release ``lead`` with the second of ``other``."""
    opened = open_device(folder)
    names = COMPONENTS[shape]
    stage_set(opened.bootloader, {
        names[i]: (slot_record((bytes([i]),), codec.decode_envelope(release(author, seq))),
                   img(seq, i))
        for i, seq in enumerate((lead, other))})
    opened.save()


@pytest.mark.parametrize("shape", TWO)
@pytest.mark.parametrize(("lead", "other"), [(4, 5), (5, 4)])
def test_a_set_mixed_behind_the_consumer_is_dropped(tmp_path: Path, author: Author, shape: str,
                                                    lead: int, other: int) -> None:
    folder = new_device(tmp_path / "dev", [author.anchor], shape)
    names = COMPONENTS[shape]
    updated(folder, author, 1, (0, 1))
    stage_mixed(folder, author, shape, lead, other)

    result = boot(folder)

    assert (result.sequence_numbers, result.trial) == (dict.fromkeys(names, 1), False)
    older = names[0] if lead < other else names[1]
    newer = names[1] if lead < other else names[0]
    assert result.notes == (f"{older} secondary: the manifest of {newer} (sequence number 5) "
                            f"names another {older} image than this one (sequence number 4): "
                            "the set mixes releases",)
    assert not open_device(folder).bootloader.pending_update()
    updated(folder, author, 6, (0, 1))
    assert versions(folder) == dict.fromkeys(names, 6)


def test_a_set_mixed_in_the_running_slots_does_not_boot(tmp_path: Path, author: Author) -> None:
    """The check runs at every boot, over the running slots too (THREAT.IMG.REPLACE)."""
    folder = new_device(tmp_path / "dev", [author.anchor], "secure-split")
    updated(folder, author, 4, (0, 1))
    opened = open_device(folder)
    assert isinstance(opened.bootloader, FlashBootloader)
    names = COMPONENTS["secure-split"]
    with pytest.raises(PolicyError, match="the set mixes releases"):
        opened.bootloader.install_factory({
            names[i]: (slot_record((bytes([i]),), codec.decode_envelope(release(author, seq))),
                       img(seq, i))
            for i, seq in enumerate((4, 5))})
    opened.save()

    with pytest.raises(NoBootableImage, match="the set mixes releases"):
        boot(folder)


# ---------------------------------------------------------------- the counter's capacity


@pytest.mark.parametrize("shape", ["mcu", "secure-split"])
def test_a_sequence_number_the_counter_cannot_hold_is_refused_before_staging(
        tmp_path: Path, author: Author, shape: str) -> None:
    folder = new_device(tmp_path / "dev", [author.anchor], shape)
    names = COMPONENTS[shape]
    updated(folder, author, 1, tuple(range(len(names))))
    before = flash_bytes(folder)
    envelope = release(author, 2049, (len(names) - 1,))

    outcome = install(folder, envelope)

    assert not outcome.installed
    assert outcome.reason == (f"rejected: sequence number 2049 exceeds what the security "
                              f"counter of {names[-1]} can hold (2048); the bootloader could "
                              "never confirm it")
    assert outcome.report is not None
    report = decode_report(encode_report(outcome.report))
    assert isinstance(report.result, ResultFailure)
    record = report.result.record
    assert (record.manifest_section, record.section_offset, record.component_index,
            report.result.reason) == (ManifestKey.SEQUENCE_NUMBER, 0, 0,
                                      ReportReason.OPERATION_FAILED)
    anchors = open_device(folder).config.trust_anchors()
    assert report.reference.manifest_digest == verify_envelope(envelope, anchors).digest
    assert flash_bytes(folder) == before
    assert not open_device(folder).bootloader.pending_update()
    updated(folder, author, 2048, (len(names) - 1,))  # the largest it holds still goes through
    assert counters(folder)[names[-1]] == 2048


def test_a_linux_device_takes_any_sequence_number(tmp_path: Path, author: Author) -> None:
    """Its counters live in counters.json: no capacity below what a manifest can carry."""
    folder = new_device(tmp_path / "dev", [author.anchor], "linux")
    updated(folder, author, 1, (0,))
    updated(folder, author, 5000, (0,))
    assert counters(folder) == {"app": 5000}
