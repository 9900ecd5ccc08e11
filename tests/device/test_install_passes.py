"""An install into a Linux-class slot is one pass over the payload, with the fsyncs that power
safety needs and no more (issue #16): a regression in either shows here before it shows in
``benchmarks/bench_install.py``."""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from suitkit.author.describe import parse_description
from suitkit.core import codec, crypto
from suitkit.core.numbers import CoseAlg
from suitkit.core.sign import sign_envelope
from suitkit.device.config import create_device
from suitkit.device.consumer import slot_record
from suitkit.device.fetch import FileFetcher
from suitkit.device.wiring import open_device
from suitkit.errors import PolicyError

VENDOR = uuid.uuid5(uuid.NAMESPACE_DNS, "example.com")
CLASS = uuid.uuid5(VENDOR, "board")
MiB = 1 << 20


def make_device(where: Path, size: int) -> bytes:
    key = crypto.generate_private_key("ES256")
    (where / "a.pub").write_bytes(crypto.public_key_to_pem(key.public_key()))
    (where / "fw.bin").write_bytes(random.Random(size).randbytes(size))
    desc = parse_description({"sequence-number": 1, "vendor-domain": "example.com",
                              "class-name": "board",
                              "components": [{"id": ["0x00"], "image": "fw.bin",
                                              "uri": "fw.bin"}]}, base=where)
    create_device(where / "dev", vendor_id=VENDOR, class_id=CLASS,
                  trust_anchors=[where / "a.pub"], shape="linux")
    return codec.encode_envelope(sign_envelope(codec.build_envelope(desc.manifest),
                                               key.signer()))


@pytest.mark.parametrize("size", [4096, 5 * MiB])
def test_install_hashes_the_payload_once_and_fsyncs_what_the_journal_needs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    envelope = make_device(tmp_path, size)
    root = (tmp_path / "dev").resolve()
    hashed = {"bytes": 0}
    synced: list[tuple[str, str]] = []
    update, fsync, fdatasync = crypto.Hasher.update, os.fsync, os.fdatasync

    def counting_update(self: crypto.Hasher, data: bytes) -> None:
        hashed["bytes"] += len(data)
        update(self, data)

    def counting(kind: str, sync: Callable[[int], None]) -> Callable[[int], None]:
        def call(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            synced.append((kind, str(Path(path).relative_to(root / "slots"))
                           if path.startswith(str(root)) else path))
            sync(fd)
        return call

    def install() -> None:
        hashed["bytes"] = 0
        synced.clear()
        device = open_device(tmp_path / "dev")
        with monkeypatch.context() as m:
            m.setattr(crypto.Hasher, "update", counting_update)
            m.setattr(os, "fsync", counting("fsync", fsync))
            m.setattr(os, "fdatasync", counting("fdatasync", fdatasync))
            outcome = device.consumer(FileFetcher(tmp_path)).install(envelope)
        assert outcome.installed, outcome.reason
        # One pass: the processor's check against the signed digest (the set check before
        # marking pending uses that digest; it hashed the image a second time, and the
        # consumer a third).
        assert size <= hashed["bytes"] < size + min(size, 64 * 1024), \
            f"{hashed['bytes']} bytes hashed for a {size}-byte image"
        # And what was marked pending boots: the slot holds exactly the image that was signed.
        assert device.bootloader.boot().trial
        device.bootloader.confirm()

    # A new device's slots are empty. The first install, into slot b: new names, so the slot
    # directory is fsynced, and state.json is created (a temporary file renamed, the root
    # fsynced). An image up to 1 MiB takes no resume checkpoint and is written in place (no
    # temporary file); a larger one takes one half-way (the download journal is not fsynced:
    # a hint) and none at its end, in the temporary file a resume finds.
    small = size <= MiB
    install()
    image = [("fdatasync", "slots/b/app.image")] if small else \
        [("fsync", "slots/b/app.image.tmp")] * 2
    assert synced == [*image, ("fsync", "slots/b/app.manifest.tmp"), ("fsync", "slots/b"),
                      ("fsync", "state.json.tmp"), ("fsync", ".")]
    # Into the empty slot a: both copies of state.json exist now (the boot and the confirm
    # wrote them), so the older one is written in place: an fdatasync, no rename, no directory.
    install()
    image = [("fdatasync", "slots/a/app.image")] if small else \
        [("fsync", "slots/a/app.image.tmp")] * 2
    assert synced == [*image, ("fsync", "slots/a/app.manifest.tmp"), ("fsync", "slots/a"),
                      ("fdatasync", "state.json")]
    # Into slot b again: every name exists. A small image and its manifest are written over
    # the slot's earlier ones: three fdatasyncs, the whole install (issue #16's fixed cost;
    # docs/bootloader.md, "Linux-class slots").
    install()
    if small:
        assert synced == [("fdatasync", "slots/b/app.image"),
                          ("fdatasync", "slots/b/app.manifest"), ("fdatasync", "state.json")]
    else:
        assert synced == [("fsync", "slots/b/app.image.tmp")] * 2 + [
            ("fsync", "slots/b/app.manifest.tmp"), ("fsync", "slots/b"),
            ("fdatasync", "state.json")]


def test_a_staged_image_changed_after_it_was_written_is_hashed_again(tmp_path: Path) -> None:
    """The set check before marking pending trusts the processor's digest only for the file
    the writer finished: an image replaced afterwards (another inode) is hashed, and refused."""
    envelope = make_device(tmp_path, 100_000)
    device = open_device(tmp_path / "dev")
    decoded = codec.decode_envelope(envelope)
    spec = device.config.component(decoded.manifest.common.components[0])
    assert spec is not None
    image = (tmp_path / "fw.bin").read_bytes()
    store = device.bootloader
    writer = store.open_inactive(spec.image, manifest=slot_record(spec.suit_id, decoded),
                                 image_size=len(image))
    writer.write(image)
    writer.vouch(CoseAlg.SHA256, hashlib.sha256(image).digest())
    writer.finish()
    store.check_staged()  # the vouched digest is the image's
    staged = next((tmp_path / "dev").rglob(f"slots/b/{spec.image}.image"))
    tampered = staged.with_name("x.tmp")
    tampered.write_bytes(bytes(len(image)))  # same size, other bytes, another file
    tampered.replace(staged)
    with pytest.raises(PolicyError, match="digest"):
        store.check_staged()
