"""The status tracker's configuration (built once by the CLI, read by ``api`` and ``auth``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from suitkit.core.report import MAX_REPORT_BYTES
from suitkit.limits import Limits
from suitkit.tracker.quotas import Quotas

__all__ = ["TrackerConfig"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """Configuration of the status tracker, built once by the CLI.

    ``db_url``: SQLAlchemy URL (``sqlite:///DATA/tracker.db`` by default in ``suitkit serve``).
    ``admin_token``: the bootstrap admin bearer token (``--admin-token-file``), compared in
    constant time; ``None``: only API tokens and device credentials authenticate.
    ``limits``: decoding limits for reports. ``clock``: the current time (UTC); token expiry
    is checked against it. ``quotas``: what one device may send and keep (rates, quotas,
    retention; ``tracker.quotas``).
    """

    db_url: str
    admin_token: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_report_bytes: int = MAX_REPORT_BYTES
    clock: Callable[[], datetime] = _utcnow
    quotas: Quotas = field(default_factory=Quotas)
