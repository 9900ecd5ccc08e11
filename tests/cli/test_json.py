"""``--json``: every command that prints data can print it for scripts, one JSON document on
stdout, with the same facts as the line for people."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from suitkit.cli.main import app

from helpers import run_cli

# Commands that print no data of their own: a server, a device daemon, the demo (its
# --summary FILE is JSON), migrations. Each still prints one line per step or error.
NO_DATA = {
    ("serve",), ("device", "run"), ("device", "launch"), ("demo",), ("db", "upgrade"),
}
# Not yet (issue #17): they print a summary line only.
NOT_YET = {
    ("device", "init"),
    ("device", "install"), ("device", "facts"), ("device", "boot"), ("device", "register"),
    ("device", "confirm"), ("device", "health"), ("device", "uninstall"),
    ("devices", "report-key"), ("devices", "recipient-key"),
}


def _leaves() -> Iterator[tuple[str, ...]]:
    def walk(command: object, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        subs = getattr(command, "commands", None)
        if subs is None:
            yield path
            return
        for name, sub in subs.items():
            yield from walk(sub, (*path, name))

    yield from walk(typer.main.get_command(app), ())


def test_every_command_that_prints_data_takes_json() -> None:
    missing = set()
    for path in _leaves():
        command = typer.main.get_command(app)
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        if not any("--json" in getattr(p, "opts", ()) for p in command.params):
            missing.add(path)
    assert missing == NO_DATA | NOT_YET


def test_author_commands_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, pub = tmp_path / "a.pem", tmp_path / "a.pub"
    code, out, err = run_cli(capsys, "keygen", "--out", key, "--json")
    assert code == 0, err
    assert json.loads(out) == {"key": str(key), "algorithm": "ESP256", "kind": "private key",
                               "kid": None}
    code, out, err = run_cli(capsys, "pubkey", key, "--out", pub, "--json")
    assert code == 0 and json.loads(out)["public_key"] == str(pub), err

    (tmp_path / "fw.bin").write_bytes(b"firmware")
    (tmp_path / "d.yaml").write_text(
        "sequence-number: 4\nvendor-domain: example.com\nclass-name: s\n"
        "text: {manifest-description: demo}\ncomponents:\n  - image: fw.bin\n")
    code, out, err = run_cli(capsys, "create", tmp_path / "d.yaml", "--out",
                             tmp_path / "u.suit", "--json")
    assert code == 0, err
    made = json.loads(out)
    assert made["sequence_number"] == 4 and made["payloads"] == [] and made["encrypted"] == []
    assert made["bytes"] == (tmp_path / "u.suit").stat().st_size
    code, out, err = run_cli(capsys, "sign", tmp_path / "u.suit", "--key", key, "--out",
                             tmp_path / "s.suit", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["signed_by"] == [{"key": str(key), "algorithm": "ESP256"}], err
    assert doc["authentication_blocks"] == 1
    assert doc["bytes"] == (tmp_path / "s.suit").stat().st_size
    code, out, err = run_cli(capsys, "verify", tmp_path / "s.suit", "--key", pub, "--json")
    assert code == 0, err
    assert json.loads(out) == {"verified": True, "envelope": str(tmp_path / "s.suit"),
                               "keys": 1, "sequence_number": 4, "components": 1,
                               "severed": []}
    code, out, err = run_cli(capsys, "sever", tmp_path / "s.suit", "--out",
                             tmp_path / "small.suit", "--json")
    assert code == 0 and json.loads(out)["removed"] == ["text"], err
    code, out, err = run_cli(capsys, "verify", tmp_path / "small.suit", "--key", pub, "--json")
    assert code == 0 and json.loads(out)["severed"] == ["text"], err

    other = tmp_path / "b.pub"
    run_cli(capsys, "keygen", "--out", tmp_path / "b.pem")
    run_cli(capsys, "pubkey", tmp_path / "b.pem", "--out", other)
    capsys.readouterr()
    code, out, err = run_cli(capsys, "verify", tmp_path / "s.suit", "--key", other, "--json")
    assert code == 1 and out == "" and err.startswith("suitkit: error: ")


def test_create_and_encrypt_list_the_payloads_beside_the_envelope(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kek = tmp_path / "fleet.kek"
    assert run_cli(capsys, "keygen", "--alg", "A128KW", "--out", kek)[0] == 0
    (tmp_path / "fw.bin").write_bytes(b"firmware" * 100)
    (tmp_path / "d.yaml").write_text(
        "sequence-number: 1\nvendor-domain: example.com\nclass-name: s\ncomponents:\n"
        "  - image: fw.bin\n    uri: https://fw.example/fw.bin\n")
    capsys.readouterr()
    code, _, err = run_cli(capsys, "create", tmp_path / "d.yaml", "--out", tmp_path / "u.suit")
    assert code == 0, err
    code, out, err = run_cli(capsys, "encrypt", tmp_path / "u.suit", f"0={tmp_path / 'fw.bin'}",
                             "--content", "A128GCM", "--recipient", kek, "--out",
                             tmp_path / "e.suit", "--json")
    assert code == 0, err
    doc = json.loads(out)
    (payload,) = doc["payloads"]
    assert payload["component"] == 0 and payload["kind"] == "encrypted image"
    assert Path(payload["file"]).stat().st_size == payload["bytes"] > 800


def test_config_show_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('port = 9001\ndb = "postgresql+psycopg://u:secret@db/suitkit"\n')
    monkeypatch.setenv("SUITKIT_HOST", "0.0.0.0")
    code, out, err = run_cli(capsys, "config", "show", "--config", config, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["port"]["value"] == 9001 and "file" in doc["port"]["source"]
    assert doc["host"]["value"] == "0.0.0.0" and "SUITKIT_HOST" in doc["host"]["source"]
    assert "secret" not in out
