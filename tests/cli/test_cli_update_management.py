"""Update management from the command line: a description with a wait and a battery level,
`suitkit create`/`sign`, and a device whose facts `suitkit device facts` sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.test_cli import one_error_line

from helpers import run_cli as run


def test_a_description_waits_for_power_and_the_device_installs_once_it_has_it(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run(capsys, "keygen", "--alg", "ES256", "--out", tmp_path / "a.pem")
    run(capsys, "pubkey", tmp_path / "a.pem", "--out", tmp_path / "a.pub")
    for seq in (1, 2):
        (tmp_path / f"fw{seq}.bin").write_bytes(bytes([seq]) * 4000)
        extra = ("    version: '>=1.0'\n    minimum-battery: 200\n"
                 "    wait: {power: 1, time-of-day-utc: 0}\n    update-priority: 2\n"
                 if seq == 2 else "")
        (tmp_path / f"v{seq}.yaml").write_text(
            f"sequence-number: {seq}\nvendor-domain: example.com\nclass-name: board\n"
            f"set-version: {seq}.0.0\n"
            f"components:\n  - id: ['0x00']\n    image: fw{seq}.bin\n{extra}")
        assert run(capsys, "create", tmp_path / f"v{seq}.yaml", "--out",
                   tmp_path / f"v{seq}.suit")[0] == 0
        assert run(capsys, "sign", tmp_path / f"v{seq}.suit", "--key", tmp_path / "a.pem",
                   "--out", tmp_path / f"v{seq}.signed")[0] == 0
    code, out, _ = run(capsys, "show", tmp_path / "v2.signed", "--json")
    assert code == 0 and "wait-info" in out and "condition-version" in out
    device = tmp_path / "dev"
    assert run(capsys, "device", "init", device, "--vendor-domain", "example.com",
               "--class-name", "board", "--trust-anchor", tmp_path / "a.pub")[0] == 0
    assert run(capsys, "device", "install", device, tmp_path / "v1.signed")[0] == 0
    assert run(capsys, "device", "boot", device)[0] == 0
    assert run(capsys, "device", "confirm", device)[0] == 0

    code, out, _ = run(capsys, "device", "facts", device, "--power", "0", "--battery", "500",
                       "--consent", "allow", "--max-priority", "5")
    assert code == 0
    shown = json.loads(out.split(":\n", 1)[1])
    assert shown == {"battery-mwh": 500, "power": 0,
                     "consent": {"policy": "allow", "max-priority": 5}}
    code, _, err = run(capsys, "device", "install", device, tmp_path / "v2.signed")
    assert code == 1
    assert "not installed yet: waiting for power 1 (now 0)" in one_error_line(err)

    assert run(capsys, "device", "facts", device, "--power", "1")[0] == 0
    code, out, err = run(capsys, "device", "install", device, tmp_path / "v2.signed")
    assert code == 0, err
    assert "installed app (sequence number 2)" in out


def test_device_facts_refuses_bad_values_with_one_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run(capsys, "keygen", "--alg", "ES256", "--out", tmp_path / "a.pem")
    run(capsys, "pubkey", tmp_path / "a.pem", "--out", tmp_path / "a.pub")
    device = tmp_path / "dev"
    assert run(capsys, "device", "init", device, "--vendor-domain", "example.com",
               "--class-name", "board", "--trust-anchor", tmp_path / "a.pub")[0] == 0
    for args, expected in ((["--timezone", "Nowhere/Land"], "unknown time zone"),
                           (["--battery", "-5"], "battery-mwh"),
                           (["--consent", "command"], "the command policy needs a command"),
                           (["--other-device", "0a=one"], "expected HEXID=VERSION"),
                           # "--1" passed the digit check, then int() raised ValueError
                           (["--other-device", "0a=--1"], "expected HEXID=VERSION"),
                           (["--time", str(1 << 62)], "before 9999-12-31"),
                           (["--unset", "mood"], "unknown fact 'mood'")):
        code, _, err = run(capsys, "device", "facts", device, *args)
        assert code == 2, err
        assert expected in one_error_line(err)
    assert not (device / "facts.json").exists()
    code, out, _ = run(capsys, "device", "facts", device, "--other-device", "0a0b=2.0.1",
                       "--timezone", "Europe/Paris")
    assert code == 0 and '"0a0b": [\n      2,\n      0,\n      1\n    ]' in out
    assert run(capsys, "device", "facts", device, "--unset", "timezone")[0] == 0
    assert "timezone" not in json.loads((device / "facts.json").read_text())
    code, _, err = run(capsys, "device", "facts", tmp_path / "nothing")
    assert code == 2 and "not a device folder" in one_error_line(err)
