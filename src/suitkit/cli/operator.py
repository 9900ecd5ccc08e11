"""``suitkit token ...`` and ``suitkit devices ...``: operate a status tracker over its HTTP API.

Every command takes ``--server URL`` and ``--token-file FILE`` (or ``SUITKIT_SERVER`` and
``SUITKIT_TOKEN_FILE``); ``ApiClient`` is the shared helper (other command groups, such as
``suitkit campaign``, reuse it). Exit statuses: 0 done, 1 the server refused (one line with its
``error``), 2 bad usage or the server cannot be reached.

- ``token create NAME --role R [--expires-in-days N] [--out FILE [--force]]``: the new token
  goes to ``--out`` (written atomically, mode 0600; an existing file is refused before the
  token is made, unless ``--force``) or to stdout; it is shown only this once.
- ``token list [--json]``, ``token revoke ID``.
- ``devices list [--limit N] [--json]``, ``devices show ID [--limit N] [--json]`` (the device,
  its inventory, history). Lists come in pages: ``ApiClient.pages`` follows ``next`` to the end
  (or to ``--limit`` items).
- ``devices capabilities ID [--json | --cbor OUT | --check ENVELOPE]``: what the device
  supports (its SUIT capability report, draft-ietf-suit-report §6), for authors writing
  manifests for it; ``--check`` lists what an envelope uses beyond it.
- ``devices recipient-key ID --out FILE [--index N]``: a device's published ECDH-ES public key,
  as a file ``suitkit encrypt --recipient`` takes.
- ``devices report-key ID PUB`` (admin): register the public key the device signs its reports
  with (``--remove``: unregister it).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Column, Table
from rich.text import Text
from rich.tree import Tree

from suitkit.cli.common import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    JsonOption,
    fail,
    handles_errors,
    new_app,
    out,
    print_json,
    read_token,
)
from suitkit.device.tls import ClientTls, network_reason
from suitkit.errors import KeyMaterialError
from suitkit.fileio import atomic_write, fsync_dir

__all__ = ["ApiClient", "ServerOption", "TimeoutOption", "TokenFileOption", "class_label",
           "classes_app", "devices_app", "release_label", "releases_app", "token_app"]

token_app = new_app(help="API tokens of the status tracker (admin): create, list, revoke.",
                    no_args_is_help=True)
devices_app = new_app(help="Devices known to the status tracker (admin, operator).",
                      no_args_is_help=True)
releases_app = new_app(help="Releases the firmware server holds, by version (admin, author, "
                       "operator).", no_args_is_help=True)
classes_app = new_app(help="Device classes by name: list them, name one (admin, operator).",
                      no_args_is_help=True)
VerboseOption = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Show the ids (class, release) beside the names.")]

ServerOption = Annotated[str, typer.Option(
    "--server", envvar="SUITKIT_SERVER", help="Server URL, e.g. http://127.0.0.1:8080.")]
TokenFileOption = Annotated[Path, typer.Option(
    "--token-file", envvar="SUITKIT_TOKEN_FILE", help="File holding your API token.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds to wait.")]
LimitOption = Annotated[int | None, typer.Option(
    "--limit", min=1, help="Show at most N items (default: all, page after page).")]
_PAGE = 1000  # items per request when following a paged list


@dataclass(frozen=True, slots=True)
class ApiClient:
    """Calls to the server's JSON API with a bearer token; every failure is one line and an
    exit status (1 refused by the server, 2 not the expected answer, 5 unreachable)."""

    server: str
    token: str
    timeout: float = 30.0
    verify: ssl.SSLContext | bool = True
    """TLS: ``SUITKIT_TLS_CA`` (the server's CA), ``SUITKIT_TLS_CERT``/``SUITKIT_TLS_KEY``
    (a client certificate, for a server that requires one), else the defaults."""

    @classmethod
    def from_options(cls, server: str, token_file: Path, timeout: float = 30.0) -> ApiClient:
        """From ``--server`` and ``--token-file`` (exit 2 for a bad URL or token file) and
        the ``SUITKIT_TLS_*`` environment (exit 2 for a file that cannot be loaded)."""
        url = server.rstrip("/")
        if not url.lower().startswith(("http://", "https://")):
            fail(f"--server: expected an http:// or https:// URL, got {server!r}", EXIT_USAGE)
        if timeout <= 0:
            fail("--timeout must be positive", EXIT_USAGE)
        env = {k: Path(os.environ[k]) if os.environ.get(k) else None
               for k in ("SUITKIT_TLS_CA", "SUITKIT_TLS_CERT", "SUITKIT_TLS_KEY")}
        try:
            context = ClientTls(env["SUITKIT_TLS_CA"], env["SUITKIT_TLS_CERT"],
                                env["SUITKIT_TLS_KEY"]).context()
        except KeyMaterialError as e:
            fail(f"SUITKIT_TLS_*: {e}", EXIT_USAGE)
        return cls(url, read_token(token_file), timeout,
                   context if context is not None else True)

    def request(self, method: str, path: str, *, body: Any = None,
                params: Mapping[str, str | list[str]] | None = None,
                ok: Iterable[int] = (200, 201, 204)) -> Any:
        """The decoded JSON answer (``None`` for an empty one) of ``method path``."""
        url = f"{self.server}{path}"
        try:
            response = httpx.request(method, url, json=body, params=params, timeout=self.timeout,
                                     headers={"Authorization": f"Bearer {self.token}"},
                                     verify=self.verify)
        except httpx.HTTPError as e:
            fail(f"cannot reach {self.server}: {network_reason(e)}", EXIT_UNREACHABLE)
        doc = _json(response)
        if response.status_code not in set(ok):
            message = doc.get("error") if isinstance(doc, dict) else None
            fail(f"{method} {path} refused (HTTP {response.status_code}): "
                 f"{message or response.reason_phrase}", EXIT_FAILED)
        if response.content and doc is None:
            fail(f"unexpected answer from {url}: not JSON", EXIT_USAGE)
        return doc

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def pages(self, path: str, key: str, *, limit: int | None = None,
              params: Mapping[str, str | list[str]] | None = None) -> list[Any]:
        """Every item of the paged list ``key`` at ``path``, following ``next`` page after
        page; only the first ``limit`` items when given."""
        return self.pages_total(path, key, limit=limit, params=params)[0]

    def pages_total(self, path: str, key: str, *, limit: int | None = None,
                    params: Mapping[str, str | list[str]] | None = None,
                    total: bool = False) -> tuple[list[Any], int | None]:
        """``pages``, and with ``total`` the list's ``total`` as the server counts it (the
        first page's ``?total=true``; filters applied)."""
        items: list[Any] = []
        after: str | None = None
        count: int | None = None
        while limit is None or len(items) < limit:
            query: dict[str, str | list[str]] = dict(params or {})
            if total and count is None:
                query["total"] = "true"
            query["limit"] = str(min(_PAGE, limit - len(items)) if limit is not None else _PAGE)
            if after is not None:
                query["after"] = after
            doc = self.get(path, params=query)
            items += _field(doc, key, list)
            if total and count is None:
                count = _field(doc, "total", int)
            after = doc.get("next")
            if after is None:
                break
            if not isinstance(after, str):
                fail("unexpected answer from the server: 'next' is not a cursor", EXIT_USAGE)
        return (items if limit is None else items[:limit]), count

    def post(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("POST", path, body=body, **kwargs)


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _field(doc: Any, key: str, kind: type) -> Any:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, kind):
        fail(f"unexpected answer from the server: no {key!r}", EXIT_USAGE)
    return value


def _row(table: Table, *cells: str) -> None:
    """A table row of plain text (no Rich markup from the server's data)."""
    table.add_row(*(Text(cell) for cell in cells))


def _short(moment: object) -> str:
    return str(moment)[:19].replace("T", " ") if moment else "-"


def _create_private(path: Path, data: bytes) -> bool:
    """Write a new file of mode 0600 atomically and durably (temp file, fsync, link: never
    over an existing file); False if ``path`` exists.

    Raises:
        OSError: it could not be written (nothing is left behind).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                    dir=path.parent if str(path.parent) else ".")
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return False
        fsync_dir(path.parent if str(path.parent) else Path("."))
        return True
    finally:
        os.unlink(tmp_name)


# ------------------------------------------------------------------------------ tokens


@token_app.command("create")
@handles_errors
def token_create(
    name: Annotated[str, typer.Argument(help="A name for the token (shown in the audit log).")],
    role: Annotated[str, typer.Option("--role", help="admin, author (uploads) or operator "
                                      "(deploys).")],
    server: ServerOption,
    token_file: TokenFileOption,
    expires_in_days: Annotated[int | None, typer.Option(
        "--expires-in-days", help="Days until it expires (server default 90, at most 366).")
    ] = None,
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="Write the new token to this file (mode 0600) instead of printing it; "
        "the file must not exist yet (see --force).")
    ] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing --out file.")] = False,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Create an API token (admin); it is shown only this once (with ``--json``, in the
    document's ``token``, unless written to ``--out``)."""
    if out_file is not None:  # before the token is made: it is shown only once
        if not force and os.path.lexists(out_file):
            fail(f"--out {out_file} already exists; give --force to replace it", EXIT_USAGE)
        folder = out_file.parent if str(out_file.parent) else Path(".")
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            fail(f"--out {out_file}: cannot write in {folder} (not a writable directory)",
                 EXIT_USAGE)
    client = ApiClient.from_options(server, token_file, timeout)
    body: dict[str, Any] = {"name": name, "role": role}
    if expires_in_days is not None:
        body["expires_in_days"] = expires_in_days
    doc = client.post("/api/v1/tokens", body)
    token = _field(doc, "token", str)
    summary = (f"token {_field(doc, 'id', str)} ({doc.get('role')}, {name!r}) expires "
               f"{_short(doc.get('expires'))}")
    if out_file is not None:
        if force:
            atomic_write(out_file, f"{token}\n".encode(), mode=0o600)
        elif not _create_private(out_file, f"{token}\n".encode()):
            fail(f"--out {out_file} appeared meanwhile and was left alone; token "
                 f"{doc.get('id')} was not saved: revoke it (suitkit token revoke)", EXIT_USAGE)
        if as_json:
            print_json({**{k: v for k, v in doc.items() if k != "token"},
                        "written_to": str(out_file)})
            return
        out.print(f"{summary}; written to {out_file}", markup=False)
    elif as_json:
        print_json(doc)
    else:
        out.print(token, markup=False)
        typer.echo(summary, err=True)


@token_app.command("list")
@handles_errors
def token_list(server: ServerOption, token_file: TokenFileOption, as_json: JsonOption = False,
               timeout: TimeoutOption = 30.0) -> None:
    """List API tokens (admin); never their secrets."""
    tokens = ApiClient.from_options(server, token_file, timeout).pages("/api/v1/tokens",
                                                                       "tokens")
    if as_json:
        print_json(tokens)
        return
    table = Table(Column("id", no_wrap=True), "name", "role", "state", "expires", "last used",
                  "created by")
    for t in tokens:
        state = "revoked" if t.get("revoked") else "active"
        _row(table, str(t.get("id")), str(t.get("name")), str(t.get("role")), state,
                      _short(t.get("expires")), _short(t.get("last_used")),
                      str(t.get("created_by")))
    out.print(table)


@token_app.command("revoke")
@handles_errors
def token_revoke(token_id: Annotated[str, typer.Argument(metavar="ID", help="Token id.")],
                 server: ServerOption, token_file: TokenFileOption,
                 as_json: JsonOption = False, timeout: TimeoutOption = 30.0) -> None:
    """Revoke an API token (admin): from now on it is refused."""
    if not token_id or "/" in token_id or len(token_id) > 40:
        fail(f"expected a token id such as 3f2a9c1e0b7d4a66, got {token_id[:40]!r}", EXIT_USAGE)
    ApiClient.from_options(server, token_file, timeout).request(
        "DELETE", f"/api/v1/tokens/{token_id}", ok=(204,))
    if as_json:
        print_json({"id": token_id, "revoked": True})
        return
    out.print(f"token {token_id} revoked", markup=False)


# ------------------------------------------------------------------------------ devices


@devices_app.command("list")
@handles_errors
def devices_list(
        server: ServerOption, token_file: TokenFileOption, limit: LimitOption = None,
        state: Annotated[list[str] | None, typer.Option(
            "--state", help="Only devices in this update state (failed, succeeded, ...; none: "
                            "never updated); repeat it or give a comma list: any of them.")
        ] = None,
        class_id: Annotated[list[str] | None, typer.Option(
            "--class", help="Only devices of this class id (UUID); repeatable: any.")] = None,
        tag: Annotated[list[str] | None, typer.Option(
            "--tag", help="Only devices with this tag; repeatable: every one.")] = None,
        version: Annotated[list[str] | None, typer.Option(
            "--version", help="Only devices with a component at this version (1.2.0); "
                              "repeatable: any.")] = None,
        seen_before: Annotated[str | None, typer.Option(
            "--last-seen-before", help="Only devices last seen before this RFC 3339 time "
                                       "(2026-01-31T12:00:00Z).")] = None,
        seen_after: Annotated[str | None, typer.Option(
            "--last-seen-after", help="Only devices last seen at or after this RFC 3339 "
                                      "time.")] = None,
        sort: Annotated[str | None, typer.Option(
            "--sort", help="Order by created (default), name, state or last_seen; '-' before "
                           "it: descending (--sort -last_seen).")] = None,
        total: Annotated[bool, typer.Option(
            "--total", help="Print how many devices match (with --json: {devices, total}).")
        ] = False,
        as_json: JsonOption = False, verbose: VerboseOption = False,
        timeout: TimeoutOption = 30.0) -> None:
    """List devices, oldest first, with their class's name and the version they run (admin,
    operator), filtered and sorted by the server."""
    params: dict[str, str | list[str]] = {}
    for name, values in (("state", state), ("class", class_id), ("tag", tag),
                         ("version", version)):
        if values:
            params[name] = list(values)
    for name, value in (("last_seen_before", seen_before), ("last_seen_after", seen_after),
                        ("sort", sort)):
        if value is not None:
            params[name] = value
    devices, count = ApiClient.from_options(server, token_file, timeout).pages_total(
        "/api/v1/devices", "devices", limit=limit, params=params, total=total)
    if as_json:
        print_json({"devices": devices, "total": count} if total else devices)
        return
    columns = ["name", "state", "version", "last seen", "class"]
    table = Table(Column("id", no_wrap=True), *columns,
                  *([Column("class id", no_wrap=True)] if verbose else []))
    for d in devices:
        cells = [str(d.get("id")), str(d.get("name")), str(d.get("state") or "-"),
                 str(d.get("version") or "-"), _short(d.get("last_seen")), class_label(d)]
        _row(table, *cells, *([str(d.get("class_id") or "-")] if verbose else []))
    out.print(table)
    if total:
        out.print(f"{count} device(s) match", markup=False)


def class_label(doc: dict[str, Any]) -> str:
    """How a class is shown to people: ``vendor / class`` names, else its id, else ``-``."""
    vendor, klass = doc.get("vendor_name"), doc.get("class_name")
    if klass:
        return f"{vendor} / {klass}" if vendor else str(klass)
    return str(doc.get("class_id") or "-")


def release_label(version: object, release_id: object) -> str:
    """A release for people: its version and a short id, else the id."""
    short = str(release_id or "-")[:12]
    return f"{version} ({short})" if version else str(release_id or "-")


@devices_app.command("show")
@handles_errors
def devices_show(device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.")],
                 server: ServerOption, token_file: TokenFileOption, limit: LimitOption = None,
                 as_json: JsonOption = False, timeout: TimeoutOption = 30.0) -> None:
    """One device: identity, inventory and update history, oldest first (``--limit``: its
    newest N items; admin, operator)."""
    if not device_id or "/" in device_id or len(device_id) > 36:
        fail(f"expected a device id (a UUID), got {device_id[:40]!r}", EXIT_USAGE)
    client = ApiClient.from_options(server, token_file, timeout)
    device = client.get(f"/api/v1/devices/{device_id}")
    path = f"/api/v1/devices/{device_id}/history"
    if limit is None:
        history = client.pages(path, "history")
    else:  # the newest N, shown in the order they happened
        history = client.pages(path, "history", limit=limit, params={"order": "newest"})[::-1]
    if not isinstance(device, dict):
        fail("unexpected answer from the server: not a device", EXIT_USAGE)
    if as_json:
        print_json({**device, "history": history})
        return
    tree = Tree(Text(f"device {device.get('id')} ({device.get('name')})"))
    tree.add(Text(f"class: {class_label(device)}"))
    tree.add(Text(f"version: {device.get('version') or '-'}"))
    for key in ("state", "state_changed", "last_seen", "vendor_id", "class_id", "created"):
        value = device.get(key)
        tree.add(Text(f"{key}: {value if value is not None else '-'}"))
    components = tree.add("components")
    for c in device.get("components") or []:
        ident = "/".join(c.get("id") or [])
        version = c.get("version")
        shown = ".".join(map(str, version)) if isinstance(version, list) else "-"
        components.add(Text(f"[{ident}] sequence {c.get('sequence')} version {shown} "
                            f"digest {c.get('digest') or '-'}"))
    hardware = tree.add("hardware")
    for key, value in sorted((device.get("hardware") or {}).items()):
        hardware.add(Text(f"{key}: {value}"))
    keys = device.get("recipient_keys") or []
    tree.add(Text(f"recipient keys: {len(keys)} (suitkit devices recipient-key)" if keys
                  else "recipient keys: none"))
    tree.add(Text(f"report key: {'registered' if device.get('report_key') else 'none'}"))
    capabilities = device.get("capabilities")
    if isinstance(capabilities, dict):
        _capability_tree(tree.add("capabilities"), capabilities)
    else:
        tree.add(Text("capabilities: none reported"))
    events = tree.add("history")
    for item in history:
        if item.get("kind") == "event":
            events.add(Text(f"{item.get('seq')}. {_short(item.get('timestamp'))} "
                            f"{item.get('previous') or '-'} -> {item.get('state')} "
                            f"{item.get('detail') or ''}".rstrip()))
        else:
            summary = item.get("summary") or {}
            ok, signed = summary.get("succeeded"), summary.get("signed")
            events.add(Text(f"{item.get('seq')}. {_short(item.get('received'))} report "
                            f"({'succeeded' if ok else 'failed'}, {item.get('size')} bytes"
                            f"{f', signed ({signed})' if signed else ''})"))
    out.print(tree)


def _capability_tree(node: Tree, doc: dict[str, Any]) -> None:
    """A capability report's JSON (``report.capability_json``) as tree lines."""
    if "error" in doc:
        node.add(Text(str(doc["error"])))
        return
    parts = []
    for c in doc.get("components") or []:
        ident = "/".join(c.get("id") or []) if isinstance(c, dict) else "?"
        parts.append(f"[{ident}{'/*' if isinstance(c, dict) and c.get('wildcard') else ''}]")
    node.add(Text(f"components: {' '.join(parts) or '-'}"))
    for name in ("commands", "parameters", "algorithms", "envelope", "manifest", "common",
                 "text", "component_text", "dependency"):
        if isinstance(doc.get(name), list):
            node.add(Text(f"{name.replace('_', ' ')}: {', '.join(map(str, doc[name]))}"))
    for path, numbers in (doc.get("extensions") or {}).items():
        node.add(Text(f"[{path}]: {numbers}"))


def _class_id(class_id: str) -> str:
    import uuid  # noqa: PLC0415

    try:
        return str(uuid.UUID(class_id))
    except ValueError:
        fail(f"expected a class id (a UUID), got {class_id[:40]!r}", EXIT_USAGE)


def _device_id(device_id: str) -> str:
    if not device_id or "/" in device_id or len(device_id) > 36:
        fail(f"expected a device id (a UUID), got {device_id[:40]!r}", EXIT_USAGE)
    return device_id


@devices_app.command("capabilities")
@handles_errors
def devices_capabilities(
        device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.")],
        server: ServerOption, token_file: TokenFileOption, as_json: JsonOption = False,
        cbor_out: Annotated[Path | None, typer.Option(
            "--cbor", help="Write the capability report as the device sent it (CBOR) to this "
            "file.")] = None,
        check: Annotated[Path | None, typer.Option(
            "--check", metavar="ENVELOPE", help="Say what this envelope uses that the device "
            "does not support (exit 1 if anything).")] = None,
        timeout: TimeoutOption = 30.0) -> None:
    """What a device supports: its SUIT capability report (components, commands, parameters,
    algorithms; admin, operator, author); --check: an envelope against it."""
    client = ApiClient.from_options(server, token_file, timeout)
    path = f"/api/v1/devices/{_device_id(device_id)}/capabilities"
    if cbor_out is not None or check is not None:
        try:
            response = httpx.get(f"{client.server}{path}", params={"format": "cbor"},
                                 timeout=client.timeout,
                                 headers={"Authorization": f"Bearer {client.token}"})
        except httpx.HTTPError as e:
            fail(f"cannot reach {client.server}: {type(e).__name__}: {e}", EXIT_USAGE)
        if response.status_code != 200:
            doc = _json(response)
            message = doc.get("error") if isinstance(doc, dict) else None
            fail(f"GET {path} refused (HTTP {response.status_code}): "
                 f"{message or response.reason_phrase}", EXIT_FAILED)
        if cbor_out is not None:
            atomic_write(cbor_out, response.content)
            out.print(f"capability report of device {device_id} ({len(response.content)} "
                      f"bytes) written to {cbor_out}", markup=False)
        if check is not None:
            _check_envelope(device_id, response.content, check)
        return
    doc = client.get(path)
    capabilities = _field(doc, "capabilities", dict)
    if as_json:
        print_json(capabilities)
        return
    tree = Tree(Text(f"capabilities of device {device_id}"))
    _capability_tree(tree, capabilities)
    out.print(tree)


def _check_envelope(device_id: str, raw: bytes, envelope_file: Path) -> None:
    """Print what ``envelope_file`` uses that the capability report ``raw`` does not list;
    exit 1 when anything (the device would refuse the manifest)."""
    from suitkit.core import codec  # noqa: PLC0415
    from suitkit.core.report import capability_gaps, decode_capability_report  # noqa: PLC0415
    from suitkit.errors import SuitError  # noqa: PLC0415

    try:
        data = envelope_file.read_bytes()
    except OSError as e:
        fail(f"{envelope_file}: cannot read: {e.strerror or e}", EXIT_USAGE)
    try:
        capability = decode_capability_report(raw)
    except SuitError as e:
        fail(f"device {device_id}'s capability report does not decode: {e}", EXIT_FAILED)
    try:
        gaps = capability_gaps(capability, codec.decode_envelope(data))
    except SuitError as e:
        fail(f"{envelope_file}: {e}", EXIT_USAGE)
    for gap in gaps:
        out.print(f"{envelope_file}: {gap}", markup=False)
    if gaps:
        fail(f"device {device_id} would refuse {envelope_file}: {len(gaps)} element(s) it "
             "does not support", EXIT_FAILED)
    out.print(f"device {device_id} supports everything {envelope_file} uses", markup=False)


@devices_app.command("recipient-key")
@handles_errors
def devices_recipient_key(
        device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.")],
        server: ServerOption, token_file: TokenFileOption,
        out_file: Annotated[Path, typer.Option(
            "--out", help="Where to write the key (COSE_Key in PEM armor), for suitkit encrypt "
            "--recipient.")],
        index: Annotated[int, typer.Option("--index", min=0, help="Which of the device's "
                                           "keys (0: the first).")] = 0,
        timeout: TimeoutOption = 30.0, as_json: JsonOption = False) -> None:
    """Write a device's published ECDH-ES public key to a file (admin, operator)."""
    import base64  # noqa: PLC0415

    from suitkit.author.keys import write_recipient_key  # noqa: PLC0415
    from suitkit.core import crypto  # noqa: PLC0415
    from suitkit.errors import SuitError  # noqa: PLC0415

    doc = ApiClient.from_options(server, token_file, timeout).get(
        f"/api/v1/devices/{_device_id(device_id)}")
    keys = _field(doc, "recipient_keys", list)
    if index >= len(keys):
        fail(f"device {device_id} has published {len(keys)} recipient key(s); no key "
             f"{index} (its inventory lists the ECDH-ES keys in its keys/ folder)", EXIT_FAILED)
    try:
        key = crypto.load_recipient_public(base64.b64decode(str(keys[index]), validate=True))
    except (ValueError, SuitError) as e:
        fail(f"device {device_id}'s recipient key {index} does not load: {e}", EXIT_FAILED)
    write_recipient_key(out_file, key)
    if as_json:
        print_json({"device_id": device_id, "index": index, "key": str(out_file),
                    "keys": len(keys)})
        return
    out.print(f"recipient key {index} of device {device_id} written to {out_file}",
              markup=False)


@devices_app.command("report-key")
@handles_errors
def devices_report_key(
        device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.")],
        server: ServerOption, token_file: TokenFileOption,
        key_file: Annotated[Path | None, typer.Argument(
            metavar="PUB", help="The public key the device signs its reports with.")] = None,
        remove: Annotated[bool, typer.Option("--remove", help="Unregister the device's report "
                                             "key.")] = False,
        timeout: TimeoutOption = 30.0, as_json: JsonOption = False) -> None:
    """Register the key a device signs its SUIT reports with (admin; report §8)."""
    if (key_file is None) == (not remove):
        fail("give the device's public key file, or --remove", EXIT_USAGE)
    text: str | None = None
    if key_file is not None:
        try:
            text = key_file.read_text()
        except (OSError, UnicodeDecodeError) as e:
            fail(f"{key_file}: cannot read: {e}", EXIT_USAGE)
    ApiClient.from_options(server, token_file, timeout).request(
        "PUT", f"/api/v1/devices/{_device_id(device_id)}/report-key",
        body={"report_key": text})
    if as_json:
        print_json({"device_id": device_id, "report_key": text is not None})
        return
    out.print(f"device {device_id}: report key {'registered' if text else 'removed'}",
              markup=False)


@devices_app.command("reset")
@handles_errors
def devices_reset(device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.")],
                  server: ServerOption, token_file: TokenFileOption,
                  reason: Annotated[str, typer.Option("--reason", help="Why (kept in the "
                                                     "device's history and the audit log).")
                                    ] = "",
                  as_json: JsonOption = False, timeout: TimeoutOption = 30.0) -> None:
    """End the update of a device stuck mid-update as failed (admin, operator)."""
    if not device_id or "/" in device_id or len(device_id) > 36:
        fail(f"expected a device id (a UUID), got {device_id[:40]!r}", EXIT_USAGE)
    event = ApiClient.from_options(server, token_file, timeout).post(
        f"/api/v1/devices/{device_id}/reset", {"reason": reason})
    if as_json:
        print_json(event)
        return
    detail = event.get("detail") if isinstance(event, dict) else None
    out.print(f"device {device_id}: update ended as failed ({detail})", markup=False)


# ------------------------------------------------------------------------------ releases


@releases_app.command("list")
@handles_errors
def releases_list(server: ServerOption, token_file: TokenFileOption,
                  as_json: JsonOption = False, verbose: VerboseOption = False,
                  timeout: TimeoutOption = 30.0) -> None:
    """Every release by sequence number: version, notes' first line, class (admin, author,
    operator)."""
    client = ApiClient.from_options(server, token_file, timeout)
    releases = _field(client.get("/api/v1/releases"), "releases", list)
    if as_json:
        print_json(releases)
        return
    named = {c.get("class_id"): class_label(c) for c in client.pages("/api/v1/classes",
                                                                     "classes")}
    table = Table("version", "sequence", "class", "notes",
                  *([Column("id", no_wrap=True)] if verbose else []))
    for r in releases:
        manifest = r.get("manifest") or {}
        classes = manifest.get("class_ids") or []
        notes = str(r.get("notes") or "").splitlines()
        cells = [str(r.get("version") or "-"), str(r.get("sequence_number")),
                 ", ".join(named.get(c, c) for c in classes) or "-",
                 notes[0][:60] if notes else "-"]
        _row(table, *cells, *([str(r.get("id"))] if verbose else []))
    out.print(table)


# ------------------------------------------------------------------------------ classes


@classes_app.command("list")
@handles_errors
def classes_list(server: ServerOption, token_file: TokenFileOption, limit: LimitOption = None,
                 as_json: JsonOption = False, verbose: VerboseOption = False,
                 timeout: TimeoutOption = 30.0) -> None:
    """Every device class a device has or the registry names, with its names and device
    count (admin, operator, author)."""
    classes = ApiClient.from_options(server, token_file, timeout).pages(
        "/api/v1/classes", "classes", limit=limit)
    if as_json:
        print_json(classes)
        return
    table = Table("vendor", "class", "devices", "from",
                  *([Column("class id", no_wrap=True)] if verbose else []))
    for c in classes:
        cells = [str(c.get("vendor_name") or "-"), str(c.get("class_name") or c.get("class_id")),
                 str(c.get("devices")), str(c.get("source") or "-")]
        _row(table, *cells, *([str(c.get("class_id"))] if verbose else []))
    out.print(table)


@classes_app.command("name")
@handles_errors
def classes_name(
        class_id: Annotated[str, typer.Argument(metavar="CLASS-ID", help="Class UUID.")],
        server: ServerOption, token_file: TokenFileOption,
        class_name: Annotated[str | None, typer.Option("--class-name", help="The class's "
                                                       "name.")] = None,
        vendor_name: Annotated[str | None, typer.Option("--vendor-name", help="The vendor's "
                                                        "name.")] = None,
        vendor_domain: Annotated[str | None, typer.Option(
            "--vendor-domain", help="The vendor's domain: the names must then derive the "
            "ids (UUID5, manifest §8.4.8.1-2).")] = None,
        vendor_id: Annotated[str | None, typer.Option(
            "--vendor-id", help="Vendor UUID, for a class no device has yet.")] = None,
        as_json: JsonOption = False, timeout: TimeoutOption = 30.0) -> None:
    """Name a device class (admin, operator; audited); a later release's text no longer
    renames it."""
    if class_name is None and vendor_name is None:
        fail("give --class-name, --vendor-name or both", EXIT_USAGE)
    body = {k: v for k, v in (("class_name", class_name), ("vendor_name", vendor_name),
                              ("vendor_domain", vendor_domain), ("vendor_id", vendor_id))
            if v is not None}
    doc = ApiClient.from_options(server, token_file, timeout).request(
        "PUT", f"/api/v1/classes/{_class_id(class_id)}", body=body)
    if as_json:
        print_json(doc)
        return
    out.print(f"class {class_id}: {class_label(doc)}", markup=False)
