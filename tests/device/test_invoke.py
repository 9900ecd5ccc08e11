"""Starting what was booted: the Invocation Procedure restarts a Linux-class application."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from suitkit.author.describe import parse_description
from suitkit.core import codec, crypto
from suitkit.core.sign import sign_envelope
from suitkit.device.config import create_device
from suitkit.device.invoke import ProcessLauncher, RecordingLauncher, invoke_running
from suitkit.device.wiring import open_device

VENDOR = uuid.uuid5(uuid.NAMESPACE_DNS, "example.com")
CLASS = uuid.uuid5(VENDOR, "board")


@pytest.fixture
def key() -> crypto.EcPrivateKey:
    k = crypto.generate_private_key("ES256")
    assert isinstance(k, crypto.EcPrivateKey)
    return k


def release(where: Path, key: crypto.EcPrivateKey, seq: int, program: str) -> bytes:
    (where / f"app{seq}.py").write_text(program)
    desc = parse_description({"sequence-number": seq, "vendor-domain": "example.com",
                              "class-name": "board",
                              "components": [{"id": ["0x00"], "image": f"app{seq}.py"}]},
                             base=where)
    envelope = codec.build_envelope(desc.manifest, integrated=desc.integrated)
    return codec.encode_envelope(sign_envelope(envelope, key.signer()))


@pytest.fixture
def linux(tmp_path: Path, key: crypto.EcPrivateKey) -> Iterator[Path]:
    (tmp_path / "a.pub").write_bytes(crypto.public_key_to_pem(key.public_key()))
    create_device(tmp_path / "dev", vendor_id=VENDOR, class_id=CLASS,
                  trust_anchors=[tmp_path / "a.pub"], shape="linux",
                  app_command=f"{sys.executable} {{image}}")
    yield tmp_path / "dev"
    ProcessLauncher("true", tmp_path / "dev" / "app.pid").stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a child that exited but was not reaped yet is a zombie: not running
    return os.waitpid(pid, os.WNOHANG) == (0, 0)


def boot_and_start(device: Path, settle: float = 0.3) -> tuple[bool, tuple[str, ...]]:
    """Boot, then start the application; it counts as started once up for ``settle`` s."""
    opened = open_device(device)
    opened.bootloader.boot()
    config = opened.config
    assert config.app_command is not None
    invoked = invoke_running(config, opened.bootloader,
                             ProcessLauncher(config.app_command, device / "app.pid",
                                             settle=settle))
    return invoked.succeeded, invoked.started


def test_update_restarts_the_application(tmp_path: Path, linux: Path,
                                         key: crypto.EcPrivateKey) -> None:
    marker = tmp_path / "ran.txt"
    program = ("import pathlib, sys, time\n"
               f"pathlib.Path({str(marker)!r}).write_text('{{}}'.format(sys.argv[0]))\n"
               "time.sleep(60)\n")
    assert open_device(linux).consumer().install(release(tmp_path, key, 1, program)).installed
    ok, started = boot_and_start(linux)
    assert ok and "running" in started[0]
    first = int((linux / "app.pid").read_text())
    assert alive(first)
    deadline = time.monotonic() + 30  # a Python start-up on a loaded machine
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.read_text().endswith("app.image")
    open_device(linux).bootloader.confirm()

    assert open_device(linux).consumer().install(release(tmp_path, key, 2, program)).installed
    ok, _ = boot_and_start(linux)
    second = int((linux / "app.pid").read_text())
    assert ok and second != first
    assert not alive(first), "the old application must be stopped"
    assert alive(second)


def test_application_that_dies_is_not_started_and_reverts(tmp_path: Path, linux: Path,
                                                          key: crypto.EcPrivateKey) -> None:
    good = "import time\ntime.sleep(60)\n"
    assert open_device(linux).consumer().install(release(tmp_path, key, 1, good)).installed
    assert boot_and_start(linux)[0]
    open_device(linux).bootloader.confirm()
    bad = "import sys\nsys.exit(3)\n"
    assert open_device(linux).consumer().install(release(tmp_path, key, 2, bad)).installed
    # Up to 30 s for it to die: on a loaded machine a Python start-up outlasts 0.3 s, and a
    # dying application is seen as soon as it exits.
    ok, _ = boot_and_start(linux, settle=30)
    assert not ok  # exited with status 3 at start: the device will not confirm it
    # The next boot reverts to release 1 and starts it again.
    opened = open_device(linux)
    result = opened.bootloader.boot()
    assert result.images[0].sequence_number == 1


def test_microcontroller_jump_is_recorded(tmp_path: Path, key: crypto.EcPrivateKey) -> None:
    (tmp_path / "a.pub").write_bytes(crypto.public_key_to_pem(key.public_key()))
    create_device(tmp_path / "dev", vendor_id=VENDOR, class_id=CLASS,
                  trust_anchors=[tmp_path / "a.pub"])
    opened = open_device(tmp_path / "dev")
    assert opened.consumer().install(release(tmp_path, key, 1, "x" * 5000)).installed
    opened.bootloader.boot()
    launcher = RecordingLauncher()
    invoked = invoke_running(opened.config, opened.bootloader, launcher)
    assert invoked.succeeded and launcher.started == ["app"]
    assert invoked.started == ("jumped to app (5000 bytes)",)


def test_tampered_running_image_is_not_started(tmp_path: Path,
                                               key: crypto.EcPrivateKey) -> None:
    (tmp_path / "a.pub").write_bytes(crypto.public_key_to_pem(key.public_key()))
    create_device(tmp_path / "dev", vendor_id=VENDOR, class_id=CLASS,
                  trust_anchors=[tmp_path / "a.pub"], shape="linux")
    opened = open_device(tmp_path / "dev")
    assert opened.consumer().install(release(tmp_path, key, 1, "x" * 5000)).installed
    opened.bootloader.boot()
    (image,) = (tmp_path / "dev").rglob("current/app.image")
    image.write_bytes(b"y" * 5000)  # replaced after the bootloader's check (THREAT.IMG.REPLACE)
    launcher = RecordingLauncher()
    invoked = invoke_running(opened.config, opened.bootloader, launcher)
    assert not invoked.succeeded and launcher.started == []
    assert "condition-image-match" in invoked.results[0].reason
