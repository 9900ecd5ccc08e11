"""The suitkit command line: each command, exit statuses, one-line errors, no tracebacks."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import cbor2
import pyhsslms
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

from serve_kit import start_process, stop_process
from suitkit.core import codec, crypto

from helpers import VECTORS, run_cli, vector

ALGORITHMS = ["ES256", "ESP256", "ES384", "EdDSA", "Ed25519", "HSS-LMS", "HMAC-256"]
COSE_ALG = {"ES256": -7, "ESP256": -9, "ES384": -35, "EdDSA": -8, "Ed25519": -19,
            "HSS-LMS": -46, "HMAC-256": 5}


run = run_cli  # suitkit ARGS in-process (tests/helpers.py)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("suitkit: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def unsigned_example0(tmp_path: Path) -> Path:
    path = tmp_path / "example0-unsigned.suit"
    path.write_bytes(vector("example0-unsigned"))
    return path


def _independent_check(alg: str, envelope: bytes, key_file: Path) -> None:
    """Check the last block the way another implementation would: Sig_structure by hand."""
    top = cbor2.loads(envelope)
    auth = cbor2.loads(top.value[2])
    digest_bytes, block_bytes = auth[0], auth[-1]
    block = cbor2.loads(block_bytes)
    protected, _unprotected, payload, signature = block.value
    assert payload is None
    assert cbor2.loads(protected) == {1: COSE_ALG[alg]}
    context = "MAC0" if alg == "HMAC-256" else "Signature1"
    assert block.tag == (17 if alg == "HMAC-256" else 18)
    tbs = cbor2.dumps([context, protected, b"", digest_bytes])
    if alg == "HMAC-256":
        secret = cbor2.loads(_pem_body(key_file))[-1]
        mac = hmac.HMAC(secret, hashes.SHA256())
        mac.update(tbs)
        mac.verify(signature)
        return
    if alg == "HSS-LMS":
        public = cbor2.loads(_pem_body(key_file))[-1]
        assert pyhsslms.HssPublicKey.deserialize(public).verify(tbs, signature)
        return
    key = serialization.load_pem_private_key(key_file.read_bytes(), None).public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, tbs)
        return
    assert isinstance(key, ec.EllipticCurvePublicKey)
    half = len(signature) // 2
    der = utils.encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                     int.from_bytes(signature[half:], "big"))
    hash_alg = hashes.SHA384() if alg == "ES384" else hashes.SHA256()
    key.verify(der, tbs, ec.ECDSA(hash_alg))
    with pytest.raises(InvalidSignature):
        key.verify(der, tbs + b"x", ec.ECDSA(hash_alg))


def _pem_body(path: Path) -> bytes:
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN"))
    end = next(i for i, line in enumerate(lines) if line.startswith("-----END"))
    return base64.b64decode("".join(lines[start + 1:end]))


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_sign_unsigned_example_then_verify_independently(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, unsigned_example0: Path,
        alg: str) -> None:
    key, pub, signed = tmp_path / "k", tmp_path / "k.pub", tmp_path / "signed.suit"
    assert run(capsys, "keygen", "--alg", alg, "--out", key)[0] == 0
    assert run(capsys, "pubkey", key, "--out", pub)[0] == 0
    code, out, _ = run(capsys, "sign", unsigned_example0, "--key", key, "--out", signed)
    assert code == 0, out
    _independent_check(alg, signed.read_bytes(), key)
    code, out, err = run(capsys, "verify", signed, "--key", pub)
    assert code == 0, err
    assert out.startswith("OK:")
    # the manifest is untouched by signing
    assert codec.decode_envelope(signed.read_bytes()).manifest_bytes == \
        codec.decode_envelope(vector("example0-unsigned")).manifest_bytes


def test_verify_spec_example_with_its_key(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    path = tmp_path / "example0.suit"
    path.write_bytes(vector("example0"))
    code, out, _ = run(capsys, "verify", path, "--key", VECTORS / "example-key-public.pem")
    assert code == 0
    assert "sequence number 0" in out


def test_every_byte_position_of_example0_fails_verify(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    data = vector("example0")
    path = tmp_path / "tampered.suit"
    for position in range(len(data)):
        tampered = bytearray(data)
        tampered[position] ^= 0x55
        path.write_bytes(bytes(tampered))
        code, _, err = run(capsys, "verify", path, "--key", VECTORS / "example-key-public.pem")
        assert code == 1, f"byte {position}: exit {code}"
        one_error_line(err)


def test_second_signature_keeps_the_first(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         unsigned_example0: Path) -> None:
    for name, alg in (("author", "ES256"), ("operator", "EdDSA")):
        run(capsys, "keygen", "--alg", alg, "--out", tmp_path / name)
        run(capsys, "pubkey", tmp_path / name, "--out", tmp_path / f"{name}.pub")
    signed = tmp_path / "signed.suit"
    assert run(capsys, "sign", unsigned_example0, "--key", tmp_path / "author",
               "--out", signed)[0] == 0
    assert run(capsys, "sign", signed, "--key", tmp_path / "operator", "--out", signed)[0] == 0
    assert len(codec.decode_envelope(signed.read_bytes()).authentication.blocks) == 2
    assert run(capsys, "verify", signed, "--key", tmp_path / "author.pub",
               "--key", tmp_path / "operator.pub")[0] == 0
    # a key that did not sign makes verification fail with exit 1
    run(capsys, "keygen", "--alg", "ES256", "--out", tmp_path / "other")
    run(capsys, "pubkey", tmp_path / "other", "--out", tmp_path / "other.pub")
    code, _, err = run(capsys, "verify", signed, "--key", tmp_path / "author.pub",
                       "--key", tmp_path / "other.pub")
    assert code == 1
    assert "missing a valid signature from: key 2" in one_error_line(err)


def test_create_show_sever_from_a_description(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    (tmp_path / "app.bin").write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    (tmp_path / "app.yaml").write_text(
        "sequence-number: 3\nvendor-domain: example.com\nclass-name: board\n"
        "text: {manifest-description: hello}\n"
        "components:\n  - id: ['0x00']\n    image: app.bin\n"
        "    uri: https://fw.example.com/app.bin\n")
    envelope = tmp_path / "app.suit"
    code, out, err = run(capsys, "create", tmp_path / "app.yaml", "--out", envelope)
    assert code == 0, err
    decoded = codec.decode_envelope(envelope.read_bytes())
    assert decoded.manifest.sequence_number == 3
    assert 23 in decoded.severable  # text is severable by default

    code, out, _ = run(capsys, "show", envelope, "--json")
    doc = json.loads(out)
    assert doc["manifest"]["manifest-sequence-number"] == 3
    install = doc["manifest"]["install"]
    assert install[0] == ["directive-override-parameters",
                          {"uri": "https://fw.example.com/app.bin"}]
    code, out, _ = run(capsys, "show", envelope)
    assert code == 0 and "condition-vendor-identifier" in out and "directive-fetch" in out
    code, out, _ = run(capsys, "show", envelope, "--diag")
    assert code == 0 and out.startswith("107({") and "<< " in out

    run(capsys, "keygen", "--alg", "ES256", "--out", tmp_path / "k")
    run(capsys, "pubkey", tmp_path / "k", "--out", tmp_path / "k.pub")
    signed, smaller = tmp_path / "s.suit", tmp_path / "small.suit"
    run(capsys, "sign", envelope, "--key", tmp_path / "k", "--out", signed)
    code, out, _ = run(capsys, "sever", signed, "--out", smaller)
    assert code == 0 and "removed: text" in out
    assert smaller.stat().st_size < signed.stat().st_size
    assert run(capsys, "verify", smaller, "--key", tmp_path / "k.pub")[0] == 0


@pytest.mark.parametrize("args,message", [
    (["show", "missing.suit"], "cannot read envelope missing.suit"),
    (["verify", "not-cbor.suit", "--key", "KEY"], "does not verify"),
    (["show", "not-cbor.suit"], "envelope: invalid CBOR"),
    (["keygen", "--alg", "RSA", "--out", "x"], "--alg must be one of"),
    (["create", "bad.yaml", "--out", "x.suit"], "bad.yaml: unknown key 'sequence_number'"),
    (["sign", "not-cbor.suit", "--key", "nokey", "--out", "x"], "envelope"),
    (["verify", "ex0.suit", "--key", "garbage.pem"], "garbage.pem"),
])
def test_bad_input_gives_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, args: list[str],
                                  message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-cbor.suit").write_bytes(b"\xff\x00garbage")
    (tmp_path / "bad.yaml").write_text("sequence_number: 1\n")
    (tmp_path / "garbage.pem").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n"
                                          "-----END PUBLIC KEY-----\n")
    (tmp_path / "ex0.suit").write_bytes(vector("example0"))
    (tmp_path / "KEY").write_bytes((VECTORS / "example-key-public.pem").read_bytes())
    code, _, err = run(capsys, *args)
    assert code in (1, 2)
    assert message in one_error_line(err)
    assert not (tmp_path / "x.suit").exists()


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "sign")
    assert code == 2
    assert "Missing" in err and "Traceback" not in err


def test_keygen_refuses_to_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key = tmp_path / "k"
    assert run(capsys, "keygen", "--alg", "EdDSA", "--out", key)[0] == 0
    before = key.read_bytes()
    code, _, err = run(capsys, "keygen", "--alg", "EdDSA", "--out", key)
    assert code == 2 and "refusing to overwrite" in one_error_line(err)
    assert key.read_bytes() == before
    assert (key.stat().st_mode & 0o777) == 0o600


def test_entry_point_runs_as_a_program(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("suitkit")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False,
                            timeout=120)
    assert result.returncode == 0
    for command in ("keygen", "pubkey", "create", "sign", "verify", "show", "sever", "demo"):
        assert command in result.stdout
    result = subprocess.run([str(exe), "show", str(tmp_path / "nope")], capture_output=True,
                            text=True, check=False, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("suitkit: error: cannot read envelope")


def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "demo", "--walkthrough", "--dir", tmp_path)
    assert code == 0, err
    assert "$ suitkit verify update.delivered.suit" in out
    assert "installed app (sequence number 9)" in out  # fetched over HTTP from the server
    assert "confirmed; counters {'app': 9}" in out
    assert (tmp_path / "update.delivered.suit").stat().st_size < \
        (tmp_path / "update.signed.suit").stat().st_size
    assert crypto.load_public_key((tmp_path / "author.pub").read_bytes())


PRIVATE_KEY_KINDS = ["ES256", "Ed25519", "HSS-LMS", "sec1", "cose-ec2"]


def _private_key_file(tmp_path: Path, kind: str) -> Path:
    """A private key in each form a user might mistake for a public key."""
    path = tmp_path / f"{kind}.private"
    if kind == "sec1":  # "EC PRIVATE KEY"
        path.write_bytes((VECTORS / "encryption-dependent-signing-key.pem").read_bytes())
    elif kind == "cose-ec2":  # a plain CBOR COSE_Key with d (label -4)
        key = ec.generate_private_key(ec.SECP256R1())
        numbers = key.private_numbers()
        path.write_bytes(cbor2.dumps({1: 2, -1: 1,
                                      -2: numbers.public_numbers.x.to_bytes(32, "big"),
                                      -3: numbers.public_numbers.y.to_bytes(32, "big"),
                                      -4: numbers.private_value.to_bytes(32, "big")}))
    else:
        from suitkit.author import keys as keyfiles

        keyfiles.write_private_key(path, crypto.HssLmsPrivateKey.generate(
            crypto.HssLmsParameters(levels=1, height=5, winternitz=4))
            if kind == "HSS-LMS" else crypto.generate_private_key(kind))
    return path


@pytest.mark.parametrize("kind", PRIVATE_KEY_KINDS)
def test_private_key_refused_as_trust_anchor_everywhere(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str) -> None:
    """A private key given where a public key (a trust anchor) belongs is refused, exit 2, one
    line naming the file; nothing is copied onto a device and no server starts."""
    private = _private_key_file(tmp_path, kind)
    envelope = tmp_path / "ex0.suit"
    envelope.write_bytes(vector("example0"))

    code, out, err = run(capsys, "verify", envelope, "--key", private)
    line = one_error_line(err)
    assert code == 2, line
    assert f"{private}: expected a public key, got a private key" in line
    assert "OK" not in out

    device = tmp_path / "device"
    code, _, err = run(capsys, "device", "init", device, "--vendor-id", str(VENDOR_UUID),
                       "--class-id", str(VENDOR_UUID), "--trust-anchor", private)
    line = one_error_line(err)
    assert code == 2, line
    assert f"--trust-anchor {private}: expected a public key, got a private key" in line
    assert not device.exists()  # the private key never reached the device folder

    code, _, err = run(capsys, "serve", "--data", tmp_path / "data", "--author-anchor", private,
                       "--port", "1")
    line = one_error_line(err)
    assert code == 2, line
    assert f"{private}: expected a public key, got a private key" in line
    assert not (tmp_path / "data").exists()


VENDOR_UUID = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"


EXAMPLE0_DIGEST = "6658ea560262696dd1f13b782239a064da7c6c5cbaf52fded428a6fc83c7e5af"


def test_show_prints_digests_whole_in_a_narrow_pipe(tmp_path: Path) -> None:
    """``suitkit show`` piped with COLUMNS=40: every line whole (a digest was cut at column
    40 with no ellipsis), so a script can read the digest."""
    path = tmp_path / "example0.suit"
    path.write_bytes(vector("example0"))
    exe = Path(sys.executable).with_name("suitkit")
    result = subprocess.run([str(exe), "show", str(path)], capture_output=True, text=True,
                            check=False, timeout=120, env={**os.environ, "COLUMNS": "40"})
    assert result.returncode == 0, result.stderr
    assert f"digest-bytes: {EXAMPLE0_DIGEST}\n" in result.stdout, result.stdout
    assert f"SUIT envelope {path} (237 bytes, tagged 107)\n" in result.stdout


def test_show_folds_digests_in_a_narrow_terminal(tmp_path: Path) -> None:
    """On a 40-column terminal a long line folds onto the next rows; no character is lost."""
    path = tmp_path / "example0.suit"
    path.write_bytes(vector("example0"))
    exe = Path(sys.executable).with_name("suitkit")
    leader, follower = pty.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 40, 0, 0))
        process = start_process(
            [str(exe), "show", str(path)], stdin=subprocess.DEVNULL, stdout=follower,
            stderr=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "40", "NO_COLOR": "1",
                                            "TERM": "xterm"})
        os.close(follower)
        follower = -1
        chunks = []
        try:
            deadline = time.monotonic() + 120  # generous: a loaded machine
            while chunk := _read_pty(leader, deadline):
                chunks.append(chunk)
            assert process.wait(timeout=120) == 0
        finally:
            stop_process(process)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    screen = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())
    lines = screen.splitlines()
    assert all(len(line) <= 40 for line in lines), screen
    # Take away the tree guides; what is left of the digest lines is the whole digest.
    text = "".join(line.lstrip("│├└─ ") for line in lines)
    assert f"digest-bytes: {EXAMPLE0_DIGEST}" in text, screen


def _read_pty(fd: int, deadline: float) -> bytes:
    """The next bytes from a pty; b"" once the child closed its side (EIO)."""
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    assert ready, "suitkit show wrote nothing to its terminal for 120 s"
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the child closed its side
        return b""


# The MTI profiles (draft-ietf-suit-mti-23) name ESP256 (-9) and Ed25519 (-19) only: a key that
# was not told otherwise signs with those. Keys made by another tool (no suitkit-algorithm line),
# the blocks checked by hand.

@pytest.mark.parametrize(("kind", "alg"), [("P-256", "ESP256"), ("Ed25519", "Ed25519")])
def test_a_key_from_another_tool_signs_with_the_mti_algorithm(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, unsigned_example0: Path,
        kind: str, alg: str) -> None:
    private = (ec.generate_private_key(ec.SECP256R1()) if kind == "P-256"
               else ed25519.Ed25519PrivateKey.generate())
    key = tmp_path / "openssl.pem"
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    signed = tmp_path / "signed.suit"
    code, out, _ = run(capsys, "sign", unsigned_example0, "--key", key, "--out", signed)
    assert code == 0 and f"({alg})" in out, out
    _independent_check(alg, signed.read_bytes(), key)  # protected header is exactly {1: -9/-19}


def test_keygen_default_is_esp256(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  unsigned_example0: Path) -> None:
    key, signed = tmp_path / "k", tmp_path / "signed.suit"
    assert run(capsys, "keygen", "--out", key)[0] == 0
    assert run(capsys, "sign", unsigned_example0, "--key", key, "--out", signed)[0] == 0
    _independent_check("ESP256", signed.read_bytes(), key)


def test_es256_still_verifies_where_the_anchor_allows_it(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Example 0 is signed ES256 (-7) by the spec's key; its plain public PEM allows both ids.
    example = tmp_path / "example0.suit"
    example.write_bytes(vector("example0"))
    code, _, err = run(capsys, "verify", example, "--key", VECTORS / "example-key-public.pem")
    assert code == 0, err
    narrowed = tmp_path / "esp256-only.pub"
    narrowed.write_bytes(b"suitkit-algorithm: ESP256\n"
                         + (VECTORS / "example-key-public.pem").read_bytes())
    code, _, err = run(capsys, "verify", example, "--key", narrowed)
    assert code == 1 and "ES256" in err, err
