"""TLS of the device agent's connections (issue #13): the CA bundle it checks the server's
certificate against and its own client certificate, for a tracker that requires one
(``suitkit serve --tls-client-ca``: mutual TLS, the device known by its certificate as well as
its credential).

``ClientTls(ca, cert, key).context()`` builds one ``ssl.SSLContext`` that every connection of
the agent uses: the check-in and state calls, the envelope and payload downloads
(``HttpFetcher(tls=...)``) and the SSE and long-poll notices. Where it comes from (``device
run`` flags > ``SUITKIT_TLS_*`` environment > ``device.json``'s ``tls``) is the CLI's business.

Not here: certificate enrolment or renewal (EST, SCEP), revocation lists, CoAP over DTLS, MQTT
over TLS.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from suitkit.errors import KeyMaterialError

__all__ = ["ClientTls", "network_reason"]


@dataclass(frozen=True, slots=True)
class ClientTls:
    """``ca``: PEM CA certificates the server's certificate must chain to (``None``: the
    system's); ``cert``: the device's PEM certificate (chain), with its key unless ``key``
    names the key file."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def empty(self) -> bool:
        return self.ca is None and self.cert is None and self.key is None

    def context(self) -> ssl.SSLContext | None:
        """The context for the agent's connections (``None``: nothing configured: the
        defaults).

        Raises:
            KeyMaterialError: a file cannot be read or is not what it should be (one line
                naming the file).
        """
        if self.empty:
            return None
        if self.key is not None and self.cert is None:
            raise KeyMaterialError("--tls-key needs --tls-cert (the device's certificate)")
        try:
            context = ssl.create_default_context(
                cafile=str(self.ca) if self.ca is not None else None)
        except (OSError, ssl.SSLError) as e:
            raise KeyMaterialError(f"--tls-ca: cannot load {self.ca}: "
                                   f"{_reason(e)}") from None
        if self.cert is not None:
            try:
                context.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError) as e:
                files = f"{self.cert}" + (f" and {self.key}" if self.key is not None else "")
                raise KeyMaterialError(f"--tls-cert/--tls-key: cannot load {files}: "
                                       f"{_reason(e)}") from None
        return context

    def to_json(self) -> dict[str, str | None]:
        return {"ca": _text(self.ca), "cert": _text(self.cert), "key": _text(self.key)}

    def over(self, other: ClientTls) -> ClientTls:
        """These settings, each missing one taken from ``other``."""
        mine = self.cert is not None or self.key is not None
        cert, key = (self.cert, self.key) if mine else (other.cert, other.key)
        return ClientTls(self.ca or other.ca, cert, key)


_TLS_REASONS = (
    ("CERTIFICATE_REQUIRED", "the server requires a client certificate: give the device's "
                             "(--tls-cert/--tls-key, SUITKIT_TLS_CERT or device.json's tls)"),
    ("CERTIFICATE_VERIFY_FAILED", "the server's certificate is not one the device trusts: "
                                  "give its CA (--tls-ca, SUITKIT_TLS_CA or device.json's tls)"),
    ("UNKNOWN_CA", "the server does not accept the device's client certificate (not of a CA "
                   "it trusts)"),
    ("BAD_CERTIFICATE", "the server refused the device's client certificate"),
)


_CLOSED = ("the server closed the TLS connection before it answered, as a server that "
           "requires a client certificate does when it got none: give the device's "
           "(--tls-cert/--tls-key, SUITKIT_TLS_CERT or device.json's tls) if it has none")


def network_reason(error: httpx.HTTPError) -> str:
    """One line for a failed exchange; a TLS refusal says what to do about it (with TLS 1.3
    a client without the certificate the server requires often sees only the connection
    closed: said so, over https)."""
    text = str(error)
    for alert, reason in _TLS_REASONS:
        if alert in text.upper():
            return f"TLS: {reason}"
    try:
        https = error.request.url.scheme == "https"
    except RuntimeError:  # an error without its request
        https = False
    if https and isinstance(error, httpx.RemoteProtocolError | httpx.ReadError) \
            and ("without sending a response" in text or "EOF" in text or not text):
        return f"TLS: {_CLOSED} ({type(error).__name__}: {text or 'no reason'})"
    return f"{type(error).__name__}: {text}"


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _reason(e: OSError | ssl.SSLError) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    return e.strerror or str(e)
