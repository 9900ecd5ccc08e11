"""The operator's console over HTTP: the admin, author and operator calls the simulator makes.

Nothing here imports the tracker or the firmware server: like any client, the simulator talks to
their HTTP API (docs/server.md, docs/tracker.md) with bearer tokens. A 503 (the server is at its
connection limit) is asked again after 0.5, 1 and 2 s. Every failure is a ``ControlError`` with
one line naming the call and the server's answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from suitkit.device.agent import error_of
from suitkit.errors import SuitError
from suitkit.sim.firmware import Release

__all__ = ["Console", "ControlError", "Registered", "StoredRelease"]

_DEPLOY_BATCH = 500
_BUSY_RETRIES = (0.5, 1.0, 2.0)
"""Seconds to wait before asking again after a 503 (the server is at its connection limit)."""
TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class ControlError(SuitError):
    """A call to the server failed (one line)."""


@dataclass(frozen=True, slots=True)
class Registered:
    """A device the tracker knows: its id and its credential ``<id>.<secret>``."""

    id: str
    credential: str


@dataclass(frozen=True, slots=True)
class StoredRelease:
    """A release the firmware server stored: its id (the manifest digest) and envelope URL."""

    id: str
    envelope_url: str
    sequence: int


class Console:
    """Calls on ``url`` with a bearer ``token`` (admin by default; ``as_token`` for another),
    each answered within ``timeout`` seconds (default 30)."""

    def __init__(self, url: str, token: str, *, transport: httpx.BaseTransport | None = None,
                 timeout: float | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.client = httpx.Client(
            base_url=self.url, transport=transport,
            timeout=TIMEOUT if timeout is None else httpx.Timeout(timeout, connect=5.0))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, expected: Sequence[int] = (200,), *,
             token: str | None = None, **kwargs: Any) -> Any:
        """The decoded JSON answer (``None`` for an empty one).

        Raises:
            ControlError: network error or a status not in ``expected``.
        """
        headers = {"Authorization": f"Bearer {token or self.token}"}
        for delay in (*_BUSY_RETRIES, None):
            try:
                response = self.client.request(method, path, headers=headers, **kwargs)
            except httpx.HTTPError as e:
                raise ControlError(f"{method} {path}: {type(e).__name__}: {e}") from None
            if response.status_code != 503 or delay is None:
                break
            time.sleep(delay)  # the server is at its connection limit: a moment, then again
        if response.status_code not in expected:
            raise ControlError(f"{method} {path}: HTTP {response.status_code}: "
                               f"{error_of(response)}")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ControlError(f"{method} {path}: the answer is not JSON") from None

    # ---- tokens and devices

    def create_token(self, name: str, role: str, *, days: int = 1) -> str:
        """A new API token ``tok_<id>.<secret>`` with ``role`` (admin only)."""
        doc = self.call("POST", "/api/v1/tokens", (201,),
                        json={"name": name, "role": role, "expires_in_days": days})
        return str(doc["token"])

    def register(self, name: str) -> Registered:
        doc = self.call("POST", "/api/v1/devices", (201,), json={"name": name})
        return Registered(str(doc["id"]), str(doc["token"]))

    def device(self, device_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v1/devices/{device_id}"))

    def devices(self) -> list[dict[str, Any]]:
        return self.pages("/api/v1/devices", "devices")

    def history(self, device_id: str) -> list[dict[str, Any]]:
        return self.pages(f"/api/v1/devices/{device_id}/history", "history")

    def pages(self, path: str, key: str) -> list[dict[str, Any]]:
        """Every item of a paged list: its pages in order, following ``next`` to the end."""
        items: list[dict[str, Any]] = []
        params: dict[str, str | int] = {"limit": 1000}
        while True:
            doc = self.call("GET", path, params=params)
            items += doc[key]
            if doc.get("next") is None:
                return items
            params = {"limit": 1000, "after": str(doc["next"])}

    # ---- releases and deployments

    def upload(self, release: Release, *, token: str | None = None) -> StoredRelease:
        """Upload the envelope and (for a detached release) its images."""
        files: list[tuple[str, tuple[str, bytes, str]]] = [
            ("envelope", (f"{release.label}.suit", release.envelope,
                          "application/suit-envelope+cose"))]
        if release.detached:
            files += [(f"image-{i}", (f"{release.label}-{i}.bin", image,
                                      "application/octet-stream"))
                      for i, image in release.images.items()]
        doc = self.call("POST", "/api/v1/releases", (200, 201), token=token, files=files)
        return StoredRelease(str(doc["id"]), self.url + str(doc["envelope"]["url"]),
                             int(doc["sequence_number"]))

    def deploy(self, release: StoredRelease, device_ids: Iterable[str], *,
               token: str | None = None) -> int:
        """Assign ``release`` to the devices (in batches); the number of devices notified."""
        ids = list(device_ids)
        done = 0
        for start in range(0, len(ids), _DEPLOY_BATCH):
            batch = ids[start:start + _DEPLOY_BATCH]
            # the release by its id: the server derives the envelope URL
            doc = self.call("POST", "/api/v1/deployments", (201,), token=token, json={
                "release": release.id, "devices": batch})
            done += len(doc["devices"])
        return done
