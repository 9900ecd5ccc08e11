"""An encrypted release end to end through a real ``suitkit serve`` on loopback: the author
encrypts for a device's ECDH-ES key and for a fleet KEK, uploads the signed envelope and the
detached ciphertext; the server stores the ciphertext (checked against the size the manifest's
image-size and content algorithm give, the plaintext refused), serves it, and a device made with
``suitkit device init`` fetches it over HTTP, decrypts it while it writes, installs and boots it.
"""

from __future__ import annotations

import hashlib
import json
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
    return subprocess.run([*SUITKIT, *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize(("profile", "recipient"), [
    ("suit-sha256-esp256-ecdh-a128gcm", "ECDH-P256"),
    ("suit-sha256-ed25519-ecdh-a128ctr", "X25519"),
])
def test_encrypted_release_through_the_firmware_server(tmp_path: Path, profile: str,
                                                       recipient: str) -> None:
    signer = "Ed25519" if "ed25519" in profile else "ESP256"
    run("keygen", "--alg", signer, "--out", tmp_path / "author.key")
    run("pubkey", tmp_path / "author.key", "--out", tmp_path / "author.pub")
    run("keygen", "--alg", recipient, "--kid", "dev-1", "--out", tmp_path / "dev.key")
    run("pubkey", tmp_path / "dev.key", "--out", tmp_path / "dev.pub")
    token = tmp_path / "upload.token"
    token.write_text("encrypted-release-token\n")
    image = hashlib.sha256(b"encrypted release").digest() * 4096  # 128 KiB
    (tmp_path / "app.bin").write_bytes(image)
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(tmp_path / "author.pub"),
            "--upload-token-file", str(token)]
    with serving(argv, timeout=30) as server:
        (tmp_path / "app.yaml").write_text(
            f"sequence-number: 1\nvendor-domain: {VENDOR_DOMAIN}\nclass-name: {CLASS_NAME}\n"
            "components:\n  - id: ['0x00']\n    image: app.bin\n"
            f"    uri: {server.url}/firmware/{{sha256}}\n"
            f"encryption:\n  profile: {profile}\n  recipients:\n    - key: dev.pub\n")
        out = run("create", tmp_path / "app.yaml", "--out", tmp_path / "app.suit")
        ciphertext_file = tmp_path / "app.suit.image-0.enc"
        assert f"upload it as 0={ciphertext_file}" in out
        ciphertext = ciphertext_file.read_bytes()
        assert ciphertext != image
        run("sign", tmp_path / "app.suit", "--key", tmp_path / "author.key", "--out",
            tmp_path / "app.signed.suit")

        # The plaintext is refused, whatever the cipher (AES-CTR keeps the size).
        refused = run_failing("upload", tmp_path / "app.signed.suit",
                              f"0={tmp_path / 'app.bin'}", "--server", server.url,
                              "--token-file", token)
        assert refused.returncode == 1
        assert ("plaintext image of component 0" in refused.stderr
                or "encrypted image size mismatch" in refused.stderr), refused.stderr
        # A ciphertext of the wrong size is refused too.
        (tmp_path / "short.enc").write_bytes(ciphertext[:-1])
        refused = run_failing("upload", tmp_path / "app.signed.suit",
                              f"0={tmp_path / 'short.enc'}", "--server", server.url,
                              "--token-file", token)
        assert refused.returncode == 1 and "encrypted image size mismatch" in refused.stderr

        out = run("upload", tmp_path / "app.signed.suit", f"0={ciphertext_file}", "--server",
                  server.url, "--token-file", token)
        assert "(sequence number 1) stored" in out
        served = httpx.get(f"{server.url}/firmware/{hashlib.sha256(ciphertext).hexdigest()}",
                           timeout=30)
        assert served.status_code == 200 and served.content == ciphertext  # never the image

        device = tmp_path / "device"
        run("device", "init", device, "--vendor-domain", VENDOR_DOMAIN, "--class-name",
            CLASS_NAME, "--trust-anchor", tmp_path / "author.pub", "--decryption-key",
            tmp_path / "dev.key")
        # The envelope as the server serves it, fetched like a device's agent would.
        (release,) = httpx.get(f"{server.url}/api/v1/releases", timeout=30).json()["releases"]
        envelope = httpx.get(server.url + release["envelope"]["url"], timeout=30).content
        assert len(envelope) < len(image) // 8  # detached: the device must fetch the image
        (tmp_path / "fetched.suit").write_bytes(envelope)
        out = run("device", "install", device, tmp_path / "fetched.suit")
        assert "installed app (sequence number 1)" in out
        assert "booted app #1: on trial" in run("device", "boot", device)
        status = json.loads(run("device", "status", device, "--json"))
        assert status["components"][0]["running"]["digest"] == hashlib.sha256(image).hexdigest()

        # An integrated encrypted payload: the server matches it by its ciphertext's size.
        (tmp_path / "v2.yaml").write_text(
            (tmp_path / "app.yaml").read_text().replace("sequence-number: 1",
                                                         "sequence-number: 2")
            .replace(f"    uri: {server.url}/firmware/{{sha256}}\n", ""))
        run("create", tmp_path / "v2.yaml", "--out", tmp_path / "v2.suit")
        run("sign", tmp_path / "v2.suit", "--key", tmp_path / "author.key", "--out",
            tmp_path / "v2.signed.suit")
        assert "(sequence number 2) stored" in run(
            "upload", tmp_path / "v2.signed.suit", "--server", server.url, "--token-file", token)
        run("device", "confirm", device)
        assert "installed app (sequence number 2)" in run("device", "install", device,
                                                           tmp_path / "v2.signed.suit")
