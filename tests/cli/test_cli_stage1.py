"""`suitkit device ...` updating the bootloader itself (issue #16, docs/selfupdate.md).

An mcu device made with ``device init --stage1 ENVELOPE`` has an immutable stage 0 and two
stage-1 copies; a signed manifest for ``['suitkit', 'bootloader']`` goes through ``device
install`` like any update, the next ``device boot`` tries it once, ``device confirm`` keeps it,
and a stage 1 that never confirms falls back to the other copy. Shapes without a stage 0
refuse it with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.test_cli import one_error_line, run

BOOTLOADER = ["0x737569746b6974", "0x626f6f746c6f61646572"]


def _release(capsys: pytest.CaptureFixture[str], where: Path, name: str, seq: int, *,
             ids: list[list[str]], key: str = "a") -> Path:
    comps = []
    for i, cid in enumerate(ids):
        (where / f"{name}-{i}.bin").write_bytes(bytes([seq, i]) * (1500 + 100 * seq))
        comps.append({"id": cid, "image": f"{name}-{i}.bin"})
    (where / f"{name}.json").write_text(json.dumps({
        "sequence-number": seq, "vendor-domain": "example.com", "class-name": "board",
        "components": comps}))
    assert run(capsys, "create", where / f"{name}.json", "--out", where / f"{name}.suit")[0] == 0
    assert run(capsys, "sign", where / f"{name}.suit", "--key", where / f"{key}.pem", "--out",
               where / f"{name}.signed")[0] == 0
    return where / f"{name}.signed"


@pytest.fixture
def keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    for name in ("a", "root", "other"):
        run(capsys, "keygen", "--alg", "ES256", "--out", tmp_path / f"{name}.pem")
        run(capsys, "pubkey", tmp_path / f"{name}.pem", "--out", tmp_path / f"{name}.pub")
    return tmp_path


def _init(capsys: pytest.CaptureFixture[str], where: Path, *extra: object,
          name: str = "dev", shape: str = "mcu") -> tuple[int, str, str]:
    return run(capsys, "device", "init", where / name, "--vendor-domain", "example.com",
               "--class-name", "board", "--trust-anchor", where / "a.pub", "--shape", shape,
               *extra)


def _stage1(capsys: pytest.CaptureFixture[str], device: Path) -> dict[str, object]:
    code, out, _ = run(capsys, "device", "status", device, "--json")
    assert code == 0
    doc: dict[str, object] = json.loads(out)["stage1"]
    return doc


def _running(doc: dict[str, object]) -> tuple[int, int, bool]:
    running = doc["running"]
    assert isinstance(running, dict)
    return running["sequence-number"], running["copy"], running["trial"]


def test_bootloader_update_through_device_install_boot_confirm(
        capsys: pytest.CaptureFixture[str], keys: Path) -> None:
    factory = _release(capsys, keys, "bl1", 1, ids=[BOOTLOADER])
    code, out, err = _init(capsys, keys, "--stage1", factory)
    assert code == 0, err
    device = keys / "dev"
    assert run(capsys, "device", "install", device,
               _release(capsys, keys, "app1", 1, ids=[["0x00"]]))[0] == 0
    code, out, _ = run(capsys, "device", "boot", device)
    assert code == 0 and "stage 0 started stage-1 bootloader #1 (copy 0): confirmed" in out
    assert run(capsys, "device", "confirm", device)[0] == 0
    assert _running(_stage1(capsys, device)) == (1, 0, False)

    code, out, err = run(capsys, "device", "install", device,
                         _release(capsys, keys, "bl2", 2, ids=[BOOTLOADER]))
    assert code == 0, err
    assert "installed the stage-1 bootloader (sequence number 2)" in out
    doc = _stage1(capsys, device)
    assert doc["pending"] is True and _running(doc) == (1, 0, False)
    # one update at a time: the application's waits for the boot
    code, _, err = run(capsys, "device", "install", device,
                       _release(capsys, keys, "app2", 2, ids=[["0x00"]]))
    assert code == 1 and "already pending" in err
    code, out, _ = run(capsys, "device", "boot", device)
    assert code == 0 and "stage-1 bootloader #2 (copy 1): on trial" in out
    assert "booted app #1: confirmed" in out  # the boot set was left alone
    assert _running(_stage1(capsys, device)) == (2, 1, True)
    code, out, _ = run(capsys, "device", "confirm", device)
    assert code == 0 and "'bootloader': 2" in out
    doc = _stage1(capsys, device)
    assert _running(doc) == (2, 1, False) and doc["counter"] == 2 and doc["pending"] is False
    code, out, _ = run(capsys, "device", "boot", device)
    assert "stage-1 bootloader #2 (copy 1): confirmed" in out
    # the old stage 1 can never come back
    code, _, err = run(capsys, "device", "install", device, factory)
    assert code == 1
    assert one_error_line(err) and "rollback: sequence number 1 is lower than the installed 2 " \
        "of bootloader" in err
    # and the application still updates, through the new stage 1
    assert run(capsys, "device", "install", device, keys / "app2.signed")[0] == 0
    code, out, _ = run(capsys, "device", "boot", device)
    assert "booted app #2: on trial" in out


def test_a_stage1_that_never_confirms_falls_back_to_the_other_copy(
        capsys: pytest.CaptureFixture[str], keys: Path) -> None:
    factory = _release(capsys, keys, "bl1", 1, ids=[BOOTLOADER])
    assert _init(capsys, keys, "--stage1", factory)[0] == 0
    device = keys / "dev"
    assert run(capsys, "device", "install", device,
               _release(capsys, keys, "app1", 1, ids=[["0x00"]]))[0] == 0
    run(capsys, "device", "boot", device)
    run(capsys, "device", "confirm", device)
    assert run(capsys, "device", "install", device,
               _release(capsys, keys, "bl3", 3, ids=[BOOTLOADER]))[0] == 0
    code, out, _ = run(capsys, "device", "boot", device, "--fail")
    assert code == 0
    assert "stage-1 bootloader #3 (copy 1): on trial" in out
    assert "stage-1 copy 1 (sequence number 3) was tried and never confirmed: falling back" in out
    assert "stage 0 started stage-1 bootloader #1 (copy 0): confirmed" in out
    doc = _stage1(capsys, device)
    assert _running(doc) == (1, 0, False) and doc["counter"] == 1 and doc["pending"] is False
    # the failed copy is the one the next update overwrites
    assert run(capsys, "device", "install", device,
               _release(capsys, keys, "bl4", 4, ids=[BOOTLOADER]))[0] == 0
    code, out, _ = run(capsys, "device", "boot", device)
    assert "stage-1 bootloader #4 (copy 1): on trial" in out


def test_a_stage1_update_stage0_would_refuse_is_refused_before_its_commit(
        capsys: pytest.CaptureFixture[str], keys: Path) -> None:
    factory = _release(capsys, keys, "bl2", 2, ids=[BOOTLOADER])
    assert _init(capsys, keys, "--stage1", factory)[0] == 0
    device = keys / "dev"
    assert run(capsys, "device", "install", device,
               _release(capsys, keys, "app1", 1, ids=[["0x00"]]))[0] == 0
    run(capsys, "device", "boot", device)
    run(capsys, "device", "confirm", device)
    # the same sequence number as the running stage 1: stage 0 would never start it
    code, _, err = run(capsys, "device", "install", device,
                       _release(capsys, keys, "bl2b", 2, ids=[BOOTLOADER]))
    assert code == 1 and one_error_line(err)
    assert "must be above the running stage 1's (2)" in err
    assert _stage1(capsys, device)["pending"] is False
    # signed by a key the device does not trust
    code, _, err = run(capsys, "device", "install", device,
                       _release(capsys, keys, "bl3x", 3, ids=[BOOTLOADER], key="other"))
    assert code == 1 and "rejected" in err
    # a bootloader manifest that also names the application
    code, _, err = run(capsys, "device", "install", device,
                       _release(capsys, keys, "both", 3, ids=[BOOTLOADER, ["0x00"]]))
    assert code == 1 and one_error_line(err)
    assert "must address nothing else" in err
    code, out, _ = run(capsys, "device", "boot", device)
    assert "stage-1 bootloader #2 (copy 0): confirmed" in out


@pytest.mark.parametrize("shape", ["mcu", "secure-split", "linux"])
def test_a_bootloader_manifest_is_refused_without_a_stage0(
        capsys: pytest.CaptureFixture[str], keys: Path, shape: str) -> None:
    assert _init(capsys, keys, shape=shape)[0] == 0
    code, _, err = run(capsys, "device", "install", keys / "dev",
                       _release(capsys, keys, "bl1", 1, ids=[BOOTLOADER]))
    assert code == 1 and one_error_line(err)
    assert f"this device ({shape} shape) has no stage 0" in err
    assert "device init --stage1" in err


def test_stage1_init_usage_errors(capsys: pytest.CaptureFixture[str], keys: Path) -> None:
    factory = _release(capsys, keys, "bl1", 1, ids=[BOOTLOADER])
    code, _, err = _init(capsys, keys, "--stage1", factory, shape="dual-cpu")
    assert code == 2 and one_error_line(err) and "only the mcu shape has a stage 0" in err
    app = _release(capsys, keys, "app", 1, ids=[["0x00"]])
    code, _, err = _init(capsys, keys, "--stage1", app)
    assert code == 2 and one_error_line(err)
    assert "expected a manifest for the bootloader" in err
    code, _, err = _init(capsys, keys, "--stage1",
                         _release(capsys, keys, "blx", 1, ids=[BOOTLOADER], key="other"))
    assert code == 1 and one_error_line(err) and "factory stage 1 was not installed" in err
    assert not (keys / "dev").exists()  # no half-made device left behind
