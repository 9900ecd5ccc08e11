"""An install into a Linux-class slot is one pass over the payload, with the fsyncs that power
safety needs and no more (issue #16): a regression in either shows here before it shows in
``benchmarks/bench_install.py``."""

from __future__ import annotations

import hashlib
import os
import random
import uuid
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


@pytest.mark.parametrize(("size", "checkpoints"), [(4096, 0), (5 * MiB, 1)])
def test_install_hashes_the_payload_once_and_fsyncs_what_the_journal_needs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, checkpoints: int) -> None:
    envelope = make_device(tmp_path, size)
    device = open_device(tmp_path / "dev")
    hashed = {"bytes": 0}
    fsynced: list[str] = []
    update, fsync = crypto.Hasher.update, os.fsync

    def counting_update(self: crypto.Hasher, data: bytes) -> None:
        hashed["bytes"] += len(data)
        update(self, data)

    def counting_fsync(fd: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(crypto.Hasher, "update", counting_update)
    monkeypatch.setattr(os, "fsync", counting_fsync)
    outcome = device.consumer(FileFetcher(tmp_path)).install(envelope)
    monkeypatch.undo()
    assert outcome.installed, outcome.reason

    # One pass: the processor's check against the signed digest (the set check before marking
    # pending uses that digest; it hashed the image a second time, and the consumer a third).
    assert size <= hashed["bytes"] < size + min(size, 64 * 1024), \
        f"{hashed['bytes']} bytes hashed for a {size}-byte image"
    # A checkpoint half-way (at least 1 MiB apart, none at the end): one fsync of the partial
    # image (the download journal is not fsynced: a hint).
    # Then: the image, its manifest and the slot directory; state.json and the root directory.
    root = (tmp_path / "dev").resolve()
    names = [str(Path(p).relative_to(root)) if p.startswith(str(root)) else p
             for p in fsynced]
    assert names == ["slots/slots/b/app.image.tmp"] * (checkpoints + 1) + [
        "slots/slots/b/app.manifest.tmp", "slots/slots/b", "slots/state.json.tmp", "slots"]

    # And what was marked pending boots: the slot holds exactly the image that was signed.
    assert device.bootloader.boot().trial


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
