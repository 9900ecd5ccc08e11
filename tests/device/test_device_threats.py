"""One test per RFC 9124 threat (§4.2; suit-spec.md §15.2) the device side mitigates.

Every test goes through the real device: ``open_device`` on a folder (reopened for every step, as
the CLI does), ``Consumer.install`` and the real bootloader (simulated NOR flash, mcu shape unless
stated) whose SUIT image verifier runs at every boot. Each one checks three things:

1. the precise refusal (the outcome's reason, or what the boot refused and why);
2. that the device still runs what it ran before: same status document, same boot result (not on
   trial), same security counters -- and for refusals that happen before anything is staged, the
   flash is byte-for-byte unchanged;
3. that the device still installs, boots and confirms the next valid update (the Uptane lesson:
   a refused attack must not leave a device that can no longer be updated).

THREAT.MFST.OVERRIDE (§4.2.13) is a processor rule, not device state: it is covered by
tests/core/test_processor_threats.py::test_set_parameters_cannot_override_an_override and is not
repeated here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from device.device_kit import (
    Author,
    Served,
    boot,
    confirm,
    counters,
    firmware_server,
    flash_bytes,
    image_bytes,
    install,
    new_device,
    running,
    status,
)
from suitkit.bootloader.api import NoBootableImage, stage_set
from suitkit.bootloader.image import header_size, open_slot
from suitkit.core import codec, crypto
from suitkit.core.numbers import CoseAlg
from suitkit.device.consumer import slot_record
from suitkit.device.fetch import HttpFetcher
from suitkit.device.wiring import open_device

NOW = 1_800_000_000  # the consumer's trusted clock in the expiry tests


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def author(tmp_path: Path) -> Author:
    return Author.create(tmp_path / "author")


def running_device(folder: Path, author: Author, anchors: list[Path] | None = None,
                   shape: str = "mcu") -> Path:
    """A device that runs a confirmed release 1 of component [h'00']."""
    new_device(folder, anchors or [author.anchor], shape)
    envelope, image = author.release(1)
    outcome = install(folder, envelope)
    assert outcome.installed, outcome.reason
    assert running(boot(folder))["app"] == (1, sha256(image))
    assert confirm(folder) == {"app": 1}
    return folder


@pytest.fixture
def device(tmp_path: Path, author: Author) -> Path:
    return running_device(tmp_path / "dev", author)


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    with firmware_server() as running_server:
        yield running_server


# ---------------------------------------------------------------------------- the three checks


class Baseline:
    """What the device looks like before an attack."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.status = status(folder)
        self.counters = counters(folder)
        self.flash = flash_bytes(folder)

    def assert_unchanged(self, *, flash_untouched: bool) -> None:
        """Same status, counters and running image; ``flash_untouched``: not one byte written
        (the refusal came before anything was staged)."""
        assert status(self.folder) == self.status
        assert counters(self.folder) == self.counters
        if flash_untouched:
            assert flash_bytes(self.folder) == self.flash
        result = boot(self.folder)
        assert not result.trial
        assert {name: (seq, digest.hex()) for name, (seq, digest) in running(result).items()} \
            == {c["image"]: (c["running"]["sequence-number"], c["running"]["digest"])
                for c in self.status["components"]}
        assert counters(self.folder) == self.counters


def assert_still_updates(author: Author, folder: Path, sequence: int, *,
                         server: tuple[str, Served] | None = None,
                         signer: crypto.Signer | None = None) -> None:
    """The next valid release installs, boots on trial and confirms (raising the counter)."""
    image = image_bytes(f"next-{sequence}", 3000)
    if server is not None:
        url, served = server
        served.files[f"/next-{sequence}.bin"] = image
        component = author.component(f"next-{sequence}.bin", image,
                                     uri=f"{url}/next-{sequence}.bin")
    else:
        component = author.component(f"next-{sequence}.bin", image)
    envelope = author.envelope(sequence, [component], signer=signer or True)
    outcome = install(folder, envelope, HttpFetcher() if server else None)
    assert outcome.installed, outcome.reason
    result = boot(folder)
    assert result.trial
    assert running(result) == {"app": (sequence, sha256(image))}
    assert confirm(folder) == {"app": sequence}
    again = boot(folder)
    assert not again.trial and running(again) == {"app": (sequence, sha256(image))}


def payload_component(author: Author, sequence: int, url: str, served: Served,
                      served_bytes: Callable[[bytes], bytes] | None = None
                      ) -> tuple[bytes, bytes, str]:
    """(envelope, image, path) of a detached release; the server holds ``served_bytes(image)``."""
    image = image_bytes(f"detached-{sequence}", 2000)
    path = f"/app-{sequence}.bin"
    served.files[path] = served_bytes(image) if served_bytes else image
    envelope = author.envelope(sequence, [author.component(f"app-{sequence}.bin", image,
                                                           uri=url + path)])
    return envelope, image, path


# ---------------------------------------------------------------- THREAT.IMG.EXPIRED (§4.2.1)


def test_rollback_lower_sequence_number_rejected(author: Author, device: Path) -> None:
    old_envelope, _ = author.release(1)  # the genuine, validly signed release 1
    envelope2, image2 = author.release(2)
    assert install(device, envelope2).installed
    boot(device)
    assert confirm(device) == {"app": 2}
    before = Baseline(device)

    outcome = install(device, old_envelope)

    assert not outcome.installed
    assert outcome.reason == ("rejected: rollback: sequence number 1 is lower than the "
                              "installed 2 of app")
    before.assert_unchanged(flash_untouched=True)

    # Defence in depth: staged behind the consumer's back, the bootloader refuses it too.
    opened = open_device(device)
    old_record = slot_record((b"\x00",), codec.decode_envelope(old_envelope))
    old_image = image_bytes("app-1-", 2000)
    stage_set(opened.bootloader, {"app": (old_record, old_image)})
    opened.save()
    result = boot(device)
    assert running(result) == {"app": (2, sha256(image2))} and not result.trial
    assert any("sequence number 1 is below the security counter 2" in n for n in result.notes)

    # An equal sequence number is allowed (manifest §8.4.2): it re-applies.
    same, same_image = author.release(2, "again")
    outcome = install(device, same)
    assert outcome.installed, outcome.reason
    result = boot(device)
    assert result.trial and running(result) == {"app": (2, sha256(same_image))}
    assert confirm(device) == {"app": 2}
    assert_still_updates(author, device, 3)


# -------------------------------------------------------- THREAT.IMG.EXPIRED.OFFLINE (§4.2.2)


def test_expired_use_before_rejected(author: Author, device: Path) -> None:
    before = Baseline(device)
    envelope = author.envelope(2, [author.component("late.bin", b"late" * 500)],
                               top={"use-before": NOW - 1})

    outcome = install(device, envelope, clock=lambda: NOW)

    assert not outcome.installed
    assert outcome.reason == (
        "failed: shared-sequence[3] condition-use-before on component [h'00']: manifest "
        f"expired: use-before {NOW - 1} is not after the device time {NOW}")
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


def test_unexpired_use_before_update_boots(author: Author, device: Path) -> None:
    image = image_bytes("fresh", 1000)
    envelope = author.envelope(2, [author.component("fresh.bin", image)],
                               top={"use-before": NOW + 3600})
    outcome = install(device, envelope, clock=lambda: NOW)
    assert outcome.installed, outcome.reason
    result = boot(device)
    assert result.trial and running(result) == {"app": (2, sha256(image))}, result.notes


# -------------------------------------------------------- THREAT.IMG.INCOMPATIBLE (§4.2.3)


def test_wrong_vendor_rejected(author: Author, device: Path) -> None:
    before = Baseline(device)
    envelope = author.envelope(2, [author.component("v.bin", b"v" * 1000)],
                               top={"vendor-domain": "other.example"})

    outcome = install(device, envelope)

    assert not outcome.installed
    assert re.fullmatch(
        r"failed: shared-sequence\[1\] condition-vendor-identifier on component \[h'00'\]: "
        r"vendor-identifier [0-9a-f-]{36} does not match the component's \([0-9a-f-]{36}\)",
        outcome.reason), outcome.reason
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


def test_wrong_class_rejected(author: Author, device: Path) -> None:
    before = Baseline(device)
    envelope = author.envelope(2, [author.component("c.bin", b"c" * 1000)],
                               top={"class-name": "toaster"})

    outcome = install(device, envelope)

    assert not outcome.installed
    assert re.fullmatch(
        r"failed: shared-sequence\[2\] condition-class-identifier on component \[h'00'\]: "
        r"class-identifier [0-9a-f-]{36} does not match the component's \([0-9a-f-]{36}\)",
        outcome.reason), outcome.reason
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


# ------------------------------------------------------------ THREAT.IMG.LOCATION (§4.2.5)


def test_unknown_component_rejected(author: Author, device: Path) -> None:
    before = Baseline(device)
    envelope = author.envelope(2, [author.component("x.bin", b"x" * 1000, index=7)])

    outcome = install(device, envelope)

    assert not outcome.installed
    assert outcome.reason == "failed: common: component 0 [h'07'] does not exist on this device"
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


# ---------------------------------------------- THREAT.NET.REDIRECT / NET.ONPATH (§4.2.6-7)


def digest_mismatch(image: bytes, url: str, path: str) -> str:
    return (r"failed: install\[1\] directive-fetch on component \[h'00'\]: digest [0-9a-f]{16}"
            rf"\.\.\. of payload '{re.escape(url + path)}' does not match expected "
            + sha256(image).hex()[:16] + r"\.\.\.")


def test_redirected_image_rejected(author: Author, device: Path,
                                   server: tuple[str, Served]) -> None:
    url, served = server
    before = Baseline(device)
    envelope, image, path = payload_component(
        author, 2, url, served, lambda img: image_bytes("someone else's firmware", len(img)))

    outcome = install(device, envelope, HttpFetcher())

    assert not outcome.installed
    assert re.fullmatch(digest_mismatch(image, url, path), outcome.reason), outcome.reason
    assert served.requests == [path]  # only the URI inside the signed manifest was fetched
    before.assert_unchanged(flash_untouched=False)
    assert_still_updates(author, device, 2, server=server)


def test_tampered_image_on_path_rejected(author: Author, device: Path,
                                         server: tuple[str, Served]) -> None:
    url, served = server
    before = Baseline(device)

    def flip(image: bytes) -> bytes:
        tampered = bytearray(image)
        tampered[len(image) // 2] ^= 0x01
        return bytes(tampered)

    envelope, image, path = payload_component(author, 2, url, served, flip)

    outcome = install(device, envelope, HttpFetcher())

    assert not outcome.installed
    assert re.fullmatch(digest_mismatch(image, url, path), outcome.reason), outcome.reason
    before.assert_unchanged(flash_untouched=False)
    assert_still_updates(author, device, 2, server=server)


# ------------------------------------------------------------- THREAT.IMG.EXTRA (§4.2.15)


@pytest.mark.parametrize("delivery", ["http-announced", "http-unannounced", "integrated"])
def test_payload_longer_than_image_size_refused_not_truncated(
        author: Author, device: Path, server: tuple[str, Served], delivery: str) -> None:
    # Truncated to image-size the bytes would match the digest: a refusal proves no truncation.
    url, served = server
    before = Baseline(device)
    extra = b"\x00" * 100
    if delivery == "integrated":
        image = image_bytes("extra", 2000)
        envelope = author.envelope(2, [author.component("extra.bin", image)],
                                   payloads={"#extra.bin": image + extra})
        outcome = install(device, envelope)
        expected = ("failed: install[1] directive-fetch on component [h'00']: payload "
                    "'#extra.bin' is longer than the 2000 bytes allowed; refused")
    else:
        served.announce_length = delivery == "http-announced"
        envelope, image, path = payload_component(author, 2, url, served,
                                                  lambda img: img + extra)
        outcome = install(device, envelope, HttpFetcher())
        said = ("2100 bytes is more than" if served.announce_length
                else "the server sent more than")
        expected = (f"failed: install[1] directive-fetch on component [h'00']: payload "
                    f"'{url}{path}': FetchError: {url}{path}: {said} the 2000 bytes the "
                    "manifest allows (image-size)")

    assert not outcome.installed
    assert outcome.reason == expected
    before.assert_unchanged(flash_untouched=False)
    served.announce_length = True
    assert_still_updates(author, device, 2, server=server)


# ----------------------------------------------------------- THREAT.IMG.REPLACE (§4.2.8)


def slot_address(folder: Path, slot: str, *, component: int = 0) -> tuple[int, int, int]:
    """(flash name index, address of the image, address of the stored manifest) of a slot."""
    opened = open_device(folder)
    bootloader = opened.bootloader
    img = bootloader.layout.images[component]  # type: ignore[attr-defined]
    region = img.secondary if slot == "secondary" else img.primary
    flash = opened.flashes[region.flash]
    unit = bootloader.image_unit(component)  # type: ignore[attr-defined]
    _, reader = open_slot(flash, region, unit=unit, limits=bootloader.limits)  # type: ignore[attr-defined]
    names = sorted(opened.flashes)
    return names.index(region.flash), reader.offset, region.offset + header_size(unit)


def find_in_manifest(folder: Path, flash_index: int, manifest_at: int, needle: bytes) -> int:
    """The flash address of ``needle`` inside the manifest stored in a slot."""
    opened = open_device(folder)
    where = opened.flashes[sorted(opened.flashes)[flash_index]].read(manifest_at, 4096).find(needle)
    assert where > 0
    return manifest_at + where


def corrupt(folder: Path, flash_index: int, address: int, data: bytes | None = None) -> None:
    """``Flash.corrupt``: one byte changed, ignoring every flash rule (an attacker with a
    programmer, or bit rot), saved to the folder."""
    opened = open_device(folder)
    flash = opened.flashes[sorted(opened.flashes)[flash_index]]
    flash.corrupt(address, data if data is not None else bytes([flash.read(address, 1)[0] ^ 1]))
    opened.save()


@pytest.mark.parametrize("target", ["staged image", "staged manifest signature",
                                    "running image", "trial image"])
def test_image_replaced_after_verification_is_not_booted(author: Author, device: Path,
                                                         target: str) -> None:
    v1 = running(boot(device))["app"]
    envelope2, image2 = author.release(2)
    outcome = install(device, envelope2)
    assert outcome.installed, outcome.reason
    v2 = (2, sha256(image2))

    if target == "staged image":
        flash, image_at, _ = slot_address(device, "secondary")
        corrupt(device, flash, image_at + 1234)
        result = boot(device)  # the pending update no longer verifies: dropped, v1 runs
        assert running(result) == {"app": v1} and not result.trial
        assert [d.row for d in result.steps] == [10, 12]
        assert len(result.notes) == 1
        assert re.fullmatch(r"app secondary: AuthenticationError: image digest [0-9a-f]{64} does "
                            rf"not match the manifest's {sha256(image2).hex()}", result.notes[0])
    elif target == "staged manifest signature":
        signature = codec.decode_envelope(envelope2).authentication.blocks[0][-64:]
        flash, _, manifest_at = slot_address(device, "secondary")
        corrupt(device, flash, find_in_manifest(device, flash, manifest_at, signature) + 10)
        result = boot(device)
        assert running(result) == {"app": v1} and not result.trial
        assert [d.row for d in result.steps] == [10, 12]
        assert "app secondary: AuthenticationError: no authentication block verifies with a " \
               "trusted key" in result.notes[0]
    elif target == "running image":
        flash, image_at, _ = slot_address(device, "primary")
        corrupt(device, flash, image_at + 7)
        result = boot(device)  # v1 is gone; the authentic v2 runs, on trial
        assert running(result) == {"app": v2} and result.trial
        # Not confirmed and nothing authentic to revert to: v2 stays (row 6), never the
        # corrupted v1.
        result = boot(device)
        assert running(result) == {"app": v2} and result.trial
        assert [d.row for d in result.steps] == [6]
        assert "app secondary: AuthenticationError: image digest" in result.notes[0]
    else:  # the trial image is replaced after its first boot, before it confirms
        assert running(boot(device)) == {"app": v2}
        flash, image_at, _ = slot_address(device, "primary")
        corrupt(device, flash, image_at)
        result = boot(device)  # row 3: the trial image no longer verifies, revert now
        assert running(result) == {"app": v1} and not result.trial
        assert result.steps[0].row == 3

    assert counters(device) == {"app": 1}
    if target == "running image":
        assert confirm(device) == {"app": 2}
        assert_still_updates(author, device, 3)
    else:
        assert_still_updates(author, device, 2)


def test_images_are_verified_at_every_boot_not_only_after_an_update(author: Author,
                                                                    device: Path) -> None:
    # Nothing pending: a confirmed image corrupted in place is not run (no fallback exists).
    flash, image_at, _ = slot_address(device, "primary")
    corrupt(device, flash, image_at + 99)
    with pytest.raises(NoBootableImage, match=r"no bootable image \(row 14") as refused:
        boot(device)
    assert "app primary: AuthenticationError: image digest" in str(refused.value)
    assert counters(device) == {"app": 1}
    assert_still_updates(author, device, 2)  # a recovery update still gets the device back


def test_a_flipped_bit_after_a_revert_never_makes_the_rejected_release_permanent(
        author: Author, device: Path) -> None:
    """Issue #11 item 5, through the SUIT verifier: release 2 was tried and never confirmed,
    the device reverted to release 1; then one bit of release 1 flips in flash. Release 2, in
    the other slot and authentic, used to be installed for good with its counter raised (so
    release 1 could never come back). Now the boot is refused, with the reason, and nothing
    is written; a recovery update gets the device back."""
    envelope2, _ = author.release(2)
    assert install(device, envelope2).installed
    assert boot(device).trial  # the application never confirms
    assert running(boot(device))["app"][0] == 1  # reverted
    flash, image_at, _ = slot_address(device, "primary")
    corrupt(device, flash, image_at + 5)
    before = flash_bytes(device)
    with pytest.raises(NoBootableImage, match=r"row 13: .*refuse to boot") as refused:
        boot(device)
    assert "app primary: AuthenticationError: image digest" in str(refused.value)
    assert flash_bytes(device) == before
    assert counters(device) == {"app": 1}
    assert status(device)["components"][0]["reason"].startswith("app primary")
    assert_still_updates(author, device, 3)


# Regression: decode_command_sequence used to test `code in _POLICY_COMMANDS` before checking that
# the code is an int, so an array or map there raised TypeError (not a SuitError): the
# bootloader's check_slot did not catch it and boot() crashed on a corrupted staged manifest.
def test_corrupted_staged_manifest_does_not_stop_the_boot(author: Author, device: Path) -> None:
    v1 = running(boot(device))["app"]
    envelope2, _ = author.release(2)
    assert install(device, envelope2).installed
    sequence = codec.decode_envelope(envelope2).manifest.common.shared_sequence
    assert sequence is not None
    shared = codec.encode_command_sequence(sequence)
    assert shared[1] == 0x14  # [override-parameters (20), ...]: the first command code
    flash, _, manifest_at = slot_address(device, "secondary")
    corrupt(device, flash, find_in_manifest(device, flash, manifest_at, shared) + 1, b"\x80")
    result = boot(device)
    assert running(result) == {"app": v1} and not result.trial
    assert [d.row for d in result.steps] == [10, 12]
    # manifest §6.2: the signature is checked before the manifest is parsed, so the corrupted
    # bytes are refused as unauthentic and never reach the manifest parser.
    assert result.notes[0].startswith("app secondary: AuthenticationError: manifest digest "
                                      "mismatch")
    assert_still_updates(author, device, 2)


# ----------------------------------------------------------- THREAT.IMG.NON_AUTH (§4.2.9)


def test_unsigned_manifest_rejected(author: Author, device: Path) -> None:
    before = Baseline(device)
    envelope = author.envelope(2, [author.component("u.bin", b"u" * 1000)], signer=None)

    outcome = install(device, envelope)

    assert not outcome.installed
    assert outcome.reason == "rejected: the envelope carries no authentication block (unsigned)"
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


@pytest.mark.parametrize("how", ["signature transplanted from another manifest",
                                 "signature byte flipped"])
def test_wrongly_signed_manifest_rejected(author: Author, device: Path, how: str) -> None:
    before = Baseline(device)
    envelope = codec.decode_envelope(author.envelope(2, [author.component("w.bin", b"w" * 900)]))
    if how.startswith("signature transplanted"):
        other = codec.decode_envelope(author.envelope(2, [author.component("o.bin",
                                                                            b"o" * 900)]))
        blocks = other.authentication.blocks  # the trusted key's genuine signature
    else:
        block = envelope.authentication.blocks[0]
        blocks = (block[:-1] + bytes([block[-1] ^ 0x01]),)
    forged = replace(envelope, authentication=replace(envelope.authentication, blocks=blocks))

    outcome = install(device, codec.encode_envelope(forged))

    assert not outcome.installed
    assert outcome.reason == ("rejected: no authentication block verifies with a trusted key: "
                              "block 1 (ES256) verifies with no trusted key")
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


@pytest.mark.parametrize(("key_type", "pinned", "substitute"), [
    ("ES256", CoseAlg.ES256, CoseAlg.ESP256),
    ("EdDSA", CoseAlg.EDDSA, CoseAlg.ED25519),
])
def test_algorithm_substitution_rejected(tmp_path: Path, key_type: str, pinned: int,
                                         substitute: int) -> None:
    # The trust anchor, not the message, chooses the algorithm (ADR 0003): the anchor file says
    # "suitkit-algorithm: <pinned>"; the same key signs with the other id of the same key type.
    author = Author.create(tmp_path / "author", key_type)
    public = author.key.public_key()
    assert isinstance(public, crypto.EcPublicKey | crypto.Ed25519PublicKey)
    narrowed = (crypto.EcPublicKey(public.cryptography_key, algorithms=[pinned])
                if isinstance(public, crypto.EcPublicKey)
                else crypto.Ed25519PublicKey(public.cryptography_key, algorithms=[pinned]))
    pinned_file = tmp_path / "pinned.pub"
    pinned_file.write_bytes(crypto.public_key_to_pem(narrowed))
    assert pinned_file.read_bytes().startswith(
        f"suitkit-algorithm: {crypto.algorithm_name(pinned)}\n".encode())
    folder = running_device(tmp_path / "dev", author, [pinned_file])
    before = Baseline(folder)
    envelope = author.envelope(2, [author.component("s.bin", b"s" * 800)],
                               signer=author.key.signer(substitute))

    outcome = install(folder, envelope)

    assert not outcome.installed
    assert outcome.reason == (
        "rejected: no authentication block verifies with a trusted key: block 1: algorithm "
        f"{crypto.algorithm_name(substitute)} is not accepted by any trust anchor")
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, folder, 2, signer=author.key.signer(pinned))


# ---------------------------------------------------------- THREAT.UPD.UNAPPROVED (§4.2.11)


@pytest.mark.parametrize("algorithm", ["ES256", "HMAC-256"])
def test_unapproved_signer_rejected(tmp_path: Path, algorithm: str) -> None:
    author = Author.create(tmp_path / "author", algorithm)
    folder = running_device(tmp_path / "dev", author)
    stranger = Author.create(tmp_path / "stranger", algorithm, name="stranger")
    before = Baseline(folder)
    envelope = stranger.envelope(2, [stranger.component("s.bin", b"s" * 800)])

    outcome = install(folder, envelope)

    assert not outcome.installed
    assert outcome.reason == (
        "rejected: no authentication block verifies with a trusted key: block 1 "
        f"({algorithm}) verifies with no trusted key")
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, folder, 2)


# ------------------------------------------------------------- THREAT.NET.ONPATH (§4.2.7)


def test_flipped_envelope_byte_rejected(author: Author, device: Path) -> None:
    before = Baseline(device)
    envelope = author.envelope(2, [author.component("f.bin", image_bytes("small", 32))])
    assert len(envelope) < 400
    opened = open_device(device)
    consumer = opened.consumer()
    stages = set()
    for position in range(0, len(envelope), 7):
        for mask in (0x01, 0xFF):
            tampered = bytearray(envelope)
            tampered[position] ^= mask
            outcome = consumer.install(bytes(tampered))
            assert not outcome.installed, (position, mask)
            assert outcome.reason.startswith(("rejected: ", "failed: ")), outcome.reason
            stages.add(outcome.reason.split(":")[0])
            assert opened.bootloader.read_counters() == before.counters
    opened.save()
    # Both the signature (decode/authentication: "rejected") and the digest of the integrated
    # payload, which the signature does not cover ("failed"), caught flips.
    assert stages == {"rejected", "failed"}
    before.assert_unchanged(flash_untouched=False)
    assert install(device, envelope).installed  # the untampered envelope is fine
    result = boot(device)
    assert result.trial and running(result)["app"][0] == 2
    assert confirm(device) == {"app": 2}
    assert_still_updates(author, device, 3)


# Regression (same codec bug): Consumer.install, documented to return an outcome for any bad
# input, let the TypeError escape.
def test_malformed_envelope_is_refused_not_raised(author: Author, device: Path) -> None:
    envelope = author.envelope(2, [author.component("f.bin", image_bytes("small", 32))])
    consumer = open_device(device).consumer()
    for position in range(len(envelope)):
        for value in (0x80, 0xA0):  # an empty array, an empty map
            if envelope[position] == value:
                continue
            tampered = bytearray(envelope)
            tampered[position] = value
            outcome = consumer.install(bytes(tampered))
            assert not outcome.installed, position
            assert outcome.reason.startswith(("rejected: ", "failed: ")), outcome.reason


# -------------------------------------------------------------- atomic multi-image sets


@pytest.mark.parametrize("shape", ["secure-split", "dual-cpu"])
def test_two_image_update_is_atomic(tmp_path: Path, author: Author, shape: str) -> None:
    names = {"secure-split": ("secure", "nonsecure"), "dual-cpu": ("main", "coproc")}[shape]
    folder = new_device(tmp_path / "dev", [author.anchor], shape)

    def release(sequence: int, payloads: dict[str, bytes] | None = None
                ) -> tuple[bytes, dict[str, tuple[int, bytes]]]:
        images = [image_bytes(f"{shape}-{sequence}-{i}", 3000 + 1000 * i) for i in range(2)]
        envelope = author.envelope(sequence, [
            author.component(f"{names[i]}-{sequence}.bin", images[i], index=i) for i in range(2)],
            payloads=payloads)
        return envelope, {names[i]: (sequence, sha256(images[i])) for i in range(2)}

    envelope1, run1 = release(1)
    assert install(folder, envelope1).written == names
    assert running(boot(folder)) == run1
    assert confirm(folder) == dict.fromkeys(names, 1)

    # A new set boots as a whole, and a boot without confirm (--fail) reverts it as a whole.
    envelope2, run2 = release(2)
    assert install(folder, envelope2).installed
    result = boot(folder)
    assert result.trial and running(result) == run2
    result = boot(folder)
    assert not result.trial and running(result) == run1
    assert counters(folder) == dict.fromkeys(names, 1)

    # One bad member fails the whole manifest: nothing of it is pending.
    before = Baseline(folder)
    bad, _ = release(3, payloads={f"#{names[1]}-3.bin": image_bytes("evil", 4000)})
    outcome = install(folder, bad)
    assert not outcome.installed
    assert re.fullmatch(r"failed: install\[\d+\] directive-fetch on component \[h'01'\]: digest "
                        rf"[0-9a-f]{{16}}\.\.\. of payload '#{names[1]}-3\.bin' does not match "
                        r"expected [0-9a-f]{16}\.\.\.", outcome.reason), outcome.reason
    before.assert_unchanged(flash_untouched=False)

    # One member of a staged set replaced in flash: the bootloader drops the whole set.
    envelope4, _ = release(4)
    assert install(folder, envelope4).installed
    flash, image_at, _ = slot_address(folder, "secondary", component=1)
    corrupt(folder, flash, image_at + 5)
    result = boot(folder)
    assert not result.trial and running(result) == run1
    assert f"{names[1]} secondary: AuthenticationError" in result.notes[0]

    envelope5, run5 = release(5)
    assert install(folder, envelope5).installed
    result = boot(folder)
    assert result.trial and running(result) == run5
    assert confirm(folder) == dict.fromkeys(names, 5)
