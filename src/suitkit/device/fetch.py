"""Payload fetchers of the firmware consumer: files, HTTP(S) with Range resume, CoAP block-wise.

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

CoAP downloads (``CoapFetcher``) fetch one Block2 block per request and resume at any block; the
ETag of every block must equal the first one's (a changed resource is refused, never spliced).

Not here: where the bytes go (the slot writer), or persistence of the offset (the consumer).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

# aiocoap ships no type information (no py.typed): these imports are the untyped seam.
import aiocoap  # type: ignore[import-untyped]
import aiocoap.error  # type: ignore[import-untyped]
import httpx
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]
from aiocoap.optiontypes import BlockOption  # type: ignore[import-untyped]

from suitkit.errors import FetchError

__all__ = ["CoapFetcher", "FileFetcher", "HttpFetcher", "RoutingFetcher"]

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
    retrieval). ``client`` may be shared (connection reuse). ``tls``: the TLS context of its own
    clients (the device's CA bundle and client certificate: ``device.tls.ClientTls``).
    """

    timeout: float = 10.0
    retries: int = 5
    deadline: float = 600.0
    backoff: float = 0.2
    client: httpx.Client | None = None
    tls: ssl.SSLContext | None = None

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        """Stream ``uri`` from ``offset``, resuming after network errors.

        ``arguments`` (suit-parameter-fetch-arguments) is implementation-defined; unused here.
        With its own client (the default) the deadline holds for the whole fetch, headers
        included: a watchdog closes the connection when it passes.
        """
        own = self.client is None
        client = self.client or httpx.Client(
            timeout=self.timeout, follow_redirects=False,
            verify=self.tls if self.tls is not None else True)
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

_T = TypeVar("_T")

COAP_SZX = 6  # Block2 size exponent: 2 ** (6 + 4) = 1024-byte blocks
COAP_BLOCK = 1 << (COAP_SZX + 4)


class _LoopThread:
    """A private asyncio event loop on a daemon thread; the caller's thread submits coroutines
    and waits for their results (a one-slot hand-over: one block is in flight at a time)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="suitkit-coap-fetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run ``coro`` on the loop; wait at most ``timeout`` s (then cancel it, TimeoutError)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self, timeout: float) -> None:
        """Stop the loop and join the thread."""
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


@dataclass(slots=True)
class CoapFetcher:
    """``coap://`` downloads, one Block2 block (1 KiB) per request, with bounded size, bounded
    retries and resume at any offset.

    The download starts at block ``offset // 1024`` and drops the first ``offset % 1024`` bytes
    of it. The ETag of every block must equal the first block's: a changed ETag means the
    resource changed mid-download, and two versions are never spliced. ``timeout``: seconds to
    wait for one block; ``retries``: how many times one block is asked for again after a
    timeout or network error; ``deadline``: seconds the whole fetch may take, retries included.
    Each fetch runs its own aiocoap client context on a private event loop thread; both are shut
    down when the iterator finishes, fails or is closed early.
    """

    timeout: float = 5.0
    retries: int = 4
    deadline: float = 600.0
    backoff: float = 0.2

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        """Stream ``uri`` from ``offset`` (``arguments`` is unused).

        Raises:
            FetchError: not a coap:// URI, a CoAP error response (``4.04 Not Found``...), more
                than ``max_bytes``, a changed ETag, no answer after the retries, or the deadline.
        """
        try:
            scheme = urlparse(uri).scheme
        except ValueError as e:
            raise FetchError(f"{uri!r}: not a URI: {e}") from e
        if scheme != "coap":
            raise FetchError(f"{uri}: not a coap:// URI")
        if offset < 0:
            raise FetchError(f"{uri}: negative offset {offset}")
        runner = _LoopThread()
        context: Any = None
        try:
            context = runner.run(aiocoap.Context.create_client_context(), self.timeout)
            yield from self._fetch(runner, context, uri, max_bytes=max_bytes, offset=offset)
        except FetchError:
            raise
        except Exception as e:
            raise FetchError(f"{uri}: {type(e).__name__}: {e}") from e
        finally:
            if context is not None:
                with contextlib.suppress(Exception):
                    runner.run(context.shutdown(), self.timeout)
            runner.close(self.timeout)

    def _fetch(self, runner: _LoopThread, context: Any, uri: str, *, max_bytes: int,
               offset: int) -> Iterator[bytes]:
        started = time.monotonic()
        skip = offset % COAP_BLOCK
        position = offset - skip  # where the next block starts
        szx = COAP_SZX
        etag: bytes | None = None
        first = True
        while True:
            number = position // (1 << (szx + 4))
            response = self._block(runner, context, uri, number=number, szx=szx,
                                   started=started)
            if response.code != Code.CONTENT:
                diagnostic = bytes(response.payload[:200]).decode("utf-8", "replace")
                raise FetchError(f"{uri}: CoAP {response.code} for block {number}"
                                 + (f": {diagnostic}" if diagnostic else ""))
            if first:
                etag, first = response.opt.etag, False
            elif response.opt.etag != etag:
                raise FetchError(f"{uri}: the resource changed during the download (ETag "
                                 f"{_hex(etag)} became {_hex(response.opt.etag)} at block "
                                 f"{number}); refusing to splice two versions")
            size2 = response.opt.size2
            if size2 is not None and size2 > max_bytes:
                raise FetchError(f"{uri}: {size2} bytes is more than the {max_bytes} bytes the "
                                 "manifest allows (image-size)")
            payload = bytes(response.payload)
            block2 = response.opt.block2
            if block2 is None:
                if position:
                    raise FetchError(f"{uri}: the server ignored the request for block "
                                     f"{number} (no Block2 option in the answer)")
                more = False
            else:
                if (block2.start != position or block2.size_exponent > szx
                        or len(payload) > block2.size or (block2.more
                                                          and len(payload) != block2.size)):
                    raise FetchError(f"{uri}: asked for block {number} (szx {szx}), the server "
                                     f"answered block {block2.block_number} (szx "
                                     f"{block2.size_exponent}, {len(payload)} bytes)")
                szx, more = block2.size_exponent, block2.more
            if skip > len(payload):
                raise FetchError(f"{uri}: the server has fewer than {offset} bytes")
            chunk = payload[skip:]
            skip = 0
            if position + len(payload) > max_bytes:
                raise FetchError(f"{uri}: the server sent more than the {max_bytes} bytes the "
                                 "manifest allows (image-size)")
            position += len(payload)
            if chunk:
                yield chunk
            if not more:
                return
            if time.monotonic() - started > self.deadline:
                raise FetchError(f"{uri}: download took longer than {self.deadline:g} s")

    def _block(self, runner: _LoopThread, context: Any, uri: str, *, number: int, szx: int,
               started: float) -> Any:
        failures = 0
        while True:
            remaining = self.deadline - (time.monotonic() - started)
            if remaining <= 0:
                raise FetchError(f"{uri}: download took longer than {self.deadline:g} s")
            wait = min(self.timeout, remaining)
            try:
                return runner.run(_get_block(context, uri, number, szx, wait), wait + 1.0)
            except (TimeoutError, aiocoap.error.NetworkError) as e:
                failures += 1
                if failures > self.retries:
                    raise FetchError(f"{uri}: no answer for block {number} after {failures} "
                                     f"attempts: {type(e).__name__} {e}".rstrip()) from e
                remaining = self.deadline - (time.monotonic() - started)
                time.sleep(max(0.0, min(self.backoff * 2 ** (failures - 1), 5.0, remaining)))
            except aiocoap.error.Error as e:
                raise FetchError(f"{uri}: block {number}: {type(e).__name__}: {e}") from e


async def _get_block(context: Any, uri: str, number: int, szx: int, wait: float) -> Any:
    message = aiocoap.Message(code=aiocoap.GET, uri=uri)
    message.opt.block2 = BlockOption.BlockwiseTuple(number, False, szx)
    request = context.request(message, handle_blockwise=False)
    return await asyncio.wait_for(request.response, wait)


def _hex(etag: bytes | None) -> str:
    return etag.hex() if etag is not None else "(none)"


@dataclass(frozen=True, slots=True)
class RoutingFetcher:
    """Dispatch on the URI scheme: http(s) to ``http``, file and plain paths to ``files``,
    coap to ``coap``."""

    http: HttpFetcher
    files: FileFetcher | None = None
    coap: CoapFetcher | None = None

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
        if scheme == "coap" and self.coap is not None:
            return self.coap.fetch(uri, max_bytes=max_bytes, offset=offset)
        raise FetchError(f"{uri}: no fetcher for scheme {scheme or '(none)'!r}")
