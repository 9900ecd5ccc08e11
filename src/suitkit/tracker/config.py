"""The status tracker's configuration (built once by the CLI, read by ``api`` and ``auth``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from suitkit.core.report import MAX_REPORT_BYTES
from suitkit.limits import Limits
from suitkit.tracker.quotas import Quotas

__all__ = ["Artifact", "ArtifactLookup", "DdiOptions", "KnownRelease", "ReleaseArtifacts",
           "ReleaseLookup", "TrackerConfig"]


@dataclass(frozen=True, slots=True)
class KnownRelease:
    """A release the firmware server holds: its id (the manifest digest, lower-case hex) and
    the SHA-256 of its envelope, served at ``/envelopes/<envelope_sha256>``."""

    release: str
    envelope_sha256: str


ReleaseLookup = Callable[[str], KnownRelease | None]
"""The firmware server's releases as the tracker sees them (roles do not import each other:
``suitkit serve`` hands the tracker one over its store): the release with this id, or ``None``.
Raises ``StorageError`` when the store cannot be read."""


@dataclass(frozen=True, slots=True)
class Artifact:
    """One file of a release as the firmware server serves it: a name for it (``filename``),
    its URL path (``/envelopes/<sha256>`` or ``/firmware/<sha256>``), size and digests."""

    filename: str
    path: str
    size: int
    sha256: str
    sha1: str
    md5: str
    kind: Literal["envelope", "image"]


@dataclass(frozen=True, slots=True)
class ReleaseArtifacts:
    """A release's files: its SUIT envelope first, then its images."""

    release: str
    sequence_number: int
    artifacts: tuple[Artifact, ...]
    version: str | None = None
    """The release's version (issue #17), if it has one."""


ArtifactLookup = Callable[[str], ReleaseArtifacts | None]
"""The files of the release with this id (``None``: not on the firmware server), for the
protocols that list them (hawkBit DDI); ``suitkit serve`` hands one over its store, with the
SHA-1 and MD5 the firmware server does not keep computed once per file (bounded cache).
Raises ``StorageError`` when the store cannot be read."""


@dataclass(frozen=True, slots=True)
class DdiOptions:
    """The hawkBit DDI edge (``tracker.edges.ddi``): the one ``tenant`` it answers for
    (case-insensitive, as hawkBit's), and the ``poll_seconds`` a controller is told to sleep
    between two polls (``config.polling.sleep``)."""

    tenant: str = "DEFAULT"
    poll_seconds: int = 60


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """Configuration of the status tracker, built once by the CLI.

    ``db_url``: SQLAlchemy URL (``sqlite:///DATA/tracker.db`` by default in ``suitkit serve``).
    ``admin_token``: the bootstrap admin bearer token (``--admin-token-file``), compared in
    constant time; ``None``: only API tokens and device credentials authenticate.
    ``limits``: decoding limits for reports. ``clock``: the current time (UTC); token expiry
    is checked against it; ``None`` (the default): the database's clock on PostgreSQL (every
    replica agrees on it), the system clock on SQLite (``store.Store``).
    ``releases``: the firmware server's releases. With it a deployment or campaign names an
    uploaded release and the tracker derives its envelope URL (``public_url`` or the URL the
    request came to, ``/envelopes/<sha256>``); an unknown release, or an ``envelope_url`` that
    is not that release's envelope, is refused. ``None`` (a tracker without a firmware server,
    as in some tests): release and ``envelope_url`` are taken as given.
    ``public_url``: the firmware server's base URL as devices reach it (``serve --public-url``).
    is checked against it. ``quotas``: what one device may send and keep (rates, quotas,
    retention; ``tracker.quotas``).
    """

    db_url: str
    admin_token: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_report_bytes: int = MAX_REPORT_BYTES
    clock: Callable[[], datetime] | None = None
    releases: ReleaseLookup | None = None
    public_url: str | None = None
    quotas: Quotas = field(default_factory=Quotas)
    artifacts: ArtifactLookup | None = None
    """The firmware server's release files (``ArtifactLookup``), which the hawkBit DDI edge
    lists; ``None``: no DDI edge is mounted (``cli.notices.tracker_routes``)."""
    poll_after: int = 60
    """Seconds a device is told to wait before its next check-in (``poll_after`` of
    ``POST .../checkin``): a hint; the device may poll sooner or later."""
    signed_reports: tuple[str, ...] = ()
    """Who must sign its SUIT reports (report §8; ``serve --signed-reports``): ``"all"``, or
    device class IDs (lower-case UUIDs). Empty: unsigned reports are accepted from every
    device (existing agents); a signed report is checked whenever one comes."""
    nonce_days: float = 30.0
    """Days the nonce issued with an update stays valid for its report (0: no expiry)."""
