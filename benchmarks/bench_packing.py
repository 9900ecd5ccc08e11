"""Compressed and delta payloads (docs/delta.md): sizes, decode speed, install time, memory.

(a) Delta size. A firmware-like image (code words from a small vocabulary, every 32nd word an
absolute address into the image, a constant table, a random blob) at 1 MiB, and two new
versions: an *application bump* (a few functions of the application part edited and 300 bytes
inserted, so everything after moves and every address past the insertion changes) and a
*dependency bump* (a library of 10 % of the image replaced by another version of a different
size). suitkit's SKD1 patch, raw and compressed with each codec, against ``bsdiff4.diff`` of the
same pair (the baseline; target: no larger).

(b) Compression ratio and decompression throughput per codec on the 1 MiB image, through
``packing.decompress`` (64 KiB pieces, image-size cap); baseline in the same run: SHA-256 of the
same bytes (what a device does to every image anyway).

(c) Delta apply time against a full install: a Linux-class device (``create_device`` +
``open_device``, payloads read by ``FileFetcher``) installs v2 as the full image and as the
SKD1 delta from v1 (compressed with the best codec); best of several runs, each on a fresh
device running v1.

(d) Memory. A fresh child process per image size (1, 16 and 64 MiB) decodes a zstd-compressed
SKD1 patch read from a file and applies it to a precursor read at random from a file, hashing
the output: the peak of traced Python allocations (tracemalloc) and the growth of ru_maxrss
(which counts the codec's C allocations too). Streaming means neither grows with the image.

Run: ``.venv/bin/python benchmarks/bench_packing.py`` (about 30 s; budget 120 s).
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import bsdiff4  # type: ignore[import-untyped]

from suitkit.author.describe import parse_description
from suitkit.core import codec, crypto, packing
from suitkit.core.sign import sign_envelope
from suitkit.device.config import create_device
from suitkit.device.fetch import FileFetcher
from suitkit.device.wiring import open_device

MiB = 1024 * 1024
VENDOR_DOMAIN, CLASS_NAME = "example.com", "gateway"


# ---------------------------------------------------------------------------- test images


def _code(rng: random.Random, words: list[bytes], n: int, base: int, span: int) -> bytearray:
    out = bytearray()
    for i in range(n):
        if i % 8 == 7:  # an absolute address (a call or a literal pool entry)
            out += (base + rng.randrange(span) * 4).to_bytes(4, "little")
        else:
            out += rng.choice(words)
    return out


def firmware(size: int, seed: str = "fw") -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A pseudo-firmware and its layout {part: (offset, length)}."""
    rng = random.Random(seed)
    words = [rng.randbytes(4) for _ in range(3000)]
    layout = {"rtos": (0, size * 3 // 10), "lib": (size * 3 // 10, size // 10),
              "app": (size * 4 // 10, size * 4 // 10), "table": (size * 8 // 10, size // 10),
              "blob": (size * 9 // 10, size - size * 9 // 10)}
    image = bytearray()
    for name, (_offset, length) in layout.items():
        if name == "table":
            image += bytes(range(256)) * (length // 256) + bytes(length % 256)
        elif name == "blob":
            image += rng.randbytes(length)
        else:
            image += _code(rng, words, length // 4, 0x0800_0000, size // 4)
    return bytes(image[:size]), layout


def _relocate(image: bytearray, after: int, shift: int) -> None:
    """Every 8th word that is an address past ``after`` moves by ``shift`` (the linker's
    work): what makes a delta of code larger than the edit."""
    for pos in range(28, len(image) - 4, 32):
        value = int.from_bytes(image[pos:pos + 4], "little")
        if 0x0800_0000 <= value - after < 0x0800_0000 + len(image):
            image[pos:pos + 4] = (value + shift).to_bytes(4, "little")


def application_bump(old: bytes, layout: dict[str, tuple[int, int]]) -> bytes:
    rng = random.Random("app bump")
    start, length = layout["app"]
    new = bytearray(old)
    for _ in range(6):  # six small edits
        at = start + rng.randrange(length - 64)
        new[at:at + 24] = rng.randbytes(24)
    insert_at = start + length // 3
    new[insert_at:insert_at] = rng.randbytes(300)
    _relocate(new, insert_at, 300)
    return bytes(new)


def dependency_bump(old: bytes, layout: dict[str, tuple[int, int]]) -> bytes:
    rng = random.Random("dep bump")
    start, length = layout["lib"]
    words = [rng.randbytes(4) for _ in range(3000)]
    other = _code(rng, words, (length + 4096) // 4, 0x0800_0000, len(old) // 4)
    new = bytearray(old[:start] + bytes(other) + old[start + length:])
    _relocate(new, start + length, len(other) - length)
    return bytes(new)


# ---------------------------------------------------------------------------- (a), (b)


def best(fn: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def delta_sizes(old: bytes, new: bytes, label: str) -> None:
    baseline = len(bsdiff4.diff(old, new))
    patch = packing.make_delta(old, new)
    print(f"{label}: bsdiff4 {baseline} B | SKD1 raw {len(patch)} B", end="")
    for codec_ in packing.Codec:
        size = len(packing.compress(patch, codec_))
        print(f" | +{codec_.name.lower()} {size} B ({size / baseline:.2f}x)", end="")
    chosen, best_patch = packing.compress_best(patch)
    print(f" | best: {chosen.name.lower()} {len(best_patch) / baseline:.2f}x "
          f"{'(met)' if len(best_patch) <= baseline else '(NOT met)'}  [{len(new)} B image]")


def codecs(image: bytes) -> None:
    sha = best(lambda: hashlib.sha256(image).digest())
    print(f"SHA-256 of the image (baseline): {len(image) / sha / MiB:.0f} MiB/s")
    for codec_ in packing.Codec:
        packed = packing.compress(image, codec_)
        chunks = [packed[i:i + 64 * 1024] for i in range(0, len(packed), 64 * 1024)]

        def decode(chunks: list[bytes] = chunks, c: packing.Codec = codec_) -> None:
            for _piece in packing.decompress(chunks, c, max_output=len(image)):
                pass

        seconds = best(decode)
        one_shot = best(lambda p=packed, c=codec_: _one_shot(p, c))
        print(f"{codec_.name.lower():5s} ratio {len(packed) / len(image):.3f} | decode "
              f"{len(image) / seconds / MiB:.0f} MiB/s = {seconds / sha:.2f}x SHA-256, "
              f"{seconds / one_shot:.2f}x the library's one-shot decode")


def _one_shot(packed: bytes, codec_: packing.Codec) -> bytes:
    """The codec library decoding the whole stream in one call (no bound, no pieces)."""
    if codec_ is packing.Codec.ZLIB:
        return zlib.decompress(packed)
    if codec_ is packing.Codec.BZIP2:
        return bz2.decompress(packed)
    if codec_ is packing.Codec.XZ:
        return lzma.decompress(packed)
    return packing.zstandard.ZstdDecompressor().decompress(packed)


# ---------------------------------------------------------------------------- (c)


def _envelope(folder: Path, key: crypto.PrivateKey, sequence: int, image: str,
              extra: dict[str, object]) -> bytes:
    description = parse_description(
        {"sequence-number": sequence, "vendor-domain": VENDOR_DOMAIN, "class-name": CLASS_NAME,
         "components": [{"id": ["0x00"], "image": image, "uri": f"{image}.payload", **extra}]},
        base=folder)
    payload = description.packed[0][1] if description.packed else (folder / image).read_bytes()
    (folder / f"{image}.payload").write_bytes(payload)
    return codec.encode_envelope(sign_envelope(codec.build_envelope(description.manifest),
                                               key.signer()))


def apply_time(old: bytes, new: bytes, runs: int = 4) -> None:
    work = Path(tempfile.mkdtemp(prefix="suitkit-bench-packing-"))
    try:
        key = crypto.generate_private_key("ES256")
        (work / "author.pub").write_bytes(crypto.public_key_to_pem(key.public_key()))
        (work / "v1.bin").write_bytes(old)
        (work / "v2.bin").write_bytes(new)
        v1 = _envelope(work, key, 1, "v1.bin", {})
        full = _envelope(work, key, 2, "v2.bin", {})
        (work / "v2d.bin").write_bytes(new)
        delta = _envelope(work, key, 2, "v2d.bin", {"delta-from": "v1.bin", "compress": "best"})
        vendor = uuid.uuid5(uuid.NAMESPACE_DNS, VENDOR_DOMAIN)
        results: dict[str, list[float]] = {"full": [], "delta": []}
        for run in range(runs):
            for name, envelope in (("full", full), ("delta", delta)):
                folder = work / f"dev-{name}-{run}"
                create_device(folder, vendor_id=vendor, class_id=uuid.uuid5(vendor, CLASS_NAME),
                              trust_anchors=[work / "author.pub"], shape="linux")
                device = open_device(folder)
                assert device.consumer(FileFetcher(work)).install(v1).installed
                device.bootloader.boot()
                device.bootloader.confirm()
                device = open_device(folder)
                consumer = device.consumer(FileFetcher(work))
                started = time.perf_counter()
                outcome = consumer.install(envelope)
                results[name].append(time.perf_counter() - started)
                assert outcome.installed, outcome.reason
        payload = {n: (work / f"{i}.payload").stat().st_size for n, i in
                   (("full", "v2.bin"), ("delta", "v2d.bin"))}
        f, d = min(results["full"]), min(results["delta"])
        print(f"install of v2 ({len(new)} B): full image {f * 1000:.1f} ms ({payload['full']} B "
              f"fetched) | SKD1 delta (best codec) {d * 1000:.1f} ms ({payload['delta']} B "
              f"fetched) | "
              f"delta/full {d / f:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------- (d)


def _child(source: str, patch: str, size: int) -> None:
    """Decode + apply from files, streaming; print the peaks."""
    with open(source, "rb") as src, open(patch, "rb") as pf:
        def read_at(offset: int, length: int) -> bytes:
            src.seek(offset)
            return src.read(length)

        def chunks() -> Iterator[bytes]:
            return iter(lambda: pf.read(64 * 1024), b"")

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        hasher = hashlib.sha256()
        stream = packing.decompress(chunks(), packing.Codec.ZSTD,
                                    max_output=packing.packed_bound(size))
        for piece in packing.apply_delta(stream, read_at, source_size=size, max_output=size):
            hasher.update(piece)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{peak} {after - before} {hasher.hexdigest()}")


def memory() -> None:
    work = Path(tempfile.mkdtemp(prefix="suitkit-bench-packing-mem-"))
    try:
        for mib in (1, 16, 64):
            size = mib * MiB
            # a precursor and a patch that rewrites 1 byte in 4 KiB and appends nothing: the
            # patch is as long as the image before compression (one record of diff bytes)
            block = hashlib.shake_256(b"precursor").digest(MiB)
            with (work / "source").open("wb") as f:
                for _ in range(mib):
                    f.write(block)
            compressor = packing.zstandard.ZstdCompressor(level=3).compressobj()
            diff = (b"\x01" + bytes(4095)) * 256
            with (work / "patch").open("wb") as f:
                head = (b"SKD1" + packing._uvarint(size) + packing._uvarint(size)
                        + packing._uvarint(size) + packing._uvarint(0) + packing._uvarint(0))
                f.write(compressor.compress(head))
                for _ in range(mib):
                    f.write(compressor.compress(diff))
                f.write(compressor.flush())
            done = subprocess.run([sys.executable, __file__, "--child", str(work / "source"),
                                   str(work / "patch"), str(size)], capture_output=True,
                                  text=True, check=True, timeout=300)
            peak, rss, _digest = done.stdout.split()
            print(f"{mib:3d} MiB: tracemalloc peak {int(peak) / 1024:.1f} KiB, ru_maxrss growth "
                  f"{int(rss)} KiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    print(f"Python {platform.python_version()}, {platform.machine()}")
    old, layout = firmware(MiB)
    app, dep = application_bump(old, layout), dependency_bump(old, layout)
    print("(a) delta size against bsdiff4 (target: no larger)")
    delta_sizes(old, app, "application bump")
    delta_sizes(old, dep, "dependency bump ")
    print("(b) compression per codec")
    codecs(old)
    print("(c) delta apply time against a full install")
    apply_time(old, app)
    print("(d) memory of decode + apply (zstd SKD1), one child per size")
    memory()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
