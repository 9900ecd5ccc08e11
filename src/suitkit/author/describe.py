"""Build a SUIT manifest from a description file (JSON or YAML).

A description names what an author knows (components, images, where devices fetch them, which
device class they are for) and the command sequences are generated from the templates of
draft-ietf-suit-manifest-34 §7: compatibility check and image digest in the shared sequence
(§7.1, §7.2), download or integrated payload in install (§7.3, §7.5), image match in validate
(secure boot, §7.2), invoke. Any sequence can instead be given as a raw command list in the
notation of ``suitkit.core.jsonform``. The format is documented in docs/description.md.

Update management (draft-ietf-suit-update-management-14 §4-§5): a component may ask, before
its payload is fetched, for a version of what it replaces (``version: ">=1.2"``), the
application's consent (``update-priority``), events to wait for (``wait``), a battery level
(``minimum-battery``), and carry file metadata (``metadata``); see docs/description.md.

Vendor and class IDs are UUIDs, or derived as the spec recommends (§8.4.8.1-2):
``vendor-domain: example.com`` gives UUID5(NAMESPACE_DNS, "example.com") and
``class-name: thermostat`` gives UUID5(vendor-id, "thermostat").

Image files are read here (an author-side edge); the result is a pure ``Manifest`` plus the
integrated payloads, ready for ``codec.build_envelope``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from suitkit.author.encrypt import (
    SHA256_PLACEHOLDER,
    encrypt_manifest,
    expand_uris,
    parse_encryption,
)
from suitkit.core import cbor, codec, jsonform, packing
from suitkit.core.cbor import CBORTag
from suitkit.core.model import (
    Command,
    CommandSequence,
    Common,
    ComponentIdentifier,
    DependencyMetadata,
    Digest,
    FrozenDict,
    LocalizedText,
    Manifest,
    Parameters,
    Text,
    VersionMatch,
)
from suitkit.core.numbers import (
    Command as Cmd,
)
from suitkit.core.numbers import (
    ComponentTextKey,
    CoseAlg,
    ManifestKey,
    TextKey,
    WaitEvent,
    name_of,
)
from suitkit.core.numbers import (
    Parameter as P,
)
from suitkit.errors import DecodeError

__all__ = ["Description", "load_description", "parse_description"]

REPORT_ALL = 15  # send records and system info on success and failure (§8.4.7)
REPORT_FAILURE_RECORD = 2

_TOP_KEYS = {
    "sequence-number", "vendor-id", "vendor-domain", "class-id", "class-name", "device-id",
    "reference-uri", "components", "text", "language", "sever", "use-before", "set-version",
    "shared-sequence", "install", "validate", "invoke", "load", "payload-fetch", "encryption",
    "dependencies", "uninstall", "dependency-resolution", "candidate-verification",
}
_DEPENDENCY_KEYS = {"id", "envelope", "digest", "size", "uri", "integrated"}
MAX_DEPENDENCIES = 16
"""Dependencies one description may declare (a device bounds what it processes, too)."""
_COMPONENT_KEYS = {
    "id", "image", "image-digest", "image-size", "uri", "integrated", "vendor-id",
    "vendor-domain", "class-id", "class-name", "invoke", "text", "encrypt",
    "version", "minimum-battery", "update-priority", "wait", "metadata", "compress",
    "delta-from", "in-place",
}
_SEVERABLE_NAMES = {
    "text": ManifestKey.TEXT,
    "install": ManifestKey.INSTALL,
    "payload-fetch": ManifestKey.PAYLOAD_FETCH,
    "dependency-resolution": ManifestKey.DEPENDENCY_RESOLUTION,
    "coswid": ManifestKey.COSWID,
}


@dataclass(frozen=True, slots=True)
class Description:
    """What a description file yields: the manifest, its integrated payloads, and which members
    to make severable."""

    manifest: Manifest
    integrated: Mapping[str, bytes]
    sever: frozenset[int]
    detached: Mapping[int, bytes] = FrozenDict()
    """Encrypted detached images (ciphertexts to upload), by component index."""
    encrypted: frozenset[int] = frozenset()
    """Indices of the components whose images are encrypted (``encryption:``)."""
    packed: Mapping[int, tuple[str, bytes]] = FrozenDict()
    """Compressed images and delta patches to upload instead of the image, by component
    index: (file suffix, bytes) (``compress:``, ``delta-from:``; docs/delta.md)."""


def load_description(path: Path, *, compress: str | None = None) -> Description:
    """Read a JSON or YAML description; image paths are relative to its folder.

    Raises:
        DecodeError: unreadable file, bad syntax, unknown keys, missing images, bad values.

    ``compress``: a codec for every detached image whose component names none (``suitkit
    create --compress``).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DecodeError(str(path), f"cannot read description: {e}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise DecodeError(f"{path}:{e.lineno}:{e.colno}", f"not valid JSON: {e.msg}") from None
    except yaml.YAMLError as e:
        raise DecodeError(_yaml_where(path, e), f"not valid YAML: {_yaml_problem(e)}") from None
    return parse_description(data, base=path.parent, source=str(path), compress=compress)


def _yaml_where(path: Path, error: yaml.YAMLError) -> str:
    """``FILE:LINE:COLUMN`` (1-based, where the parser stopped) when PyYAML knows it."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if mark is None:
        return str(path)
    return f"{path}:{mark.line + 1}:{mark.column + 1}"


def _yaml_problem(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None)
    context = getattr(error, "context", None)
    if problem and context:
        return f"{problem} ({context})"
    return str(problem or context or str(error).splitlines()[0])


def parse_description(data: Any, *, base: Path, source: str = "description",
                      compress: str | None = None) -> Description:
    """Build the manifest from already-parsed description data (``compress``: see
    ``load_description``)."""
    if not isinstance(data, Mapping):
        raise DecodeError(source, "expected a map at the top level")
    _known(data, _TOP_KEYS, source)
    sequence_number = data.get("sequence-number")
    if not isinstance(sequence_number, int) or isinstance(sequence_number, bool) \
            or sequence_number < 0:
        raise DecodeError(f"{source}.sequence-number",
                          f"expected an unsigned integer, got {sequence_number!r}")
    vendor = _vendor_id(data, source)
    klass = _class_id(data, vendor, source)
    raw_components = data.get("components", [] if "dependencies" in data else None)
    if not isinstance(raw_components, list) or not (raw_components or "dependencies" in data):
        raise DecodeError(f"{source}.components", "expected a non-empty list of components "
                          "(or dependencies)")

    components: list[_Component] = []
    integrated: dict[str, bytes] = {}
    for i, raw in enumerate(raw_components):
        comp = _component(raw, i, vendor=vendor, klass=klass, base=base,
                          path=f"{source}.components[{i}]", compress=compress)
        components.append(comp)
        if comp.payload is not None:
            assert comp.uri is not None
            integrated[comp.uri] = comp.payload
    dependencies = _dependencies(data.get("dependencies"), base, f"{source}.dependencies",
                                 first=len(components))
    for dep in dependencies:
        if dep.payload is not None:
            integrated[dep.uri] = dep.payload
    ids = [c.id for c in components]
    if len(set(ids + [d.id for d in dependencies])) != len(ids) + len(dependencies):
        raise DecodeError(f"{source}.components", "component and dependency ids must be unique")

    use_before = data.get("use-before")
    if use_before is not None and (not isinstance(use_before, int) or use_before < 0):
        raise DecodeError(f"{source}.use-before", "expected seconds since 1970")
    device_id = _uuid_field(data, "device-id", source)

    def raw_or(name: str, generated: CommandSequence | None) -> CommandSequence | None:
        if name in data:
            return jsonform.sequence_from_json(data[name], path=f"{source}.{name}")
        return generated

    many = len(components) + len(dependencies) > 1
    first = len(components)
    shared = raw_or("shared-sequence", _with_dependencies(
        _shared(components, many, use_before, device_id), dependencies, many,
        _dependency_parameters, first))
    install = raw_or("install", _with_dependencies(
        _install(components, many) if components else None, dependencies, many,
        _run_dependency, first))
    validate = raw_or("validate", _with_dependencies(_per_component(
        components, many, lambda c: [Command(Cmd.IMAGE_MATCH, REPORT_ALL)]) if components
        else None, dependencies, many, _run_dependency, first))
    resolution = raw_or("dependency-resolution", _with_dependencies(
        None, dependencies, many, _resolve_dependency, first))
    candidate = raw_or("candidate-verification", _with_dependencies(
        None, dependencies, many, _run_dependency, first))
    raw_uninstall = data.get("uninstall")
    uninstall = (_uninstall(raw_uninstall, ids, dependencies, many, f"{source}.uninstall")
                 if isinstance(raw_uninstall, Mapping) else raw_or("uninstall", None))
    invokers = [c for c in components if c.invoke]
    invoke = raw_or("invoke", _per_component(
        invokers, many, lambda c: [Command(Cmd.INVOKE, REPORT_FAILURE_RECORD)],
        index_of={c.id: i for i, c in enumerate(components)}) if invokers else None)
    load = raw_or("load", None)
    payload_fetch = raw_or("payload-fetch", None)

    text = _text(data, components, source)
    sever = _sever(data.get("sever", ["text"] if text is not None else []), source)
    set_version = data.get("set-version")
    manifest = Manifest(
        sequence_number=sequence_number,
        common=Common(components=(*ids, *(d.id for d in dependencies)),
                      shared_sequence=shared,
                      dependencies=FrozenDict({len(ids) + i: DependencyMetadata()
                                               for i in range(len(dependencies))})
                      if dependencies else None),
        reference_uri=_optional_str(data, "reference-uri", source),
        set_version=_version(set_version, f"{source}.set-version") if set_version else None,
        validate=validate,
        load=load,
        invoke=invoke,
        payload_fetch=payload_fetch,
        install=install,
        text=text,
        uninstall=uninstall,
        dependency_resolution=resolution,
        candidate_verification=candidate,
    )
    packed = FrozenDict({i: (c.suffix, c.packed) for i, c in enumerate(components)
                         if c.packed is not None and c.payload is None})
    if "encryption" not in data:
        if any(c.encrypt for c in components):
            raise DecodeError(f"{source}.components", "encrypt: true needs an encryption "
                              "section")
        return Description(_plain_uris(manifest, components, frozenset()), integrated, sever,
                           packed=packed)
    if packed or any(c.packed is not None for c in components):
        raise DecodeError(f"{source}.encryption", "compress and delta-from cannot be combined "
                          "with encryption (yet): leave one out")
    plan = parse_encryption(data["encryption"], base=base, path=f"{source}.encryption",
                            components=ids)
    chosen = plan.components if plan.components is not None else frozenset(
        i for i, c in enumerate(components) if c.image is not None and c.encrypt is not False)
    plaintexts = {}
    for i in sorted(chosen):
        image = components[i].image
        if image is None:
            raise DecodeError(f"{source}.components[{i}]", "an encrypted component needs its "
                              "image file (image:)")
        plaintexts[i] = image
    if not plaintexts:
        raise DecodeError(f"{source}.encryption", "no component has an image to encrypt")
    release = encrypt_manifest(manifest, plaintexts, integrated, plan)
    return Description(_plain_uris(release.manifest, components, frozenset(plaintexts)),
                       release.integrated, sever, FrozenDict(release.detached),
                       frozenset(plaintexts))


def _plain_uris(manifest: Manifest, components: list[_Component],
                encrypted: frozenset[int]) -> Manifest:
    """The ``{sha256}`` placeholder of each unencrypted image's uri, expanded."""
    return expand_uris(manifest, {
        i: (SHA256_PLACEHOLDER, hashlib.sha256(c.packed).hexdigest() if c.packed is not None
            else c.digest.value.hex()) for i, c in enumerate(components)
        if i not in encrypted and c.uri is not None and SHA256_PLACEHOLDER in c.uri
        and c.digest.algorithm == CoseAlg.SHA256})


@dataclass(frozen=True, slots=True)
class _Component:
    id: ComponentIdentifier
    vendor: uuid.UUID
    klass: uuid.UUID
    digest: Digest
    size: int
    uri: str | None
    payload: bytes | None
    invoke: bool
    text: Mapping[int, str]
    managed: Parameters = field(default_factory=Parameters)
    """Update-management parameters set before the fetch (update-management §4)."""
    image: bytes | None = None
    encrypt: bool | None = None
    packing: Parameters = field(default_factory=Parameters)
    """suitkit-compression-info and suitkit-delta-info, set with the uri (core.packing)."""
    packed: bytes | None = None
    """What devices fetch instead of the image: compressed, or a delta patch."""
    suffix: str = ""
    precursor: tuple[Digest, int] | None = None
    """The image a delta applies to: checked before the fetch (REQ.SEC.AUTH.PRECURSOR)."""


def _component(raw: Any, index: int, *, vendor: uuid.UUID | None, klass: uuid.UUID | None,
               base: Path, path: str, compress: str | None = None) -> _Component:
    if not isinstance(raw, Mapping):
        raise DecodeError(path, "expected a map")
    _known(raw, _COMPONENT_KEYS, path)
    cid = jsonform.component_id_from_json(raw.get("id", [f"0x{index:02x}"]), path=f"{path}.id")
    comp_vendor = _vendor_id(raw, path) or vendor
    comp_class = _class_id(raw, comp_vendor, path) or klass
    if comp_vendor is None:
        raise DecodeError(path, "no vendor-id or vendor-domain (here or at the top level)")
    if comp_class is None:
        raise DecodeError(path, "no class-id or class-name (here or at the top level)")

    payload: bytes | None = None
    if "image" in raw:
        image_path = base / str(raw["image"])
        try:
            image = image_path.read_bytes()
        except OSError as e:
            raise DecodeError(f"{path}.image", f"cannot read image {image_path}: "
                              f"{e.strerror or e}") from None
        digest = Digest(CoseAlg.SHA256, hashlib.sha256(image).digest())
        size = len(image)
    elif "image-digest" in raw and "image-size" in raw:
        digest = jsonform.digest_from_json(raw["image-digest"], path=f"{path}.image-digest")
        size = raw["image-size"]
        if not isinstance(size, int) or size < 0:
            raise DecodeError(f"{path}.image-size", "expected an unsigned integer")
        image = None
    else:
        raise DecodeError(path, "give either image (a file) or image-digest and image-size")

    uri = raw.get("uri")
    integrated = raw.get("integrated", uri is None)
    if not isinstance(integrated, bool):
        raise DecodeError(f"{path}.integrated", "expected true or false")
    packing, packed, suffix, precursor = _packing(raw, image, base, path,
                                                  None if integrated else compress)
    if integrated:
        if image is None:
            raise DecodeError(path, "an integrated payload needs the image file")
        name = Path(str(raw["image"])).name
        uri = uri if isinstance(uri, str) and uri.startswith("#") else f"#{name}"
        payload = image if packed is None else packed
    elif not isinstance(uri, str) or not uri:
        raise DecodeError(f"{path}.uri", "a detached image needs a uri")
    invoke = raw.get("invoke", index == 0)
    if not isinstance(invoke, bool):
        raise DecodeError(f"{path}.invoke", "expected true or false")
    encrypt = raw.get("encrypt")
    if encrypt is not None and not isinstance(encrypt, bool):
        raise DecodeError(f"{path}.encrypt", "expected true or false")
    return _Component(cid, comp_vendor, comp_class, digest, size, uri, payload, invoke,
                      _component_text(raw.get("text"), f"{path}.text"), _managed(raw, path),
                      image, encrypt, packing, packed, suffix, precursor)


def _packing(raw: Mapping[str, Any], image: bytes | None, base: Path, path: str,
             default: str | None) -> tuple[Parameters, bytes | None, str,
                                           tuple[Digest, int] | None]:
    """``compress:`` and ``delta-from:`` of a component: (parameters, payload, file suffix,
    precursor)."""
    name = raw.get("compress", default)
    delta_from = raw.get("delta-from")
    if raw.get("in-place") is not None and delta_from is None:
        raise DecodeError(f"{path}.in-place", "in-place needs delta-from (the precursor)")
    if name in (None, False) and delta_from is None:
        return Parameters(), None, "", None
    if image is None:
        raise DecodeError(path, "compress and delta-from need the image file (image:)")
    extra: dict[int, object] = {}
    payload, suffix, precursor = image, "", None
    if delta_from is not None:
        old_path = base / str(delta_from)
        try:
            old = old_path.read_bytes()
        except OSError as e:
            raise DecodeError(f"{path}.delta-from", f"cannot read the precursor image "
                              f"{old_path}: {e.strerror or e}") from None
        precursor = (Digest(CoseAlg.SHA256, hashlib.sha256(old).digest()), len(old))
        if raw.get("in-place") is not None:
            return _inplace(raw, old, image, precursor, path=path, name=name)
        extra[packing.DELTA_INFO] = packing.DeltaInfo(
            packing.DeltaFormat.SKD1, precursor[0], precursor[1]).encode()
        payload, suffix = packing.make_delta(old, image), ".skd1"
    if name not in (None, False):
        if not isinstance(name, str):
            raise DecodeError(f"{path}.compress", "expected zlib, zstd, xz, bzip2 or best")
        if name == "best":  # the smallest of every codec
            codec, payload = packing.compress_best(payload)
        else:
            codec = packing.codec_named(name, path=f"{path}.compress")
            payload = packing.compress(payload, codec)
        extra[packing.COMPRESSION_INFO] = packing.CompressionInfo(codec).encode()
        suffix += {packing.Codec.ZLIB: ".zz", packing.Codec.ZSTD: ".zst",
                   packing.Codec.XZ: ".xz", packing.Codec.BZIP2: ".bz2"}[codec]
    return Parameters.from_items(extra), payload, suffix, precursor


_SUFFIXES = {packing.Codec.ZLIB: ".zz", packing.Codec.ZSTD: ".zst", packing.Codec.XZ: ".xz",
             packing.Codec.BZIP2: ".bz2"}


def _inplace(raw: Mapping[str, Any], old: bytes, image: bytes, precursor: tuple[Digest, int],
             *, path: str, name: object) -> tuple[Parameters, bytes, str, tuple[Digest, int]]:
    """``in-place: SECTOR`` with ``delta-from:``: an in-place patch (docs/delta.md §9), its
    codec (``compress:``, default zstd; ``none``) and digest in delta-info's member 4, no
    compression-info (the device stages the patch as it travels)."""
    unit = raw.get("in-place")
    if isinstance(unit, bool) or not isinstance(unit, int):
        raise DecodeError(f"{path}.in-place", f"expected the device's sector size in bytes, "
                          f"got {unit!r}")
    if unit <= 0 or unit & (unit - 1) or not 512 <= unit <= 65536:
        raise DecodeError(f"{path}.in-place", f"the sector size must be a power of two from "
                          f"512 to 65536, got {unit}")
    patch, order, _literal = packing.make_inplace_delta(old, image, unit)
    suffix = ".skd1"
    codec = 0
    if name in (None, "zstd"):
        codec, patch = packing.Codec.ZSTD, packing.compress(patch, packing.Codec.ZSTD)
    elif name == "best":
        codec, patch = packing.compress_best(patch)
    elif name not in (False, "none"):
        if not isinstance(name, str):
            raise DecodeError(f"{path}.compress", "expected zlib, zstd, xz, bzip2, best or none")
        codec = packing.codec_named(name, path=f"{path}.compress")
        patch = packing.compress(patch, codec)
    if codec:
        suffix += _SUFFIXES[packing.Codec(codec)]
    inplace = packing.InplaceInfo(unit, int(order), int(codec),
                                  Digest(CoseAlg.SHA256, hashlib.sha256(patch).digest()),
                                  len(patch))
    info = packing.DeltaInfo(packing.DeltaFormat.SKD1, precursor[0], precursor[1], inplace)
    return Parameters.from_items({packing.DELTA_INFO: info.encode()}), patch, suffix, precursor


def _shared(components: list[_Component], many: bool, use_before: int | None,
            device_id: uuid.UUID | None) -> CommandSequence:
    # §7.1 compatibility check and §7.2 digest: per component, since parameters are scoped
    # per component (§8.4.8).
    commands: list[Command] = []
    for i, c in enumerate(components):
        if many:
            commands.append(Command(Cmd.SET_COMPONENT_INDEX, i))
        params = Parameters(vendor_identifier=c.vendor, class_identifier=c.klass,
                            image_digest=c.digest, image_size=c.size,
                            use_before=use_before, device_identifier=device_id)
        commands.append(Command(Cmd.OVERRIDE_PARAMETERS, params))
        commands.append(Command(Cmd.VENDOR_IDENTIFIER, REPORT_ALL))
        commands.append(Command(Cmd.CLASS_IDENTIFIER, REPORT_ALL))
        if device_id is not None:
            commands.append(Command(Cmd.DEVICE_IDENTIFIER, REPORT_ALL))
        if use_before is not None:
            commands.append(Command(Cmd.USE_BEFORE, REPORT_ALL))
    return CommandSequence(tuple(commands))


def _install(components: list[_Component], many: bool) -> CommandSequence:
    # §7.3 download / §7.5 integrated payload: set the URI, fetch, check the image; the
    # update-management conditions and the wait come first, before anything is written.
    def body(c: _Component) -> list[Command]:
        m = c.managed
        gates = [Command(code, REPORT_ALL) for code, present in (
            (Cmd.VERSION, m.version is not None),
            (Cmd.UPDATE_AUTHORIZED, m.update_priority is not None),
            (Cmd.WAIT, m.wait_info is not None),
            (Cmd.MINIMUM_BATTERY, m.minimum_battery is not None)) if present]
        fetch = {int(P.URI): c.uri, **dict(c.packing.items())}
        if c.precursor is None:
            params = Parameters.from_items({**dict(m.items()), **fetch})
            return [Command(Cmd.OVERRIDE_PARAMETERS, params), *gates,
                    Command(Cmd.FETCH, REPORT_FAILURE_RECORD),
                    Command(Cmd.IMAGE_MATCH, REPORT_ALL)]
        # RFC 9124 REQ.SEC.AUTH.PRECURSOR: the running image is the one the delta was made
        # for, checked before anything is fetched or written (the device checks it again
        # against suitkit-delta-info before it opens the slot).
        guard = Parameters.from_items({**dict(m.items()), int(P.IMAGE_DIGEST): c.precursor[0],
                                       int(P.IMAGE_SIZE): c.precursor[1]})
        target = Parameters.from_items({int(P.IMAGE_DIGEST): c.digest,
                                        int(P.IMAGE_SIZE): c.size, **fetch})
        return [Command(Cmd.OVERRIDE_PARAMETERS, guard), *gates,
                Command(Cmd.IMAGE_MATCH, REPORT_ALL), Command(Cmd.OVERRIDE_PARAMETERS, target),
                Command(Cmd.FETCH, REPORT_FAILURE_RECORD), Command(Cmd.IMAGE_MATCH, REPORT_ALL)]

    return _per_component(components, many, body)


@dataclass(frozen=True, slots=True)
class _Dependency:
    """A dependency manifest (trust-domains §5.2): its component (the slot the device keeps
    its envelope in), the digest of its bstr-wrapped manifest, its envelope's size, and where
    the device gets it (``#name``: integrated in this envelope)."""

    id: ComponentIdentifier
    digest: Digest
    size: int
    uri: str
    payload: bytes | None


def _dependencies(raw: Any, base: Path, path: str, *, first: int) -> list[_Dependency]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not raw or len(raw) > MAX_DEPENDENCIES:
        raise DecodeError(path, f"expected a list of 1 to {MAX_DEPENDENCIES} dependencies")
    out = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise DecodeError(where, "expected a map")
        _known(item, _DEPENDENCY_KEYS, where)
        cid = jsonform.component_id_from_json(
            item.get("id", [f"dependency-{first + i}.suit"]), path=f"{where}.id")
        payload: bytes | None = None
        if "envelope" in item:
            file = base / str(item["envelope"])
            try:
                data = file.read_bytes()
            except OSError as e:
                raise DecodeError(f"{where}.envelope", f"cannot read envelope {file}: "
                                  f"{e.strerror or e}") from None
            try:
                parts = codec.decode_envelope_parts(data)
            except DecodeError as e:
                raise DecodeError(f"{where}.envelope", f"{file} is not a SUIT envelope: "
                                  f"{e}") from None
            # trust-domains §5.2.2: a dependency is identified by the digest of its
            # bstr-wrapped manifest (signatures may change without breaking the dependent).
            digest = Digest(CoseAlg.SHA256,
                            hashlib.sha256(cbor.wrap(parts.manifest_bytes)).digest())
            size = len(data)
        elif "digest" in item and "size" in item:
            digest = jsonform.digest_from_json(item["digest"], path=f"{where}.digest")
            size = item["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise DecodeError(f"{where}.size", "expected the envelope's size in bytes")
            data = None
        else:
            raise DecodeError(where, "give either envelope (a file) or digest and size")
        uri = item.get("uri")
        integrated = item.get("integrated", uri is None)
        if not isinstance(integrated, bool):
            raise DecodeError(f"{where}.integrated", "expected true or false")
        if integrated:
            if data is None:
                raise DecodeError(where, "an integrated dependency needs its envelope file")
            name = Path(str(item["envelope"])).name
            uri = uri if isinstance(uri, str) and uri.startswith("#") else f"#{name}"
            payload = data
        elif not isinstance(uri, str) or not uri or uri.startswith("#"):
            raise DecodeError(f"{where}.uri", "a fetched dependency needs a uri")
        elif SHA256_PLACEHOLDER in uri:
            if data is None:
                raise DecodeError(f"{where}.uri", f"{SHA256_PLACEHOLDER} needs the envelope "
                                  "file (envelope:)")
            # the firmware server serves an envelope at /envelopes/<its SHA-256>
            uri = uri.replace(SHA256_PLACEHOLDER, hashlib.sha256(data).hexdigest())
        out.append(_Dependency(cid, digest, size, uri, payload))
    return out


def _with_dependencies(base: CommandSequence | None, dependencies: list[_Dependency],
                       many: bool, body: Any, first: int) -> CommandSequence | None:
    """``base`` followed by ``body(dependency)`` for each dependency (trust-domains §8
    templates), each after set-component-index; dependency indices start at ``first`` (they
    follow the components)."""
    if not dependencies:
        return base
    commands = list(base.commands) if base is not None else []
    for i, dep in enumerate(dependencies):
        if many:
            commands.append(Command(Cmd.SET_COMPONENT_INDEX, first + i))
        commands.extend(body(dep))
    return CommandSequence(tuple(commands))


def _dependency_parameters(dep: _Dependency) -> list[Command]:
    # trust-domains §8 shared template: the dependency's digest (of its bstr-wrapped
    # manifest) and size; the uri too, so that every section finds an integrated dependency.
    return [Command(Cmd.OVERRIDE_PARAMETERS, Parameters.from_items({
        int(P.IMAGE_DIGEST): dep.digest, int(P.IMAGE_SIZE): dep.size, int(P.URI): dep.uri}))]


def _resolve_dependency(dep: _Dependency) -> list[Command]:
    # trust-domains §8 dependency-resolution template: fetch, integrity, process.
    fetch = [Command(Cmd.FETCH, REPORT_FAILURE_RECORD)] if dep.payload is None else []
    return [*fetch, Command(Cmd.DEPENDENCY_INTEGRITY, REPORT_ALL),
            Command(Cmd.PROCESS_DEPENDENCY, REPORT_FAILURE_RECORD)]


def _run_dependency(dep: _Dependency) -> list[Command]:
    # trust-domains §8 validate template: integrity, then the dependency's same section.
    return [Command(Cmd.DEPENDENCY_INTEGRITY, REPORT_ALL),
            Command(Cmd.PROCESS_DEPENDENCY, REPORT_FAILURE_RECORD)]


def _uninstall(raw: Any, ids: list[ComponentIdentifier], dependencies: list[_Dependency],
               many: bool, path: str) -> CommandSequence | None:
    """suit-uninstall (trust-domains §6) from ``{unlink: [ids]}``: unlink each named
    component or dependency."""
    _known(raw, {"unlink"}, path)
    known = [*ids, *(d.id for d in dependencies)]
    raw = raw.get("unlink")
    path = f"{path}.unlink"
    if not isinstance(raw, list) or not raw or len(raw) > len(known):
        raise DecodeError(path, "expected a list of the component or dependency ids to unlink")
    commands: list[Command] = []
    for i, item in enumerate(raw):
        cid = jsonform.component_id_from_json(item, path=f"{path}[{i}]")
        if cid not in known:
            raise DecodeError(f"{path}[{i}]", f"{item!r} is none of this manifest's "
                              "components or dependencies")
        if many:
            commands.append(Command(Cmd.SET_COMPONENT_INDEX, known.index(cid)))
        commands.append(Command(Cmd.UNLINK, REPORT_FAILURE_RECORD))
    return CommandSequence(tuple(commands))


_COMPARISONS = (("==", 3), (">=", 2), ("<=", 4), (">", 1), ("<", 5), ("=", 3))
_WAIT_NAMES = {name_of(WaitEvent, e): int(e) for e in WaitEvent}
_METADATA_NAMES = {"default-permissions": 1, "user-permissions": 2, "group-permissions": 3,
                   "role-permissions": 4, "file-type": 5, "modification-time": 6,
                   "creation-time": 7, "creator": 8}
_FILE_TYPES = {"regular": 1, "directory": 2, "symlink": 3}


def _managed(raw: Mapping[str, Any], path: str) -> Parameters:
    """The update-management parameters of a component description."""
    values: dict[int, object] = {}
    if "version" in raw:
        values[int(P.VERSION)] = _version_match(raw["version"], f"{path}.version")
    for key, number, signed in (("minimum-battery", P.MINIMUM_BATTERY, False),
                                ("update-priority", P.UPDATE_PRIORITY, True)):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or (
                    not signed and value < 0):
                raise DecodeError(f"{path}.{key}", "expected an integer"
                                  + ("" if signed else " >= 0"))
            values[int(number)] = value
    if "wait" in raw:
        values[int(P.WAIT_INFO)] = _wait(raw["wait"], f"{path}.wait")
    if "metadata" in raw:
        values[int(P.COMPONENT_METADATA)] = _metadata(raw["metadata"], f"{path}.metadata")
    return Parameters.from_items(values)


def _version_match(raw: Any, path: str) -> VersionMatch:
    # update-management §4.4: [comparison-type, [+int]]; ">=1.2" or {comparison, value}
    if isinstance(raw, str):
        text = raw.strip()
        for prefix, comparison in _COMPARISONS:
            if text.startswith(prefix):
                return VersionMatch(comparison, _version(text[len(prefix):].strip(), path))
        raise DecodeError(path, f"expected a comparison and a version such as '>=1.2.0' "
                          f"(>, >=, ==, <=, <), got {raw!r}")
    raise DecodeError(path, f"expected a comparison and a version such as '>=1.2.0', got "
                      f"{raw!r}")


def _wait(raw: Any, path: str) -> FrozenDict[int, object]:
    # update-management §4.5: SUIT_Wait_Event = { + event => value }
    if not isinstance(raw, Mapping) or not raw:
        raise DecodeError(path, "expected a map of wait events such as {power: 1}")
    events: dict[int, object] = {}
    for name, value in raw.items():
        number = _WAIT_NAMES.get(name)
        if number is None:
            raise DecodeError(path, f"unknown wait event {name!r}; expected one of "
                              f"{', '.join(_WAIT_NAMES)}")
        where = f"{path}.{name}"
        if number == WaitEvent.OTHER_DEVICE_VERSION:
            if not isinstance(value, Mapping) or set(value) != {"device", "version"}:
                raise DecodeError(where, "expected {device: HEX, version: '>=1.2'}")
            try:
                device = bytes.fromhex(str(value["device"]))
            except ValueError:
                raise DecodeError(f"{where}.device", "expected hexadecimal bytes") from None
            versions = value["version"]
            matches = [_version_match(v, f"{where}.version") for v in
                       (versions if isinstance(versions, list) else [versions])]
            events[number] = (device, tuple((m.comparison, m.value) for m in matches))
        elif isinstance(value, bool) or not isinstance(value, int) or (
                value < 0 and number not in (WaitEvent.AUTHORIZATION, WaitEvent.POWER,
                                             WaitEvent.NETWORK)):
            raise DecodeError(where, "expected an integer" + (
                "" if number in (WaitEvent.AUTHORIZATION, WaitEvent.POWER, WaitEvent.NETWORK)
                else " >= 0"))
        else:
            events[number] = value
    return FrozenDict(events)


def _metadata(raw: Any, path: str) -> FrozenDict[int, object]:
    # update-management §4.6: SUIT_Component_Metadata
    if not isinstance(raw, Mapping) or not raw:
        raise DecodeError(path, "expected a map such as {default-permissions: 0o644}")
    out: dict[int, object] = {}
    for name, value in raw.items():
        number = _METADATA_NAMES.get(name)
        where = f"{path}.{name}"
        if number is None:
            raise DecodeError(path, f"unknown metadata {name!r}; expected one of "
                              f"{', '.join(_METADATA_NAMES)}")
        if number == 5:
            if value not in _FILE_TYPES:
                raise DecodeError(where, "expected regular, directory or symlink")
            out[number] = _FILE_TYPES[value]
        elif number in (6, 7):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DecodeError(where, "expected seconds since 1970")
            out[number] = CBORTag(1, value)  # §4.6: the tag is REQUIRED
        elif number == 8:
            out[number] = _actor(value, where)
        elif number == 1:
            out[number] = _permission_bits(value, where)
        else:
            if not isinstance(value, Mapping) or not value:
                raise DecodeError(where, "expected a map of actor => permission bits")
            out[number] = FrozenDict({_actor(a, where): _permission_bits(v, where)
                                      for a, v in value.items()})
    return FrozenDict(out)


def _actor(value: Any, where: str) -> object:
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise DecodeError(where, "an actor is a user name or a numeric id")
    return value


def _permission_bits(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 14:
        raise DecodeError(where, "expected permission bits (0 traverse/exec, 1 create/write, "
                          "2 list/read, ... 13; update-management §4.6)")
    return value


def _per_component(components: list[_Component], many: bool, body: Any,
                   index_of: Mapping[ComponentIdentifier, int] | None = None
                   ) -> CommandSequence:
    commands: list[Command] = []
    for i, c in enumerate(components):
        if many:
            commands.append(Command(Cmd.SET_COMPONENT_INDEX,
                                    index_of[c.id] if index_of is not None else i))
        commands.extend(body(c))
    return CommandSequence(tuple(commands))


_TEXT_KEYS = {name_of(TextKey, k): int(k) for k in TextKey}
_COMPONENT_TEXT_KEYS = {name_of(ComponentTextKey, k): int(k) for k in ComponentTextKey}


def _text(data: Mapping[str, Any], components: list[_Component], source: str) -> Text | None:
    raw = data.get("text")
    fields: dict[int, str] = {}
    if raw is not None:
        if not isinstance(raw, Mapping):
            raise DecodeError(f"{source}.text", "expected a map of text fields")
        for key, value in raw.items():
            if key not in _TEXT_KEYS:
                raise DecodeError(f"{source}.text", f"unknown text field {key!r}; expected one "
                                  f"of {', '.join(_TEXT_KEYS)}")
            fields[_TEXT_KEYS[key]] = str(value)
    per_component = {c.id: FrozenDict(c.text) for c in components if c.text}
    if not fields and not per_component:
        return None
    language = data.get("language", "en-US")
    if not isinstance(language, str):
        raise DecodeError(f"{source}.language", "expected a language tag such as en-US")
    return Text(FrozenDict({language: LocalizedText(FrozenDict(fields),
                                                    FrozenDict(per_component))}))


def _component_text(raw: Any, path: str) -> Mapping[int, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise DecodeError(path, "expected a map of text fields")
    out: dict[int, str] = {}
    for key, value in raw.items():
        if key not in _COMPONENT_TEXT_KEYS:
            raise DecodeError(path, f"unknown component text field {key!r}; expected one of "
                              f"{', '.join(_COMPONENT_TEXT_KEYS)}")
        out[_COMPONENT_TEXT_KEYS[key]] = str(value)
    return out


def _sever(raw: Any, source: str) -> frozenset[int]:
    if not isinstance(raw, list):
        raise DecodeError(f"{source}.sever", "expected a list of member names")
    keys = set()
    for name in raw:
        if name not in _SEVERABLE_NAMES:
            raise DecodeError(f"{source}.sever", f"{name!r} is not severable; expected one of "
                              f"{', '.join(_SEVERABLE_NAMES)}")
        keys.add(int(_SEVERABLE_NAMES[name]))
    return frozenset(keys)


def _vendor_id(data: Mapping[str, Any], path: str) -> uuid.UUID | None:
    if "vendor-domain" in data:
        domain = data["vendor-domain"]
        if not isinstance(domain, str) or not domain:
            raise DecodeError(f"{path}.vendor-domain", "expected a domain name")
        # §8.4.8.1: Vendor ID = UUID5(NAMESPACE_DNS, vendor domain)
        return uuid.uuid5(uuid.NAMESPACE_DNS, domain)
    return _uuid_field(data, "vendor-id", path)


def _class_id(data: Mapping[str, Any], vendor: uuid.UUID | None,
              path: str) -> uuid.UUID | None:
    if "class-name" in data:
        name = data["class-name"]
        if not isinstance(name, str) or not name:
            raise DecodeError(f"{path}.class-name", "expected a text string")
        if vendor is None:
            raise DecodeError(f"{path}.class-name", "class-name needs a vendor-id or "
                              "vendor-domain")
        # §8.4.8.2: Class ID = UUID5(Vendor ID, class-specific information)
        return uuid.uuid5(vendor, name)
    return _uuid_field(data, "class-id", path)


def _uuid_field(data: Mapping[str, Any], key: str, path: str) -> uuid.UUID | None:
    if key not in data:
        return None
    try:
        return uuid.UUID(str(data[key]))
    except ValueError:
        raise DecodeError(f"{path}.{key}", f"not a UUID: {data[key]!r}") from None


def _optional_str(data: Mapping[str, Any], key: str, path: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise DecodeError(f"{path}.{key}", "expected a text string")
    return value


_PRE_RELEASES = {"rc": -1, "beta": -2, "alpha": -3}


def _version(raw: Any, path: str) -> tuple[int, ...]:
    # update-management §4.4: 1.2.3 = [1,2,3]; 1.2-rc.3 = [1,2,-1,3]; 1.2.3-alpha.4 = [...,-3,4]
    if isinstance(raw, str):
        release, dash, pre = raw.partition("-")
        try:
            numbers = [int(p) for p in release.split(".")]
            if not 1 <= len(numbers) <= 3 or any(n < 0 for n in numbers) \
                    or not all(p.isdigit() and p.isascii() for p in release.split(".")):
                raise ValueError(raw)
            if dash:
                kind, _, rest = pre.partition(".")
                numbers.append(_PRE_RELEASES[kind])
                numbers.extend(int(p) for p in rest.split(".") if rest)
        except (ValueError, KeyError):
            raise DecodeError(path, f"expected a version such as 1.2.3 or 1.2-rc.3, got "
                              f"{raw!r}") from None
        return tuple(numbers)
    if isinstance(raw, list) and raw and all(isinstance(v, int) for v in raw):
        return tuple(raw)
    raise DecodeError(path, f"expected a version such as 1.2.3, got {raw!r}")


def _known(data: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in data:
        if key not in allowed:
            raise DecodeError(path, f"unknown key {key!r}; expected one of "
                              f"{', '.join(sorted(allowed))}")
