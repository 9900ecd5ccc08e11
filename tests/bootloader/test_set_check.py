"""The set-level check: the images of one boot set must come from releases that agree.

Each slot is verified against its own manifest; ``check_set`` adds that a manifest naming
another image of the set (``ImageInfo.vouches``) holds for it, unless that image's own manifest
is newer (how the consumer re-stages the images an update leaves alone). Here with a small
vouching verifier, on both bootloaders (flash secure-split and dual-cpu, filesystem A/B); the
SUIT verifier's side is in tests/device/test_boot_set.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from suitkit.bootloader.api import Bootloader, SlotCheck, check_set, stage_set
from suitkit.bootloader.decide import Verdict
from suitkit.bootloader.fsslots import FsBootloader
from suitkit.bootloader.profiles import COMPONENTS, make_device
from suitkit.bootloader.verifier import ImageInfo, ImageReader, as_reader
from suitkit.errors import AuthenticationError, PolicyError


class VouchingVerifier:
    """Manifest = JSON ``{"seq": n, "digests": {image: sha256 hex}}`` (not signed: authenticity
    is the subject of the other tests); the image must match the digest given for ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def verify(self, manifest: bytes, image: bytes | ImageReader) -> ImageInfo:
        doc = json.loads(manifest)
        reader = as_reader(image)
        digest = hashlib.sha256(reader.read(0, reader.size)).digest()
        if doc["digests"].get(self.name) != digest.hex():
            raise AuthenticationError(f"{self.name}: digest mismatch")
        return ImageInfo(doc["seq"], digest,
                         tuple((k, bytes.fromhex(v)) for k, v in doc["digests"].items()))


def image(name: str, seq: int) -> bytes:
    return f"{name}-{seq}|".encode() * 300


def release(seq: int, names: tuple[str, ...], covers: tuple[str, ...] | None = None
            ) -> dict[str, tuple[bytes, bytes]]:
    """``{name: (manifest, image)}`` of release ``seq``, whose one manifest names ``covers``
    (default: every image)."""
    named = names if covers is None else covers
    manifest = json.dumps({"seq": seq, "digests": {
        n: hashlib.sha256(image(n, seq)).hexdigest() for n in named}}).encode()
    return {n: (manifest, image(n, seq)) for n in named}


def info(seq: int, **vouches: str) -> ImageInfo:
    return ImageInfo(seq, b"", tuple((k, v.encode()) for k, v in vouches.items()))


GOOD = Verdict.GOOD


@pytest.mark.parametrize(("infos", "bad"), [
    # one release names both images
    ([info(4, s="s4", n="n4"), info(4, s="s4", n="n4")], set()),
    # release 4's secure with release 5's non-secure, both naming both: the older one is out
    ([info(4, s="s4", n="n4"), info(5, s="s5", n="n5")], {0}),
    ([info(5, s="s5", n="n5"), info(4, s="s4", n="n4")], {1}),
    # a partial update: release 5 names only n; the secure image keeps release 4's manifest
    ([info(4, s="s4", n="n4"), info(5, n="n5")], set()),
    # two manifests with one sequence number that disagree: refused (no newer one decides)
    ([info(5, s="s5", n="n5"), info(5, s="s5", n="n5x")], {1}),
    # manifests that name only their own image (or nothing): nothing to compare
    ([info(4, s="s4"), info(5, n="n5")], set()),
    ([info(4), info(5)], set()),
], ids=["one release", "older secure", "older non-secure", "partial update",
        "same number, other image", "own images only", "no vouches"])
def test_check_set_rules(infos: list[ImageInfo], bad: set[int]) -> None:
    checks = [SlotCheck(GOOD, i) for i in infos]

    out = check_set(("s", "n"), checks, "secondary")

    assert {i for i, c in enumerate(out) if c.verdict is Verdict.BAD} == bad
    for i in bad:
        assert out[i].info == infos[i]
        assert out[i].reason is not None and out[i].reason.startswith(
            f"{'sn'[i]} secondary: the manifest of {'sn'[1 - i]} (sequence number")
        assert out[i].reason.endswith("the set mixes releases")
    assert [c for i, c in enumerate(out) if i not in bad] == \
        [c for i, c in enumerate(checks) if i not in bad]


def test_check_set_leaves_unverified_members_alone() -> None:
    missing = SlotCheck(Verdict.BAD, None, "n secondary: empty")
    checks = [SlotCheck(GOOD, info(5, s="s5", n="n5")), missing]
    assert check_set(("s", "n"), checks, "secondary") == tuple(checks)


# ---------------------------------------------------------------- both bootloaders, end to end


def bootloader(kind: str, tmp_path: Path) -> tuple[Bootloader, tuple[str, ...]]:
    """A provisioned two-image bootloader at release 1."""
    names = COMPONENTS.get(kind, ("rootfs", "kernel"))
    verifiers = {n: VouchingVerifier(n) for n in names}
    if kind == "fs":
        fs = FsBootloader(tmp_path / "fs", names, verifiers)
        fs.install_factory(release(1, names))
        return fs, names
    device = make_device(kind, verifiers)
    device.provision(release(1, names))
    return device.bootloader, names


KINDS = ["secure-split", "dual-cpu", "fs"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("older", [0, 1], ids=["older lead", "older second"])
def test_mixed_staged_set_is_dropped(tmp_path: Path, kind: str, older: int) -> None:
    bl, names = bootloader(kind, tmp_path)
    seqs = (4, 5) if older == 0 else (5, 4)
    stage_set(bl, {n: release(seq, names)[n] for n, seq in zip(names, seqs, strict=True)},
              piece=1000)

    result = bl.boot()

    assert (result.sequence_numbers, result.trial) == (dict.fromkeys(names, 1), False)
    assert not bl.pending_update()
    assert any(note.startswith(f"{names[older]} ") and "the set mixes releases" in note
               for note in result.notes), result.notes
    stage_set(bl, release(6, names), piece=1000)  # a whole release still goes through
    result = bl.boot()
    assert (result.sequence_numbers, result.trial) == (dict.fromkeys(names, 6), True)


@pytest.mark.parametrize("kind", KINDS)
def test_partial_update_keeps_the_older_manifest_of_the_other_image(tmp_path: Path,
                                                                    kind: str) -> None:
    """What the consumer stages for an update of one image: the other one with the manifest it
    runs with, which names an older version of the updated image."""
    bl, names = bootloader(kind, tmp_path)
    staged = {names[0]: release(1, names)[names[0]],
              names[1]: release(2, names, covers=names[1:])[names[1]]}
    stage_set(bl, staged, piece=1000)

    result = bl.boot()

    assert (result.sequence_numbers, result.trial) == ({names[0]: 1, names[1]: 2}, True)
    bl.confirm()
    assert bl.read_counters() == {names[0]: 1, names[1]: 2}
    assert bl.boot().notes == ()


def test_a_mixed_set_cannot_be_factory_installed(tmp_path: Path) -> None:
    names = COMPONENTS["secure-split"]
    device = make_device("secure-split", {n: VouchingVerifier(n) for n in names})
    mixed: Mapping[str, tuple[bytes, bytes]] = {names[0]: release(4, names)[names[0]],
                                                 names[1]: release(5, names)[names[1]]}
    with pytest.raises(PolicyError, match="the set mixes releases"):
        device.provision(mixed)


def test_counter_capacity(tmp_path: Path) -> None:
    """What the consumer reads to refuse a sequence number the bootloader could never confirm."""
    flash, names = bootloader("secure-split", tmp_path)
    assert flash.counter_capacity() == dict.fromkeys(names, 2048)
    fs, names = bootloader("fs", tmp_path)
    assert fs.counter_capacity() == dict.fromkeys(names, 2**64 - 1)


@pytest.mark.parametrize("kind", KINDS)
def test_check_staged_says_what_the_next_boot_would_refuse(tmp_path: Path, kind: str) -> None:
    bl, names = bootloader(kind, tmp_path)
    stage_set(bl, {n: release(seq, names)[n] for n, seq in zip(names, (4, 5), strict=True)},
              mark=False, piece=1000)
    with pytest.raises(PolicyError, match=f"^the next boot would refuse the staged set: "
                                          f"{names[0]} .*the set mixes releases$"):
        bl.check_staged()
    stage_set(bl, release(5, names), mark=False, piece=1000)
    bl.check_staged()
