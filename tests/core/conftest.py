"""Fixtures for the core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.strictcbor_kit import require_extension
from suitkit.core import cbor, codec


@pytest.fixture(params=["fast", "reference"])
def both_decoders(request: pytest.FixtureRequest,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test on the compiled fast path and on the reference decoder alone."""
    if request.param == "reference":
        monkeypatch.setattr(cbor, "FAST", None)
        monkeypatch.setattr(codec, "_FAST", None)
    else:
        require_extension()
    yield request.param
