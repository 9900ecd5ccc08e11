"""The response contract on in every test of the tracker, server and end-to-end suites
(issue #17): each answer the test servers send is checked against their ``/openapi.json``
(``suitkit.server.contract``), and a test during which one contradicted it fails, naming the
request and what was wrong.

At the start of the session, ``start`` sets ``SUITKIT_TEST_CONTRACT_LOG`` (inherited by every
``suitkit serve`` a test starts) and makes ``running_server`` (in-process servers) pass
``contract_log``. Servers started by tests of other suites write there too; only the listed
suites fail on it. ``SUITKIT_CONTRACT_CHECK=0`` turns the whole check off.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from suitkit.cli.server import CONTRACT_LOG_ENV
from suitkit.server import background
from suitkit.server.app import ServerConfig

SUITES = frozenset({"tracker", "server", "e2e"})
_TESTS = Path(__file__).resolve().parent
_log: list[Path] = []


def start() -> None:
    """Turn the check on for the session (``pytest_configure``)."""
    if os.environ.get("SUITKIT_CONTRACT_CHECK") == "0" or _log:
        return
    folder = Path(tempfile.mkdtemp(prefix="suitkit-contract-"))
    log = folder / "violations.jsonl"
    log.touch()
    _log.append(log)
    os.environ[CONTRACT_LOG_ENV] = str(log)
    create_app = background.create_app

    def checked(config: ServerConfig) -> object:
        if config.contract_log is None:
            config = dataclasses.replace(config, contract_log=log)
        return create_app(config)

    background.create_app = checked  # type: ignore[assignment]


def stop() -> None:
    """Remove the session's log (``pytest_unconfigure``)."""
    while _log:
        shutil.rmtree(_log.pop().parent, ignore_errors=True)


def _suite(item: pytest.Item) -> str | None:
    try:
        parts = Path(str(item.path)).resolve().relative_to(_TESTS).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 else None


@pytest.fixture(autouse=True)
def response_contract(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if a server answered against its schema while it ran."""
    if not _log or _suite(request.node) not in SUITES:
        yield
        return
    log = _log[0]
    start_at = log.stat().st_size
    yield
    with log.open("rb") as file:
        file.seek(start_at)
        lines = file.read().decode("utf-8", "replace").splitlines()
    found = [json.loads(line) for line in lines if line.strip()]
    if found:
        shown = "\n".join(f"{v['method']} {v['path']} -> {v['status']}: "
                          f"{'; '.join(v['problems'])}" for v in found[:10])
        pytest.fail(f"{len(found)} answer(s) contradict /openapi.json:\n{shown}",
                    pytrace=False)
