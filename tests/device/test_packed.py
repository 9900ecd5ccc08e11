"""Compressed and delta payloads on real device shapes (docs/delta.md, core/packing.py).

An MCU on the flash simulator and a Linux-class A/B device fetch a compressed image (or a delta
patch) from a real HTTP server on 127.0.0.1, decode it while it arrives into the inactive slot,
boot it and check it at boot against the manifest's digest of the *decoded* image. Refusals
(a bomb, an unknown codec, a device without the extension, a wrong precursor) leave the device
as it was and still updatable.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard
from typer.testing import CliRunner

from device.device_kit import (
    CLASS,
    VENDOR,
    Author,
    boot,
    confirm,
    firmware_server,
    image_bytes,
    install,
    new_device,
    running,
)
from suitkit.author.describe import parse_description
from suitkit.cli.main import app as cli
from suitkit.core import codec, packing
from suitkit.core.model import Command, CommandSequence, Parameters
from suitkit.core.numbers import Command as Cmd
from suitkit.core.sign import sign_envelope
from suitkit.device.config import create_device
from suitkit.device.fetch import HttpFetcher
from suitkit.device.wiring import open_device

SHAPES = ["mcu", "linux"]


def _firmware(tag: str, size: int) -> bytes:
    """A compressible stand-in for firmware: code-like words plus a random table."""
    words = image_bytes(f"vocabulary-{tag}", 4096 * 4)
    rng = image_bytes(f"order-{tag}", size // 4)
    body = b"".join(words[(b % 4096) * 4:(b % 4096) * 4 + 4] for b in rng)
    return (body + image_bytes(f"table-{tag}", size // 8))[:size]


def _release(author: Author, sequence: int, image: bytes, url: str, **fields: Any) -> bytes:
    comp = author.component(f"app-{sequence}.bin", image, uri=url)
    comp.update(fields)
    return author.envelope(sequence, [comp])


def _payload(author: Author, sequence: int, image: bytes, **fields: Any) -> bytes:
    """What ``suitkit create`` writes for the component to upload (packed, or the image)."""
    comp = author.component(f"app-{sequence}.bin", image, uri="http://unused/x")
    comp.update(fields)
    description = parse_description({"sequence-number": sequence, "vendor-domain": "example.com",
                                     "class-name": "thermostat", "components": [comp]},
                                    base=author.folder)
    return description.packed[0][1] if description.packed else image


@pytest.fixture
def author(tmp_path: Path) -> Author:
    return Author.create(tmp_path / "author")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("codec_name", ["zstd", "xz", "zlib", "bzip2"])
def test_compressed_image_installs_and_boots(author: Author, tmp_path: Path, shape: str,
                                             codec_name: str) -> None:
    device = new_device(tmp_path / "dev", [author.anchor], shape)
    image = _firmware("v2", 200_000)
    payload = _payload(author, 2, image, compress=codec_name)
    assert len(payload) < len(image) * 0.8  # what travels is compressed
    with firmware_server() as (url, served):
        served.files["/app.bin"] = payload
        envelope = _release(author, 2, image, f"{url}/app.bin", compress=codec_name)
        outcome = install(device, envelope, HttpFetcher())
    assert outcome.installed, outcome.reason
    # the bootloader checks the decompressed image against the manifest's digest
    assert running(boot(device)) == {"app": (2, hashlib.sha256(image).digest())}
    assert confirm(device) == {"app": 2}


@pytest.mark.parametrize("shape", SHAPES)
def test_decompression_bomb_refused_at_image_size(author: Author, tmp_path: Path,
                                                  shape: str) -> None:
    """A stream that inflates past image-size (here 256 MiB of zeros in about 8 KiB) is cut
    off at image-size: refused, nothing staged, and quickly (the decoder never holds more than
    a piece)."""
    device = new_device(tmp_path / "dev", [author.anchor], shape)
    image = _firmware("v2", 100_000)
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(256)) + compressor.flush()
    assert len(bomb) < 64 * 1024
    with firmware_server() as (url, served):
        served.files["/app.bin"] = bomb
        envelope = _release(author, 2, image, f"{url}/app.bin", compress="zstd")
        started = time.monotonic()
        outcome = install(device, envelope, HttpFetcher())
        elapsed = time.monotonic() - started
    assert not outcome.installed
    assert "decompresses to more than the 100000 bytes image-size allows" in outcome.reason
    assert elapsed < 20, f"the bomb took {elapsed:.1f} s to refuse"
    assert not open_device(device).bootloader.pending_update()  # type: ignore[attr-defined]
    # still updatable
    with firmware_server() as (url, served):
        served.files["/app.bin"] = _payload(author, 3, image, compress="zstd")
        assert install(device, _release(author, 3, image, f"{url}/app.bin", compress="zstd"),
                       HttpFetcher()).installed


def _with_compression_info(author: Author, sequence: int, image: bytes, url: str,
                           info: bytes) -> bytes:
    """An envelope whose install sets suitkit-compression-info to ``info`` (any bytes)."""
    comp = author.component(f"app-{sequence}.bin", image, uri=url)
    description = parse_description({"sequence-number": sequence, "vendor-domain": "example.com",
                                     "class-name": "thermostat", "components": [comp]},
                                    base=author.folder)
    manifest = description.manifest
    assert manifest.install is not None
    commands = []
    for command in manifest.install.commands:
        if command.code == Cmd.OVERRIDE_PARAMETERS and isinstance(command.argument, Parameters):
            commands.append(Command(command.code, Parameters.from_items(
                {**dict(command.argument.items()), packing.COMPRESSION_INFO: info})))
        else:
            commands.append(command)
    manifest = replace(manifest, install=CommandSequence(tuple(commands)))
    envelope = sign_envelope(codec.build_envelope(manifest), author.key.signer())
    return codec.encode_envelope(envelope)


@pytest.mark.parametrize("shape", SHAPES)
def test_unknown_codec_refused_before_anything_is_fetched(author: Author, tmp_path: Path,
                                                          shape: str) -> None:
    device = new_device(tmp_path / "dev", [author.anchor], shape)
    image = _firmware("v2", 50_000)
    with firmware_server() as (url, served):
        served.files["/app.bin"] = image
        brotli = _with_compression_info(author, 2, image, f"{url}/app.bin",
                                        packing.CompressionInfo(2).encode())
        outcome = install(device, brotli, HttpFetcher())
        assert not outcome.installed
        assert "unsupported compression algorithm 2" in outcome.reason
        garbage = _with_compression_info(author, 2, image, f"{url}/app.bin", b"\xa1\x01")
        outcome = install(device, garbage, HttpFetcher())
        assert not outcome.installed
        assert "suitkit-compression-info" in outcome.reason
        assert served.requests == []


def test_device_without_the_extension_refuses_it(author: Author, tmp_path: Path) -> None:
    """A device made with ``--unpack none`` (or one that decodes zlib only) refuses a
    compressed release cleanly, naming the parameter or the codec; a plain one installs."""
    image = _firmware("v2", 50_000)
    bare = tmp_path / "bare"
    create_device(bare, vendor_id=VENDOR, class_id=CLASS,
                  trust_anchors=[author.anchor], shape="mcu", unpack=[])
    open_device(bare).save()
    zlib_only = tmp_path / "zlib-only"
    create_device(zlib_only, vendor_id=VENDOR, class_id=CLASS,
                  trust_anchors=[author.anchor], shape="mcu", unpack=["zlib"])
    open_device(zlib_only).save()
    with firmware_server() as (url, served):
        served.files["/app.bin"] = _payload(author, 2, image, compress="zstd")
        envelope = _release(author, 2, image, f"{url}/app.bin", compress="zstd")
        outcome = install(bare, envelope, HttpFetcher())
        assert not outcome.installed
        assert "parameter custom(-1024) is not supported" in outcome.reason
        outcome = install(zlib_only, envelope, HttpFetcher())
        assert not outcome.installed
        assert "zstd (3) is not supported by this device; it decodes zlib (1)" in outcome.reason
        assert served.requests == []
        served.files["/plain.bin"] = image
        assert install(bare, _release(author, 2, image, f"{url}/plain.bin"),
                       HttpFetcher()).installed


# ---------------------------------------------------------------------------- deltas


def _installed(author: Author, device: Path, sequence: int, image: bytes) -> None:
    with firmware_server() as (url, served):
        served.files["/full.bin"] = image
        assert install(device, _release(author, sequence, image, f"{url}/full.bin"),
                       HttpFetcher()).installed
    boot(device)
    confirm(device)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("compress", [None, "xz", "best"])
def test_delta_rebuilds_the_image_from_the_running_one(author: Author, tmp_path: Path,
                                                       shape: str, compress: str | None) -> None:
    device = new_device(tmp_path / "dev", [author.anchor], shape)
    old = _firmware("v1", 200_000)
    _installed(author, device, 1, old)
    new = old[:50_000] + b"patched!" + old[50_000:120_000] + _firmware("new", 3000) \
        + old[123_000:]
    (author.folder / "old.bin").write_bytes(old)
    fields: dict[str, Any] = {"delta-from": "old.bin"}
    if compress:
        fields["compress"] = compress
    patch = _payload(author, 2, new, **fields)
    assert len(patch) < (len(new) // 10 if compress else packing.packed_bound(len(new)))
    with firmware_server() as (url, served):
        served.files["/delta"] = patch
        outcome = install(device, _release(author, 2, new, f"{url}/delta", **fields),
                          HttpFetcher())
    assert outcome.installed, outcome.reason
    assert running(boot(device)) == {"app": (2, hashlib.sha256(new).digest())}
    assert confirm(device) == {"app": 2}


@pytest.mark.parametrize("shape", SHAPES)
def test_delta_for_another_precursor_refused_before_anything_is_written(
        author: Author, tmp_path: Path, shape: str) -> None:
    """REQ.SEC.AUTH.PRECURSOR twice: the generated install sequence image-matches the running
    image first; and a manifest without that guard is refused by the delta-info's precursor
    digest before the slot is opened. Nothing is fetched, the device runs what it ran."""
    device = new_device(tmp_path / "dev", [author.anchor], shape)
    running_image = _firmware("v1-other", 100_000)
    _installed(author, device, 1, running_image)
    precursor = _firmware("v1", 100_000)
    new = precursor[:40_000] + b"new" + precursor[40_000:]
    (author.folder / "old.bin").write_bytes(precursor)
    patch = _payload(author, 2, new, **{"delta-from": "old.bin"})
    with firmware_server() as (url, served):
        served.files["/delta"] = patch
        guarded = _release(author, 2, new, f"{url}/delta", **{"delta-from": "old.bin"})
        outcome = install(device, guarded, HttpFetcher())
        assert not outcome.installed
        assert "condition-image-match" in outcome.reason
        unguarded = _without_guard(author, 2, new, f"{url}/delta")
        outcome = install(device, unguarded, HttpFetcher())
        assert not outcome.installed
        assert "REQ.SEC.AUTH.PRECURSOR" in outcome.reason
        assert served.requests == []
    assert running(boot(device)) == {"app": (1, hashlib.sha256(running_image).digest())}


def _without_guard(author: Author, sequence: int, image: bytes, url: str) -> bytes:
    comp = author.component(f"app-{sequence}.bin", image, uri=url)
    comp["delta-from"] = "old.bin"
    description = parse_description({"sequence-number": sequence, "vendor-domain": "example.com",
                                     "class-name": "thermostat", "components": [comp]},
                                    base=author.folder)
    manifest = description.manifest
    assert manifest.install is not None
    kept = tuple(c for c in manifest.install.commands[2:])  # drop override + image-match
    assert kept[0].code == Cmd.OVERRIDE_PARAMETERS and kept[1].code == Cmd.FETCH
    manifest = replace(manifest, install=CommandSequence(kept))
    envelope = sign_envelope(codec.build_envelope(manifest), author.key.signer())
    return codec.encode_envelope(envelope)


# ---------------------------------------------------------------------------- the command line


def test_suitkit_delta_and_device_init_unpack(tmp_path: Path) -> None:
    """``suitkit delta OLD NEW`` writes a (compressed) SKD1 patch that rebuilds NEW; ``device
    init --unpack`` records what the device accepts and refuses unknown names in one line."""
    old = _firmware("v1", 80_000)
    new = old[:30_000] + b"changed" + old[30_000:]
    (tmp_path / "old.bin").write_bytes(old)
    (tmp_path / "new.bin").write_bytes(new)
    done = CliRunner().invoke(cli, ["delta", str(tmp_path / "old.bin"), str(tmp_path / "new.bin"),
                                    "--out", str(tmp_path / "patch"), "--compress", "zstd"])
    assert done.exit_code == 0, done.output
    assert "describe it with delta-from: old.bin" in done.stdout
    patch = (tmp_path / "patch").read_bytes()
    done = CliRunner().invoke(cli, ["delta", str(tmp_path / "old.bin"), str(tmp_path / "new.bin"),
                                    "--out", str(tmp_path / "patch2"), "--json"])
    assert done.exit_code == 0, done.output
    shown = json.loads(done.stdout)
    assert shown["bytes"] == (tmp_path / "patch2").stat().st_size < 2000
    assert shown["precursor_sha256"] == hashlib.sha256(old).hexdigest()
    assert shown["compression"] in ("zlib", "zstd", "xz", "bzip2")
    assert len(patch) < 2000
    rebuilt = b"".join(packing.apply_delta(
        packing.decompress([patch], packing.Codec.ZSTD, max_output=packing.packed_bound(len(new))),
        lambda offset, length: old[offset:offset + length], source_size=len(old),
        max_output=len(new)))
    assert rebuilt == new

    author = Author.create(tmp_path / "author")
    base = ["device", "init", "--vendor-domain", "example.com", "--class-name", "thermostat",
            "--trust-anchor", str(author.anchor)]
    done = CliRunner().invoke(cli, [*base[:2], str(tmp_path / "d1"), *base[2:], "--unpack",
                                    "zstd,brotli"])
    assert done.exit_code != 0
    assert "unknown payload packing 'brotli'" in done.stderr
    assert not (tmp_path / "d1").exists()
    done = CliRunner().invoke(cli, [*base[:2], str(tmp_path / "d2"), *base[2:], "--unpack",
                                    "delta,zlib"])
    assert done.exit_code == 0, done.output
    assert open_device(tmp_path / "d2").config.unpack == ("zlib", "delta")


class _Cut(BaseException):
    """The power goes: nothing after it runs (as the power-cut harness's PowerCut)."""


class _CuttingFetcher:
    """Serves ``payload`` in 1 KiB chunks from ``offset``; the first time, the power goes after
    ``cut_after`` bytes."""

    def __init__(self, payload: bytes, cut_after: int | None) -> None:
        self.payload, self.cut_after = payload, cut_after
        self.offsets: list[int] = []

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        self.offsets.append(offset)
        for start in range(offset, len(self.payload), 1024):
            if self.cut_after is not None and start >= self.cut_after:
                self.cut_after = None
                raise _Cut
            yield self.payload[start:start + 1024]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fields", [{"compress": "zlib"}, {"delta-from": "old.bin"}])
def test_an_interrupted_packed_download_resumes_without_replaying_decoded_bytes(
        author: Author, tmp_path: Path, shape: str, fields: dict[str, str]) -> None:
    """After a crash, the download journal says how many image bytes the slot holds; for a
    packed payload those are decoded bytes, not fetched ones: the install fetches the payload
    again from its start and compares the kept bytes (replaying them as fetched bytes and
    fetching the rest from that offset fed the decoder garbage)."""
    device = new_device(tmp_path / "dev", [author.anchor], shape)
    scale = 1 if shape == "mcu" else 20  # Linux-class slots checkpoint only past 1 MiB
    old = _firmware("v1", 100_000 * scale)
    if "delta-from" in fields:
        _installed(author, device, 1, old)
        (author.folder / "old.bin").write_bytes(old)
    new = _firmware("v2", 150_000 * scale) if "compress" in fields else (
        old[:10_000] + _firmware("v2", 60_000 * scale) + old[10_000:])
    payload = _payload(author, 2, new, **fields)
    envelope = _release(author, 2, new, "http://unused/app.bin", **fields)
    fetcher = _CuttingFetcher(payload, cut_after=len(payload) * 3 // 4)
    opened = open_device(device)
    consumer = replace(opened.consumer(fetcher), journal_every=4096)
    with pytest.raises(_Cut):
        consumer.install(envelope)
    opened.save()
    assert json.loads((device / "download.json").read_bytes())["durable"] > 0
    opened = open_device(device)
    outcome = replace(opened.consumer(fetcher), journal_every=4096).install(envelope)
    opened.save()
    assert outcome.installed, outcome.reason
    assert fetcher.offsets == [0, 0]  # fetched again from the start
    assert running(boot(device)) == {"app": (2, hashlib.sha256(new).digest())}
