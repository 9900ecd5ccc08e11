"""An encrypted release end to end through a real ``suitkit serve`` on loopback: the author
encrypts for a device's ECDH-ES key and for a fleet KEK, uploads the signed envelope and the
detached ciphertext; the server stores the ciphertext (checked against the size the manifest's
image-size and content algorithm give, the plaintext refused), serves it, and a device made with
``suitkit device init`` fetches it over HTTP, decrypts it while it writes, installs and boots it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from serve_kit import SUITKIT, serving
from suitkit.author.describe import parse_description
from suitkit.core import codec, crypto
from suitkit.core.sign import sign_envelope
from suitkit.device.agent import run_once
from suitkit.device.config import create_device
from suitkit.device.fetch import HttpFetcher
from suitkit.device.wiring import open_device

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


def test_the_author_encrypts_for_the_key_a_device_published_and_the_agent_installs_it(
        tmp_path: Path) -> None:
    """The whole loop on one real server (firmware server + status tracker): a device's agent
    publishes its X25519 public key in its inventory, the author reads it from the tracker,
    encrypts a release for it (suit-sha256-ed25519-ecdh-chacha-poly), uploads it, deploys it,
    and the agent fetches, decrypts, installs, boots and confirms it."""
    admin, upload = "admin-token-encrypted", "upload-token-encrypted"
    author = crypto.generate_private_key("Ed25519")
    (tmp_path / "author.pub").write_bytes(crypto.public_key_to_pem(author.public_key()))
    device_key = tmp_path / "device.key"
    device_key.write_bytes(crypto.recipient_to_pem(crypto.generate_recipient_key(
        "X25519", key_id=b"thermostat-7")))
    folder = tmp_path / "device"
    vendor = uuid.uuid5(uuid.NAMESPACE_DNS, VENDOR_DOMAIN)
    create_device(folder, vendor_id=vendor, class_id=uuid.uuid5(vendor, CLASS_NAME),
                  trust_anchors=[tmp_path / "author.pub"], decryption_keys=[device_key])
    open_device(folder).save()
    (tmp_path / "admin.token").write_text(admin + "\n")
    (tmp_path / "upload.token").write_text(upload + "\n")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(tmp_path / "author.pub"),
            "--admin-token-file", str(tmp_path / "admin.token"), "--upload-token-file",
            str(tmp_path / "upload.token")]
    headers = {"Authorization": f"Bearer {admin}"}
    with serving(argv, timeout=30) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        url = server.url
        registered = client.post("/api/v1/devices", json={"name": "t7"}, headers=headers)
        assert registered.status_code == 201, registered.text
        device_id, token = registered.json()["id"], registered.json()["token"]
        first = run_once(folder, url, token, fetcher=HttpFetcher())
        assert first.outcome == "up-to-date", first.steps  # and its inventory is sent

        # the author's way to the key: suitkit devices recipient-key (docs/device.md)
        fetched = subprocess.run(
            [*SUITKIT, "devices", "recipient-key", device_id, "--server", url, "--token-file",
             str(tmp_path / "admin.token"), "--out", str(tmp_path / "t7.cbor")],
            capture_output=True, text=True, timeout=60, check=False)
        assert fetched.returncode == 0, fetched.stderr
        shown = client.get(f"/api/v1/devices/{device_id}", headers=headers).json()
        assert "suit-recipient-key" not in shown["hardware"]  # an inventory field now
        assert crypto.load_recipient_public((tmp_path / "t7.cbor").read_bytes()).to_cose_key() \
            == crypto.load_recipient_public(base64.b64decode(shown["recipient_keys"][0])
                                            ).to_cose_key()
        image = hashlib.sha256(b"agent").digest() * 2000
        (tmp_path / "app.bin").write_bytes(image)
        description = {
            "sequence-number": 1, "vendor-domain": VENDOR_DOMAIN, "class-name": CLASS_NAME,
            "components": [{"id": ["0x00"], "image": "app.bin",
                            "uri": f"{url}/firmware/{{sha256}}"}],
            "encryption": {"profile": "suit-sha256-ed25519-ecdh-chacha-poly",
                           "recipients": [{"key": "t7.cbor"}]}}
        desc = parse_description(description, base=tmp_path)
        envelope = codec.encode_envelope(sign_envelope(
            codec.build_envelope(desc.manifest, sever_members=desc.sever,
                                 integrated=desc.integrated), author.signer()))
        ciphertext = desc.detached[0]
        stored = client.post("/api/v1/releases", headers={"Authorization": f"Bearer {upload}"},
                             files=[("envelope", ("e.suit", envelope, "application/octet-stream")),
                                    ("image-0", ("c.enc", ciphertext, "application/octet-stream"))])
        assert stored.status_code == 201, stored.text
        release = stored.json()
        deployed = client.post("/api/v1/deployments", headers=headers, json={
            "release": release["id"], "envelope_url": url + release["envelope"]["url"],
            "devices": [device_id]})
        assert deployed.status_code == 201, deployed.text

        done = run_once(folder, url, token, fetcher=HttpFetcher())
        assert done.outcome == "succeeded", done.steps
        shown = client.get(f"/api/v1/devices/{device_id}", headers=headers).json()
        assert shown["components"][0]["digest"] == hashlib.sha256(image).hexdigest()


def test_a_stored_ciphertext_is_never_replaced_by_another_upload_of_the_envelope(
        tmp_path: Path) -> None:
    """A ciphertext is only size-checked, and a signed envelope is public (/envelopes/): anyone
    with an upload token re-uploaded it with bytes of the same size, and the release record
    then pointed at those bytes (the new upload's image won the merge). Now: 409."""
    run("keygen", "--alg", "ESP256", "--out", tmp_path / "author.key")
    run("pubkey", tmp_path / "author.key", "--out", tmp_path / "author.pub")
    run("keygen", "--alg", "ECDH-P256", "--out", tmp_path / "dev.key")
    run("pubkey", tmp_path / "dev.key", "--out", tmp_path / "dev.pub")
    token = tmp_path / "upload.token"
    token.write_text("encrypted-release-token\n")
    (tmp_path / "app.bin").write_bytes(hashlib.sha256(b"kept").digest() * 512)
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(tmp_path / "author.pub"),
            "--upload-token-file", str(token)]
    with serving(argv, timeout=30) as server:
        (tmp_path / "app.yaml").write_text(
            f"sequence-number: 1\nvendor-domain: {VENDOR_DOMAIN}\nclass-name: {CLASS_NAME}\n"
            "components:\n  - id: ['0x00']\n    image: app.bin\n"
            f"    uri: {server.url}/firmware/{{sha256}}\n"
            "encryption:\n  profile: suit-sha256-esp256-ecdh-a128gcm\n"
            "  recipients:\n    - key: dev.pub\n")
        run("create", tmp_path / "app.yaml", "--out", tmp_path / "app.suit")
        run("sign", tmp_path / "app.suit", "--key", tmp_path / "author.key", "--out",
            tmp_path / "app.signed.suit")
        good = tmp_path / "app.suit.image-0.enc"
        run("upload", tmp_path / "app.signed.suit", f"0={good}", "--server", server.url,
            "--token-file", token)
        forged = tmp_path / "forged.enc"
        forged.write_bytes(bytes(len(good.read_bytes())))
        refused = run_failing("upload", tmp_path / "app.signed.suit", f"0={forged}",
                              "--server", server.url, "--token-file", token)
        assert refused.returncode == 1, refused.stdout
        assert "component 0 already has image" in refused.stderr, refused.stderr
        forged_url = f"{server.url}/firmware/{hashlib.sha256(forged.read_bytes()).hexdigest()}"
        assert httpx.get(forged_url, timeout=30).status_code == 404  # not kept either
        (release,) = httpx.get(f"{server.url}/api/v1/releases", timeout=30).json()["releases"]
        wanted = f"/firmware/{hashlib.sha256(good.read_bytes()).hexdigest()}"
        assert release["components"][0]["url"] == wanted
        # The same ciphertext again is still welcome (an idempotent retry).
        run("upload", tmp_path / "app.signed.suit", f"0={good}", "--server", server.url,
            "--token-file", token)
