"""Typed models of the firmware server's JSON answers (``/api/v1/releases``), for OpenAPI and
the contract test (issue #17): what ``app._release_json`` writes, member by member.

The routes build their answers as before (a dict, ``JSONResponse``); these models only
declare them (``response_model=``), so an answer costs no validation at run time. Answers may
gain members (``extra="allow"``): a client must ignore a member it does not know. Errors are
``suitkit.problems.Problem``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BlobLink", "ManifestSummary", "Release", "ReleaseComponent", "ReleaseList",
           "Signer"]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class BlobLink(_Answer):
    """A stored blob: its SHA-256 and where it is downloaded (content-addressed, immutable)."""

    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    url: str


class ReleaseComponent(_Answer):
    """A component of the release, as its manifest expects it."""

    index: int = Field(ge=0)
    identifier: list[str] = Field(description="the component identifier's parts, in hex")
    digest_algorithm: int | None
    digest: str | None
    size: int | None
    blob: str | None = Field(description="the SHA-256 of the stored image (null: none stored)")
    url: str | None
    dependency: bool = Field(default=False, description="a dependency manifest (trust "
                                                        "domains): blob is its envelope")


class Signer(_Answer):
    role: str | None
    key_id: str | None
    algorithms: list[str]


class ManifestSummary(_Answer):
    """What an operator reads of the verified manifest."""

    vendor_ids: list[str]
    class_ids: list[str]
    reference_uri: str | None
    text: dict[str, dict[str, Any]]
    signers: list[Signer]
    severed: list[str]


class Release(_Answer):
    """A release: the manifest digest as its id, its envelope and components."""

    id: str = Field(description="the manifest digest in hex")
    sequence_number: int = Field(ge=0)
    version: str | None = Field(default=None, description="the release's version (the upload's "
                                                          "form field; null: none given)")
    notes: str | None = Field(default=None, description="its release notes (null: none)")
    envelope: BlobLink
    components: list[ReleaseComponent]
    integrated: dict[str, BlobLink]
    manifest: ManifestSummary | None = Field(description="null: the stored envelope no longer "
                                                          "verifies against the trust anchors")


class ReleaseList(_Answer):
    releases: list[Release]
    next: str | None
    total: int | None = None
