"""Trust-anchor rotation and revocation on a device (docs/keys.md; issue #16).

The device's anchors are the component ['suitkit', 'anchors']; a rotation is a SUIT manifest
for it, signed by root keys of the anchors it replaces, whose payload is the next document.
Revocation is final, at install and at boot, and the running image a revoked key signed keeps
booting (its manifest was recorded at the rotation).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from suitkit.author.anchors import Edits, initial_document, next_document, rotation_envelope
from suitkit.core import cbor, codec, crypto
from suitkit.core.anchors import AnchorKey, AnchorsDocument, parse_document
from suitkit.core.sign import sign_envelope
from suitkit.device.anchors import STORE, StoredAnchors, encode_store, read_store
from suitkit.device.config import create_device
from suitkit.device.consumer import slot_record
from suitkit.device.wiring import open_device
from suitkit.errors import DecodeError, KeyMaterialError, PolicyError

from .device_kit import CLASS, VENDOR, Author, boot, confirm, image_bytes, install, running


class Keys:
    """A root key and two author keys: ``leaked`` (the one to revoke) and ``fresh``."""

    def __init__(self, folder: Path) -> None:
        self.root = Author.create(folder / "root", name="root")
        self.leaked = Author.create(folder / "leaked", name="leaked")
        self.fresh = Author.create(folder / "fresh", name="fresh")
        self.spare_root = Author.create(folder / "root2", name="root2")

    def v0(self) -> AnchorsDocument:
        return initial_document([("root", self.root.key.public_key()),
                                 ("author", self.leaked.key.public_key())])


def signed(document: AnchorsDocument, *signers: Author, chain: tuple[bytes, ...] = ()) -> bytes:
    envelope = rotation_envelope(document, vendor_id=VENDOR, class_id=CLASS, chain=chain)
    for who in signers:
        envelope = sign_envelope(envelope, who.key.signer())
    return codec.encode_envelope(envelope)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


def release(who: Author, seq: int, tag: str = "", shape: str = "mcu") -> bytes:
    """A signed release of every image of the shape's boot set."""
    if shape not in ("secure-split", "dual-cpu"):
        return who.release(seq, tag)[0]
    return who.envelope(seq, [who.component(f"{i}-{seq}{tag}.bin",
                                            image_bytes(f"{i}-{seq}{tag}", 1500), index=i)
                              for i in range(2)])


def provisioned(tmp_path: Path, keys: Keys, shape: str = "mcu", name: str = "dev") -> Path:
    """A device trusting root + the leaked author key, running release 1 signed by it."""
    folder = tmp_path / name
    shutil.rmtree(folder, ignore_errors=True)
    create_device(folder, vendor_id=VENDOR, class_id=CLASS, shape=shape,
                  trust_anchors=[("root", keys.root.anchor), ("author", keys.leaked.anchor)])
    open_device(folder).save()
    outcome = install(folder, release(keys.leaked, 1, shape=shape))
    assert outcome.installed, outcome.reason
    boot(folder)
    confirm(folder)
    return folder


def stored_anchors(folder: Path) -> StoredAnchors | None:
    """The device's anchor store, wherever its shape keeps it (flash shapes: in the flash)."""
    return open_device(folder).config.stored_anchors()


def revocation(keys: Keys) -> AnchorsDocument:
    """Version 1: the leaked author key replaced by the fresh one (and revoked)."""
    return next_document(keys.v0(), Edits(replace=[(keys.leaked.key.public_key(),
                                                    keys.fresh.key.public_key())]))


@pytest.mark.parametrize("shape", ["mcu", "linux", "secure-split"])
def test_leaked_key_revoked_running_image_keeps_booting(tmp_path: Path, keys: Keys,
                                                        shape: str) -> None:
    folder = provisioned(tmp_path, keys, shape)  # secure-split: two images, both keep booting
    v1 = revocation(keys)
    outcome = install(folder, signed(v1, keys.root))
    assert outcome.installed, outcome.reason
    assert "trust anchors updated to version 1" in outcome.reason
    assert outcome.written == ("anchors",)
    assert open_device(folder).config.anchors_version() == 1
    # the running image, signed by the revoked key, still boots (recorded at the rotation)
    first = boot(folder)
    assert {seq for seq, _ in running(first).values()} == {1}
    assert not first.trial
    # the attacker's new manifest, signed by the leaked key: refused, naming the revocation
    refused = install(folder, release(keys.leaked, 2, "attack", shape))
    assert not refused.installed
    assert "revoked key" in refused.reason, refused.reason
    # even the same running manifest, re-sent, installs nothing on the strength of the record
    assert not install(folder, release(keys.leaked, 1, shape=shape)).installed
    # the fleet's next release, signed by the new key
    outcome = install(folder, release(keys.fresh, 2, "good", shape))
    assert outcome.installed, outcome.reason
    trial = boot(folder)
    assert trial.trial and {s for s, _ in running(trial).values()} == {2}
    confirm(folder)
    assert {s for s, _ in running(boot(folder)).values()} == {2}


def test_bootloader_refuses_revoked_image_staged_behind_the_consumer(tmp_path: Path,
                                                                     keys: Keys) -> None:
    """A slot written directly (not through the consumer) with a manifest of the revoked key
    does not boot: the bootloader checks the revocation at every boot too."""
    folder = provisioned(tmp_path, keys)
    assert install(folder, signed(revocation(keys), keys.root)).installed
    attack, image = keys.leaked.release(2, "attack")
    device = open_device(folder)
    envelope = codec.decode_envelope(attack)
    writer = device.bootloader.open_inactive(  # type: ignore[attr-defined]
        "app", manifest=slot_record((b"\x00",), envelope), image_size=len(image))
    writer.write(image)
    writer.finish()
    device.bootloader.mark_pending()  # type: ignore[attr-defined]
    device.save()
    result = boot(folder)
    assert {s for s, _ in running(result).values()} == {1}  # the revoked release never ran
    # and before the rotation, the same slot would have booted (the check is the rotation's)
    other = provisioned(tmp_path, keys, name="control")
    device = open_device(other)
    writer = device.bootloader.open_inactive(  # type: ignore[attr-defined]
        "app", manifest=slot_record((b"\x00",), envelope), image_size=len(image))
    writer.write(image)
    writer.finish()
    device.bootloader.mark_pending()  # type: ignore[attr-defined]
    device.save()
    assert {s for s, _ in running(boot(other)).values()} == {2}


def test_device_that_missed_two_rotations_catches_up_in_order(tmp_path: Path,
                                                              keys: Keys) -> None:
    folder = provisioned(tmp_path, keys)
    v1 = revocation(keys)
    r1 = signed(v1, keys.root)
    # version 2: a second root key, and the old root key replaced by it; signed under v1
    v2 = next_document(v1, Edits(replace=[(keys.root.key.public_key(),
                                           keys.spare_root.key.public_key())]))
    r2 = signed(v2, keys.root)
    # version 3: the fresh author key scoped to component [h'00'] only; signed under v2
    v3 = next_document(v2, Edits(scopes=[(keys.fresh.key.public_key(), ((b"\x00",),))]))
    alone = signed(v3, keys.spare_root)
    refused = install(folder, alone)
    assert not refused.installed
    assert "replaces version 2; the device has version 0: it needs the rotations 1 to 2 " \
        "first" in refused.reason, refused.reason
    assert open_device(folder).config.anchors_version() == 0
    # the same rotation carrying the two it builds on (in any order): applied 1, 2, 3
    outcome = install(folder, signed(v3, keys.spare_root, chain=(r2, r1)))
    assert outcome.installed, outcome.reason
    assert "version 3 (after version 1, version 2)" in outcome.reason
    stored = stored_anchors(folder)
    assert stored is not None and stored.raw == v3.encode()
    # a device already at version 1 skips what it has
    other = provisioned(tmp_path, keys, name="other")
    assert install(other, r1).installed
    outcome = install(other, signed(v3, keys.spare_root, chain=(r1, r2)))
    assert outcome.installed and "(after version 2)" in outcome.reason, outcome.reason
    # replaying an old rotation: refused
    old = install(other, r2)
    assert not old.installed and "not newer than the device's version 3" in old.reason, \
        old.reason


def test_rotation_not_signed_by_root_refused(tmp_path: Path, keys: Keys) -> None:
    folder = provisioned(tmp_path, keys)
    outcome = install(folder, signed(revocation(keys), keys.leaked))  # the leaked author key
    assert not outcome.installed
    assert "needs signatures of 1 key(s) of role 'root', it has 0" in outcome.reason
    assert stored_anchors(folder) is None


def test_root_threshold(tmp_path: Path, keys: Keys) -> None:
    folder = provisioned(tmp_path, keys)
    v1 = next_document(keys.v0(), Edits(add=[("root", keys.spare_root.key.public_key())],
                                        root_threshold=2))
    assert install(folder, signed(v1, keys.root)).installed
    v2 = next_document(v1, Edits(revoke=[keys.leaked.key.public_key()],
                                 add=[("author", keys.fresh.key.public_key())]))
    one = install(folder, signed(v2, keys.root))
    assert not one.installed and "needs signatures of 2 key(s)" in one.reason
    assert install(folder, signed(v2, keys.root, keys.spare_root)).installed


def test_root_key_cannot_sign_firmware(tmp_path: Path, keys: Keys) -> None:
    folder = provisioned(tmp_path, keys)
    envelope, _ = keys.root.release(2)
    outcome = install(folder, envelope)
    assert not outcome.installed
    assert "signer of role 'root'" in outcome.reason
    assert "may not update component [h'00']" in outcome.reason


def test_rotation_must_address_the_anchors_alone(tmp_path: Path, keys: Keys) -> None:
    folder = provisioned(tmp_path, keys)
    doc = tmp_path / "anchors.cbor"
    doc.write_bytes(revocation(keys).encode())
    mixed = keys.root.envelope(1, [{"id": ["suitkit", "anchors"], "image": str(doc),
                                    "invoke": False},
                                   keys.root.component("app.bin", b"x" * 100, index=0)])
    outcome = install(folder, mixed)
    assert not outcome.installed and "must address nothing else" in outcome.reason


def _raw_rotation(doc: AnchorsDocument, who: Author) -> bytes:
    """A rotation of a document the author tools would refuse (as an attacker or a buggy
    tool would make it): the device checks it again."""
    return signed(doc, who)


@pytest.mark.parametrize(("make", "expected"), [
    (lambda k: AnchorsDocument(1, 0, (AnchorKey(_key(k.root), "root"),)),
     "no key could sign firmware"),
    (lambda k: AnchorsDocument(1, 0, (AnchorKey(_key(k.fresh), "author"),)),
     "no key of role 'root'"),
    (lambda k: AnchorsDocument(1, 0, (AnchorKey(_key(k.root), "root"),
                                      AnchorKey(_key(k.fresh), "author")), ("operator",)),
     "no key has the role 'operator'"),
    (lambda k: AnchorsDocument(1, 0, (AnchorKey(_key(k.root), "root"),
                                      AnchorKey(_key(k.fresh), "author")), (), 2),
     "2 root signatures required, the document has 1"),
    (lambda k: AnchorsDocument(1, 0, (AnchorKey(_key(k.root), "root"),
                                      AnchorKey(_key(k.leaked), "author")), (), 1,
                               (_key(k.leaked),)),
     "this key is revoked"),
    (lambda k: AnchorsDocument(2, 1, (AnchorKey(_key(k.root), "root"),
                                      AnchorKey(_key(k.fresh), "author"))),
     "replaces version 1; the device has version 0"),
])
def test_bad_rotation_documents_refused(tmp_path: Path, keys: Keys, make: object,
                                        expected: str) -> None:
    folder = provisioned(tmp_path, keys)
    doc = make(keys)  # type: ignore[operator]
    outcome = install(folder, _raw_rotation(doc, keys.root))
    assert not outcome.installed
    assert expected in outcome.reason, outcome.reason
    assert stored_anchors(folder) is None
    assert {s for s, _ in running(boot(folder)).values()} == {1}


def _key(who: Author) -> bytes:
    return AnchorsDocument.of([("author", who.key.public_key(), None)], version=0,
                              check=False).keys[0].key


def test_revocation_is_final(tmp_path: Path, keys: Keys) -> None:
    folder = provisioned(tmp_path, keys)
    v1 = revocation(keys)
    assert install(folder, signed(v1, keys.root)).installed
    # version 2 that forgets the revocation (and trusts the key again): refused
    forgot = AnchorsDocument(2, 1, (AnchorKey(_key(keys.root), "root"),
                                    AnchorKey(_key(keys.fresh), "author")))
    outcome = install(folder, signed(forgot, keys.root))
    assert not outcome.installed and "drops 1 revocation(s)" in outcome.reason
    with pytest.raises(PolicyError, match=r"already in|is revoked"):
        next_document(v1, Edits(add=[("author", keys.leaked.key.public_key())]))


def test_author_tools_refuse_a_rotation_that_leaves_no_signer(keys: Keys) -> None:
    with pytest.raises(PolicyError, match="no key could sign firmware"):
        next_document(keys.v0(), Edits(revoke=[keys.leaked.key.public_key()]))
    with pytest.raises(PolicyError, match="never be rotated again"):
        next_document(keys.v0(), Edits(revoke=[keys.root.key.public_key()]))
    with pytest.raises(PolicyError, match="not in anchors version 0"):
        next_document(keys.v0(), Edits(revoke=[keys.fresh.key.public_key()]))


def test_document_decoding_is_strict() -> None:
    good = AnchorsDocument.of([("root", crypto.generate_private_key("ES256").public_key(), None),
                               ("author", crypto.generate_private_key("Ed25519").public_key(),
                                None)], version=1)
    assert parse_document(good.encode()) == good
    doc = cbor.decode(good.encode(), path="t")
    for bad, message in [
        ({**doc, "extra": 1}, "unknown member 'extra'"),
        ({**doc, "version": -1}, "version: expected an unsigned integer"),
        ({**doc, "previous": 5}, "version 1 must replace version 0, it names 5"),
        ({**doc, "keys": []}, "keys: expected a list of 1 to 16"),
        ({**doc, "keys": [{"key": b"\x01", "role": "author"}]}, "not a public key"),
        ({**doc, "keys": [doc["keys"][0], doc["keys"][0]]}, "the same key as keys[0]"),
        ({**doc, "keys": [{**doc["keys"][1], "role": "a b"}]}, "expected a role name"),
        ({**doc, "format": 2}, "format: expected 1"),
    ]:
        with pytest.raises((DecodeError, PolicyError), match=message.replace("[", r"\[")):
            parse_document(cbor.encode(bad))
    with pytest.raises(DecodeError, match="at most 16384"):
        parse_document(b"\x00" * 20000)


def test_damaged_store_fails_closed(tmp_path: Path, keys: Keys) -> None:
    folder = provisioned(tmp_path, keys, "linux")  # the file store (flash shapes: flash)
    assert install(folder, signed(revocation(keys), keys.root)).installed
    data = (folder / STORE).read_bytes()
    (folder / STORE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(KeyMaterialError, match="damaged trust-anchor store"):
        open_device(folder)
    attack, _ = keys.leaked.release(2, "x")
    with pytest.raises(KeyMaterialError):
        install(folder, attack)
    # a store restored intact works again; a leftover temporary file is ignored
    (folder / STORE).write_bytes(data)
    (folder / f".{STORE}.abc.tmp").write_bytes(data[: len(data) // 2])
    assert open_device(folder).config.anchors_version() == 1
    assert encode_store(read_store(folder).raw, read_store(folder).recorded) == data  # type: ignore[union-attr]


def test_the_version_of_a_recorded_running_image_still_counts(tmp_path: Path,
                                                              keys: Keys) -> None:
    """A version condition of the next release (update-management) reads the running image's
    version from its manifest, also when that manifest is recorded (its signer revoked)."""
    folder = tmp_path / "dev"
    create_device(folder, vendor_id=VENDOR, class_id=CLASS,
                  trust_anchors=[("root", keys.root.anchor), ("author", keys.leaked.anchor)])
    open_device(folder).save()
    base = keys.leaked.envelope(1, [keys.leaked.component("v1.bin", image_bytes("v1", 900))],
                                top={"set-version": "1.4.0"})
    assert install(folder, base).installed
    boot(folder)
    confirm(folder)
    assert install(folder, signed(revocation(keys), keys.root)).installed
    comp = keys.fresh.component("v2.bin", image_bytes("v2", 900))
    nxt = keys.fresh.envelope(2, [{**comp, "version": ">=1.4"}], top={"set-version": "2.0.0"})
    outcome = install(folder, nxt)
    assert outcome.installed, outcome.reason


def test_device_init_refuses_anchors_that_could_sign_no_firmware(tmp_path: Path,
                                                                 keys: Keys) -> None:
    with pytest.raises(DecodeError, match="every key is a 'root' key"):
        create_device(tmp_path / "a", vendor_id=VENDOR, class_id=CLASS,
                      trust_anchors=[("root", keys.root.anchor)])
    with pytest.raises(DecodeError, match="cannot be required on firmware"):
        create_device(tmp_path / "b", vendor_id=VENDOR, class_id=CLASS, required_roles=["root"],
                      trust_anchors=[("root", keys.root.anchor), ("author", keys.leaked.anchor)])
