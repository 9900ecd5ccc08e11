"""Each of the six MTI profiles (draft-ietf-suit-mti-23) end to end, as a user runs it: keys from
``suitkit keygen``, ``suitkit create`` with an ``encryption:`` section, ``suitkit sign``, two
devices made with ``suitkit device init --decryption-key`` installing and booting the release.

An independent check reads the signed envelope with cbor2 and cryptography only: the manifest
digest, the Sig_structure / MAC_structure and its signature, the COSE_Encrypt, the content key
unwrapped by hand (AES-KW, or ECDH-ES with the COSE_KDF_Context built by hand) and the payload
decrypted by hand must give the image back, with the profile's algorithms exactly.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2
import pyhsslms
import pytest
from cryptography.hazmat.primitives import hashes, hmac, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from helpers import run_cli

PROFILES: dict[str, tuple[str, str, str]] = {
    # profile -> (keygen --alg of the signer, recipient kind, "fleet" or "device" keys)
    "suit-sha256-hmac-a128kw-a128ctr": ("HMAC-256", "A128KW", "fleet"),
    "suit-sha256-esp256-ecdh-a128ctr": ("ESP256", "ECDH-P256", "device"),
    "suit-sha256-ed25519-ecdh-a128ctr": ("Ed25519", "X25519", "device"),
    "suit-sha256-esp256-ecdh-a128gcm": ("ESP256", "ECDH-P256", "device"),
    "suit-sha256-ed25519-ecdh-chacha-poly": ("Ed25519", "X25519", "device"),
    "suit-sha256-hsslms-a256kw-a256ctr": ("HSS-LMS", "A256KW", "device"),
}
DESCRIPTORS = {
    "suit-sha256-hmac-a128kw-a128ctr": (-16, 5, -3, -65534),
    "suit-sha256-esp256-ecdh-a128ctr": (-16, -9, -29, -65534),
    "suit-sha256-ed25519-ecdh-a128ctr": (-16, -19, -29, -65534),
    "suit-sha256-esp256-ecdh-a128gcm": (-16, -9, -29, 1),
    "suit-sha256-ed25519-ecdh-chacha-poly": (-16, -19, -29, 24),
    "suit-sha256-hsslms-a256kw-a256ctr": (-16, -46, -5, -65532),
}
VENDOR_DOMAIN, CLASS_NAME = "example.com", "thermostat"


def cose_key_of(path: Path) -> dict[int, Any]:
    """A COSE_Key in PEM armor, read without suitkit."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN"))
    end = next(i for i, line in enumerate(lines) if line.startswith("-----END"))
    key: dict[int, Any] = cbor2.loads(base64.b64decode("".join(lines[start + 1:end])))
    return key


def check_signature(profile: str, signed: bytes, key_file: Path) -> bytes:
    """Verify the one authentication block by hand; return the manifest (bstr content)."""
    top = cbor2.loads(signed)
    assert top.tag == 107 and next(iter(top.value)) == 2  # the wrapper first (manifest §8.3)
    manifest_bstr = top.value[3]
    digest_bytes, block_bytes = cbor2.loads(top.value[2])
    assert cbor2.loads(digest_bytes) == [-16, hashlib.sha256(cbor2.dumps(manifest_bstr)).digest()]
    block = cbor2.loads(block_bytes)
    protected, _unprotected, payload, signature = block.value
    alg = DESCRIPTORS[profile][1]
    assert cbor2.loads(protected) == {1: alg} and payload is None
    if alg == 5:
        assert block.tag == 17
        mac = hmac.HMAC(cose_key_of(key_file)[-1], hashes.SHA256())
        mac.update(cbor2.dumps(["MAC0", protected, b"", digest_bytes]))
        mac.verify(signature)
        return bytes(manifest_bstr)
    assert block.tag == 18
    tbs = cbor2.dumps(["Signature1", protected, b"", digest_bytes])
    if alg == -46:
        public = cose_key_of(key_file)[-1]
        assert pyhsslms.HssPublicKey.deserialize(public).verify(tbs, signature)
        return bytes(manifest_bstr)
    text = key_file.read_bytes()
    private = serialization.load_pem_private_key(text[text.index(b"-----BEGIN"):], None)
    if alg == -19:
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        private.public_key().verify(signature, tbs)
    else:
        assert isinstance(private, ec.EllipticCurvePrivateKey) and len(signature) == 64
        der = utils.encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                         int.from_bytes(signature[32:], "big"))
        private.public_key().verify(der, tbs, ec.ECDSA(hashes.SHA256()))
    return bytes(manifest_bstr)


def encryption_info_of(manifest: bytes) -> bytes:
    """The encryption-info parameter (19) the shared sequence sets."""
    common = cbor2.loads(cbor2.loads(manifest)[3])
    shared = cbor2.loads(common[4])
    found = [arg[19] for code, arg in zip(shared[::2], shared[1::2], strict=True)
             if code == 20 and 19 in arg]
    assert len(found) == 1
    return bytes(found[0])


def decrypt_by_hand(profile: str, info: bytes, ciphertext: bytes, device_key: Path) -> bytes:
    _digest, _auth, distribution, content = DESCRIPTORS[profile]
    tagged = cbor2.loads(info)
    assert tagged.tag == 96
    protected, unprotected, detached, recipients = tagged.value
    assert detached is None and len(recipients) >= 1
    key = cose_key_of(device_key)
    cek = None
    for r_protected, r_unprotected, wrapped in recipients:
        if distribution == -29:
            assert cbor2.loads(r_protected) == {1: -29}
            ephemeral = r_unprotected[-1]
            if key[1] == 1:  # OKP X25519
                assert ephemeral[-1] == 4
                shared = x25519.X25519PrivateKey.from_private_bytes(key[-4]).exchange(
                    x25519.X25519PublicKey.from_public_bytes(ephemeral[-2]))
            else:
                assert ephemeral[-1] == 1
                peer = ec.EllipticCurvePublicNumbers(
                    int.from_bytes(ephemeral[-2], "big"), int.from_bytes(ephemeral[-3], "big"),
                    ec.SECP256R1()).public_key()
                private = ec.derive_private_key(int.from_bytes(key[-4], "big"), ec.SECP256R1())
                shared = private.exchange(ec.ECDH(), peer)
            context = cbor2.dumps([-3, [None, None, None], [None, None, None],
                                   [128, r_protected, b"SUIT Payload Encryption"]])
            kek = HKDF(hashes.SHA256(), 16, None, context).derive(shared)
        else:
            assert r_protected == b"" and r_unprotected[1] == distribution
            kek = key[-1]
        try:
            cek = keywrap.aes_key_unwrap(kek, wrapped)
            break
        except keywrap.InvalidUnwrap:
            continue
    assert cek is not None, "no recipient opens with this device's key"
    if content in (-65534, -65532):  # AES-CTR: nothing protected, alg and IV unprotected
        assert protected == b"" and unprotected[1] == content and len(unprotected[5]) == 16
        assert len(cek) == (16 if content == -65534 else 32)
        decryptor = Cipher(algorithms.AES(cek), modes.CTR(unprotected[5])).decryptor()
        return decryptor.update(ciphertext) + decryptor.finalize()
    assert cbor2.loads(protected) == {1: content} and len(unprotected[5]) == 12
    aad = cbor2.dumps(["Encrypt", protected, b""])
    aead = ChaCha20Poly1305(cek) if content == 24 else AESGCM(cek)
    return aead.decrypt(unprotected[5], ciphertext, aad)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_mti_profile_signs_encrypts_and_installs(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path, profile: str) -> None:
    signer_alg, recipient_kind, scope = PROFILES[profile]

    def run(*args: str | Path) -> str:
        code, out, err = run_cli(capsys, *args)
        assert code == 0, f"suitkit {' '.join(map(str, args))}: {err}"
        return out

    author = tmp_path / "author.key"
    run("keygen", "--alg", signer_alg, "--out", author)
    anchor = author
    if signer_alg != "HMAC-256":
        anchor = tmp_path / "author.pub"
        run("pubkey", author, "--out", anchor)
    device_keys = []
    for name in (["fleet"] if scope == "fleet" else ["dev-1", "dev-2"]):
        key = tmp_path / f"{name}.key"
        run("keygen", "--alg", recipient_kind, "--kid", name, "--out", key)
        device_keys.append(key)
    recipients = []
    for key in device_keys:
        if recipient_kind.endswith("KW"):
            recipients.append(key)  # a KEK is the same file on both sides
        else:
            public = key.with_suffix(".pub")
            run("pubkey", key, "--out", public)
            recipients.append(public)
    image = hashlib.sha256(profile.encode()).digest() * 300 + b"tail"  # 9,604 bytes
    (tmp_path / "app.bin").write_bytes(image)
    (tmp_path / "app.yaml").write_text(
        f"sequence-number: 1\nvendor-domain: {VENDOR_DOMAIN}\nclass-name: {CLASS_NAME}\n"
        "components:\n  - id: ['0x00']\n    image: app.bin\n"
        f"encryption:\n  profile: {profile}\n  recipients:\n"
        + "".join(f"    - key: {r.name}\n" for r in recipients))
    unsigned, signed = tmp_path / "app.suit", tmp_path / "app.signed.suit"
    out = run("create", tmp_path / "app.yaml", "--out", unsigned)
    assert "encrypted component(s) 0" in out
    run("sign", unsigned, "--key", author, "--out", signed)
    run("verify", signed, "--key", anchor)

    data = signed.read_bytes()
    manifest = check_signature(profile, data, author)
    info = encryption_info_of(manifest)
    ciphertext = cbor2.loads(data).value["#app.bin"]
    assert image not in data and len(ciphertext) == len(image) + (
        16 if DESCRIPTORS[profile][3] in (1, 24) else 0)
    for key in device_keys:
        assert decrypt_by_hand(profile, info, ciphertext, key) == image

    devices = [tmp_path / "dev-1", tmp_path / "dev-2"]
    for device, key in zip(devices, device_keys * 2, strict=False):
        run("device", "init", device, "--vendor-domain", VENDOR_DOMAIN, "--class-name",
            CLASS_NAME, "--trust-anchor", anchor, "--decryption-key", key)
        out = run("device", "install", device, signed)
        assert "installed app (sequence number 1)" in out
        out = run("device", "boot", device)
        assert "booted app #1: on trial" in out
        running = json.loads(run("device", "status", device, "--json"))["components"][0][
            "running"]
        assert running["digest"] == hashlib.sha256(image).hexdigest()


def test_a_device_without_the_key_refuses_the_encrypted_release(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def run(*args: str | Path) -> tuple[int, str, str]:
        return run_cli(capsys, *args)

    assert run("keygen", "--out", tmp_path / "a.key")[0] == 0
    assert run("pubkey", tmp_path / "a.key", "--out", tmp_path / "a.pub")[0] == 0
    for name in ("dev", "other"):
        assert run("keygen", "--alg", "ECDH-P256", "--out", tmp_path / f"{name}.key")[0] == 0
    assert run("pubkey", tmp_path / "dev.key", "--out", tmp_path / "dev.pub")[0] == 0
    (tmp_path / "app.bin").write_bytes(b"\x42" * 5000)
    (tmp_path / "app.yaml").write_text(
        f"sequence-number: 1\nvendor-domain: {VENDOR_DOMAIN}\nclass-name: {CLASS_NAME}\n"
        "components:\n  - id: ['0x00']\n    image: app.bin\n"
        "encryption:\n  content: A128GCM\n  recipients: [dev.pub]\n")
    assert run("create", tmp_path / "app.yaml", "--out", tmp_path / "u.suit")[0] == 0
    assert run("sign", tmp_path / "u.suit", "--key", tmp_path / "a.key", "--out",
               tmp_path / "s.suit")[0] == 0
    device = tmp_path / "device"
    assert run("device", "init", device, "--vendor-domain", VENDOR_DOMAIN, "--class-name",
               CLASS_NAME, "--trust-anchor", tmp_path / "a.pub", "--decryption-key",
               tmp_path / "other.key")[0] == 0
    code, out, err = run("device", "install", device, tmp_path / "s.suit")
    assert code == 1
    assert "cannot open encryption-info" in out + err


def test_the_inventory_publishes_the_devices_ecdh_public_key(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """How an author obtains a device's public key: the agent's inventory carries it in
    ``recipient_keys`` (base64 COSE_Keys); a KEK never leaves the device."""
    from suitkit.device.agent import inventory_of
    from suitkit.device.wiring import open_device

    for args in (("keygen", "--out", tmp_path / "a.key"),
                 ("pubkey", tmp_path / "a.key", "--out", tmp_path / "a.pub"),
                 ("keygen", "--alg", "X25519", "--kid", "dev-9", "--out", tmp_path / "x.key"),
                 ("keygen", "--alg", "A128KW", "--out", tmp_path / "fleet.kek"),
                 ("device", "init", tmp_path / "dev", "--vendor-domain", VENDOR_DOMAIN,
                  "--class-name", CLASS_NAME, "--trust-anchor", tmp_path / "a.pub",
                  "--decryption-key", tmp_path / "x.key", "--decryption-key",
                  tmp_path / "fleet.kek")):
        assert run_cli(capsys, *args)[0] == 0
    published = inventory_of(open_device(tmp_path / "dev"))["recipient_keys"]
    assert len(published) == 1 and len(published[0]) <= 1024  # the tracker's limit
    cose_key = cbor2.loads(base64.b64decode(published[0]))
    private = cose_key_of(tmp_path / "x.key")
    assert cose_key == {1: 1, -1: 4, -2: private[-2], 2: b"dev-9", 3: -29}
    # the author saves it and encrypts for it
    (tmp_path / "dev.cbor").write_bytes(base64.b64decode(published[0]))
    (tmp_path / "app.bin").write_bytes(b"\x01" * 100)
    (tmp_path / "app.yaml").write_text(
        f"sequence-number: 1\nvendor-domain: {VENDOR_DOMAIN}\nclass-name: {CLASS_NAME}\n"
        "components:\n  - id: ['0x00']\n    image: app.bin\n"
        "encryption:\n  profile: suit-sha256-ed25519-ecdh-a128ctr\n  recipients: [dev.cbor]\n")
    assert run_cli(capsys, "create", tmp_path / "app.yaml", "--out", tmp_path / "u.suit")[0] == 0


def test_a_device_with_keys_for_several_profiles_opens_each(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A device implementing the ESP256 and the Ed25519 profiles holds a P-256 and an X25519 key;
    without kids, a recipient's algorithm (-29 for both) does not say which one opens it."""
    def run(*args: str | Path) -> str:
        code, out, err = run_cli(capsys, *args)
        assert code == 0, f"suitkit {' '.join(map(str, args))}: {err}"
        return out

    run("keygen", "--out", tmp_path / "a.key")
    run("pubkey", tmp_path / "a.key", "--out", tmp_path / "a.pub")
    for kind in ("ECDH-P256", "X25519"):
        run("keygen", "--alg", kind, "--out", tmp_path / f"{kind}.key")
        run("pubkey", tmp_path / f"{kind}.key", "--out", tmp_path / f"{kind}.pub")
    device = tmp_path / "dev"
    run("device", "init", device, "--vendor-domain", VENDOR_DOMAIN, "--class-name", CLASS_NAME,
        "--trust-anchor", tmp_path / "a.pub", "--decryption-key", tmp_path / "ECDH-P256.key",
        "--decryption-key", tmp_path / "X25519.key")
    for sequence, (kind, content) in enumerate(
            [("X25519", "ChaCha20/Poly1305"), ("ECDH-P256", "A128GCM")], start=1):
        image = bytes([sequence]) * 4000
        (tmp_path / "app.bin").write_bytes(image)
        (tmp_path / "app.yaml").write_text(
            f"sequence-number: {sequence}\nvendor-domain: {VENDOR_DOMAIN}\n"
            f"class-name: {CLASS_NAME}\ncomponents:\n  - id: ['0x00']\n    image: app.bin\n"
            f"encryption:\n  content: {content}\n  recipients: [{kind}.pub]\n")
        run("create", tmp_path / "app.yaml", "--out", tmp_path / "u.suit")
        run("sign", tmp_path / "u.suit", "--key", tmp_path / "a.key", "--out", tmp_path / "s.suit")
        assert f"(sequence number {sequence})" in run("device", "install", device,
                                                      tmp_path / "s.suit")
        run("device", "boot", device)
        run("device", "confirm", device)
        running = json.loads(run("device", "status", device, "--json"))["components"][0][
            "running"]
        assert running["digest"] == hashlib.sha256(image).hexdigest()


def test_a_published_key_with_a_long_kid_stays_within_the_trackers_limit(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from suitkit.device.agent import inventory_of
    from suitkit.device.wiring import open_device

    kid = "k" * 256  # the longest keygen makes (over a hardware fact's 256 characters once)
    for args in (("keygen", "--out", tmp_path / "a.key"),
                 ("pubkey", tmp_path / "a.key", "--out", tmp_path / "a.pub"),
                 ("keygen", "--alg", "ECDH-P256", "--kid", kid, "--out", tmp_path / "p.key"),
                 ("device", "init", tmp_path / "dev", "--vendor-domain", VENDOR_DOMAIN,
                  "--class-name", CLASS_NAME, "--trust-anchor", tmp_path / "a.pub",
                  "--decryption-key", tmp_path / "p.key")):
        assert run_cli(capsys, *args)[0] == 0
    (fact,) = inventory_of(open_device(tmp_path / "dev"))["recipient_keys"]
    assert len(fact) <= 1024
    cose_key = cbor2.loads(base64.b64decode(fact))
    # the inventory's recipient_keys hold it whole, kid included
    assert cose_key[2] == kid.encode() and cose_key[-2] == cose_key_of(tmp_path / "p.key")[-2]
