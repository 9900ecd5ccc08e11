"""Fixtures of the attack suite: an author, a running device, hostile HTTP and CoAP servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from security.hostile import HostileCoap, HostileHttp, hostile_coap, hostile_http
from security.kit import Author, running_device


@pytest.fixture
def author(tmp_path: Path) -> Author:
    return Author.create(tmp_path / "author")


@pytest.fixture
def device(tmp_path: Path, author: Author) -> Path:
    """A device running a confirmed release 1 of component [h'00'] (mcu shape)."""
    return running_device(tmp_path / "dev", author)


@pytest.fixture
def http() -> Iterator[HostileHttp]:
    with hostile_http() as server:
        yield server


@pytest.fixture
def coap() -> Iterator[HostileCoap]:
    with hostile_coap() as server:
        yield server
