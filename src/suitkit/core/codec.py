"""Bytes <-> model for SUIT envelopes and manifests (draft-ietf-suit-manifest-34 §8, App. A).

Decoding is strict and bounded: every input passes ``cbor.decode`` (no duplicate keys, no
indefinite lengths, preferred serialization, depth limit), every size and count is checked
against ``Limits`` before it is used, and errors carry a path such as
``manifest.install[2].override-parameters.image-digest``. The manifest's exact bytes are kept
(``Envelope.manifest_bytes``); digests are computed over them, never over a re-encoding.

Encoding is deterministic (RFC 8949 §4.2.1 key order), so the spec's examples decode and
re-encode byte for byte.

This module does not check signatures or digests (``verify`` does), and gives commands no
meaning (``processor`` does). Severed members are kept as bytes until ``verify`` has checked
their digest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from suitkit.core import cbor, crypto
from suitkit.core.cbor import CBORTag
from suitkit.core.model import (
    EMPTY,
    NO_MEMBERS,
    NO_PAYLOADS,
    Authentication,
    Command,
    CommandArgument,
    CommandSequence,
    Common,
    ComponentIdentifier,
    Decoded,
    DependencyMetadata,
    Digest,
    Envelope,
    FrozenDict,
    LocalizedText,
    Manifest,
    Parameters,
    Pen,
    Text,
    TryEach,
    VersionMatch,
)
from suitkit.core.numbers import (
    SEVERABLE_MEMBERS,
    CommonKey,
    CoseAlg,
    EnvelopeKey,
    ManifestKey,
    Tag,
    name_of,
)
from suitkit.core.numbers import (
    Command as Cmd,
)
from suitkit.core.numbers import (
    Parameter as P,
)
from suitkit.core.typed import (
    as_array,
    as_bool,
    as_bstr,
    as_int,
    as_map,
    as_tstr,
    as_uint,
    describe,
    freeze,
    thaw,
)
from suitkit.errors import DecodeError
from suitkit.limits import Limits

__all__ = [
    "build_envelope",
    "decode_command_sequence",
    "decode_envelope",
    "decode_envelope_parts",
    "decode_manifest",
    "decode_parameters",
    "decode_text",
    "encode_command_sequence",
    "encode_envelope",
    "encode_manifest",
    "encode_text",
    "member_digest",
    "parameters_obj",
    "sever",
]

DEFAULT_LIMITS = Limits()
_KNOWN_COMMANDS = frozenset(int(c) for c in Cmd)
_STRUCTURED_COMMANDS = frozenset({
    Cmd.SET_COMPONENT_INDEX, Cmd.OVERRIDE_PARAMETERS, Cmd.SET_PARAMETERS, Cmd.RUN_SEQUENCE,
    Cmd.TRY_EACH, Cmd.OVERRIDE_MULTIPLE, Cmd.COPY_PARAMS,
})
_POLICY_COMMANDS = _KNOWN_COMMANDS - _STRUCTURED_COMMANDS


# --------------------------------------------------------------------------- small checks

_uint, _int, _bstr, _tstr, _bool = as_uint, as_int, as_bstr, as_tstr, as_bool
_array, _map, _describe, _freeze, _thaw = as_array, as_map, describe, freeze, thaw


def _nested(data: object, path: str, limits: Limits) -> Any:
    """Decode a ``bstr .cbor X`` member, in preferred serialization like the envelope (the fast
    path decides only preferred input; the reference re-encodes to check the rest)."""
    data = _bstr(data, path)
    if _FAST is not None:
        got = _FAST(data, limits.max_depth)  # cbor.decode's own first step, called directly
        if got is not None:
            return got[0]
    return cbor.decode_reference(data, path=path, max_depth=limits.max_depth, preferred=True)


_FAST = cbor.FAST


# --------------------------------------------------------------------------- envelope


@dataclass(frozen=True)
class EnvelopeParts(Decoded):
    """A decoded envelope whose manifest has not been parsed yet (manifest §6.2: a processor
    verifies the signature before it parses the manifest). ``verify`` authenticates
    ``manifest_bytes`` first, then calls ``with_manifest``. Its members are the envelope's
    members but the manifest."""

    authentication: Authentication
    manifest_bytes: bytes
    severable: FrozenDict[int, bytes]
    integrated: FrozenDict[str, bytes]
    extra: FrozenDict[int, object]
    tagged: bool

    def with_manifest(self, manifest: Manifest) -> Envelope:
        """The envelope, with its (now parsed) manifest."""
        return Envelope.from_fields({**self.__dict__, "manifest": manifest})


def decode_envelope(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Decode a SUIT_Envelope (tagged 107 or untagged) without checking any signature.

    Raises:
        DecodeError: the envelope or anything inside it is malformed or over a limit.
    """
    parts = decode_envelope_parts(data, limits=limits)
    return parts.with_manifest(decode_manifest(parts.manifest_bytes, limits=limits))


def decode_envelope_parts(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> EnvelopeParts:
    """Decode an envelope's members, leaving the manifest as the bytes received.

    Raises:
        DecodeError: the envelope is malformed or over a limit.
    """
    if len(data) > limits.max_envelope_bytes:
        raise DecodeError("envelope", f"{len(data)} bytes is over the limit of "
                          f"{limits.max_envelope_bytes}")
    tagged = False
    top: Any = None
    if data[:2] == _ENVELOPE_TAG_HEAD and len(data) <= _UNTAG_UP_TO and limits.max_depth > 1:
        # Tag 107 in its shortest head, then the map decoded on its own: the same checks on the
        # same bytes (the tag counts as one level of depth), but cbor2 gives a plain dict, where
        # inside a tag it builds its slower immutable containers.
        body = data[2:]
        got = _FAST(body, limits.max_depth - 1) if _FAST and type(body) is bytes else None
        if got is not None:  # decided by the fast path (preferred serialization included)
            top, tagged = got[0], True
        else:
            try:
                top = cbor.decode_reference(bytes(body), path="envelope",
                                            max_depth=limits.max_depth - 1, preferred=True)
                tagged = True
            except DecodeError:
                pass  # refused: decoded again whole below, to report the error as seen there
    if not tagged:
        top = cbor.decode(data, path="envelope", max_depth=limits.max_depth, preferred=True)
        if isinstance(top, CBORTag):
            if top.tag == Tag.MANIFEST:
                raise DecodeError("envelope", "a bare SUIT_Manifest (tag 1070) has no "
                                  "authentication wrapper; expected a SUIT_Envelope (tag 107)")
            if top.tag != Tag.ENVELOPE:
                raise DecodeError("envelope", f"expected tag 107 (SUIT_Envelope), got tag "
                                  f"{top.tag}")
            tagged, top = True, top.value
    entries = _map(top, "envelope", limit=limits.max_map_entries + limits.max_integrated)
    auth: Authentication | None = None
    manifest_bytes: bytes | None = None
    severable: dict[int, bytes] = {}
    integrated: dict[str, bytes] = {}
    extra: dict[int, object] = {}
    # manifest §8.2/§8.3: "The SUIT_Authentication structure MUST come before the suit-manifest
    # element, regardless of canonical encoding"; a validator rejects an envelope that begins
    # with anything else (a streaming processor authenticates before it reads further).
    first = next(iter(entries), None)
    if first != _E_AUTHENTICATION_WRAPPER and _E_AUTHENTICATION_WRAPPER in entries:
        what = ("the manifest (key 3)" if first == _E_MANIFEST else
                f"key {first!r:.60}" if type(first) in (int, str) else _describe(first))
        raise DecodeError("envelope", "the authentication-wrapper (key 2) must be the first "
                          f"member, before the manifest (manifest §8.3); found {what} first")
    for key, value in entries.items():
        if type(key) is str:
            if len(integrated) >= limits.max_integrated:
                raise DecodeError("envelope", f"more than {limits.max_integrated} integrated "
                                  "payloads")
            integrated[key] = _bstr(value, f"envelope[{key!r}]")
        elif type(key) is not int:
            raise DecodeError("envelope", f"map key must be an int or a text string, got "
                              f"{_describe(key)}")
        elif key == _E_AUTHENTICATION_WRAPPER:
            auth = _decode_authentication(value, limits)
        elif key == _E_MANIFEST:
            manifest_bytes = _bstr(value, "envelope.manifest")
            if len(manifest_bytes) > limits.max_manifest_bytes:
                raise DecodeError("envelope.manifest", f"{len(manifest_bytes)} bytes is over "
                                  f"the limit of {limits.max_manifest_bytes}")
        elif key in SEVERABLE_MEMBERS:
            severable[key] = _bstr(value, f"envelope.{name_of(EnvelopeKey, key)}")
        else:
            extra[key] = _freeze(value, f"envelope[{key}]")
    if auth is None:
        raise DecodeError("envelope", "missing authentication-wrapper (key 2)")
    if manifest_bytes is None:
        raise DecodeError("envelope", "missing manifest (key 3)")
    return EnvelopeParts.from_fields({
        "authentication": auth, "manifest_bytes": manifest_bytes,
        "severable": FrozenDict(severable) if severable else NO_MEMBERS,
        "integrated": FrozenDict(integrated) if integrated else NO_PAYLOADS,
        "extra": FrozenDict(extra) if extra else EMPTY, "tagged": tagged})


_ENVELOPE_TAG_HEAD = b"\xd8\x6b"  # tag 107
_UNTAG_UP_TO = 64 * 1024  # above this, slicing the tag off would copy a large envelope
_E_AUTHENTICATION_WRAPPER = int(EnvelopeKey.AUTHENTICATION_WRAPPER)
_E_MANIFEST = int(EnvelopeKey.MANIFEST)
_AUTH_PATH = "envelope.authentication-wrapper"
_AUTH_DIGEST_PATH = f"{_AUTH_PATH}.digest"


def _decode_authentication(value: object, limits: Limits) -> Authentication:
    path = _AUTH_PATH
    items = _array(_nested(value, path, limits), path, limit=limits.max_auth_blocks + 1)
    if not items:
        raise DecodeError(path, "expected [digest, *authentication blocks], got an empty array")
    digest_bytes = items[0]
    if type(digest_bytes) is not bytes:
        _bstr(digest_bytes, f"{path}[0]")
    digest = _digest_bytes(digest_bytes, _AUTH_DIGEST_PATH)
    blocks = tuple(items[1:])
    for i, block in enumerate(blocks, start=1):
        if type(block) is not bytes:
            _bstr(block, f"{path}[{i}]")
    auth = _new_object(Authentication)  # as Authentication(...), without its frame
    _set_attribute(auth, "digest", digest)
    _set_attribute(auth, "digest_bytes", digest_bytes)
    _set_attribute(auth, "blocks", blocks)
    return auth


_SHA256 = CoseAlg.SHA256
_SHA256_DIGEST_HEAD = b"\x82\x2f\x58\x20"  # [-16, bstr of 32 bytes]


def _digest_bytes(data: bytes, path: str) -> Digest:
    """Decode an encoded SUIT_Digest; SHA-256 ``[-16, h'<32 bytes>']`` without a CBOR pass."""
    if len(data) == 36 and data[:4] == _SHA256_DIGEST_HEAD:
        return Digest(_SHA256, data[4:])
    return _decode_digest(cbor.decode(data, path=path, max_depth=2), path)


def _decode_digest(value: object, path: str) -> Digest:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise DecodeError(path, f"expected SUIT_Digest [algorithm-id, bytes], got "
                          f"{_describe(value)}")
    return Digest(_int(value[0], f"{path}.algorithm-id"), _bstr(value[1], f"{path}.bytes"))


# --------------------------------------------------------------------------- manifest


def decode_manifest(data: bytes, *, limits: Limits = DEFAULT_LIMITS,
                    path: str = "manifest") -> Manifest:
    """Decode a SUIT_Manifest from the content of the envelope's manifest bstr.

    Raises:
        DecodeError: malformed, missing a required member, or over a limit.
    """
    top = cbor.decode(data, path=path, max_depth=limits.max_depth)
    if isinstance(top, CBORTag) and top.tag == Tag.MANIFEST:
        top = top.value
    entries = _map(top, path, limit=limits.max_map_entries)
    fields: dict[str, Any] = {}
    extra: dict[int, object] = {}
    for key, value in entries.items():
        if type(key) is not int:
            raise DecodeError(path, f"map key must be an int, got {_describe(key)}")
        if key in (_M_VERSION, _M_SEQUENCE_NUMBER):
            if type(value) is not int or value < 0:
                _uint(value, _manifest_path(path, key))
            fields["version" if key == _M_VERSION else "sequence_number"] = value
            continue
        sub = _manifest_path(path, key)
        if key == _M_COMMON:
            fields["common"] = _decode_common(_nested(value, sub, limits), sub, limits)
        elif key in _UNSEVERABLE:
            fields[_UNSEVERABLE[key]] = decode_command_sequence(value, path=sub, limits=limits)
        elif key == _M_REFERENCE_URI:
            fields["reference_uri"] = _tstr(value, sub)
        elif key == _M_MANIFEST_COMPONENT_ID:
            fields["manifest_component_id"] = _component_id(value, sub, limits)
        elif key == _M_SET_VERSION:
            fields["set_version"] = _version_list(_nested(value, sub, limits), sub)
        elif key == _M_TEXT:
            fields["text"] = (_decode_digest(value, sub) if isinstance(value, list | tuple)
                              else decode_text(_bstr(value, sub), path=sub, limits=limits))
        elif key == _M_COSWID:
            fields["coswid"] = (_decode_digest(value, sub) if isinstance(value, list | tuple)
                                else _bstr(value, sub))
        elif key in _SEVERABLE_SEQUENCES:
            fields[_SEVERABLE_SEQUENCES[key]] = (
                _decode_digest(value, sub) if isinstance(value, list | tuple)
                else decode_command_sequence(value, path=sub, limits=limits)
            )
        else:
            extra[key] = _freeze(value, sub)
    for required, number in (("version", 1), ("sequence_number", 2), ("common", 3)):
        if required not in fields:
            raise DecodeError(path, f"missing {required.replace('_', '-')} (key {number})")
    if extra:
        fields["extra"] = FrozenDict(extra)
    return Manifest.from_fields(fields)


_M_VERSION, _M_SEQUENCE_NUMBER, _M_COMMON = (int(ManifestKey.VERSION),
                                             int(ManifestKey.SEQUENCE_NUMBER),
                                             int(ManifestKey.COMMON))
_M_REFERENCE_URI, _M_MANIFEST_COMPONENT_ID = (int(ManifestKey.REFERENCE_URI),
                                              int(ManifestKey.MANIFEST_COMPONENT_ID))
_M_SET_VERSION, _M_TEXT, _M_COSWID = (int(ManifestKey.SET_VERSION), int(ManifestKey.TEXT),
                                      int(ManifestKey.COSWID))
_MANIFEST_PATHS: dict[int, str] = {int(k): f"manifest.{name_of(ManifestKey, k)}"
                                   for k in ManifestKey}


def _manifest_path(path: str, key: int) -> str:
    """``manifest.<member name>`` (precomputed for the top-level manifest)."""
    if path == "manifest":
        sub = _MANIFEST_PATHS.get(key)
        if sub is not None:
            return sub
    return f"{path}.{name_of(ManifestKey, key)}"


_UNSEVERABLE: dict[int, str] = {
    ManifestKey.VALIDATE: "validate",
    ManifestKey.LOAD: "load",
    ManifestKey.INVOKE: "invoke",
    ManifestKey.UNINSTALL: "uninstall",
}
_SEVERABLE_SEQUENCES: dict[int, str] = {
    ManifestKey.DEPENDENCY_RESOLUTION: "dependency_resolution",
    ManifestKey.PAYLOAD_FETCH: "payload_fetch",
    ManifestKey.CANDIDATE_VERIFICATION: "candidate_verification",
    ManifestKey.INSTALL: "install",
}


_C_COMPONENTS, _C_SHARED_SEQUENCE, _C_DEPENDENCIES = (int(CommonKey.COMPONENTS),
                                                     int(CommonKey.SHARED_SEQUENCE),
                                                     int(CommonKey.DEPENDENCIES))


def _decode_common(value: object, path: str, limits: Limits) -> Common:
    entries = _map(value, path, limit=limits.max_map_entries)
    fields: dict[str, object] = {}
    extra: dict[int, object] = {}
    for key, item in entries.items():
        if type(key) is not int:  # also keeps true/false from standing in for 1/0
            raise DecodeError(path, f"map key must be an int, got {_describe(key)}")
        if key == _C_COMPONENTS:
            sub = f"{path}.components"
            ids = _array(item, sub, limit=limits.max_components)
            if not ids:
                raise DecodeError(sub, "expected at least one component")
            fields["components"] = tuple([_component_id(c, sub, limits, i)
                                          for i, c in enumerate(ids)])
        elif key == _C_SHARED_SEQUENCE:
            fields["shared_sequence"] = decode_command_sequence(
                item, path=f"{path}.shared-sequence", limits=limits)
        elif key == _C_DEPENDENCIES:
            fields["dependencies"] = _decode_dependencies(item, f"{path}.dependencies", limits)
        else:
            extra[key] = _freeze(item, path)
    if extra:
        fields["extra"] = FrozenDict(extra)
    return Common.from_fields(fields)


def _decode_dependencies(value: object, path: str,
                         limits: Limits) -> FrozenDict[int, DependencyMetadata]:
    entries = _map(value, path, limit=limits.max_components)
    out: dict[int, DependencyMetadata] = {}
    for index, meta in entries.items():
        sub = f"{path}[{index!r}]"
        _uint(index, sub)
        fields = _map(meta, sub, limit=limits.max_map_entries)
        prefix = None
        extra: dict[int, object] = {}
        for key, item in fields.items():
            if key == 1:
                prefix = _component_id(item, f"{sub}.prefix", limits)
            else:
                extra[_int(key, sub)] = _freeze(item, sub)
        out[index] = DependencyMetadata(prefix, FrozenDict(extra) if extra else EMPTY)
    return FrozenDict(out)


def _component_id(value: object, path: str, limits: Limits,
                  index: int | None = None) -> ComponentIdentifier:
    """A SUIT_Component_Identifier; at ``path[index]`` when ``index`` is given."""
    if (type(value) is list or type(value) is tuple) and \
            len(value) <= limits.max_component_id_parts:
        for part in value:
            if type(part) is not bytes:
                break
        else:
            return tuple(value)  # the common case, without building a path
    if index is not None:
        path = f"{path}[{index}]"
    parts = _array(value, path, limit=limits.max_component_id_parts)
    return tuple(_bstr(p, f"{path}[{i}]") for i, p in enumerate(parts))


def _version_list(value: object, path: str) -> tuple[int, ...]:
    items = _array(value, path, limit=16)
    if not items:
        raise DecodeError(path, "expected at least one version integer")
    return tuple(_int(v, f"{path}[{i}]") for i, v in enumerate(items))


# --------------------------------------------------------------------------- commands


def decode_command_sequence(data: object, *, path: str, limits: Limits = DEFAULT_LIMITS,
                            depth: int = 0) -> CommandSequence:
    """Decode ``bstr .cbor SUIT_Command_Sequence`` (manifest §8.4.6)."""
    if depth > limits.max_sequence_nesting:
        raise DecodeError(path, f"command sequences nested deeper than "
                          f"{limits.max_sequence_nesting}")
    items = _nested(data, path, limits)
    if type(items) is not list or len(items) > 2 * limits.max_commands:
        items = _array(items, path, limit=2 * limits.max_commands)
    if not items or len(items) % 2:
        raise DecodeError(path, f"expected [command, argument, ...] pairs, got "
                          f"{len(items)} items")
    commands: list[Command] = []
    append = commands.append
    policy = _POLICY_COMMANDS
    new = tuple.__new__  # Command's own __new__, without its Python frame
    for i in range(0, len(items), 2):
        code, arg = items[i], items[i + 1]
        if type(code) is int and code in policy and type(arg) is int and arg >= 0:
            append(new(Command, (code, arg)))  # the common case, without building a path
            continue
        if type(code) is not int:
            raise DecodeError(f"{path}[{i // 2}]", f"expected a command number, got "
                              f"{_describe(code)}")
        sub = f"{path}[{i // 2}].{name_of(Cmd, code)}"
        append(Command(code, _argument(code, arg, sub, limits, depth)))
    sequence = _new_object(CommandSequence)  # as CommandSequence(...), without its frame
    _set_attribute(sequence, "commands", tuple(commands))
    return sequence


_new_object, _set_attribute = object.__new__, object.__setattr__
_SET_COMPONENT_INDEX, _OVERRIDE_PARAMETERS, _SET_PARAMETERS, _RUN_SEQUENCE = (
    int(Cmd.SET_COMPONENT_INDEX), int(Cmd.OVERRIDE_PARAMETERS), int(Cmd.SET_PARAMETERS),
    int(Cmd.RUN_SEQUENCE))
_TRY_EACH, _OVERRIDE_MULTIPLE, _COPY_PARAMS = (int(Cmd.TRY_EACH), int(Cmd.OVERRIDE_MULTIPLE),
                                               int(Cmd.COPY_PARAMS))


def _argument(code: int, arg: object, path: str, limits: Limits,
              depth: int) -> CommandArgument:
    if code in (_OVERRIDE_PARAMETERS, _SET_PARAMETERS):
        return decode_parameters(arg, path=path, limits=limits)
    if code == _SET_COMPONENT_INDEX:
        if arg is True:
            return True
        if isinstance(arg, list | tuple):
            indices = _array(arg, path, limit=limits.max_components)
            if not indices:
                raise DecodeError(path, "expected at least one component index")
            return tuple(_uint(v, f"{path}[{i}]") for i, v in enumerate(indices))
        return _uint(arg, path)
    if code == _RUN_SEQUENCE:
        return decode_command_sequence(arg, path=path, limits=limits, depth=depth + 1)
    if code == _TRY_EACH:
        options = _array(arg, path, limit=limits.max_commands)
        fallback = bool(options) and options[-1] is None
        sequences = options[:-1] if fallback else options
        # manifest §8.4.10.2: [2* bstr .cbor SUIT_Command_Sequence, ?nil]
        if len(sequences) < 2:
            raise DecodeError(path, f"expected at least 2 sequences, got {len(sequences)}")
        return TryEach(
            tuple(decode_command_sequence(s, path=f"{path}[{i}]", limits=limits,
                                          depth=depth + 1) for i, s in enumerate(sequences)),
            fallback,
        )
    if code == _OVERRIDE_MULTIPLE:
        entries = _map(arg, path, limit=limits.max_components)
        if not entries:
            raise DecodeError(path, "expected at least one component")
        return FrozenDict({
            _uint(i, path): decode_parameters(p, path=f"{path}[{i!r}]", limits=limits)
            for i, p in entries.items()
        })
    if code == _COPY_PARAMS:
        entries = _map(arg, path, limit=limits.max_components)
        if not entries:
            raise DecodeError(path, "expected at least one component")
        out: dict[int, tuple[int, ...]] = {}
        for i, keys in entries.items():
            sub = f"{path}[{i!r}]"
            numbers = _array(keys, sub, limit=limits.max_map_entries)
            if not numbers:
                raise DecodeError(sub, "expected at least one parameter number")
            out[_uint(i, path)] = tuple(_int(k, sub) for k in numbers)
        return FrozenDict(out)
    if code < 0:
        # manifest §8.4.11: SUIT_Command_Custom argument is bstr / tstr / int / nil
        if arg is None or type(arg) in (bytes, str, int):
            return arg
        raise DecodeError(path, f"custom command argument must be bstr, tstr, int or nil, got "
                          f"{_describe(arg)}")
    if code in _KNOWN_COMMANDS:
        return _uint(arg, path)  # SUIT_Rep_Policy
    return _freeze(arg, path)  # unknown command: kept to be shown; the processor refuses it


def decode_parameters(value: object, *, path: str,
                      limits: Limits = DEFAULT_LIMITS) -> Parameters:
    """Decode a ``{+ $$SUIT_Parameters}`` map (manifest §8.4.8)."""
    entries = _map(value, path, limit=limits.max_map_entries)
    if not entries:
        raise DecodeError(path, "expected at least one parameter")
    fields: dict[str, Any] = {}
    extra: dict[int, object] = {}
    decoders = _PARAMETER_DECODERS
    for key, item in entries.items():
        if type(key) is not int:
            raise DecodeError(path, f"parameter key must be an int, got {_describe(key)}")
        decoder = decoders.get(key)
        if decoder is None:
            extra[key] = _freeze(item, f"{path}.{name_of(P, key)}")
            continue
        name, kind, fn = decoder
        # The common cases are checked inline; the path is only built for an error, a nested
        # decode or a first sight of a UUID.
        seen = type(item)
        if seen is kind:
            if fn is None:
                if kind is not int or item >= 0:
                    fields[name] = item
                    continue
            elif fn is _image_digest:
                if len(item) == 36 and item[:4] == _SHA256_DIGEST_HEAD:
                    digest = fields[name] = _new_object(Digest)  # Digest(...) without its frame
                    _set_attribute(digest, "algorithm", _SHA256)
                    _set_attribute(digest, "value", item[4:])
                    continue
            elif (fn is _uuid or fn is _vendor) and len(item) == 16:
                uuid = _UUIDS.get(item)
                if uuid is not None:
                    fields[name] = uuid
                    continue
        fields[name] = (fn or _KIND_CHECKS[kind])(item, f"{path}.{name_of(P, key)}", limits)
    if extra:
        fields["extra"] = FrozenDict(extra)
    return Parameters.from_fields(fields)


_UUIDS: dict[bytes, UUID] = {}


def _uuid(value: object, path: str, _limits: Limits) -> UUID:
    data = _bstr(value, path)
    if len(data) != 16:
        raise DecodeError(path, f"expected a 16-byte UUID, got {len(data)} bytes")
    # Vendor and class IDs repeat in every manifest a device sees; a small cache of these
    # immutable objects saves a measurable part of decoding (benchmarks/bench_verify.py).
    uuid = _UUIDS.get(data)
    if uuid is None:
        if len(_UUIDS) >= 256:
            _UUIDS.clear()
        uuid = _UUIDS[data] = UUID(bytes=data)
    return uuid


def _vendor(value: object, path: str, limits: Limits) -> UUID | Pen:
    if isinstance(value, CBORTag):
        if value.tag != Tag.CBOR_PEN:
            raise DecodeError(path, f"expected a UUID or tag 112 (CBOR PEN), got tag {value.tag}")
        return Pen(_bstr(value.value, path))
    return _uuid(value, path, limits)


def _image_digest(value: object, path: str, _limits: Limits) -> Digest:
    return _digest_bytes(_bstr(value, path), path)


def _version_match(value: object, path: str, limits: Limits) -> VersionMatch:
    items = _nested(value, path, limits)
    if not isinstance(items, list | tuple) or len(items) != 2:
        raise DecodeError(path, f"expected [comparison-type, [+int]], got {_describe(items)}")
    return VersionMatch(_uint(items[0], f"{path}.comparison-type"),
                        _version_list(items[1], f"{path}.comparison-value"))


def _frozen_map(value: object, path: str, limits: Limits) -> FrozenDict[int, object]:
    entries = _map(_nested(value, path, limits), path, limit=limits.max_map_entries)
    for key in entries:
        _int(key, path)
    frozen = _freeze(entries, path)
    assert isinstance(frozen, FrozenDict)
    return frozen


def _as(fn: Any) -> Any:
    return lambda value, path, _limits: fn(value, path)


_KIND_CHECKS: dict[type, Any] = {int: _as(_uint), bool: _as(_bool), bytes: _as(_bstr),
                                 str: _as(_tstr)}

# number -> (field name, the CBOR type of a valid value, decoder). A value of that type (an
# unsigned one for int, unless the decoder is _int) is taken as is when the decoder is None.
# Otherwise, or for any other type, the decoder (or the kind's check) runs with the full path:
# it converts the value, or raises saying what was expected.
_PARAMETER_DECODERS: dict[int, tuple[str, type, Any]] = {
    P.VENDOR_IDENTIFIER: ("vendor_identifier", bytes, _vendor),
    P.CLASS_IDENTIFIER: ("class_identifier", bytes, _uuid),
    P.IMAGE_DIGEST: ("image_digest", bytes, _image_digest),
    P.USE_BEFORE: ("use_before", int, None),
    P.COMPONENT_SLOT: ("component_slot", int, None),
    P.STRICT_ORDER: ("strict_order", bool, None),
    P.SOFT_FAILURE: ("soft_failure", bool, None),
    P.IMAGE_SIZE: ("image_size", int, None),
    P.CONTENT: ("content", bytes, None),
    P.ENCRYPTION_INFO: ("encryption_info", bytes, None),
    P.URI: ("uri", str, None),
    P.SOURCE_COMPONENT: ("source_component", int, None),
    P.INVOKE_ARGS: ("invoke_args", bytes, None),
    P.DEVICE_IDENTIFIER: ("device_identifier", bytes, _uuid),
    P.FETCH_ARGUMENTS: ("fetch_arguments", bytes, None),
    P.MINIMUM_BATTERY: ("minimum_battery", int, None),
    P.UPDATE_PRIORITY: ("update_priority", int, _as(_int)),
    P.VERSION: ("version", bytes, _version_match),
    P.WAIT_INFO: ("wait_info", bytes, _frozen_map),
    P.COMPONENT_METADATA: ("component_metadata", bytes, _frozen_map),
}


# --------------------------------------------------------------------------- text


def decode_text(data: bytes, *, path: str = "manifest.text",
                limits: Limits = DEFAULT_LIMITS) -> Text:
    """Decode ``bstr .cbor SUIT_Text_Map`` (manifest §8.4.4)."""
    entries = _map(cbor.decode(data, path=path, max_depth=limits.max_depth), path,
                   limit=limits.max_map_entries)
    languages: dict[str, LocalizedText] = {}
    for tag, lmap in entries.items():
        sub = f"{path}[{tag!r}]"
        _tstr(tag, path)
        fields: dict[int, str] = {}
        components: dict[ComponentIdentifier, FrozenDict[int, str]] = {}
        for key, value in _map(lmap, sub, limit=limits.max_map_entries).items():
            if isinstance(key, tuple | list):
                cid = _component_id(key, f"{sub}[component]", limits)
                items = _map(value, f"{sub}[{_cid_text(cid)}]", limit=limits.max_map_entries)
                components[cid] = FrozenDict({
                    _int(k, f"{sub}[{_cid_text(cid)}]"): _tstr(v, f"{sub}[{_cid_text(cid)}][{k}]")
                    for k, v in items.items()
                })
            else:
                fields[_int(key, sub)] = _tstr(value, f"{sub}[{key!r}]")
        languages[tag] = LocalizedText(FrozenDict(fields), FrozenDict(components))
    return Text(FrozenDict(languages))


def _cid_text(cid: ComponentIdentifier) -> str:
    return "[" + ",".join(f"h'{p.hex()}'" for p in cid) + "]"


# --------------------------------------------------------------------------- encoding


def encode_envelope(envelope: Envelope) -> bytes:
    """Deterministic encoding of ``envelope`` (manifest bytes and blocks are kept verbatim)."""
    auth = envelope.authentication
    members: dict[object, object] = {
        EnvelopeKey.AUTHENTICATION_WRAPPER: cbor.encode([auth.digest_bytes, *auth.blocks]),
        EnvelopeKey.MANIFEST: envelope.manifest_bytes,
    }
    members.update({int(k): v for k, v in envelope.severable.items()})
    members.update(envelope.integrated)
    members.update({int(k): v for k, v in envelope.extra.items()})
    body = {int(k) if isinstance(k, int) else k: v for k, v in members.items()}
    return cbor.encode(CBORTag(Tag.ENVELOPE, body) if envelope.tagged else body)


def encode_manifest(manifest: Manifest) -> bytes:
    """Deterministic encoding of a SUIT_Manifest (the content of the envelope's key 3)."""
    out: dict[int, object] = {
        ManifestKey.VERSION: manifest.version,
        ManifestKey.SEQUENCE_NUMBER: manifest.sequence_number,
        ManifestKey.COMMON: cbor.encode(_common_obj(manifest.common)),
    }
    if manifest.reference_uri is not None:
        out[ManifestKey.REFERENCE_URI] = manifest.reference_uri
    if manifest.manifest_component_id is not None:
        out[ManifestKey.MANIFEST_COMPONENT_ID] = list(manifest.manifest_component_id)
    if manifest.set_version is not None:
        out[ManifestKey.SET_VERSION] = cbor.encode(list(manifest.set_version))
    for key, name in _UNSEVERABLE.items():
        seq = getattr(manifest, name)
        if seq is not None:
            out[key] = encode_command_sequence(seq)
    for key, name in _SEVERABLE_SEQUENCES.items():
        member = getattr(manifest, name)
        if isinstance(member, Digest):
            out[key] = _digest_obj(member)
        elif member is not None:
            out[key] = encode_command_sequence(member)
    if isinstance(manifest.text, Digest):
        out[ManifestKey.TEXT] = _digest_obj(manifest.text)
    elif manifest.text is not None:
        out[ManifestKey.TEXT] = encode_text(manifest.text)
    if isinstance(manifest.coswid, Digest):
        out[ManifestKey.COSWID] = _digest_obj(manifest.coswid)
    elif manifest.coswid is not None:
        out[ManifestKey.COSWID] = manifest.coswid
    out.update({int(k): _thaw(v) for k, v in manifest.extra.items()})
    return cbor.encode({int(k): v for k, v in out.items()})


def _digest_obj(digest: Digest) -> list[object]:
    return [digest.algorithm, digest.value]


def _common_obj(common: Common) -> dict[int, object]:
    out: dict[int, object] = {}
    if common.dependencies is not None:
        out[CommonKey.DEPENDENCIES] = {
            index: {**({1: list(meta.prefix)} if meta.prefix is not None else {}),
                    **{int(k): _thaw(v) for k, v in meta.extra.items()}}
            for index, meta in common.dependencies.items()
        }
    if common.components:
        out[CommonKey.COMPONENTS] = [list(c) for c in common.components]
    if common.shared_sequence is not None:
        out[CommonKey.SHARED_SEQUENCE] = encode_command_sequence(common.shared_sequence)
    out.update({int(k): _thaw(v) for k, v in common.extra.items()})
    return {int(k): v for k, v in out.items()}


def encode_command_sequence(sequence: CommandSequence) -> bytes:
    """The encoded SUIT_Command_Sequence (the content of its bstr)."""
    return cbor.encode(_sequence_obj(sequence))


def _sequence_obj(sequence: CommandSequence) -> list[object]:
    items: list[object] = []
    for command in sequence.commands:
        items.append(command.code)
        items.append(_argument_obj(command.code, command.argument))
    return items


def _argument_obj(code: int, arg: CommandArgument) -> object:
    if isinstance(arg, Parameters):
        return parameters_obj(arg)
    if isinstance(arg, CommandSequence):
        return encode_command_sequence(arg)
    if isinstance(arg, TryEach):
        options: list[object] = [encode_command_sequence(s) for s in arg.sequences]
        if arg.empty_fallback:
            options.append(None)
        return options
    if isinstance(arg, FrozenDict) and code in (Cmd.OVERRIDE_MULTIPLE, Cmd.COPY_PARAMS):
        return {
            int(i): parameters_obj(v) if isinstance(v, Parameters) else _thaw(v)
            for i, v in arg.items()
        }
    return _thaw(arg)  # any other argument, e.g. of a command we do not know, as decoded


def parameters_obj(params: Parameters) -> dict[int, object]:
    """The CBOR object of a parameters map (bstr-wrapped values already encoded)."""
    out: dict[int, object] = {}
    for number, value in params.items():
        out[int(number)] = _parameter_obj(number, value)
    return out


def _parameter_obj(number: int, value: object) -> object:
    if isinstance(value, UUID):
        return value.bytes
    if isinstance(value, Pen):
        return CBORTag(Tag.CBOR_PEN, value.oid)
    if isinstance(value, Digest):
        return cbor.encode(_digest_obj(value))
    if isinstance(value, VersionMatch):
        return cbor.encode([value.comparison, list(value.value)])
    if number in (P.WAIT_INFO, P.COMPONENT_METADATA):
        return cbor.encode(_thaw(value))
    return _thaw(value)


def encode_text(text: Text) -> bytes:
    """The encoded SUIT_Text_Map (the content of its bstr)."""
    obj: dict[str, object] = {}
    for tag, lmap in text.languages.items():
        entry: dict[object, object] = {k: v for k, v in lmap.fields.items()}
        for cid, fields in lmap.components.items():
            entry[tuple(cid)] = dict(fields)
        obj[tag] = entry
    return cbor.encode(obj)


# --------------------------------------------------------------------------- building, severing

def member_digest(member_bytes: bytes, algorithm: int = CoseAlg.SHA256) -> Digest:
    """SUIT_Digest of a bstr-wrapped member (manifest §8.3, §8.4.12: header included)."""
    return Digest(algorithm, crypto.digest(algorithm, cbor.wrap(member_bytes)))


def build_envelope(
    manifest: Manifest,
    *,
    sever_members: frozenset[int] = frozenset(),
    integrated: Mapping[str, bytes] | None = None,
    digest_algorithm: int = CoseAlg.SHA256,
) -> Envelope:
    """An unsigned envelope for ``manifest``.

    Members named in ``sever_members`` (severable keys: text, install, payload-fetch, ...) are
    moved into the envelope and replaced in the manifest by their digest, so they can later be
    severed without touching the signature (manifest §8.4.12). Sign after this step.
    """
    severable: dict[int, bytes] = {}
    replaced: dict[str, Digest] = {}
    for key in sorted(sever_members):
        name = _SEVERABLE_FIELDS.get(key)
        if name is None:
            raise ValueError(f"member {key} is not severable")
        member = getattr(manifest, name)
        if member is None or isinstance(member, Digest):
            continue
        content = _member_bytes(member)
        severable[key] = content
        replaced[name] = member_digest(content, digest_algorithm)
    if replaced:
        manifest = _replace(manifest, replaced)
    manifest_bytes = encode_manifest(manifest)
    digest = member_digest(manifest_bytes, digest_algorithm)
    return Envelope(
        authentication=Authentication(digest, cbor.encode(_digest_obj(digest)), ()),
        manifest=manifest,
        manifest_bytes=manifest_bytes,
        severable=FrozenDict(severable),
        integrated=FrozenDict(dict(integrated or {})),
    )


_SEVERABLE_FIELDS: dict[int, str] = {**_SEVERABLE_SEQUENCES, ManifestKey.TEXT: "text",
                     ManifestKey.COSWID: "coswid"}


def _member_bytes(member: object) -> bytes:
    if isinstance(member, CommandSequence):
        return encode_command_sequence(member)
    if isinstance(member, Text):
        return encode_text(member)
    assert isinstance(member, bytes)
    return member


def _replace(manifest: Manifest, changes: Mapping[str, object]) -> Manifest:
    return replace(manifest, **changes)  # type: ignore[arg-type]


def sever(envelope: Envelope, members: frozenset[int] | None = None) -> Envelope:
    """Drop severable members from the envelope (all of them by default).

    The manifest keeps their digests, so the signature still verifies (manifest §8.4.12).
    """
    keep = {k: v for k, v in envelope.severable.items()
            if members is not None and k not in members}
    return replace(envelope, severable=FrozenDict(keep))
