"""`suitkit anchors ...`: build rotations, show anchors, and a device that takes them
(docs/keys.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.test_cli import one_error_line, run


def _keys(capsys: pytest.CaptureFixture[str], folder: Path, *names: str) -> None:
    for name in names:
        assert run(capsys, "keygen", "--alg", "ES256", "--out", folder / f"{name}.pem")[0] == 0
        assert run(capsys, "pubkey", folder / f"{name}.pem", "--out",
                   folder / f"{name}.pub")[0] == 0


def _release(capsys: pytest.CaptureFixture[str], folder: Path, seq: int, key: str) -> Path:
    (folder / f"fw{seq}.bin").write_bytes(bytes([seq]) * 3000)
    (folder / f"v{seq}.yaml").write_text(
        f"sequence-number: {seq}\nvendor-domain: example.com\nclass-name: board\n"
        f"components:\n  - id: ['0x00']\n    image: fw{seq}.bin\n")
    assert run(capsys, "create", folder / f"v{seq}.yaml", "--out", folder / f"v{seq}.suit")[0] == 0
    out = folder / f"v{seq}-{key}.signed"
    assert run(capsys, "sign", folder / f"v{seq}.suit", "--key", folder / f"{key}.pem",
               "--out", out)[0] == 0
    return out


ID = ["--vendor-domain", "example.com", "--class-name", "board"]


def test_rotation_by_the_command_line(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    _keys(capsys, tmp_path, "root", "leaked", "fresh", "root2")
    dev = tmp_path / "dev"
    assert run(capsys, "device", "init", dev, "--vendor-domain", "example.com",
               "--class-name", "board", "--trust-anchor", f"root={tmp_path / 'root.pub'}",
               "--trust-anchor", f"author={tmp_path / 'leaked.pub'}")[0] == 0
    assert run(capsys, "device", "install", dev, _release(capsys, tmp_path, 1, "leaked"))[0] == 0
    assert run(capsys, "device", "boot", dev)[0] == 0
    assert run(capsys, "device", "confirm", dev)[0] == 0
    code, text, _ = run(capsys, "anchors", "show", dev, "--json")
    shown = json.loads(text)
    assert code == 0 and shown["version"] == 0
    assert [k["role"] for k in shown["keys"]] == ["root", "author"]

    assert run(capsys, "anchors", "init", "--key", f"root={tmp_path / 'root.pub'}",
               "--key", f"author={tmp_path / 'leaked.pub'}", "--out", tmp_path / "a0.cbor")[0] == 0
    code, text, _ = run(capsys, "anchors", "rotate", tmp_path / "a0.cbor", *ID,
                        "--replace", f"{tmp_path / 'leaked.pub'}={tmp_path / 'fresh.pub'}",
                        "--key", tmp_path / "root.pem", "--out", tmp_path / "r1.suit",
                        "--document-out", tmp_path / "a1.cbor")
    assert code == 0 and "anchors version 1" in text
    code, text, _ = run(capsys, "anchors", "rotate", tmp_path / "a1.cbor", *ID,
                        "--add", f"root={tmp_path / 'root2.pub'}", "--threshold", "1",
                        "--key", tmp_path / "root.pem", "--out", tmp_path / "r2.suit",
                        "--document-out", tmp_path / "a2.cbor", "--chain", tmp_path / "r1.suit")
    assert code == 0 and "carrying 1 earlier rotation" in text
    code, text, _ = run(capsys, "anchors", "show", tmp_path / "r2.suit", "--json")
    assert json.loads(text)["version"] == 2 and len(json.loads(text)["revoked"]) == 1

    # the device at version 0 takes version 2 with the chain: 1 then 2
    code, text, _ = run(capsys, "device", "install", dev, tmp_path / "r2.suit")
    assert code == 0 and "trust anchors updated to version 2 (after version 1)" in text, text
    shown = json.loads(run(capsys, "anchors", "show", dev, "--json")[1])
    assert shown["version"] == 2 and shown["recorded"] == 1
    assert json.loads(run(capsys, "device", "status", dev, "--json")[1])["anchors-version"] == 2
    assert run(capsys, "device", "boot", dev)[0] == 0  # the leaked key's image still boots
    code, _, err = run(capsys, "device", "install", dev, _release(capsys, tmp_path, 2, "leaked"))
    assert code == 1 and "revoked key" in (err + _), err
    assert run(capsys, "device", "install", dev, _release(capsys, tmp_path, 3, "fresh"))[0] == 0


def test_rotation_errors_are_one_line(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    _keys(capsys, tmp_path, "root", "author", "other")
    assert run(capsys, "anchors", "init", "--key", f"root={tmp_path / 'root.pub'}",
               "--key", f"author={tmp_path / 'author.pub'}", "--out", tmp_path / "a0.cbor")[0] == 0
    # revoking the only author key would leave no key to sign firmware
    code, _, err = run(capsys, "anchors", "rotate", tmp_path / "a0.cbor", *ID,
                       "--revoke", tmp_path / "author.pub", "--out", tmp_path / "r.suit",
                       "--document-out", tmp_path / "a1.cbor")
    assert code != 0 and "no key could sign firmware" in one_error_line(err)
    code, _, err = run(capsys, "anchors", "rotate", tmp_path / "a0.cbor", *ID,
                       "--revoke", tmp_path / "other.pub", "--out", tmp_path / "r.suit",
                       "--document-out", tmp_path / "a1.cbor")
    assert code != 0 and "not in anchors version 0" in one_error_line(err)
    assert not (tmp_path / "r.suit").exists() and not (tmp_path / "a1.cbor").exists()
    (tmp_path / "junk.cbor").write_bytes(b"\xa1\x01\x02")
    code, _, err = run(capsys, "anchors", "show", tmp_path / "junk.cbor")
    assert code != 0
    one_error_line(err)
