"""Trust domains from the command line, as a user would: two authors and an operator make
keys; each author creates and signs a manifest for its component; the operator describes a root
with ``dependencies:`` (integrated) and an uninstall manifest with ``uninstall: {unlink:}``;
``suitkit device init --image --scope --dependency-role`` makes a Linux-class device that trusts
each author for its component only; install, boot, confirm, status, uninstall."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.test_cli import run


def _signed(capsys: pytest.CaptureFixture[str], folder: Path, name: str, text: str,
            key: str) -> Path:
    (folder / f"{name}.yaml").write_text(text)
    code, _, err = run(capsys, "create", folder / f"{name}.yaml", "--out",
                       folder / f"{name}.suit")
    assert code == 0, err
    code, _, err = run(capsys, "sign", folder / f"{name}.suit", "--key", folder / key,
                       "--out", folder / f"{name}.signed")
    assert code == 0, err
    return folder / f"{name}.signed"


def test_operator_root_with_two_authors_from_the_cli(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    for who in ("operator", "a", "b"):
        assert run(capsys, "keygen", "--out", tmp_path / f"{who}.pem")[0] == 0
        assert run(capsys, "pubkey", tmp_path / f"{who}.pem", "--out",
                   tmp_path / f"{who}.pub")[0] == 0
    (tmp_path / "a.bin").write_bytes(b"A" * 3000)
    (tmp_path / "b.bin").write_bytes(b"B" * 4000)
    top = "vendor-domain: example.com\nclass-name: board\n"
    _signed(capsys, tmp_path, "a", f"sequence-number: 3\n{top}components:\n"
            "  - id: ['0x00']\n    image: a.bin\n", "a.pem")
    _signed(capsys, tmp_path, "b", f"sequence-number: 4\n{top}components:\n"
            "  - id: ['0x01']\n    image: b.bin\n", "b.pem")
    root = _signed(capsys, tmp_path, "root", f"sequence-number: 1\n{top}dependencies:\n"
                   "  - {id: [a.suit], envelope: a.signed}\n"
                   "  - {id: [b.suit], envelope: b.signed}\n", "operator.pem")
    removal = _signed(capsys, tmp_path, "removal", f"sequence-number: 2\n{top}dependencies:\n"
                      "  - {id: [b.suit], envelope: b.signed}\n"
                      "uninstall: {unlink: [[b.suit]]}\n", "operator.pem")
    device = tmp_path / "device"
    code, out, err = run(capsys, "device", "init", device, "--vendor-domain", "example.com",
                         "--class-name", "board", "--shape", "linux", "--image", "app",
                         "--image", "data",
                         "--trust-anchor", f"operator={tmp_path / 'operator.pub'}",
                         "--trust-anchor", f"author={tmp_path / 'a.pub'}",
                         "--trust-anchor", f"author={tmp_path / 'b.pub'}",
                         "--scope", "1=00", "--scope", "2=01", "--require", "operator",
                         "--dependency-role", "author")
    assert code == 0, err
    assert "components app=[h'00'], data=[h'01']" in out

    code, out, err = run(capsys, "device", "install", device, root)
    assert code == 0, err
    assert "installed app, data (sequence number 1)" in out
    code, out, _ = run(capsys, "device", "boot", device)
    assert code == 0 and "booted app #3, data #4" in out
    assert run(capsys, "device", "confirm", device)[0] == 0
    code, out, _ = run(capsys, "device", "status", device, "--json")
    doc = json.loads(out)
    assert doc["dependencies"]["root-sequence-number"] == 1
    assert [m["id"] for m in doc["dependencies"]["manifests"]] == [[b"a.suit".hex()],
                                                                  [b"b.suit".hex()]]
    # An author's envelope installed alone is refused: the operator must sign the root.
    code, _, err = run(capsys, "device", "install", device, tmp_path / "a.signed")
    assert code == 1 and "missing a valid signature from: operator" in err, err

    code, out, err = run(capsys, "device", "uninstall", device, removal)
    assert code == 0, err
    assert f"uninstalled [h'{b'b.suit'.hex()}'] (sequence number 2)" in out
    assert run(capsys, "device", "boot", device)[0] == 0
    assert run(capsys, "device", "confirm", device)[0] == 0
    code, out, _ = run(capsys, "device", "status", device, "--json")
    assert [m["id"] for m in json.loads(out)["dependencies"]["manifests"]] == [
        [b"a.suit".hex()]]


def test_bad_scope_option_is_one_line(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    assert run(capsys, "keygen", "--out", tmp_path / "k.pem")[0] == 0
    assert run(capsys, "pubkey", tmp_path / "k.pem", "--out", tmp_path / "k.pub")[0] == 0
    code, _, err = run(capsys, "device", "init", tmp_path / "d", "--vendor-domain", "x.org",
                       "--class-name", "c", "--trust-anchor", tmp_path / "k.pub",
                       "--scope", "3=00")
    assert code == 2
    assert err.strip().count("\n") == 0 and "--scope '3=00'" in err, err
    assert not (tmp_path / "d").exists()
