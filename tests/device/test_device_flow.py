"""The happy paths of a device through the library, for every shape (RFC 9019 §5).

init -> install (integrated, then detached over HTTP from a real server on 127.0.0.1) -> boot on
trial -> confirm (counters raised) -> status document -> an update booted without confirm
reverts -> failed installs change nothing. The device folder is reopened for every step, as the
CLI does (``suitkit device install|boot|confirm|status``), so every test also proves that the
state persists across ``open_device`` calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.device_kit import (
    Author,
    Served,
    boot,
    confirm,
    counters,
    firmware_server,
    image_bytes,
    install,
    new_device,
    running,
    status,
)
from suitkit.cli.device import device_status
from suitkit.device.config import SHAPE_COMPONENTS
from suitkit.device.fetch import HttpFetcher
from suitkit.device.wiring import open_device

SHAPES = ["mcu", "secure-split", "dual-cpu", "linux"]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.fixture
def author(tmp_path: Path) -> Author:
    return Author.create(tmp_path / "author")


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    with firmware_server() as running_server:
        yield running_server


class Release:
    """A release for every component of a shape: its envelope and what should run after it."""

    def __init__(self, author: Author, shape: str, sequence: int, *,
                 server: tuple[str, Served] | None = None, tamper: bool = False) -> None:
        self.names = SHAPE_COMPONENTS[shape]
        self.images = {name: image_bytes(f"{shape}-{sequence}-{name}", 2500 + 700 * i)
                       for i, name in enumerate(self.names)}
        self.paths = {name: f"/{shape}/{sequence}/{name}.bin" for name in self.names}
        components = []
        for i, name in enumerate(self.names):
            uri = None
            if server is not None:
                url, served = server
                uri = url + self.paths[name]
                served.files[self.paths[name]] = (image_bytes("not it", len(self.images[name]))
                                                  if tamper else self.images[name])
            components.append(author.component(f"{name}-{sequence}.bin", self.images[name],
                                               index=i, uri=uri))
        self.sequence = sequence
        self.envelope = author.envelope(sequence, components)
        self.fetcher = HttpFetcher() if server is not None else None

    @property
    def runs(self) -> dict[str, tuple[int, bytes]]:
        return {name: (self.sequence, sha256(image)) for name, image in self.images.items()}

    def status_components(self) -> list[dict[str, Any]]:
        return [{"image": name, "id": [f"0x{i:02x}"],
                 "running": {"sequence-number": self.sequence,
                             "digest": sha256(self.images[name]).hex()},
                 "counter": self.sequence, "reason": None}
                for i, name in enumerate(self.names)]


def all_counters(shape: str, value: int) -> dict[str, int]:
    return dict.fromkeys(SHAPE_COMPONENTS[shape], value)


@pytest.mark.parametrize("shape", SHAPES)
def test_lifecycle(tmp_path: Path, author: Author, server: tuple[str, Served],
                   shape: str) -> None:
    folder = new_device(tmp_path / "dev", [author.anchor], shape)
    names = SHAPE_COMPONENTS[shape]

    # init: no image, nothing pending, counters at zero
    blank = status(folder)
    assert blank["shape"] == shape
    assert blank["device-id"] == str(open_device(folder).config.device_id)
    assert [c["image"] for c in blank["components"]] == list(names)
    assert [c["id"] for c in blank["components"]] == [[f"0x{i:02x}"] for i in range(len(names))]
    assert all(c["running"] is None and c["counter"] == 0 for c in blank["components"])
    assert (blank["pending"], blank["trial"], blank["phase"]) == (False, False, "none")

    # install, integrated delivery: staged and pending, nothing runs yet
    v1 = Release(author, shape, 1)
    outcome = install(folder, v1.envelope)
    assert outcome.installed and outcome.written == names
    assert outcome.reason == (f"installed {', '.join(names)} (sequence number 1); pending "
                              "until the next boot")
    assert outcome.report is not None and outcome.report.result is True
    pending = status(folder)
    assert pending["pending"] is True and counters(folder) == all_counters(shape, 0)

    # boot: the update runs on trial; the counters have not moved
    result = boot(folder)
    assert result.trial and running(result) == v1.runs
    after_boot = status(folder)
    assert after_boot["pending"] is False and after_boot["phase"] == "tried"
    assert counters(folder) == all_counters(shape, 0)

    # confirm: counters raised to the running images; status says so
    assert confirm(folder) == all_counters(shape, 1)
    doc = status(folder)
    assert doc["components"] == v1.status_components()
    assert (doc["pending"], doc["trial"], doc["phase"]) == (False, False, "confirmed")
    result = boot(folder)
    assert not result.trial and running(result) == v1.runs

    # install, detached delivery over HTTP: the device fetches exactly the signed URIs
    _, served = server
    v2 = Release(author, shape, 2, server=server)
    outcome = install(folder, v2.envelope, v2.fetcher)
    assert outcome.installed, outcome.reason
    assert sorted(served.requests) == sorted(v2.paths.values())
    result = boot(folder)
    assert result.trial and running(result) == v2.runs

    # the new images die before they confirm (suitkit device boot --fail): the next boot
    # reverts the whole set, and the counters never saw sequence number 2
    result = boot(folder)
    assert not result.trial and running(result) == v1.runs
    assert counters(folder) == all_counters(shape, 1)
    doc = status(folder)
    assert doc["components"] == v1.status_components() and doc["pending"] is False

    # and the device still takes the next update
    v3 = Release(author, shape, 3, server=server)
    assert install(folder, v3.envelope, v3.fetcher).installed
    assert running(boot(folder)) == v3.runs
    assert confirm(folder) == all_counters(shape, 3)
    assert status(folder)["components"] == v3.status_components()


@pytest.mark.parametrize("shape", SHAPES)
def test_failed_install_leaves_the_state_unchanged(tmp_path: Path, author: Author,
                                                   server: tuple[str, Served],
                                                   shape: str) -> None:
    folder = new_device(tmp_path / "dev", [author.anchor], shape)
    v1 = Release(author, shape, 1)
    assert install(folder, v1.envelope).installed
    boot(folder)
    confirm(folder)
    before = status(folder)

    # the served images are not the ones signed: fetched, staged, refused
    bad = Release(author, shape, 2, server=server, tamper=True)
    outcome = install(folder, bad.envelope, bad.fetcher)
    assert not outcome.installed
    assert outcome.reason.startswith("failed: install[")
    assert "does not match expected" in outcome.reason
    assert status(folder) == before
    # refused before anything is staged: not signed by a trust anchor
    stranger = Author.create(tmp_path / "stranger", name="stranger")
    outcome = install(folder, Release(stranger, shape, 2).envelope)
    assert outcome.reason.startswith("rejected: no authentication block verifies")
    # a detached payload that is not there
    _, served = server
    missing = Release(author, shape, 2, server=server)
    served.files.clear()
    outcome = install(folder, missing.envelope, missing.fetcher)
    assert not outcome.installed and "HTTP 404" in outcome.reason

    assert status(folder) == before
    assert counters(folder) == all_counters(shape, 1)
    result = boot(folder)
    assert not result.trial and running(result) == v1.runs


@pytest.mark.parametrize("shape", ["mcu", "linux"])
def test_failed_install_keeps_a_pending_update(tmp_path: Path, author: Author,
                                               server: tuple[str, Served], shape: str) -> None:
    folder = new_device(tmp_path / "dev", [author.anchor], shape)
    v1 = Release(author, shape, 1)
    assert install(folder, v1.envelope).installed
    boot(folder)
    confirm(folder)
    v2 = Release(author, shape, 2)
    assert install(folder, v2.envelope).installed
    before = status(folder)
    assert before["pending"] is True

    bad = Release(author, shape, 3, server=server, tamper=True)
    assert not install(folder, bad.envelope, bad.fetcher).installed

    assert status(folder) == before
    assert running(boot(folder)) == v2.runs


@pytest.mark.parametrize("shape", SHAPES)
def test_status_reports_a_running_trial(tmp_path: Path, author: Author, shape: str) -> None:
    folder = new_device(tmp_path / "dev", [author.anchor], shape)
    assert install(folder, Release(author, shape, 1).envelope).installed
    assert boot(folder).trial
    assert status(folder)["trial"] is True


@pytest.mark.parametrize("shape", SHAPES)
def test_state_persists_only_through_the_folder(tmp_path: Path, author: Author,
                                                shape: str) -> None:
    folder = new_device(tmp_path / "dev", [author.anchor], shape)
    v1 = Release(author, shape, 1)

    # Two independent opens of the same folder see the same device.
    first, second = open_device(folder), open_device(folder)
    assert device_status(first) == device_status(second)

    opened = open_device(folder)
    assert opened.consumer().install(v1.envelope).installed
    opened.save()
    assert status(folder)["pending"] is True  # a fresh open sees the staged update
    result = boot(folder)
    assert result.trial and running(result) == v1.runs
    confirm(folder)
    assert counters(folder) == all_counters(shape, 1)

    # A flash device's state lives in the folder's flash files: work not saved is lost,
    # like a simulated board that was never written back. (A Linux device writes through.)
    v2 = Release(author, shape, 2)
    unsaved = open_device(folder)
    assert unsaved.consumer().install(v2.envelope).installed
    if shape == "linux":
        assert status(folder)["pending"] is True
    else:
        assert status(folder)["pending"] is False
        assert running(boot(folder)) == v1.runs
