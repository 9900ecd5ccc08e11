"""``suitkit anchors ...``: trust-anchor documents and rotations (docs/keys.md).

Thin commands over ``suitkit.author.anchors`` (the author's side) and ``suitkit.device.anchors``
(what a device folder holds): ``init`` writes the version-0 document of devices made with
``device init``, ``rotate`` edits a document into the next version and writes the rotation
envelope (signed with ``--key``: root keys of the version it replaces), ``show`` prints a
document, a rotation envelope or a device's anchors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from suitkit.author import keys as keyfiles
from suitkit.author.anchors import Edits, initial_document, next_document, rotation_envelope
from suitkit.cli.common import (
    EXIT_USAGE,
    JsonOption,
    fail,
    handles_errors,
    new_app,
    out,
    print_json,
)
from suitkit.cli.device import _identity
from suitkit.core import codec, crypto
from suitkit.core.anchors import (
    ANCHORS_COMPONENT,
    DOCUMENT_URI,
    AnchorsDocument,
    fingerprint,
    parse_document,
)
from suitkit.core.model import ComponentIdentifier
from suitkit.core.sign import sign_envelope
from suitkit.device.config import CONFIG, load_config
from suitkit.device.wiring import open_device
from suitkit.errors import DecodeError, SuitError
from suitkit.fileio import atomic_write

app = new_app(help="Trust-anchor documents and rotations (docs/keys.md).",
              no_args_is_help=True)


def _pair(item: str, option: str) -> tuple[str, str]:
    left, sep, right = item.partition("=")
    if not sep or not left or not right:
        fail(f"{option}: expected A=B, got {item!r}", EXIT_USAGE)
    return left, right


def _public(path: str, option: str) -> crypto.Verifier:
    try:
        return keyfiles.load_verifier(Path(path))
    except SuitError as e:
        fail(f"{option} {path}: {e}", EXIT_USAGE)


def _cid(text: str, option: str) -> ComponentIdentifier:
    parts = []
    for part in text.split("/"):
        if part.startswith("0x"):
            try:
                parts.append(bytes.fromhex(part[2:]))
            except ValueError:
                fail(f"{option}: {part!r} is not hex", EXIT_USAGE)
        elif part:
            parts.append(part.encode())
        else:
            fail(f"{option}: an empty part in the component id {text!r}", EXIT_USAGE)
    return tuple(parts)


def _read_document(path: Path) -> AnchorsDocument:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DecodeError(str(path), f"cannot read: {e.strerror}") from None
    return parse_document(data, where=str(path))


@app.command("init")
@handles_errors
def init_cmd(
    key: Annotated[list[str], typer.Option(
        "--key", help="ROLE=PUB, as given to device init --trust-anchor; repeat.")],
    out_path: Annotated[Path, typer.Option("--out", help="Document to write.")],
    require: Annotated[list[str] | None, typer.Option(
        "--require", help="A role every firmware update needs (as device init --require).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write the version-0 document of devices made with device init (a rotation's base)."""
    pairs = []
    for item in key:
        role, path = _pair(item, "--key")
        pairs.append((role, _public(path, "--key")))
    document = initial_document(pairs, required_roles=require or ())
    atomic_write(out_path, document.encode())
    if as_json:
        print_json({"document": str(out_path), "version": 0, "keys": len(document.keys)})
        return
    out.print(f"wrote anchors version 0 to {out_path} ({len(document.keys)} keys)",
              markup=False)


@app.command()
@handles_errors
def rotate(
    base: Annotated[Path, typer.Argument(metavar="DOCUMENT",
                                         help="The document of the version it replaces.")],
    out_path: Annotated[Path, typer.Option("--out", help="Rotation envelope to write.")],
    document_out: Annotated[Path, typer.Option(
        "--document-out", help="Where to write the new document (the next rotation's base).")],
    add: Annotated[list[str] | None, typer.Option(
        "--add", help="ROLE=PUB: trust a key (roles: root, author, operator, ...).")] = None,
    revoke: Annotated[list[Path] | None, typer.Option(
        "--revoke", help="PUB: never trust this key again (final).")] = None,
    remove: Annotated[list[Path] | None, typer.Option(
        "--remove", help="PUB: stop trusting this key (not revoked).")] = None,
    replace: Annotated[list[str] | None, typer.Option(
        "--replace", help="OLD=NEW (public keys): NEW takes OLD's role and scope; OLD is "
        "revoked.")] = None,
    role: Annotated[list[str] | None, typer.Option("--role", help="PUB=ROLE.")] = None,
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", help="PUB=ID[,ID...] component-id prefixes the key may update (parts "
        "joined by /, each 0x<hex> or text), or PUB=any.")] = None,
    require: Annotated[list[str] | None, typer.Option(
        "--require", help="Roles every firmware update needs (replaces the list).")] = None,
    no_require: Annotated[bool, typer.Option(
        "--no-require", help="No role is required any more.")] = False,
    threshold: Annotated[int | None, typer.Option(
        "--threshold", help="Root signatures an anchors update needs from now on.")] = None,
    chain: Annotated[list[Path] | None, typer.Option(
        "--chain", help="A signed earlier rotation to carry, for devices that missed it; "
        "repeat.")] = None,
    key: Annotated[list[Path] | None, typer.Option(
        "--key", help="Sign with this private key (a root key of the version replaced); "
        "repeat. Without: unsigned (suitkit sign).")] = None,
    vendor_id: Annotated[str | None, typer.Option("--vendor-id")] = None,
    class_id: Annotated[str | None, typer.Option("--class-id")] = None,
    vendor_domain: Annotated[str | None, typer.Option("--vendor-domain")] = None,
    class_name: Annotated[str | None, typer.Option("--class-name")] = None,
    as_json: JsonOption = False,
) -> None:
    """Build the next trust-anchor version and its rotation envelope."""
    if require and no_require:
        fail("--require and --no-require exclude each other", EXIT_USAGE)
    vendor, klass = _identity(vendor_id, class_id, vendor_domain, class_name)
    scopes: list[tuple[crypto.Verifier, tuple[ComponentIdentifier, ...] | None]] = []
    for item in scope or []:
        path, ids = _pair(item, "--scope")
        scopes.append((_public(path, "--scope"), None if ids == "any"
                       else tuple(_cid(i, "--scope") for i in ids.split(","))))
    edits = Edits(
        add=[(r, _public(p, "--add")) for r, p in (_pair(i, "--add") for i in add or [])],
        revoke=[_public(str(p), "--revoke") for p in revoke or []],
        remove=[_public(str(p), "--remove") for p in remove or []],
        replace=[(_public(o, "--replace"), _public(n, "--replace"))
                 for o, n in (_pair(i, "--replace") for i in replace or [])],
        roles=[(_public(p, "--role"), r) for p, r in (_pair(i, "--role") for i in role or [])],
        scopes=scopes,
        required_roles=() if no_require else (require or None),
        root_threshold=threshold)
    document = next_document(_read_document(base), edits)
    carried = []
    for link in chain or []:
        try:
            carried.append(link.read_bytes())
        except OSError as e:
            raise DecodeError(str(link), f"cannot read: {e.strerror}") from None
    envelope = rotation_envelope(document, vendor_id=vendor, class_id=klass, chain=carried)
    for private in key or []:
        envelope = sign_envelope(envelope, keyfiles.load_signer(private))
    data = codec.encode_envelope(envelope)
    atomic_write(document_out, document.encode())
    atomic_write(out_path, data)
    if as_json:
        print_json({"document": str(document_out), "version": document.version,
                    "envelope": str(out_path), "bytes": len(data), "signatures": len(key or []),
                    "carried": len(carried)})
        return
    signed = f"signed by {len(key)} key(s)" if key else "unsigned: sign it with root keys"
    out.print(f"wrote anchors version {document.version} to {document_out} and its rotation "
              f"envelope to {out_path} ({len(data)} bytes, {signed}"
              + (f", carrying {len(carried)} earlier rotation(s)" if carried else "") + ")",
              markup=False)


@app.command()
@handles_errors
def show(
    source: Annotated[Path, typer.Argument(
        metavar="SOURCE", help="A document, a rotation envelope or a device folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a trust-anchor document, the one a rotation envelope carries, or a device's."""
    doc = describe_source(source)
    if as_json:
        print_json(doc)
        return
    out.print(f"trust anchors version {doc['version']} ({doc['source']})", markup=False)
    for k in doc["keys"]:
        scope = "any component" if k["components"] is None else ", ".join(k["components"])
        out.print(f"  {k['role']:<10} {k['fingerprint'] or '(secret key)'}  {scope}",
                  markup=False)
    if doc["required-roles"]:
        out.print(f"  required roles: {', '.join(doc['required-roles'])}", markup=False)
    out.print(f"  root threshold: {doc['root-threshold']}", markup=False)
    for fp in doc["revoked"]:
        out.print(f"  revoked    {fp}", markup=False)
    if doc.get("recorded"):
        out.print(f"  {doc['recorded']} manifest(s) recorded at the last rotation (they keep "
                  "booting)", markup=False)


def _scope_text(scope: tuple[ComponentIdentifier, ...] | None) -> list[str] | None:
    if scope is None:
        return None
    return ["/".join(p.decode() if p.isascii() and p.decode().isprintable() and p
                     else "0x" + p.hex() for p in cid) for cid in scope]


def _document_json(document: AnchorsDocument, source: str) -> dict[str, Any]:
    return {
        "source": source, "version": document.version, "previous": document.previous,
        "digest": document.digest().hex(),
        "keys": [{"role": k.role, "fingerprint": fingerprint(k.verifier()).hex(),
                  "components": (["suitkit/anchors"] if k.role == "root"
                                 else _scope_text(k.components))} for k in document.keys],
        "required-roles": list(document.required_roles),
        "root-threshold": document.root_threshold,
        "revoked": sorted(fp.hex() for fp in document.revoked_fingerprints()),
    }


def describe_source(source: Path) -> dict[str, Any]:
    """The JSON of ``anchors show``.

    Raises:
        DecodeError, KeyMaterialError: unreadable or not a document, envelope or device.
    """
    if source.is_dir():
        if not (source / CONFIG).exists():
            raise DecodeError(str(source), "not a device folder (no device.json)")
        # flash shapes keep the anchors in their flash (docs/keys.md "Storage")
        stored = open_device(source).config.stored_anchors()
        if stored is not None:
            doc = _document_json(stored.document, f"device {source}")
            doc["recorded"] = len(stored.recorded)
            return doc
        config = load_config(source)
        keys = []
        for spec in config.anchors:
            try:
                fp: str | None = fingerprint(crypto.load_public_key(
                    (source / "anchors" / spec.file).read_bytes())).hex()
            except (OSError, SuitError):
                fp = None
            keys.append({"role": spec.role, "fingerprint": fp,
                         "components": ["suitkit/anchors"] if spec.role == "root"
                         else _scope_text(spec.components)})
        return {"source": f"device {source} (as device init wrote it)", "version": 0,
                "previous": 0, "digest": None, "keys": keys,
                "required-roles": list(config.required_roles), "root-threshold": 1,
                "revoked": []}
    try:
        data = source.read_bytes()
    except OSError as e:
        raise DecodeError(str(source), f"cannot read: {e.strerror}") from None
    try:
        return _document_json(parse_document(data, where=str(source)), f"document {source}")
    except DecodeError:
        pass
    envelope = codec.decode_envelope(data)
    if envelope.manifest.common.components != (ANCHORS_COMPONENT,):
        raise DecodeError(str(source), "neither a trust-anchor document nor a rotation envelope")
    payload = envelope.integrated.get(DOCUMENT_URI)
    if payload is None:
        raise DecodeError(str(source), "the rotation envelope carries no #anchors.cbor")
    return _document_json(parse_document(payload, where=f"{source} #anchors.cbor"),
                          f"rotation envelope {source} (not verified here)")
