"""The ``suitkit`` command line: the only code that prints, reads the environment or exits.

Each command parses its arguments, calls one library function and turns a ``SuitError`` into one
line on stderr and an exit status: 0 success, 1 verification or policy failure, 2 bad usage or
undecodable input, 3 a storage failure (disk full), 4 an internal error. No traceback reaches the
user unless ``SUITKIT_DEBUG=1`` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.tree import Tree

from suitkit import __version__
from suitkit.author import keys as keyfiles
from suitkit.author.describe import load_description
from suitkit.author.encrypt import encrypt_envelope, parse_encryption
from suitkit.cli.anchors import app as anchors_app
from suitkit.cli.backup import app as backup_app
from suitkit.cli.campaign import campaign_app
from suitkit.cli.common import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_USAGE,
    JsonOption,
    err,
    fail,
    handles_errors,
    new_app,
    out,
    print_json,
    read_input,
)
from suitkit.cli.demo import app as demo_app
from suitkit.cli.deploy import deploy
from suitkit.cli.device import app as device_app
from suitkit.cli.operator import classes_app, devices_app, releases_app, token_app
from suitkit.cli.server import app as server_app
from suitkit.cli.sim import app as sim_app
from suitkit.core import cbor, codec, cose, crypto, jsonform, packing
from suitkit.core import diag as diagnostic
from suitkit.core.model import Envelope
from suitkit.core.numbers import ManifestKey, name_of
from suitkit.core.sign import sign_envelope
from suitkit.core.verify import TrustAnchor, TrustAnchors, verify_decoded
from suitkit.errors import (
    DecodeError,
    KeyMaterialError,
    SuitError,
)
from suitkit.fileio import atomic_write

app = new_app(
    name="suitkit",
    help="SUIT firmware updates (RFC 9019): author, sign, verify and inspect manifests; "
    "simulated and Linux-class devices; a firmware server.",
    no_args_is_help=True,
    add_completion=True,  # suitkit --install-completion (bash, zsh, fish, PowerShell)
)

def _result(as_json: bool, doc: Mapping[str, Any], line: str) -> None:
    """What a command did: one line for people, or (``--json``) the document for scripts."""
    if as_json:
        print_json(doc)
    else:
        out.print(line, markup=False)


def load_envelope(path: Path) -> Envelope:
    """Read and decode an envelope file (exit 2 if it is not one)."""
    return codec.decode_envelope(read_input(path, "envelope"))


def version_callback(value: bool) -> None:
    if value:
        out.print(f"suitkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback,
                                          is_eager=True, help="Show the version and exit.")
                       ] = False,
) -> None:
    """SUIT firmware updates (RFC 9019): manifests, devices and a firmware server."""


app.add_typer(device_app, name="device")
app.add_typer(server_app)
app.add_typer(backup_app)  # suitkit backup / restore (cli/backup.py)


# --------------------------------------------------------------------------- keys

ALGORITHMS = ["ES256", "ESP256", "ES384", "EdDSA", "Ed25519", "HSS-LMS", "HMAC-256"]
RECIPIENT_KINDS = list(crypto.RECIPIENT_KINDS)  # key distribution (encryption): KEKs, ECDH-ES


@app.command()
@handles_errors
def keygen(
    out_path: Annotated[Path, typer.Option("--out", help="Private key file to write.")],
    alg: Annotated[str, typer.Option("--alg", help="Signature or MAC algorithm: "
                                     + ", ".join(ALGORITHMS) + "; or, for encryption, a "
                                     "key-encryption key (A128KW, A192KW, A256KW) or a "
                                     "device's ECDH-ES key (ECDH-P256, X25519).")] = "ESP256",
    kid: Annotated[str | None, typer.Option("--kid", help="Key id of an encryption key "
                                            "(the recipient's kid in encryption-info).")
                   ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing key file.")
                     ] = False,
    as_json: JsonOption = False,
) -> None:
    """Generate a private key (PEM; HSS-LMS, HMAC and encryption keys as a COSE_Key in PEM
    armor)."""
    if alg not in ALGORITHMS + RECIPIENT_KINDS:
        fail(f"--alg must be one of {', '.join(ALGORITHMS + RECIPIENT_KINDS)}, got {alg!r}",
             EXIT_USAGE)
    if kid is not None and (alg not in RECIPIENT_KINDS or not kid or len(kid) > 256):
        fail("--kid is for encryption keys (" + ", ".join(RECIPIENT_KINDS) + "), 1 to 256 "
             "characters", EXIT_USAGE)
    if out_path.exists() and not force:
        fail(f"{out_path} exists; refusing to overwrite a key (use --force)", EXIT_USAGE)
    if alg in RECIPIENT_KINDS:
        recipient = crypto.generate_recipient_key(alg, key_id=None if kid is None
                                                  else kid.encode())
        keyfiles.write_recipient_key(out_path, recipient)
        kind = "key-encryption key" if alg.endswith("KW") else "ECDH-ES private key"
        _result(as_json, {"key": str(out_path), "algorithm": alg, "kind": kind, "kid": kid},
                f"wrote {alg} {kind} to {out_path}")
        return
    key = crypto.generate_private_key(alg)
    keyfiles.write_private_key(out_path, key)
    _result(as_json, {"key": str(out_path), "algorithm": alg, "kind": "private key",
                      "kid": None}, f"wrote {alg} private key to {out_path}")


@app.command()
@handles_errors
def pubkey(
    key: Annotated[Path, typer.Argument(help="Private key file.")],
    out_path: Annotated[Path, typer.Option("--out", help="Public key file to write.")],
    as_json: JsonOption = False,
) -> None:
    """Write the public key of a private key: a device's trust anchor, or the ECDH-ES public
    key an author encrypts for."""
    try:
        private = keyfiles.load_private_key(key)
    except KeyMaterialError as e:
        try:
            recipient = keyfiles.load_recipient_private(key)
        except KeyMaterialError:
            raise e from None
        if isinstance(recipient, crypto.AesKwKey):
            fail(f"{key} is a key-encryption key, a shared secret with no public half: the "
                 "author and the device hold the same file", EXIT_USAGE)
        keyfiles.write_recipient_key(out_path, recipient.public_key())
        _result(as_json, {"public_key": str(out_path), "kind": "ECDH-ES public key"},
                f"wrote ECDH-ES public key to {out_path}")
        return
    keyfiles.write_public_key(out_path, private)
    _result(as_json, {"public_key": str(out_path), "kind": "public key",
                      "algorithm": crypto.algorithm_name(private.algorithm)},
            f"wrote public key to {out_path}")


# --------------------------------------------------------------------------- envelopes


@app.command()
@handles_errors
def create(
    description: Annotated[Path, typer.Argument(help="Description file (YAML or JSON).")],
    out_path: Annotated[Path, typer.Option("--out", help="Unsigned envelope to write.")],
    compress: Annotated[str | None, typer.Option(
        "--compress", help="Compress every detached image whose component names no "
        "compress: (zlib, zstd, xz, bzip2 or best; docs/delta.md).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Build an unsigned envelope from a description file (see docs/description.md)."""
    desc = load_description(description, compress=compress)
    envelope = codec.build_envelope(desc.manifest, sever_members=desc.sever,
                                    integrated=desc.integrated)
    data = codec.encode_envelope(envelope)
    payloads = _write_release(out_path, data, {
        **{i: (ciphertext_path(out_path, i), c) for i, c in desc.detached.items()},
        **{i: (packed_path(out_path, i, suffix), p) for i, (suffix, p) in desc.packed.items()}},
        quiet=as_json)
    if as_json:
        print_json({"envelope": str(out_path), "bytes": len(data),
                    "manifest_bytes": len(envelope.manifest_bytes),
                    "sequence_number": envelope.manifest.sequence_number,
                    "encrypted": sorted(desc.encrypted), "payloads": payloads})
        return
    out.print(f"wrote unsigned envelope to {out_path} ({len(data)} bytes, manifest "
              f"{len(envelope.manifest_bytes)} bytes, sequence number "
              f"{envelope.manifest.sequence_number})", markup=False)
    if desc.encrypted:
        out.print(f"encrypted component(s) {', '.join(map(str, sorted(desc.encrypted)))}",
                  markup=False)


def ciphertext_path(out_path: Path, index: int) -> Path:
    """Where ``create`` and ``encrypt`` write the detached ciphertext of component ``index``."""
    return out_path.with_name(f"{out_path.name}.image-{index}.enc")


def packed_path(out_path: Path, index: int, suffix: str) -> Path:
    """Where ``create`` writes the compressed image or delta patch of component ``index``."""
    return out_path.with_name(f"{out_path.name}.image-{index}{suffix}")


def _write_release(out_path: Path, data: bytes, detached: Mapping[int, tuple[Path, bytes]],
                   *, quiet: bool = False) -> list[dict[str, Any]]:
    """The detached payloads (ciphertexts, compressed images, patches) first, then the
    envelope; on a failure none of them is left. Returns what was written beside the
    envelope (and says it, unless ``quiet``)."""
    written: list[tuple[int, Path]] = []
    try:
        for index, (path, payload) in sorted(detached.items()):
            atomic_write(path, payload)
            written.append((index, path))
        atomic_write(out_path, data)
    except BaseException:
        for _index, path in written:
            path.unlink(missing_ok=True)
        raise
    payloads = []
    for index, path in written:
        kind = "encrypted image" if path.suffix == ".enc" else "packed image"
        payloads.append({"component": index, "file": str(path), "kind": kind,
                         "bytes": len(detached[index][1])})
        if not quiet:
            out.print(f"wrote {kind} {path} ({len(detached[index][1])} bytes): upload it as "
                      f"{index}={path}", markup=False)
    return payloads


@app.command()
@handles_errors
def encrypt(
    envelope_path: Annotated[Path, typer.Argument(metavar="ENVELOPE", help="Envelope whose "
                                                  "images to encrypt.")],
    images: Annotated[list[str] | None, typer.Argument(
        metavar="[N=IMAGE...]", help="Detached images by component index (integrated ones "
        "are taken from the envelope).")] = None,
    recipient: Annotated[list[str] | None, typer.Option(
        "--recipient", help="A key-encryption key or a device's ECDH-ES public key, as FILE "
        "or KID=FILE; repeat for several devices.")] = None,
    profile: Annotated[str | None, typer.Option(
        "--profile", help="An MTI profile (e.g. suit-sha256-esp256-ecdh-a128ctr).")] = None,
    content: Annotated[str | None, typer.Option(
        "--content", help="Instead of --profile: the content algorithm (A128GCM, A256GCM, "
        "ChaCha20/Poly1305, A128CTR, A256CTR).")] = None,
    component: Annotated[list[int] | None, typer.Option(
        "--component", help="Encrypt only this component (default: every one with an "
        "image); repeat for several.")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Unsigned envelope to write "
                                                  "(required).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Encrypt an envelope's images for devices (the result is unsigned: sign it again).

    Detached ciphertexts are written beside the envelope as ENVELOPE.image-N.enc.
    """
    if out_path is None:
        fail("give --out ENVELOPE (the unsigned encrypted envelope to write)", EXIT_USAGE)
    envelope = load_envelope(envelope_path)
    if not recipient:
        fail("give at least one --recipient", EXIT_USAGE)
    if (profile is None) == (content is None):
        fail("give one of --profile and --content", EXIT_USAGE)
    section: dict[str, Any] = {"recipients": []}
    if profile is not None:
        section["profile"] = profile
    else:
        section["content"] = content
    for item in recipient:
        kid, sep, file = item.partition("=")
        section["recipients"].append({"key": file, "kid": kid} if sep and kid and file
                                     else {"key": item})
    if component:
        section["components"] = list(component)
    plan = parse_encryption(section, base=Path("."), path="options",
                            components=envelope.manifest.common.components)
    plaintexts: dict[int, bytes] = {}
    for spec in images or []:
        index, sep, name = spec.partition("=")
        if not (sep and index.isascii() and index.isdigit() and name):
            fail(f"expected N=IMAGE (component index N), got {spec!r}", EXIT_USAGE)
        plaintexts[int(index)] = read_input(Path(name), "image")
    encrypted, detached = encrypt_envelope(envelope, plaintexts, plan)
    data = codec.encode_envelope(encrypted)
    payloads = _write_release(out_path, data, {i: (ciphertext_path(out_path, i), c)
                                               for i, c in detached.items()}, quiet=as_json)
    if as_json:
        print_json({"envelope": str(out_path), "bytes": len(data), "payloads": payloads})
        return
    out.print(f"wrote unsigned encrypted envelope to {out_path} ({len(data)} bytes); sign it "
              "again (suitkit sign)", markup=False)


@app.command()
@handles_errors
def delta(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The precursor image (what "
                                        "devices run).")],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The new image.")],
    out_path: Annotated[Path, typer.Option("--out", help="Patch file to write.")],
    compress: Annotated[str, typer.Option(
        "--compress", help="Compress the patch: zlib, zstd, xz, bzip2, best (the smallest; "
        "the default) or none.")] = "best",
    in_place: Annotated[int | None, typer.Option(
        "--in-place", metavar="SECTOR", help="Make the patch for in-place application on a "
        "single-slot device with SECTOR-byte sectors (docs/delta.md §9).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Make an SKD1 delta patch that rebuilds NEW from OLD on a device (docs/delta.md)."""
    old_bytes, new_bytes = read_input(old, "precursor image"), read_input(new, "new image")
    placed: dict[str, object] | None = None
    if in_place is None:
        patch = packing.make_delta(old_bytes, new_bytes)
    else:
        if in_place <= 0 or in_place & (in_place - 1) or not 512 <= in_place <= 65536:
            raise DecodeError("--in-place", f"the sector size must be a power of two from 512 "
                              f"to 65536, got {in_place}")
        patch, order, literal = packing.make_inplace_delta(old_bytes, new_bytes, in_place)
        placed = {"sector": in_place, "order": order.name.lower(), "literal_bytes": literal}
    raw = len(patch)
    how = "not compressed"
    if compress.lower() == "best":
        codec_, patch = packing.compress_best(patch)
        how = codec_.name.lower()
    elif compress.lower() != "none":
        codec_ = packing.codec_named(compress, path="--compress")
        patch, how = packing.compress(patch, codec_), codec_.name.lower()
    atomic_write(out_path, patch)
    doc: dict[str, object] = {
        "patch": str(out_path), "bytes": len(patch), "compression": how,
        "uncompressed_bytes": raw, "new_image_bytes": len(new_bytes),
        "precursor_sha256": hashlib.sha256(old_bytes).hexdigest()}
    where = ""
    if placed is not None:
        doc["in_place"] = placed
        where = (f"; in place: {placed['sector']}-byte sectors, {placed['order']}, "
                 f"{placed['literal_bytes']} bytes literal; and in-place: {placed['sector']}")
    _result(as_json, doc,
            f"wrote delta {out_path} ({len(patch)} bytes, {how}; {raw} before compression; "
            f"{len(patch) / max(1, len(new_bytes)):.2%} of the new image); describe it with "
            f"delta-from: {old.name}{where} (docs/delta.md)")


@app.command()
@handles_errors
def sign(
    envelope_path: Annotated[Path, typer.Argument(metavar="ENVELOPE", help="Envelope to sign.")],
    key: Annotated[list[Path], typer.Option("--key", help="Private key; repeat for several "
                                            "signers (one authentication block each).")],
    out_path: Annotated[Path, typer.Option("--out", help="Signed envelope to write.")],
    alg: Annotated[str | None, typer.Option("--alg", help="Override the key's algorithm "
                                            "(e.g. ES256 for a P-256 key, which signs ESP256 by "
                                            "default).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Add one authentication block per key; blocks already present are kept."""
    envelope = load_envelope(envelope_path)
    signers: list[dict[str, str]] = []
    for path in key:
        signer = keyfiles.load_signer(path, alg)
        envelope = sign_envelope(envelope, signer)
        signers.append({"key": str(path), "algorithm": crypto.algorithm_name(signer.algorithm)})
        if not as_json:
            out.print(f"signed with {path} ({signers[-1]['algorithm']})", markup=False)
    data = codec.encode_envelope(envelope)
    atomic_write(out_path, data)
    blocks = len(envelope.authentication.blocks)
    _result(as_json, {"envelope": str(out_path), "bytes": len(data), "signed_by": signers,
                      "authentication_blocks": blocks},
            f"wrote signed envelope to {out_path} ({len(data)} bytes, {blocks} authentication "
            "block(s))")


@app.command()
@handles_errors
def verify(
    envelope_path: Annotated[Path, typer.Argument(metavar="ENVELOPE", help="Envelope to check.")],
    key: Annotated[list[Path], typer.Option("--key", help="Public key (or MAC key); every key "
                                            "given must have signed the envelope.")],
    as_json: JsonOption = False,
) -> None:
    """Check that every given key signed the envelope and that its members match.

    Exit 1 when the envelope does not verify, including when it cannot even be decoded.
    """
    anchors = []
    for i, path in enumerate(key):
        anchors.append(TrustAnchor(keyfiles.load_verifier(path), role=f"key {i + 1} ({path})"))
    policy = TrustAnchors(tuple(anchors), tuple(a.role for a in anchors))
    data = read_input(envelope_path, "envelope")
    try:
        envelope = codec.decode_envelope(data)
        verified = verify_decoded(envelope, policy)
    except DecodeError as e:
        fail(f"{envelope_path} does not verify: {e}", EXIT_FAILED)
    manifest = verified.manifest
    names = [name_of(ManifestKey, k) for k in sorted(verified.severed)]
    _result(as_json, {"verified": True, "envelope": str(envelope_path), "keys": len(key),
                      "sequence_number": manifest.sequence_number,
                      "components": len(manifest.common.components), "severed": names},
            f"OK: {envelope_path} verifies with {len(key)} key(s); sequence number "
            f"{manifest.sequence_number}, {len(manifest.common.components)} component(s), "
            f"severed members: {', '.join(names) or 'none'}")


@app.command()
@handles_errors
def show(
    envelope_path: Annotated[Path, typer.Argument(metavar="ENVELOPE", help="Envelope to show.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_diag: Annotated[bool, typer.Option("--diag", help="Print CBOR diagnostic notation.")
                       ] = False,
) -> None:
    """Show an envelope: a readable tree (default), JSON, or CBOR diagnostic notation.

    Nothing is verified: use ``suitkit verify`` for that.
    """
    if as_json and as_diag:
        fail("choose one of --json and --diag", EXIT_USAGE)
    data = read_input(envelope_path, "envelope")
    envelope = codec.decode_envelope(data)
    if as_diag:
        out.print(diagnostic.diag(cbor.decode(data, path="envelope", max_depth=64)),
                  markup=False)
        return
    doc = jsonform.envelope_to_json(envelope, blocks=[_block_json(b)
                                                      for b in envelope.authentication.blocks])
    if as_json:
        out.print(json.dumps(doc, indent=2, ensure_ascii=False), markup=False)
        return
    tree = Tree(f"SUIT envelope {envelope_path} ({len(data)} bytes"
                f"{', tagged 107' if envelope.tagged else ''})")
    _tree(tree, doc)
    out.print(tree)


def _block_json(raw: bytes) -> Any:
    try:
        block = cose.decode_auth_block(raw, path="block")
    except SuitError as e:
        return {"invalid": str(e)}
    kind = "COSE_Mac0" if isinstance(block, cose.CoseMac0) else "COSE_Sign1"
    doc: dict[str, Any] = {"type": kind, "algorithm": crypto.algorithm_name(block.algorithm)}
    if block.key_id is not None:
        doc["key-id"] = block.key_id.hex()
    return doc


def _tree(node: Tree, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                _tree(node.add(f"[bold]{k}[/bold]"), v)
            else:
                node.add(f"[bold]{k}[/bold]: {_scalar(v)}")
    elif isinstance(value, list):
        for item in value:
            if (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and item[0].startswith(("condition-", "directive-", "custom(", "unknown("))):
                name, arg = item
                if isinstance(arg, dict | list) and arg:
                    _tree(node.add(f"[cyan]{name}[/cyan]"), arg)
                else:
                    node.add(f"[cyan]{name}[/cyan] {_scalar(arg)}")
            elif isinstance(item, dict | list) and item:
                _tree(node.add("•"), item)
            else:
                node.add(_scalar(item))


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value.replace("[", "\\[")
    return json.dumps(value)


@app.command()
@handles_errors
def sever(
    envelope_path: Annotated[Path, typer.Argument(metavar="ENVELOPE", help="Envelope to shrink.")],
    out_path: Annotated[Path, typer.Option("--out", help="Smaller envelope to write.")],
    member: Annotated[list[str] | None, typer.Option(
        "--member", help="Member to remove (text, install, payload-fetch, "
        "dependency-resolution, candidate-verification, coswid); default: all present.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Remove severable members; the manifest keeps their digests, so signatures still hold."""
    envelope = load_envelope(envelope_path)
    keys: frozenset[int] | None = None
    if member:
        names = {name_of(ManifestKey, k): int(k) for k in envelope.severable}
        unknown = [m for m in member if m not in names]
        if unknown:
            fail(f"not in the envelope: {', '.join(unknown)}; present: "
                 f"{', '.join(names) or 'none'}", EXIT_USAGE)
        keys = frozenset(names[m] for m in member)
    smaller = codec.sever(envelope, keys)
    data = codec.encode_envelope(smaller)
    atomic_write(out_path, data)
    removed = [name_of(ManifestKey, k)
               for k in sorted(set(envelope.severable) - set(smaller.severable))]
    _result(as_json, {"envelope": str(out_path), "bytes": len(data), "removed": removed},
            f"wrote {out_path} ({len(data)} bytes); removed: {', '.join(removed) or 'nothing'}")


# --------------------------------------------------------------------------- demo, sim

app.add_typer(demo_app)  # suitkit demo (cli/demo.py)
app.add_typer(sim_app, name="sim")  # suitkit sim fleet (cli/sim.py)
app.add_typer(token_app, name="token")  # suitkit token ... (cli/operator.py)
app.add_typer(devices_app, name="devices")  # suitkit devices ... (cli/operator.py)
app.add_typer(releases_app, name="releases")  # suitkit releases list (cli/operator.py)
app.add_typer(classes_app, name="classes")  # suitkit classes list|name (cli/operator.py)
app.add_typer(campaign_app, name="campaign")  # suitkit campaign ... (cli/campaign.py)
app.add_typer(anchors_app, name="anchors")  # suitkit anchors ... (cli/anchors.py)
app.command("deploy")(deploy)  # suitkit deploy (cli/deploy.py)


def main() -> None:
    """Entry point of the ``suitkit`` command."""
    try:
        code = app(standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        err.print("suitkit: aborted", markup=False)
        code = 130
    except typer.exceptions.TyperException as e:  # usage errors (click's, vendored by typer)
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if message:  # empty when the help was shown because no command was given
            err.print(f"suitkit: error: {message} (see suitkit --help)", markup=False)
        code = EXIT_USAGE
    except Exception as e:
        if os.environ.get("SUITKIT_DEBUG"):
            raise
        err.print(f"suitkit: internal error: {type(e).__name__}: {e} (set SUITKIT_DEBUG=1 for "
                  "the traceback)", markup=False)
        code = EXIT_INTERNAL
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
