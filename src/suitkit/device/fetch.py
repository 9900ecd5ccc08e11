"""Payload fetchers of the firmware consumer: files and HTTP(S) with Range resume.

A fetcher streams the bytes behind a URI in chunks, starting at an offset, and never yields more
than ``max_bytes`` in total: a payload longer than the manifest's image-size is refused, not
truncated (RFC 9124 THREAT.IMG.EXTRA), and a server that sends endless data is cut off at the
bound. Integrated payloads (``#name`` URIs) never reach a fetcher: the processor serves them from
the verified envelope.

HTTP downloads resume where they stopped: after a network cut the fetcher asks for
``Range: bytes=N-`` with ``If-Range`` set to the first response's ETag, so it never splices two
versions of a file together; if the server answers 200 (the file changed, or no range support)
it refuses rather than restarts silently in the middle of a stream. Retries are bounded in
count and time. Nothing fetched is trusted: the processor checks the digest of what was written.

Not here: where the bytes go (the slot writer), or persistence of the offset (the consumer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from suitkit.errors import FetchError

__all__ = ["FileFetcher", "HttpFetcher", "RoutingFetcher"]

CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class FileFetcher:
    """``file://`` URIs and plain paths, relative to ``root`` (a firmware folder or USB stick).

    Paths may not leave ``root``: a manifest cannot make a device read its own secrets.
    """

    root: Path

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        """Stream the file named by ``uri`` from ``offset`` (``arguments`` is unused).

        Raises:
            FetchError: the file is missing, outside ``root``, or longer than ``max_bytes``.
        """
        try:
            parsed = urlparse(uri)
            if parsed.scheme not in ("", "file"):
                raise FetchError(f"{uri}: not a file URI")
            root = self.root.resolve()
            path = (root / unquote(parsed.path).lstrip("/")).resolve()
        except (ValueError, OSError) as e:
            raise FetchError(f"{uri!r}: not a usable file URI: {e}") from e
        if not path.is_relative_to(root):
            raise FetchError(f"{uri}: outside the firmware folder {root}")
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise FetchError(f"{uri}: {size} bytes is more than the {max_bytes} bytes the "
                                 "manifest allows (image-size)")
            with path.open("rb") as f:
                f.seek(offset)
                position = offset
                while chunk := f.read(CHUNK):
                    position += len(chunk)
                    if position > max_bytes:  # the file grew while it was read
                        raise FetchError(f"{uri}: more than the {max_bytes} bytes the manifest "
                                         "allows (image-size)")
                    yield chunk
        except OSError as e:
            raise FetchError(f"{uri}: {e.strerror or e}") from e


@dataclass(slots=True)
class HttpFetcher:
    """HTTP(S) downloads with bounded size, bounded retries and Range resume.

    ``retries``: how many times a broken download is resumed. ``deadline``: seconds a whole
    fetch may take, retries included (a server that trickles bytes is cut off: THREAT of slow
    retrieval). ``client`` may be shared (connection reuse).
    """

    timeout: float = 10.0
    retries: int = 5
    deadline: float = 600.0
    backoff: float = 0.2
    client: httpx.Client | None = None

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        """Stream ``uri`` from ``offset``, resuming after network errors.

        ``arguments`` (suit-parameter-fetch-arguments) is implementation-defined; unused here.
        With its own client (the default) the deadline holds for the whole fetch, headers
        included: a watchdog closes the connection when it passes.
        """
        own = self.client is None
        client = self.client or httpx.Client(timeout=self.timeout, follow_redirects=False)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            client.close()  # interrupts a read that is blocked on a trickling server

        watchdog = threading.Timer(self.deadline, expire) if own else None
        if watchdog is not None:
            watchdog.daemon = True
            watchdog.start()
        try:
            yield from self._fetch(client, uri, max_bytes=max_bytes, offset=offset)
        except FetchError:
            raise
        except Exception as e:
            if expired.is_set():
                raise FetchError(f"{uri}: download took longer than {self.deadline:g} s") from e
            raise FetchError(f"{uri}: {type(e).__name__}: {e}") from e
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if own:
                client.close()

    def _fetch(self, client: httpx.Client, uri: str, *, max_bytes: int,
               offset: int) -> Iterator[bytes]:
        started = time.monotonic()
        position, etag, failures = offset, None, 0
        while True:
            headers = {"Accept-Encoding": "identity"}
            if position:
                headers["Range"] = f"bytes={position}-"
                if etag:
                    headers["If-Range"] = etag
            try:
                with client.stream("GET", uri, headers=headers) as response:
                    _check_status(uri, response, position)
                    encoding = response.headers.get("Content-Encoding", "identity").lower()
                    if encoding not in ("identity", ""):
                        # We asked for identity; decoding gzip would inflate before the bound.
                        raise FetchError(f"{uri}: the server sent Content-Encoding {encoding!r}; "
                                         "only identity is accepted")
                    etag = etag or response.headers.get("ETag")
                    total = _announced_total(response, position)
                    if total is not None and total > max_bytes:
                        raise FetchError(f"{uri}: {total} bytes is more than the {max_bytes} "
                                         "bytes the manifest allows (image-size)")
                    for chunk in response.iter_raw():
                        if position + len(chunk) > max_bytes:
                            raise FetchError(f"{uri}: the server sent more than the {max_bytes} "
                                             "bytes the manifest allows (image-size)")
                        position += len(chunk)
                        yield chunk
                        if time.monotonic() - started > self.deadline:
                            raise FetchError(f"{uri}: download took longer than "
                                             f"{self.deadline:g} s")
                    return
            except (httpx.TransportError, httpx.StreamError) as e:
                if time.monotonic() - started > self.deadline or client.is_closed:
                    raise FetchError(f"{uri}: download took longer than {self.deadline:g} s"
                                     ) from e
                failures += 1
                if failures > self.retries:
                    raise FetchError(f"{uri}: {type(e).__name__} after {failures} attempts at "
                                     f"byte {position}: {e}") from e
                time.sleep(min(self.backoff * 2 ** (failures - 1), 5.0))


def _check_status(uri: str, response: httpx.Response, position: int) -> None:
    if position and response.status_code == 200:
        raise FetchError(f"{uri}: the server ignored the resume request at byte {position} "
                         "(the file changed or ranges are not supported)")
    if position and response.status_code == 416:
        raise FetchError(f"{uri}: the server has fewer than {position} bytes")
    if response.status_code not in (200, 206):
        raise FetchError(f"{uri}: HTTP {response.status_code} {response.reason_phrase}")


def _announced_total(response: httpx.Response, position: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        try:
            return int(content_range.rsplit("/", 1)[1])
        except ValueError:
            return None
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit():
        return position + int(length)
    return None


@dataclass(frozen=True, slots=True)
class RoutingFetcher:
    """Dispatch on the URI scheme: http(s) to ``http``, file and plain paths to ``files``."""

    http: HttpFetcher
    files: FileFetcher | None = None

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        """Stream ``uri`` with the fetcher for its scheme.

        Raises:
            FetchError: unknown scheme, or the chosen fetcher's errors.
        """
        try:
            scheme = urlparse(uri).scheme
        except ValueError as e:
            raise FetchError(f"{uri!r}: not a URI: {e}") from e
        if scheme in ("http", "https"):
            return self.http.fetch(uri, max_bytes=max_bytes, offset=offset)
        if scheme in ("", "file") and self.files is not None:
            return self.files.fetch(uri, max_bytes=max_bytes, offset=offset)
        raise FetchError(f"{uri}: no fetcher for scheme {scheme or '(none)'!r}")
