"""``suitkit encrypt``, ``keygen``/``pubkey`` for encryption keys and the description's
``encryption:`` section: what they write, and one-line errors for what is wrong."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cbor2
import pytest

from suitkit.author import keys as keyfiles
from suitkit.core import codec, cose, crypto
from suitkit.errors import KeyMaterialError

from helpers import run_cli

VENDOR_DOMAIN, CLASS_NAME = "example.com", "thermostat"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    for args in (("keygen", "--out", tmp_path / "author.key"),
                 ("pubkey", tmp_path / "author.key", "--out", tmp_path / "author.pub"),
                 ("keygen", "--alg", "ECDH-P256", "--kid", "dev-1", "--out",
                  tmp_path / "dev1.key"),
                 ("pubkey", tmp_path / "dev1.key", "--out", tmp_path / "dev1.pub"),
                 ("keygen", "--alg", "A128KW", "--kid", "fleet", "--out",
                  tmp_path / "fleet.kek")):
        code, _, err = run_cli(capsys, *args)
        assert code == 0, err
    (tmp_path / "app.bin").write_bytes(b"\x17" * 3000 + b"end")
    (tmp_path / "data.bin").write_bytes(b"\x99" * 700)
    return tmp_path


def test_encrypt_an_existing_envelope_for_a_device_and_a_fleet(
        capsys: pytest.CaptureFixture[str], folder: Path) -> None:
    image = (folder / "app.bin").read_bytes()
    plain_sha = hashlib.sha256(image).hexdigest()
    (folder / "app.yaml").write_text(
        f"sequence-number: 4\nvendor-domain: {VENDOR_DOMAIN}\nclass-name: {CLASS_NAME}\n"
        "components:\n  - id: ['0x00']\n    image: app.bin\n"
        "    uri: https://fw.example.com/firmware/{sha256}\n"
        "  - id: ['0x01']\n    image: data.bin\n"
        "text:\n  manifest-description: two images\nsever: [text, install]\n")
    assert run_cli(capsys, "create", folder / "app.yaml", "--out", folder / "plain.suit")[0] == 0
    plain = codec.decode_envelope((folder / "plain.suit").read_bytes())
    assert plain_sha in (folder / "plain.suit").read_bytes().decode("latin-1")  # uri expanded
    code, out, err = run_cli(capsys, "encrypt", folder / "plain.suit", f"0={folder / 'app.bin'}",
                             "--recipient", folder / "dev1.pub", "--recipient",
                             f"fleet={folder / 'fleet.kek'}", "--content", "A256GCM",
                             "--out", folder / "enc.suit")
    assert code == 0, err
    assert f"upload it as 0={folder / 'enc.suit.image-0.enc'}" in out
    assert "sign it again" in out
    encrypted = codec.decode_envelope((folder / "enc.suit").read_bytes())
    assert encrypted.authentication.blocks == ()
    assert set(encrypted.severable) == set(plain.severable)  # still severable
    ciphertext = (folder / "enc.suit.image-0.enc").read_bytes()
    assert len(ciphertext) == len(image) + 16
    # the integrated data.bin was encrypted in place, the uri now names the ciphertext
    assert encrypted.integrated["#data.bin"] != plain.integrated["#data.bin"]
    raw = (folder / "enc.suit").read_bytes()
    assert hashlib.sha256(ciphertext).hexdigest().encode() in cbor2.loads(raw).value[20]
    # both the device's ECDH key and the fleet KEK open both images
    shared = cbor2.loads(cbor2.loads(encrypted.manifest_bytes)[3])[4]
    infos = [arg[19] for arg in cbor2.loads(shared)[1::2] if isinstance(arg, dict) and 19 in arg]
    assert len(infos) == 2
    keys = [crypto.load_recipient_private((folder / "dev1.key").read_bytes()),
            crypto.load_recipient_private((folder / "fleet.kek").read_bytes())]
    for key in keys:
        info = cose.decode_encryption_info(infos[0], path="ei")
        assert [r.key_id for r in info.recipients] == [b"dev-1", b"fleet"]
        assert cose.decrypt_payload(info, ciphertext, key) == image
        info = cose.decode_encryption_info(infos[1], path="ei")
        assert cose.decrypt_payload(info, encrypted.integrated["#data.bin"], key) == \
            (folder / "data.bin").read_bytes()
    # signing it again works; encrypting twice is refused
    assert run_cli(capsys, "sign", folder / "enc.suit", "--key", folder / "author.key",
                   "--out", folder / "enc.signed.suit")[0] == 0
    code, _, err = run_cli(capsys, "encrypt", folder / "enc.signed.suit", "--recipient",
                           folder / "dev1.pub", "--content", "A128GCM", "--component", "1",
                           "--out", folder / "twice.suit")
    assert code == 2 and "is already encrypted" in one_error_line(err)


@pytest.mark.parametrize(("change", "message"), [
    ({"profile": "suit-sha256-es256-ecdh-a128ctr"}, "unknown MTI profile"),
    ({"profile": "suit-sha256-ed25519-ecdh-a128ctr"}, "on X25519: give a device's X25519"),
    ({"profile": "suit-sha256-hsslms-a256kw-a256ctr", "key": "fleet.kek"},
     "give a A256KW key-encryption key"),
    ({"content": "AES-CBC"}, "unknown content algorithm 'AES-CBC'"),
    ({"key": "author.key"}, "expected a recipient public key, got a PEM 'PRIVATE KEY'"),
    ({"key": "dev1.key"}, "got a private key"),
    ({"key": "missing.pub"}, "cannot read"),
])
def test_bad_encryption_sections_are_one_line(capsys: pytest.CaptureFixture[str],
                                              folder: Path, change: dict[str, str],
                                              message: str) -> None:
    choice = (f"profile: {change['profile']}" if "profile" in change
              else f"content: {change.get('content', 'A128CTR')}")
    (folder / "bad.yaml").write_text(
        f"sequence-number: 1\nvendor-domain: {VENDOR_DOMAIN}\nclass-name: {CLASS_NAME}\n"
        "components:\n  - id: ['0x00']\n    image: app.bin\n"
        f"encryption:\n  {choice}\n  recipients:\n    - key: {change.get('key', 'dev1.pub')}\n")
    code, _, err = run_cli(capsys, "create", folder / "bad.yaml", "--out", folder / "x.suit")
    assert code == 2
    line = one_error_line(err)
    assert "encryption" in line and message in line, line
    assert not (folder / "x.suit").exists()


def test_keygen_and_pubkey_for_encryption_keys(capsys: pytest.CaptureFixture[str],
                                               folder: Path) -> None:
    code, out, _ = run_cli(capsys, "keygen", "--alg", "X25519", "--out", folder / "x.key")
    assert code == 0 and "X25519 ECDH-ES private key" in out
    assert (folder / "x.key").stat().st_mode & 0o777 == 0o600
    code, _, err = run_cli(capsys, "pubkey", folder / "fleet.kek", "--out", folder / "k.pub")
    assert code == 2 and "shared secret with no public half" in one_error_line(err)
    code, _, err = run_cli(capsys, "keygen", "--alg", "ESP256", "--kid", "a", "--out",
                           folder / "y.key")
    assert code == 2 and "--kid is for encryption keys" in one_error_line(err)
    # a recipient key is never a trust anchor or a signing key
    with pytest.raises(KeyMaterialError, match=r"dev1\.key: .*cannot be used with"):
        keyfiles.load_signer(folder / "dev1.key")
    with pytest.raises(KeyMaterialError, match=r"dev1\.pub: .*cannot be used with"):
        keyfiles.load_verifier(folder / "dev1.pub")
