"""Shared pytest configuration. Helpers live in tests/helpers.py (on the pytest pythonpath)."""

import os
import signal
import threading
from types import FrameType

import pytest
from hypothesis import settings

import contract_kit
from contract_kit import response_contract  # noqa: F401 - answers checked (tests/contract_kit.py)
from pg import postgres  # noqa: F401 - the session's throwaway PostgreSQL (tests/pg.py)

# Property tests check behaviour, not speed (figures live in benchmarks/): on a machine shared
# with other runs one example can take seconds, so no per-example deadline anywhere.
settings.register_profile("suitkit", deadline=None)
settings.load_profile("suitkit")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real-path power-cut harness in full (``powercut_full``) takes minutes: it runs with
    ``SUITKIT_POWERCUT_FULL=1`` (or ``suitkit device powercut --scenario all-real``) and is
    deselected, not skipped, otherwise (a sample of it runs in every ``make test``)."""
    if os.environ.get("SUITKIT_POWERCUT_FULL") == "1":
        return
    kept = [item for item in items if item.get_closest_marker("powercut_full") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped with SIGTERM (a CI time-out, ``kill``, a second run's clean-up) ends as
    Ctrl-C does: pytest runs every finalizer, so the servers, PostgreSQL clusters and brokers
    the tests started are stopped by their pids (with SIGTERM's default, none of them were)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)
    contract_kit.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    contract_kit.stop()
