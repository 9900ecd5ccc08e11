"""`suitkit device ...`: a device kept in a folder, driven the way a user would."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from cli.test_cli import one_error_line, run
from suitkit.errors import StorageError

VENDOR = uuid.uuid5(uuid.NAMESPACE_DNS, "example.com")
CLASS = uuid.uuid5(VENDOR, "board")


@pytest.fixture
def updates(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    """Author keys and three signed updates (sequence 1, 2 and 3) for class 'board'."""
    run(capsys, "keygen", "--alg", "ES256", "--out", tmp_path / "a.pem")
    run(capsys, "pubkey", tmp_path / "a.pem", "--out", tmp_path / "a.pub")
    for seq in (1, 2, 3):
        (tmp_path / f"fw{seq}.bin").write_bytes(bytes([seq]) * (5000 + seq * 1000))
        (tmp_path / f"v{seq}.yaml").write_text(
            f"sequence-number: {seq}\nvendor-domain: example.com\nclass-name: board\n"
            f"components:\n  - id: ['0x00']\n    image: fw{seq}.bin\n")
        assert run(capsys, "create", tmp_path / f"v{seq}.yaml", "--out",
                   tmp_path / f"v{seq}.suit")[0] == 0
        assert run(capsys, "sign", tmp_path / f"v{seq}.suit", "--key", tmp_path / "a.pem",
                   "--out", tmp_path / f"v{seq}.signed")[0] == 0
    return tmp_path


def init(capsys: pytest.CaptureFixture[str], where: Path, shape: str = "mcu",
         class_id: uuid.UUID = CLASS) -> Path:
    device = where / f"dev-{shape}"
    code, out, err = run(capsys, "device", "init", device, "--vendor-id", str(VENDOR),
                         "--class-id", str(class_id), "--trust-anchor", where / "a.pub",
                         "--shape", shape)
    assert code == 0, err
    assert f"created {shape} device" in out
    return device


def status(capsys: pytest.CaptureFixture[str], device: Path) -> dict[str, object]:
    code, out, _ = run(capsys, "device", "status", device, "--json")
    assert code == 0
    doc: dict[str, object] = json.loads(out)
    return doc


@pytest.mark.parametrize("shape", ["mcu", "linux"])
def test_install_boot_confirm_update_revert(capsys: pytest.CaptureFixture[str], updates: Path,
                                            shape: str) -> None:
    device = init(capsys, updates, shape)
    code, out, _ = run(capsys, "device", "install", device, updates / "v1.signed")
    assert code == 0 and "installed app (sequence number 1)" in out
    assert '"result": "ok"' in out
    code, out, _ = run(capsys, "device", "boot", device)
    assert code == 0 and "booted app #1: on trial" in out
    assert run(capsys, "device", "confirm", device)[0] == 0
    doc = status(capsys, device)
    component = doc["components"][0]  # type: ignore[index]
    assert component["running"]["sequence-number"] == 1
    assert component["counter"] == 1
    assert doc["pending"] is False

    assert run(capsys, "device", "install", device, updates / "v2.signed")[0] == 0
    code, out, _ = run(capsys, "device", "boot", device, "--fail")
    assert code == 0
    lines = out.strip().splitlines()
    assert "booted app #2: on trial" in out
    assert lines[-2].startswith("booted app #1") and lines[-1].startswith("jumped to app")
    doc = status(capsys, device)
    assert doc["components"][0]["running"]["sequence-number"] == 1  # type: ignore[index]


def test_rollback_and_bad_envelopes_exit_1(capsys: pytest.CaptureFixture[str],
                                          updates: Path) -> None:
    device = init(capsys, updates)
    for step in (("install", device, updates / "v3.signed"), ("boot", device),
                 ("confirm", device)):
        assert run(capsys, "device", *step)[0] == 0
    before = status(capsys, device)
    code, _, err = run(capsys, "device", "install", device, updates / "v2.signed")
    assert code == 1
    assert "rollback: sequence number 2 is lower than the installed 3" in one_error_line(err)
    code, _, err = run(capsys, "device", "install", device, updates / "v1.suit")
    assert code == 1 and "no authentication block" in one_error_line(err)
    assert status(capsys, device) == before


def test_wrong_class_is_refused_with_the_report(capsys: pytest.CaptureFixture[str],
                                                updates: Path) -> None:
    device = init(capsys, updates, class_id=uuid.uuid4())
    code, out, err = run(capsys, "device", "install", device, updates / "v1.signed")
    assert code == 1
    assert "condition-class-identifier" in one_error_line(err)
    assert '"reason": "condition-failed"' in out


def test_two_image_shape(capsys: pytest.CaptureFixture[str], updates: Path) -> None:
    (updates / "pair.yaml").write_text(
        "sequence-number: 4\nvendor-domain: example.com\nclass-name: board\ncomponents:\n"
        "  - {id: ['0x00'], image: fw1.bin}\n  - {id: ['0x01'], image: fw2.bin, invoke: false}\n")
    run(capsys, "create", updates / "pair.yaml", "--out", updates / "pair.suit")
    run(capsys, "sign", updates / "pair.suit", "--key", updates / "a.pem",
        "--out", updates / "pair.signed")
    device = init(capsys, updates, "secure-split")
    code, out, _ = run(capsys, "device", "install", device, updates / "pair.signed")
    assert code == 0 and "installed secure, nonsecure" in out
    code, out, _ = run(capsys, "device", "boot", device)
    assert "booted secure #4, nonsecure #4" in out


def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                      updates: Path) -> None:
    code, _, err = run(capsys, "device", "status", tmp_path / "nothing")
    assert code == 2 and "not a device folder" in one_error_line(err)
    code, _, err = run(capsys, "device", "init", tmp_path / "d", "--vendor-id", "nope",
                       "--class-id", str(CLASS), "--trust-anchor", updates / "a.pub")
    assert code == 2 and "--vendor-id: not a UUID" in one_error_line(err)
    code, _, err = run(capsys, "device", "init", tmp_path / "d", "--vendor-id", str(VENDOR),
                       "--class-id", str(CLASS), "--trust-anchor", updates / "a.pub",
                       "--shape", "toaster")
    assert code == 2 and "--shape must be one of" in one_error_line(err)
    device = init(capsys, updates)
    code, _, err = run(capsys, "device", "init", device, "--vendor-id", str(VENDOR),
                       "--class-id", str(CLASS), "--trust-anchor", updates / "a.pub")
    assert code == 2 and "already holds a device" in one_error_line(err)
    code, _, err = run(capsys, "device", "boot", device)
    assert code == 1 and "nothing to boot" in one_error_line(err)


@pytest.mark.parametrize("scenario", ["single-image", "revert"])
def test_powercut_reports_zero_failures(capsys: pytest.CaptureFixture[str],
                                        scenario: str) -> None:
    code, out, _ = run(capsys, "device", "powercut", "--scenario", scenario, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["failures"] == 0
    assert doc["cut-points-tried"] >= 30
    assert doc["cut-points-tried"] == doc["clean-run-operations"]


def test_author_and_operator_both_required(capsys: pytest.CaptureFixture[str],
                                           updates: Path) -> None:
    run(capsys, "keygen", "--alg", "EdDSA", "--out", updates / "op.pem")
    run(capsys, "pubkey", updates / "op.pem", "--out", updates / "op.pub")
    device = updates / "dev"
    code, _, err = run(capsys, "device", "init", device, "--vendor-id", str(VENDOR),
                       "--class-id", str(CLASS), "--trust-anchor", f"author={updates / 'a.pub'}",
                       "--trust-anchor", f"operator={updates / 'op.pub'}",
                       "--require", "author", "--require", "operator")
    assert code == 0, err
    code, _, err = run(capsys, "device", "install", device, updates / "v1.signed")
    assert code == 1
    assert "missing a valid signature from: operator" in one_error_line(err)
    approved = updates / "v1.approved"
    assert run(capsys, "sign", updates / "v1.signed", "--key", updates / "op.pem",
               "--out", approved)[0] == 0
    code, out, _ = run(capsys, "device", "install", device, approved)
    assert code == 0 and "installed app" in out


def test_require_needs_an_anchor_of_that_role(capsys: pytest.CaptureFixture[str],
                                              updates: Path) -> None:
    code, _, err = run(capsys, "device", "init", updates / "d", "--vendor-id", str(VENDOR),
                       "--class-id", str(CLASS), "--trust-anchor", updates / "a.pub",
                       "--require", "operator")
    assert code == 2 and "no trust anchor has the role 'operator'" in one_error_line(err)


def test_init_by_vendor_domain_and_class_name_takes_the_description_files_ids(
        capsys: pytest.CaptureFixture[str], updates: Path) -> None:
    """--vendor-domain/--class-name derive the IDs as a description file does (§8.4.8.1), so
    the device accepts what `suitkit create` made from the same names."""
    device = updates / "named"
    code, _, err = run(capsys, "device", "init", device, "--vendor-domain", "example.com",
                       "--class-name", "board", "--trust-anchor", updates / "a.pub")
    assert code == 0, err
    code, _, err = run(capsys, "device", "install", device, updates / "v1.signed")
    assert code == 0, err
    other = updates / "other"
    run(capsys, "device", "init", other, "--vendor-domain", "example.com",
        "--class-name", "another-board", "--trust-anchor", updates / "a.pub")
    code, _, err = run(capsys, "device", "install", other, updates / "v1.signed")
    assert code == 1, err


@pytest.mark.parametrize("options", [
    [],
    ["--vendor-id", str(VENDOR), "--vendor-domain", "example.com", "--class-name", "board"],
    ["--vendor-domain", "example.com"],
    ["--vendor-domain", "example.com", "--class-name", "board", "--class-id", str(CLASS)],
])
def test_init_needs_one_vendor_and_one_class(capsys: pytest.CaptureFixture[str],
                                             updates: Path, options: list[str]) -> None:
    device = updates / "half"
    code, _, err = run(capsys, "device", "init", device, "--trust-anchor", updates / "a.pub",
                       *options)
    assert code == 2
    assert "give exactly one of" in one_error_line(err)
    assert not device.exists()


@contextlib.contextmanager
def tiny_filesystem(where: Path, kib: int) -> Iterator[Path]:
    """A real tmpfs of ``kib`` KiB mounted at ``where`` (skips when it cannot be mounted)."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tiny tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False, timeout=60)


@pytest.mark.parametrize("shape", ["mcu", "linux"])
def test_full_disk_is_a_storage_failure_exit_3(capsys: pytest.CaptureFixture[str],
                                               updates: Path, shape: str) -> None:
    """The device's disk fills up during an install: exit 3 with "no space left on device
    writing <where>" (it was exit 2, bad usage, and for a Linux-class device named no path);
    the device keeps running what it ran, with nothing pending."""
    made = init(capsys, updates, shape)
    used_kib = sum(p.stat().st_size for p in made.rglob("*") if p.is_file()) // 1024
    with tiny_filesystem(updates / "mnt", used_kib + 256) as mnt:
        device = mnt / "device"
        shutil.copytree(made, device)
        fs = os.statvfs(mnt)  # leave 4 KiB free: less than the 8000-byte image
        (mnt / "filler").write_bytes(bytes(fs.f_bavail * fs.f_frsize - 4096))
        code, _, err = run(capsys, "device", "install", device, updates / "v3.signed")
        line = one_error_line(err)
        assert code == 3, line
        assert "no space left on device" in line.lower() and str(device) in line, line
        doc = status(capsys, device)
        assert doc["pending"] is False, doc


def test_device_init_on_a_full_disk_leaves_no_half_made_device(
        capsys: pytest.CaptureFixture[str], updates: Path) -> None:
    with tiny_filesystem(updates / "mnt", 64) as mnt:
        code, _, err = run(capsys, "device", "init", mnt / "device", "--vendor-id", str(VENDOR),
                           "--class-id", str(CLASS), "--trust-anchor", updates / "a.pub")
        line = one_error_line(err)
        assert code == 3 and "No space left on device" in line and str(mnt / "device") in line
        assert not (mnt / "device").exists()


def test_os_errors_map_to_storage_or_usage_exit_statuses() -> None:
    """ENOSPC (and the other failing-storage errnos) -> StorageError -> exit 3; a missing or
    unreadable file named by the user stays bad usage (exit 2)."""
    from suitkit.cli.common import (
        EXIT_STORAGE,
        EXIT_USAGE,
        exit_code,
        handles_errors,
        os_error,
    )

    full = os_error(OSError(errno.ENOSPC, "No space left on device", "/dev/slot/b.image"))
    assert isinstance(full, StorageError)
    assert str(full) == "no space left on device writing /dev/slot/b.image"
    assert exit_code(full) == EXIT_STORAGE == 3
    unnamed = os_error(OSError(errno.ENOSPC, "No space left on device"), "device folder d")
    assert str(unnamed) == "no space left on device writing device folder d"
    assert isinstance(os_error(OSError(errno.EROFS, "Read-only file system", "x")), StorageError)
    missing = os_error(OSError(errno.ENOENT, "No such file or directory", "x.pem"))
    assert exit_code(missing) == EXIT_USAGE and str(missing) == "x.pem: No such file or directory"
    assert exit_code(StorageError("cannot write f: No space left on device")) == 3

    @handles_errors
    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(typer.Exit) as exited:
        disk_full()
    assert exited.value.exit_code == 3
