"""In-place deltas on a single-slot MCU against a full install (docs/delta.md §9, issue #16).

The same firmware-like image (``bench_packing.firmware``: 256 KiB, then its *application bump*:
six small edits and 300 bytes inserted, every address past the insertion relocated) on the same
flash geometry (4 KiB sectors, 8-byte writes, 1 KiB pages; a 72-sector slot), three ways:

- ``mcu`` full: the new image fetched whole into the secondary slot, swapped in at the boot;
- ``mcu`` delta: the ordinary SKD1 delta (zstd), its result written into the secondary slot,
  swapped in at the boot;
- ``mcu-inplace``: the in-place delta (zstd) staged in the 9-sector patch area, the slot
  rewritten in place at the boot (scratch, then the sector; a journal step after each).

Per way: the bytes fetched, the install's and the boot's wall time (each on a fresh device
running v1: best of the runs), the flash operations (erases, programs) of each, and the most
erases one sector took (the scratch sector's wear per update). Devices are folders driven as
``suitkit device install|boot`` drive them (``open_device``, ``FileFetcher``), so each time
includes opening and saving the folder.

Run: ``.venv/bin/python benchmarks/bench_inplace.py [--runs N]`` (about 20 s; budget 60 s).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench_packing import application_bump, firmware

from suitkit.author.describe import parse_description
from suitkit.core import codec, crypto, packing
from suitkit.core.sign import sign_envelope
from suitkit.device.config import create_device
from suitkit.device.fetch import FileFetcher
from suitkit.device.wiring import open_device

SECTORS = 72
VENDOR_DOMAIN, CLASS_NAME = "example.com", "thermostat"


def _envelope(folder: Path, key: crypto.PrivateKey, sequence: int, image: str,
              extra: dict[str, object], *, tag: str) -> tuple[bytes, int]:
    description = parse_description(
        {"sequence-number": sequence, "vendor-domain": VENDOR_DOMAIN, "class-name": CLASS_NAME,
         "components": [{"id": ["0x00"], "image": image, "uri": f"{image}.{tag}", **extra}]},
        base=folder)
    payload = description.packed[0][1] if description.packed else (folder / image).read_bytes()
    (folder / f"{image}.{tag}").write_bytes(payload)
    envelope = codec.encode_envelope(sign_envelope(codec.build_envelope(description.manifest),
                                                   key.signer()))
    return envelope, len(payload)


def _command(folder: Path, action: str, envelope: bytes = b"",
             fetcher: FileFetcher | None = None) -> tuple[float, int, int, int]:
    """One device command: (seconds, erases, programs, most erases of one sector)."""
    started = time.perf_counter()
    opened = open_device(folder)
    flash = next(iter(opened.flashes.values()))
    wear = list(flash.erase_counts)
    if action == "install":
        outcome = opened.consumer(fetcher).install(envelope)
        if not outcome.installed:
            raise SystemExit(f"install failed: {outcome.reason}")
    elif action == "boot":
        opened.bootloader.boot()
    else:
        opened.bootloader.confirm()
    opened.save()
    seconds = time.perf_counter() - started
    most = max(after - before for after, before in zip(flash.erase_counts, wear, strict=True))
    return seconds, flash.erases, flash.programs, most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    old, layout = firmware(256 * 1024)
    new = application_bump(old, layout)
    work = Path(tempfile.mkdtemp(prefix="suitkit-bench-inplace-"))
    print(f"# bench_inplace on {platform.python_implementation()} "
          f"{platform.python_version()}, {sys.platform}; image {len(old)} -> {len(new)} B, "
          f"slot {SECTORS} x 4 KiB")
    try:
        key = crypto.generate_private_key("ES256")
        anchor = work / "author.pub"
        anchor.write_bytes(crypto.public_key_to_pem(key.public_key()))
        (work / "v1.bin").write_bytes(old)
        (work / "v2.bin").write_bytes(new)
        fetcher = FileFetcher(work)
        v1, _ = _envelope(work, key, 1, "v1.bin", {}, tag="full")
        ways = {
            "mcu full image": ("mcu", _envelope(work, key, 2, "v2.bin", {}, tag="full")),
            "mcu delta (swap)": ("mcu", _envelope(
                work, key, 2, "v2.bin", {"delta-from": "v1.bin", "compress": "zstd"}, tag="delta")),
            "mcu-inplace in-place delta": ("mcu-inplace", _envelope(
                work, key, 2, "v2.bin", {"delta-from": "v1.bin", "compress": "zstd",
                                         "in-place": 4096}, tag="inplace")),
        }
        _patch, order, literal = packing.make_inplace_delta(old, new, 4096)
        print(f"in-place patch: {order.name.lower()} order, {literal} B literal "
              f"(the 300 B inserted and what no copy could reach)")
        vendor = uuid.uuid5(uuid.NAMESPACE_DNS, VENDOR_DOMAIN)
        golden: dict[str, Path] = {}
        for shape in ("mcu", "mcu-inplace"):
            folder = work / f"golden-{shape}"
            create_device(folder, vendor_id=vendor, class_id=uuid.uuid5(vendor, CLASS_NAME),
                          trust_anchors=[anchor], shape=shape, image_sectors=SECTORS)
            open_device(folder).save()
            _command(folder, "install", v1, fetcher)
            _command(folder, "boot")
            _command(folder, "confirm")
            golden[shape] = folder
        rows = []
        for label, (shape, (envelope, fetched)) in ways.items():
            best_install = best_boot = None
            for run in range(args.runs):
                folder = work / f"run-{run}"
                shutil.rmtree(folder, ignore_errors=True)
                shutil.copytree(golden[shape], folder)
                installed = _command(folder, "install", envelope, fetcher)
                booted = _command(folder, "boot")
                if best_install is None or installed[0] < best_install[0]:
                    best_install = installed
                if best_boot is None or booted[0] < best_boot[0]:
                    best_boot = booted
            assert best_install is not None and best_boot is not None
            rows.append((label, fetched, best_install, best_boot))
        full_time = rows[0][2][0] + rows[0][3][0]
        print(f"{'way':28s} {'fetched':>9s} | {'install s':>9s} {'erase':>5s} {'prog':>5s} | "
              f"{'boot s':>7s} {'erase':>5s} {'prog':>5s} | {'total':>6s} {'vs full':>7s} "
              f"{'wear':>4s}")
        for label, fetched, inst, bt in rows:
            total = inst[0] + bt[0]
            print(f"{label:28s} {fetched:9d} | {inst[0]:9.3f} {inst[1]:5d} {inst[2]:5d} | "
                  f"{bt[0]:7.3f} {bt[1]:5d} {bt[2]:5d} | {total:6.3f} {total / full_time:6.2f}x "
                  f"{max(inst[3], bt[3]):4d}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
