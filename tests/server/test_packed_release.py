"""Compressed and delta releases end to end through a real ``suitkit serve`` on loopback.

The author makes them with ``suitkit create --compress`` and ``delta-from:``; the server
decodes every upload and checks the result against the manifest's image-digest and image-size
(a corrupt or foreign payload is refused, a delta only against a precursor it stores), stores
and serves the packed bytes; a device made with ``suitkit device init`` fetches them over HTTP,
decodes while it writes, installs and boots the image the manifest names.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

import httpx
import pytest

from serve_kit import SUITKIT, serving

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install suitkit)")

VENDOR_DOMAIN, CLASS_NAME = "example.com", "thermostat"


def run(*args: str | Path) -> str:
    done = subprocess.run([*SUITKIT, *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"suitkit {' '.join(map(str, args))}: {done.stderr}"
    return done.stdout


def run_failing(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*SUITKIT, *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0, f"suitkit {' '.join(map(str, args))} succeeded"
    return done


def firmware(seed: str, size: int) -> bytes:
    rng = random.Random(seed)
    words = [rng.randbytes(4) for _ in range(2048)]
    return b"".join(rng.choice(words) for _ in range(size // 4))


def describe(folder: Path, name: str, sequence: int, image: str, url: str,
             *, extra: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"sequence-number: {sequence}\nvendor-domain: {VENDOR_DOMAIN}\n"
                    f"class-name: {CLASS_NAME}\ncomponents:\n  - id: ['0x00']\n"
                    f"    image: {image}\n    uri: {url}/firmware/{{sha256}}\n{extra}")
    return path


def signed(folder: Path, name: str, *create_options: str) -> tuple[Path, str]:
    out = run("create", folder / f"{name}.yaml", "--out", folder / f"{name}.suit",
              *create_options)
    run("sign", folder / f"{name}.suit", "--key", folder / "author.key", "--out",
        folder / f"{name}.signed.suit")
    return folder / f"{name}.signed.suit", out


def test_compressed_and_delta_releases_through_the_firmware_server(tmp_path: Path) -> None:
    run("keygen", "--out", tmp_path / "author.key")
    run("pubkey", tmp_path / "author.key", "--out", tmp_path / "author.pub")
    token = tmp_path / "upload.token"
    token.write_text("packed-release-token\n")
    v1 = firmware("v1", 150_000)
    v2 = v1[:60_000] + b"new code" + v1[60_000:100_000] + firmware("lib", 2000) + v1[102_000:]
    (tmp_path / "v1.bin").write_bytes(v1)
    (tmp_path / "v2.bin").write_bytes(v2)
    device = tmp_path / "device"
    run("device", "init", device, "--vendor-domain", VENDOR_DOMAIN, "--class-name", CLASS_NAME,
        "--trust-anchor", tmp_path / "author.pub")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(tmp_path / "author.pub"),
            "--upload-token-file", str(token)]
    with serving(argv, timeout=30) as server:
        upload = ("--server", server.url, "--token-file", token)

        # v1, compressed with zstd by suitkit create --compress
        describe(tmp_path, "v1", 1, "v1.bin", server.url)
        envelope, out = signed(tmp_path, "v1", "--compress", "zstd")
        packed = tmp_path / "v1.suit.image-0.zst"
        assert f"upload it as 0={packed}" in out
        payload = packed.read_bytes()
        assert len(payload) < len(v1) // 2
        # the image itself is not what devices fetch, so it is refused; so is a corrupt one
        refused = run_failing("upload", envelope, f"0={tmp_path / 'v1.bin'}", *upload)
        assert "not a packed form of component 0" in refused.stderr, refused.stderr
        (tmp_path / "bad.zst").write_bytes(payload[:100] + bytes([payload[100] ^ 1])
                                           + payload[101:])
        refused = run_failing("upload", envelope, f"0={tmp_path / 'bad.zst'}", *upload)
        assert "not a packed form of component 0" in refused.stderr, refused.stderr
        assert "(sequence number 1) stored" in run("upload", envelope, f"0={packed}", *upload)
        served = httpx.get(f"{server.url}/firmware/{hashlib.sha256(payload).hexdigest()}",
                           timeout=30)
        assert served.status_code == 200 and served.content == payload

        # the device installs v1 from the compressed release
        assert "installed app (sequence number 1)" in run("device", "install", device, envelope)
        run("device", "boot", device)
        run("device", "confirm", device)

        # v2 as an xz-compressed delta from v1: checked by applying it to the stored v1
        describe(tmp_path, "v2", 2, "v2.bin", server.url,
                 extra="    delta-from: v1.bin\n    compress: xz\n")
        delta_envelope, out = signed(tmp_path, "v2")
        patch = tmp_path / "v2.suit.image-0.skd1.xz"
        assert f"upload it as 0={patch}" in out
        assert patch.stat().st_size < len(v2) // 20
        refused = run_failing("upload", delta_envelope, f"0={patch}", *upload)
        assert "does not store the precursor image" in refused.stderr, refused.stderr
        assert hashlib.sha256(v1).hexdigest() in refused.stderr
        # v1 as a plain release too: now the server has the precursor
        describe(tmp_path, "v1plain", 1, "v1.bin", server.url)
        plain, _ = signed(tmp_path, "v1plain")
        run("upload", plain, f"0={tmp_path / 'v1.bin'}", *upload)
        assert "(sequence number 2) stored" in run("upload", delta_envelope, f"0={patch}",
                                                   *upload)
        assert "installed app (sequence number 2)" in run("device", "install", device,
                                                           delta_envelope)
        assert "booted app #2: on trial" in run("device", "boot", device)
        status = json.loads(run("device", "status", device, "--json"))
        assert status["components"][0]["running"]["digest"] == hashlib.sha256(v2).hexdigest()



def test_an_in_place_release_through_the_firmware_server(tmp_path: Path) -> None:
    """docs/delta.md §9: the server checks an in-place delta as devices will (the patch as
    signed, then decoded with its own codec and applied in its order to the stored precursor),
    and a single-slot device installs it from there."""
    run("keygen", "--out", tmp_path / "author.key")
    run("pubkey", tmp_path / "author.key", "--out", tmp_path / "author.pub")
    token = tmp_path / "upload.token"
    token.write_text("packed-release-token\n")
    v1 = firmware("v1", 60_000)
    v2 = v1[:20_000] + b"new code" + firmware("lib", 700) + v1[20_000:]
    (tmp_path / "v1.bin").write_bytes(v1)
    (tmp_path / "v2.bin").write_bytes(v2)
    device = tmp_path / "device"
    run("device", "init", device, "--vendor-domain", VENDOR_DOMAIN, "--class-name", CLASS_NAME,
        "--trust-anchor", tmp_path / "author.pub", "--shape", "mcu-inplace")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(tmp_path / "author.pub"),
            "--upload-token-file", str(token)]
    with serving(argv, timeout=30) as server:
        upload = ("--server", server.url, "--token-file", token)
        describe(tmp_path, "v1", 1, "v1.bin", server.url)
        plain, _ = signed(tmp_path, "v1")
        run("upload", plain, f"0={tmp_path / 'v1.bin'}", *upload)
        assert "installed app (sequence number 1)" in run("device", "install", device, plain)
        run("device", "boot", device)
        run("device", "confirm", device)

        describe(tmp_path, "v2", 2, "v2.bin", server.url,
                 extra="    delta-from: v1.bin\n    in-place: 4096\n    compress: zstd\n")
        envelope, out = signed(tmp_path, "v2")
        patch = tmp_path / "v2.suit.image-0.skd1.zst"
        assert f"upload it as 0={patch}" in out
        data = patch.read_bytes()
        assert len(data) < len(v2) // 20
        (tmp_path / "bad.zst").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        refused = run_failing("upload", envelope, f"0={tmp_path / 'bad.zst'}", *upload)
        assert "SKD1 in-place delta" in refused.stderr, refused.stderr
        assert "(sequence number 2) stored" in run("upload", envelope, f"0={patch}", *upload)
        assert "installed app (sequence number 2)" in run("device", "install", device, envelope)
        assert "booted app #2: on trial" in run("device", "boot", device)
        status = json.loads(run("device", "status", device, "--json"))
        assert status["components"][0]["running"]["digest"] == hashlib.sha256(v2).hexdigest()
        assert status["shape"] == "mcu-inplace"
