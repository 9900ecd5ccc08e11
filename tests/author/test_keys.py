"""Key files on disk: formats, modes, atomic writes, and HSS-LMS state that is never reused."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from suitkit.author import keys
from suitkit.core import crypto
from suitkit.errors import KeyMaterialError, StorageError

from helpers import VECTORS

SMALL_HSS = crypto.HssLmsParameters(1, 5, 4)  # 32 signatures
MESSAGE = b"ToBeSigned"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def hss_key_file(tmp_path: Path, parameters: crypto.HssLmsParameters = SMALL_HSS) -> Path:
    path = tmp_path / "hss.key"
    keys.write_private_key(path, crypto.HssLmsPrivateKey.generate(parameters))
    return path


def leaf_index(signature: bytes) -> int:
    return int.from_bytes(signature[4:8], "big")  # L=1: u32 Nspk = 0, then the LMS q


@pytest.mark.parametrize("name", ["ES256", "ESP256", "ES384", "EdDSA", "Ed25519", "HMAC-256"])
def test_write_and_load_round_trip(tmp_path: Path, name: str) -> None:
    private_path, public_path = tmp_path / "k.pem", tmp_path / "k.pub"
    key = crypto.generate_private_key(name)
    keys.write_private_key(private_path, key)
    keys.write_public_key(public_path, key)
    assert mode(private_path) == 0o600
    # A shared HMAC secret is as secret as a private key.
    assert mode(public_path) == (0o600 if name == "HMAC-256" else 0o644)
    signer = keys.load_signer(private_path)
    assert signer.algorithm == crypto.algorithm_from_name(name)
    signature = signer.sign(MESSAGE)
    keys.load_verifier(public_path).verify(signer.algorithm, MESSAGE, signature)
    if name == "HMAC-256":  # a shared secret: the same key on both sides
        keys.load_verifier(private_path).verify(signer.algorithm, MESSAGE, signature)
    else:  # a private key is never a trust anchor
        with pytest.raises(KeyMaterialError, match=r"k\.pem: expected a public key, got a priv"):
            keys.load_verifier(private_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem", "k.pub"]  # no temp files


def test_load_signer_algorithm_override_and_key_id(tmp_path: Path) -> None:
    path = tmp_path / "example.pem"
    shutil.copy(VECTORS / "example-key-private.pem", path)
    signer = keys.load_signer(path, "ESP256", key_id=b"author-1")
    assert (signer.algorithm, signer.key_id) == (-9, b"author-1")
    keys.load_verifier(VECTORS / "example-key-public.pem").verify(-9, MESSAGE,
                                                                   signer.sign(MESSAGE))
    with pytest.raises(KeyMaterialError, match=r"example\.pem: .*cannot be used with ES384"):
        keys.load_signer(path, "ES384")
    with pytest.raises(KeyMaterialError, match="unknown signing algorithm 'RS256'"):
        keys.load_signer(path, "RS256")


def test_unreadable_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match=r"cannot read key file .*missing\.pem"):
        keys.load_signer(tmp_path / "missing.pem")
    with pytest.raises(KeyMaterialError, match="cannot read key file"):
        keys.load_verifier(tmp_path)
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyMaterialError, match=r"bad\.pem: private key does not load"):
        keys.load_private_key(bad)
    big = tmp_path / "big.pem"
    big.write_bytes(b"\x00" * ((1 << 20) + 1))
    with pytest.raises(KeyMaterialError, match="not a key file"):
        keys.load_verifier(big)
    with pytest.raises(KeyMaterialError, match="public key, not a private key"):
        keys.load_signer(_public_cose_key_file(tmp_path))


def _public_cose_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "hss.pub"
    keys.write_public_key(path, crypto.HssLmsPrivateKey.generate(SMALL_HSS))
    return path


def test_write_failure_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot write"):
        keys.write_private_key(tmp_path / "no-such-dir" / "k.pem",
                               crypto.generate_private_key("ES256"))


# ------------------------------------------------------------------------------ HSS-LMS


def test_hss_lms_signature_is_released_after_the_file_is_updated(tmp_path: Path) -> None:
    path = hss_key_file(tmp_path)
    public = keys.load_private_key(path).public_key()
    signer = keys.load_signer(path)
    before = path.read_bytes()
    signature = signer.sign(MESSAGE)
    public.verify(-46, MESSAGE, signature)
    assert path.read_bytes() != before
    on_disk = keys.load_private_key(path)
    assert isinstance(on_disk, crypto.HssLmsPrivateKey)
    assert on_disk.used == 1
    assert (tmp_path / "hss.key.counter").read_text().split()[1] == "1"
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hss.key", "hss.key.counter", "hss.key.lock"]


def test_hss_lms_indexes_are_never_shared_across_loads(tmp_path: Path) -> None:
    path = hss_key_file(tmp_path)
    indexes = []
    for i in range(6):
        indexes.append(leaf_index(keys.load_signer(path).sign(b"m%d" % i)))
    assert indexes == list(range(6))


def test_hss_lms_two_signers_from_one_file_cannot_both_sign(tmp_path: Path) -> None:
    """Two processes that loaded the same state: the second reservation is refused."""
    path = hss_key_file(tmp_path)
    first, second = keys.load_signer(path), keys.load_signer(path)
    assert leaf_index(first.sign(b"a")) == 0
    with pytest.raises(KeyMaterialError, match="used by another signer"):
        second.sign(b"b")  # it computed index 0 too, but never releases it
    assert leaf_index(keys.load_signer(path).sign(b"c")) == 1


def test_hss_lms_restored_backup_is_refused(tmp_path: Path) -> None:
    path = hss_key_file(tmp_path)
    backup = path.read_bytes()
    keys.load_signer(path).sign(MESSAGE)
    path.write_bytes(backup)  # an operator restores last week's key file
    with pytest.raises(KeyMaterialError, match="has 0 signatures used but its counter records 1"):
        keys.load_signer(path)
    with pytest.raises(KeyMaterialError, match="refusing to write an HSS-LMS state"):
        keys.write_private_key(path, crypto.load_private_key(backup))


def test_hss_lms_crash_between_key_and_counter_write_still_loads(tmp_path: Path) -> None:
    path = hss_key_file(tmp_path)
    counter = (tmp_path / "hss.key.counter").read_bytes()
    keys.load_signer(path).sign(MESSAGE)
    (tmp_path / "hss.key.counter").write_bytes(counter)  # the counter write never happened
    assert leaf_index(keys.load_signer(path).sign(MESSAGE)) == 1


def test_hss_lms_counter_of_another_key_is_refused(tmp_path: Path) -> None:
    path = hss_key_file(tmp_path)
    other = tmp_path / "other.key"
    keys.write_private_key(other, crypto.HssLmsPrivateKey.generate(SMALL_HSS))
    shutil.copy(tmp_path / "other.key.counter", tmp_path / "hss.key.counter")
    with pytest.raises(KeyMaterialError, match="belongs to a different key"):
        keys.load_signer(path)
    # Replacing the key file on purpose with write_private_key resets the counter.
    keys.write_private_key(path, crypto.HssLmsPrivateKey.generate(SMALL_HSS))
    keys.load_signer(path).sign(MESSAGE)


def test_hss_lms_malformed_counter_is_refused(tmp_path: Path) -> None:
    path = hss_key_file(tmp_path)
    (tmp_path / "hss.key.counter").write_text("garbage\n")
    with pytest.raises(KeyMaterialError, match=r"counter .* is malformed"):
        keys.load_signer(path)
    with pytest.raises(KeyMaterialError, match=r"counter .* is malformed"):
        keys.write_private_key(path, crypto.HssLmsPrivateKey.generate(SMALL_HSS))


def test_hss_lms_exhausted_key_is_refused(tmp_path: Path) -> None:
    path = hss_key_file(tmp_path)
    signer = keys.load_signer(path)
    for i in range(32):
        signer.sign(b"m%d" % i)
    with pytest.raises(KeyMaterialError, match="exhausted"):
        signer.sign(b"one more")
    with pytest.raises(KeyMaterialError, match="exhausted: all 32"):
        keys.load_signer(path)


def test_hss_lms_failed_write_releases_no_signature(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = hss_key_file(tmp_path)
    signer = keys.load_signer(path)
    before = path.read_bytes()

    def disk_full(target: Path, data: bytes, *, mode: int = 0o644) -> None:
        raise StorageError(f"cannot write {target}: No space left on device")

    monkeypatch.setattr(keys, "atomic_write", disk_full)
    with pytest.raises(StorageError, match="No space left"):
        signer.sign(MESSAGE)
    assert path.read_bytes() == before
    monkeypatch.undo()
    # The index computed in memory is burnt; the next signature uses a later one.
    assert leaf_index(signer.sign(MESSAGE)) == 1


def test_hss_lms_public_key_file(tmp_path: Path) -> None:
    path = hss_key_file(tmp_path)
    public_path = tmp_path / "hss.pub"
    keys.write_public_key(public_path, keys.load_private_key(path))
    assert public_path.read_bytes().startswith(b"suitkit-algorithm: HSS-LMS\n"
                                               b"-----BEGIN COSE KEY-----\n")
    verifier = keys.load_verifier(public_path)
    verifier.verify(-46, MESSAGE, keys.load_signer(path).sign(MESSAGE))
