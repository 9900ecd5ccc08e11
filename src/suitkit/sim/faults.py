"""Faults a real fleet meets, injected through the seams a real device has.

- ``CuttingTransport``: an httpx transport that drops the connection after a number of bytes
  of a firmware download (``httpx.ReadError``, as a reset connection raises). The device's
  ``HttpFetcher`` then resumes with ``Range``/``If-Range`` where it stopped.
- ``HostileMirror``: a payload fetcher that stands for a mirror serving altered images: it
  fetches the real image and flips one byte. The device computes the digest of what it wrote
  and refuses the image; it keeps running what it ran.
- ``PowerCutFetcher``: the power fails in the middle of an install, while the image streams
  into the inactive slot: ``PowerCut`` (the flash model's exception, deliberately not a
  ``SuitError``) propagates through the consumer and the agent like the end of the world; what
  the flash held at that moment is what the device finds when the power comes back.

Each fault fires a bounded number of times and counts what it did, so a run's summary can say
exactly which faults were met.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from suitkit.bootloader.flash import PowerCut
from suitkit.device.consumer import PayloadFetcher

__all__ = ["CuttingTransport", "HostileMirror", "PowerCutFetcher"]

FIRMWARE_PATH = "/firmware/"


class _CutStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, cut_after: int) -> None:
        self._inner, self._cut_after = inner, cut_after

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self._inner:
            room = self._cut_after - sent
            if len(chunk) >= room:
                if room > 0:
                    yield chunk[:room]
                raise httpx.ReadError("connection reset by peer (injected network cut after "
                                      f"{self._cut_after} bytes)")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class CuttingTransport(httpx.BaseTransport):
    """Drops the first ``times`` firmware downloads after ``cut_after`` bytes each."""

    def __init__(self, cut_after: int, *, times: int = 1,
                 inner: httpx.BaseTransport | None = None) -> None:
        self._inner = inner or httpx.HTTPTransport()
        self._cut_after = cut_after
        self._left = times
        self._lock = threading.Lock()
        self.cuts = 0
        self.resumed_at: list[int] = []
        """The byte offsets of the ``Range`` requests that followed (the resumptions)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("Range", "")
        if wanted.startswith("bytes="):
            start = wanted.removeprefix("bytes=").split("-", 1)[0]
            if start.isdigit():
                self.resumed_at.append(int(start))
        response = self._inner.handle_request(request)
        if FIRMWARE_PATH not in request.url.path or response.status_code not in (200, 206):
            return response
        with self._lock:
            if self._left <= 0:
                return response
            self._left -= 1
            self.cuts += 1
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_CutStream(response.stream, self._cut_after),
                              extensions=response.extensions, request=request)

    def close(self) -> None:
        self._inner.close()


@dataclass
class HostileMirror:
    """A mirror that serves the real image with one byte changed (at ``offset``)."""

    inner: PayloadFetcher
    offset: int = 100
    served: int = 0

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        self.served += 1
        position = offset
        for chunk in self.inner.fetch(uri, max_bytes=max_bytes, offset=offset,
                                      arguments=arguments):
            piece = chunk
            if position <= self.offset < position + len(piece):
                at = self.offset - position
                piece = piece[:at] + bytes([piece[at] ^ 0x5A]) + piece[at + 1:]
            position += len(piece)
            yield piece


@dataclass
class PowerCutFetcher:
    """The power fails after ``cut_after`` bytes of the first ``times`` downloads."""

    inner: PayloadFetcher
    cut_after: int
    times: int = 1
    cuts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        with self._lock:
            armed = self.cuts < self.times
            if armed:
                self.cuts += 1
        sent = 0
        for chunk in self.inner.fetch(uri, max_bytes=max_bytes, offset=offset,
                                      arguments=arguments):
            if armed and sent + len(chunk) >= self.cut_after:
                yield chunk[: self.cut_after - sent]
                raise PowerCut(f"power failed {self.cut_after} bytes into the download "
                               "(injected)")
            sent += len(chunk)
            yield chunk
