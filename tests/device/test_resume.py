"""A download interrupted by a power cut (or a crash) resumes where its slot got to."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from suitkit.author.describe import parse_description
from suitkit.bootloader.flash import PowerCut
from suitkit.core import codec, crypto
from suitkit.core.sign import sign_envelope
from suitkit.device.config import create_device
from suitkit.device.fetch import FileFetcher
from suitkit.device.wiring import open_device

VENDOR = uuid.uuid5(uuid.NAMESPACE_DNS, "example.com")
CLASS = uuid.uuid5(VENDOR, "board")


class CountingFetcher:
    """A real file fetcher that records where each fetch started and how much it read."""

    def __init__(self, root: Path) -> None:
        self.files = FileFetcher(root)
        self.starts: list[int] = []
        self.read = 0

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        self.starts.append(offset)
        for chunk in self.files.fetch(uri, max_bytes=max_bytes, offset=offset):
            self.read += len(chunk)
            yield chunk


def make_update(where: Path, size: int) -> tuple[bytes, bytes]:
    key = crypto.generate_private_key("ES256")
    (where / "a.pub").write_bytes(crypto.public_key_to_pem(key.public_key()))
    image = random.Random(size).randbytes(size)
    (where / "fw.bin").write_bytes(image)
    desc = parse_description({"sequence-number": 1, "vendor-domain": "example.com",
                              "class-name": "board",
                              "components": [{"id": ["0x00"], "image": "fw.bin",
                                              "uri": "fw.bin"}]}, base=where)
    envelope = sign_envelope(codec.build_envelope(desc.manifest), key.signer())
    return codec.encode_envelope(envelope), image


@pytest.mark.parametrize("shape", ["mcu", "linux"])
def test_power_cut_mid_download_resumes(tmp_path: Path, shape: str) -> None:
    size = 200_000 if shape == "mcu" else 3_000_000
    data, image = make_update(tmp_path, size)
    create_device(tmp_path / "dev", vendor_id=VENDOR, class_id=CLASS,
                  trust_anchors=[tmp_path / "a.pub"], shape=shape)
    device = open_device(tmp_path / "dev")
    fetcher = CountingFetcher(tmp_path)
    if shape == "mcu":
        supply = next(iter(device.flashes.values())).supply
        supply.cut_after(supply.ops + 170)  # about 120 KiB into the image
        with pytest.raises(PowerCut):
            device.consumer(CountingFetcher(tmp_path)).install(data)
        device.save()
        supply.restore()
    else:
        stop = {"n": 0}

        class Crash(Exception):
            pass

        class Stopping(CountingFetcher):
            def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
                      arguments: bytes | None = None) -> Iterator[bytes]:
                for chunk in super().fetch(uri, max_bytes=max_bytes, offset=offset):
                    stop["n"] += len(chunk)
                    if stop["n"] > 2_500_000:
                        raise Crash  # the process dies mid-download
                    yield chunk

        with pytest.raises(Crash):
            device.consumer(Stopping(tmp_path)).install(data)
    assert (tmp_path / "dev" / "download.json").exists()

    device = open_device(tmp_path / "dev")  # power back: everything from the folder
    outcome = device.consumer(fetcher).install(data)
    device.save()
    assert outcome.installed, outcome.reason
    resumed_at = fetcher.starts[-1]
    assert resumed_at > 0, "the second download must not start from byte 0"
    assert fetcher.read == size - resumed_at
    assert not (tmp_path / "dev" / "download.json").exists()
    result = device.bootloader.boot()
    assert result.images[0].sequence_number == 1
    assert result.images[0].digest == hashlib.sha256(image).digest()


def test_changed_slot_content_is_not_trusted(tmp_path: Path) -> None:
    data, _image = make_update(tmp_path, 200_000)
    create_device(tmp_path / "dev", vendor_id=VENDOR, class_id=CLASS,
                  trust_anchors=[tmp_path / "a.pub"])
    device = open_device(tmp_path / "dev")
    supply = next(iter(device.flashes.values())).supply
    supply.cut_after(supply.ops + 170)
    with pytest.raises(PowerCut):
        device.consumer(CountingFetcher(tmp_path)).install(data)
    supply.restore()
    # Someone corrupts the partly written slot while the device is off.
    flash = device.flashes["internal"]
    secondary = device.bootloader.layout.images[0].secondary  # type: ignore[attr-defined]
    flash.corrupt(secondary.offset + 4096, b"\x00" * 16)
    outcome = device.consumer(CountingFetcher(tmp_path)).install(data)
    assert not outcome.installed
    assert "differs from the payload" in outcome.reason or "digest" in outcome.reason
    # The next attempt starts from scratch and succeeds.
    outcome = device.consumer(CountingFetcher(tmp_path)).install(data)
    assert outcome.installed, outcome.reason
