"""CoAP delivery of stored blobs (RFC 7252, block-wise RFC 7959) for constrained devices.

``GET coap://host/firmware/<sha256>`` and ``GET coap://host/envelopes/<sha256>`` serve the blob
with that SHA-256 from the ``BlobStore``, one Block2 block per request (1 KiB by default). The
block number and size the client asks for are honoured (a smaller server maximum scales the
number as RFC 7959 §2.4 says), so a device resumes at any block. Only the requested block is read
from the file: serving a 100 MiB image needs 1 KiB of memory per request, not 100 MiB.

Every successful response carries ETag = the first 8 bytes of the SHA-256 (CoAP ETags are at
most 8 bytes; the path already names the full digest), Size2 = the blob's length, Max-Age = one
year (content-addressed blobs never change) and Content-Format 42 (application/octet-stream).
Errors: 4.00 for a malformed digest, 4.04 for an unknown one or another path, 4.02 for a block
beyond the end; each with a one-line diagnostic payload.

Not here: Observe, DTLS or OSCORE (plain UDP only: devices verify what they fetch anyway), the
HTTP edge (``app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import threading
from typing import Any

# aiocoap ships no type information (no py.typed): the imports below are the untyped seam.
import aiocoap  # type: ignore[import-untyped]
import aiocoap.error  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]
from aiocoap.optiontypes import BlockOption  # type: ignore[import-untyped]

from suitkit.errors import StorageError
from suitkit.server.store import BlobStore, is_digest

__all__ = [
    "COAP_MAX_AGE",
    "CONTENT_FORMAT_OCTET_STREAM",
    "DEFAULT_SZX",
    "BlobResource",
    "CoapServer",
    "create_coap_site",
    "etag_for",
    "render_blob_block",
    "start_coap_server",
]

DEFAULT_SZX = 6  # 2 ** (6 + 4) = 1024-byte blocks, the largest regular (non-BERT) block size
CONTENT_FORMAT_OCTET_STREAM = 42
COAP_MAX_AGE = 365 * 24 * 3600  # immutable: cache for a year (Max-Age is a 32-bit uint)
COAP_PORT = 5683


def etag_for(digest: str) -> bytes:
    """The CoAP ETag of the blob ``digest`` (64 hex): its first 8 bytes."""
    return bytes.fromhex(digest[:16])


def _diagnostic(code: Any, text: str) -> Any:
    return aiocoap.Message(code=code, payload=text.encode()[:200],
                           content_format=0)  # text/plain diagnostic payload


def render_blob_block(store: BlobStore, digest: str, request: Any,
                      max_szx: int = DEFAULT_SZX) -> Any:
    """The response to a GET for the blob ``digest``: the block the request asks for (block 0
    if it asks for none and the blob is larger than one block), read from the file alone.

    ``max_szx`` is the largest block size exponent the server uses (6: 1024 bytes).
    """
    if not is_digest(digest):
        return _diagnostic(Code.BAD_REQUEST, "not a SHA-256 digest (64 lower-case hex)")
    try:
        blob = store.open_blob(digest)
    except StorageError:
        return _diagnostic(Code.NOT_FOUND, f"no blob {digest}")
    with blob:
        size = os.fstat(blob.fileno()).st_size
        asked = request.opt.block2
        if asked is None:
            number, szx = 0, max_szx
        else:
            # szx 7 (BERT) is for reliable transports; over UDP serve it as 1024-byte blocks.
            number, szx = asked.block_number, min(asked.size_exponent, 6)
            if szx > max_szx:  # RFC 7959 §2.4: answer with a smaller block, number scaled
                number <<= szx - max_szx
                szx = max_szx
        block_size = 1 << (szx + 4)
        start = number * block_size
        if asked is None and size <= block_size:
            blob.seek(0)
            payload, block2 = blob.read(size), None
        else:
            if start >= size and not (start == 0 and size == 0):
                return _diagnostic(Code.BAD_OPTION,
                                   f"block {number} is beyond the end ({size} bytes)")
            blob.seek(start)
            payload = blob.read(block_size)
            more = start + len(payload) < size
            block2 = BlockOption.BlockwiseTuple(number, more, szx)
    response = aiocoap.Message(code=Code.CONTENT, payload=payload,
                               content_format=CONTENT_FORMAT_OCTET_STREAM)
    response.opt.etag = etag_for(digest)
    response.opt.max_age = COAP_MAX_AGE
    response.opt.size2 = size
    if block2 is not None:
        response.opt.block2 = block2
    return response


class BlobResource(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc]
    """``<prefix>/<sha256>``: blobs of ``store`` with manual Block2 (aiocoap's own block-wise
    assembly is switched off so that no whole blob is ever held in memory)."""

    def __init__(self, store: BlobStore, max_szx: int = DEFAULT_SZX) -> None:
        super().__init__()
        self.store = store
        self.max_szx = max_szx

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        """Never: each request is answered with exactly the block it asks for."""
        return False

    async def render_get(self, request: Any) -> Any:
        """The requested block of the blob named by the one remaining path segment."""
        path = tuple(request.opt.uri_path)
        if len(path) != 1:
            return _diagnostic(Code.NOT_FOUND, "expected /<prefix>/<sha256>")
        return render_blob_block(self.store, path[0], request, self.max_szx)


def create_coap_site(store: BlobStore, max_szx: int = DEFAULT_SZX, *,
                     extra_resources: tuple[tuple[tuple[str, ...], Any], ...] = ()) -> Any:
    """An ``aiocoap.resource.Site`` serving ``/firmware/<sha256>`` and ``/envelopes/<sha256>``
    (plus ``/.well-known/core``) from ``store``, and each ``(path, resource)`` of
    ``extra_resources`` (the CLI adds other roles' resources, such as the tracker's notices)."""
    site = aiocoap.resource.Site()
    for path, resource in extra_resources:
        site.add_resource(list(path), resource)
    site.add_resource([".well-known", "core"],
                      aiocoap.resource.WKCResource(site.get_resources_as_linkheader))
    site.add_resource(["firmware"], BlobResource(store, max_szx))
    site.add_resource(["envelopes"], BlobResource(store, max_szx))
    return site


async def start_coap_server(store: BlobStore, host: str = "127.0.0.1", port: int = COAP_PORT,
                            *, site: Any = None) -> Any:
    """Bind a CoAP server for ``store`` (or for ``site``, if given) on ``host``:``port`` in the
    running event loop; return the ``aiocoap.Context`` (stop it with ``await ctx.shutdown()``).
    """
    _check_unbound(host, port)
    return await aiocoap.Context.create_server_context(
        site if site is not None else create_coap_site(store), bind=(host, port))


def _check_unbound(host: str, port: int) -> None:
    """Raise ``OSError`` (``EADDRINUSE``) when a UDP socket already holds ``host``:``port``.

    aiocoap binds with ``SO_REUSEPORT``, so a second server (another ``suitkit serve``) bound
    the port of a running one without an error, and the kernel then shared the requests
    between the two. A probe bound without it is refused while any socket holds the port.
    """
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind(address)


_FREE_PORT_ATTEMPTS = 10


def _free_udp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class CoapServer:
    """A CoAP server on its own event loop thread, for synchronous callers (tests, CLI).

    ``start()`` returns once the socket is bound (or raises its error); ``stop()`` shuts the
    context down and joins the thread. Also a context manager.
    """

    def __init__(self, store: BlobStore, host: str = "127.0.0.1", port: int = COAP_PORT,
                 *, site: Any = None, timeout: float = 10.0) -> None:
        self.store, self.host, self.port, self.site = store, host, port, site
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._context: Any = None

    def start(self) -> None:
        """Bind and serve in a background thread. Port 0 picks a free UDP port (retrying if
        another process takes it first); ``self.port`` is then the port bound.

        Raises:
            StorageError: the server could not be started (port in use, bad address).
        """
        if self.port != 0:
            self._start()
            return
        for attempt in range(_FREE_PORT_ATTEMPTS):
            self.port = _free_udp_port(self.host)
            try:
                self._start()
                return
            except StorageError as e:
                in_use = isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.EADDRINUSE
                if not in_use or attempt == _FREE_PORT_ATTEMPTS - 1:
                    raise

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._context = loop.run_until_complete(start_coap_server(
                    self.store, self.host, self.port, site=self.site))
            except (OSError, ValueError, aiocoap.error.Error) as e:  # for start()'s caller
                failure.append(e)
            finally:
                ready.set()
            if not failure:
                loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="suitkit-coap-server", daemon=True)
        self._thread.start()
        if not ready.wait(self.timeout):
            raise StorageError(f"the CoAP server on {self.host}:{self.port} did not start")
        if failure:
            self._thread.join(self.timeout)
            raise StorageError(f"cannot start the CoAP server on {self.host}:{self.port}: "
                               f"{failure[0]}") from failure[0]

    def stop(self) -> None:
        """Shut the server down and join its thread (idempotent)."""
        loop, thread, context = self._loop, self._thread, self._context
        self._loop = self._thread = self._context = None
        if loop is None or thread is None:
            return
        if context is not None and not loop.is_closed():
            done = asyncio.run_coroutine_threadsafe(context.shutdown(), loop)
            with contextlib.suppress(Exception):
                done.result(self.timeout)
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(self.timeout)

    def __enter__(self) -> CoapServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
