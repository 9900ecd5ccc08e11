"""The model as JSON-compatible data, and back, for people and description files.

One notation serves ``suitkit show --json`` and the raw command lists of a description file:
commands are ``[name, argument]`` pairs with the spec's names (``"condition-vendor-identifier"``,
``"directive-override-parameters"``), parameters are maps keyed by parameter name, byte strings
are lower-case hex, UUIDs are in their canonical text form, a SUIT_Digest is
``{"algorithm-id": "sha256", "digest-bytes": "<hex>"}`` and a component identifier is a list of
hex strings. Unknown numbers are written as ``"unknown(N)"`` / ``"custom(N)"`` and read back.

Pure: no files. Reading JSON text and YAML happens in the author tools.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from suitkit.core.cbor import CBORTag
from suitkit.core.model import (
    Command,
    CommandArgument,
    CommandSequence,
    ComponentIdentifier,
    Digest,
    Envelope,
    FrozenDict,
    Manifest,
    Parameters,
    Pen,
    Text,
    TryEach,
    VersionMatch,
)
from suitkit.core.numbers import (
    CONDITIONS,
    ComponentTextKey,
    CoseAlg,
    ManifestKey,
    TextKey,
    name_of,
)
from suitkit.core.numbers import Command as Cmd
from suitkit.core.numbers import Parameter as P
from suitkit.errors import DecodeError

__all__ = [
    "command_name",
    "envelope_to_json",
    "manifest_to_json",
    "parameters_from_json",
    "sequence_from_json",
    "to_json",
]

Json = Any

_DIGEST_NAMES: dict[int, str] = {
    CoseAlg.SHA256: "sha256", CoseAlg.SHA384: "sha384", CoseAlg.SHA512: "sha512",
    CoseAlg.SHAKE128: "shake128", CoseAlg.SHAKE256: "shake256",
}
_DIGEST_BY_NAME = {v: int(k) for k, v in _DIGEST_NAMES.items()}
_DIGEST_BY_NAME.update({"sha-256": CoseAlg.SHA256, "sha-384": CoseAlg.SHA384,
                        "sha-512": CoseAlg.SHA512})


def command_name(code: int) -> str:
    """``condition-...`` or ``directive-...`` (or ``custom(N)``) for a command number."""
    base = name_of(Cmd, code)
    if base.startswith(("custom(", "unknown(")):
        return base
    return ("condition-" if code in CONDITIONS else "directive-") + base


_COMMAND_BY_NAME: dict[str, int] = {}
for _c in Cmd:
    _COMMAND_BY_NAME[command_name(_c)] = int(_c)
    _COMMAND_BY_NAME.setdefault(name_of(Cmd, _c), int(_c))
_PARAMETER_BY_NAME = {name_of(P, p): int(p) for p in P}
_NUMBER = re.compile(r"^(?:custom|unknown)\((-?\d+)\)$")


# --------------------------------------------------------------------------- model -> JSON


def to_json(value: object) -> Json:
    """Any model value as JSON-compatible data."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Digest):
        return {"algorithm-id": _DIGEST_NAMES.get(value.algorithm, value.algorithm),
                "digest-bytes": value.value.hex()}
    if isinstance(value, Pen):
        return {"cbor-pen": value.oid.hex()}
    if isinstance(value, VersionMatch):
        return {"comparison-type": value.comparison, "comparison-value": list(value.value)}
    if isinstance(value, Parameters):
        return {name_of(P, k): to_json(v) for k, v in value.items()}
    if isinstance(value, CommandSequence):
        return [_command_json(c) for c in value.commands]
    if isinstance(value, TryEach):
        out = [to_json(s) for s in value.sequences]
        return [*out, None] if value.empty_fallback else out
    if isinstance(value, Text):
        return _text_json(value)
    if isinstance(value, CBORTag):
        return {"tag": value.tag, "value": to_json(value.value)}
    if isinstance(value, Mapping):
        return {str(to_json(k)) if not isinstance(k, str) else k: to_json(v)
                for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    return value


def _command_json(command: Command) -> Json:
    return [command_name(command.code), to_json(command.argument)]


def _text_json(text: Text) -> Json:
    out: dict[str, Json] = {}
    for tag, lmap in text.languages.items():
        entry: dict[str, Json] = {name_of(TextKey, k): v for k, v in lmap.fields.items()}
        if lmap.components:
            entry["components"] = [
                {"component-id": component_id_to_json(cid),
                 **{name_of(ComponentTextKey, k): v for k, v in fields.items()}}
                for cid, fields in lmap.components.items()
            ]
        out[tag] = entry
    return out


def manifest_to_json(manifest: Manifest) -> Json:
    """A SUIT_Manifest as JSON-compatible data, members named as in the spec."""
    common = manifest.common
    out: dict[str, Json] = {
        "manifest-version": manifest.version,
        "manifest-sequence-number": manifest.sequence_number,
        "common": {
            "components": [component_id_to_json(c) for c in common.components],
            **({"shared-sequence": to_json(common.shared_sequence)}
               if common.shared_sequence is not None else {}),
            **({"dependencies": {str(i): {"prefix": component_id_to_json(m.prefix)
                                              if m.prefix is not None else None}
                                 for i, m in common.dependencies.items()}}
               if common.dependencies is not None else {}),
        },
    }
    for name in ("reference_uri", "manifest_component_id", "set_version", "validate", "load",
                 "invoke", "uninstall", "dependency_resolution", "payload_fetch",
                 "candidate_verification", "install", "text", "coswid"):
        value = getattr(manifest, name)
        if value is not None:
            key = name.replace("_", "-")
            if name == "manifest_component_id":
                out[key] = component_id_to_json(value)
                continue
            out[key] = {"severed-digest": to_json(value)} if isinstance(value, Digest) \
                else to_json(value)
    if manifest.extra:
        out["extra"] = to_json(manifest.extra)
    return out


def envelope_to_json(envelope: Envelope, blocks: Sequence[Json] = ()) -> Json:
    """An envelope as JSON: authentication (digest and the given block summaries), manifest,
    severable members present, integrated payload sizes."""
    auth = envelope.authentication
    return {
        "authentication-wrapper": {"digest": to_json(auth.digest),
                                   "blocks": list(blocks)},
        "manifest": manifest_to_json(envelope.manifest),
        "severable-members-present": [name_of(ManifestKey, k) for k in envelope.severable],
        "integrated-payloads": {k: len(v) for k, v in envelope.integrated.items()},
    }


# --------------------------------------------------------------------------- JSON -> model


def sequence_from_json(value: Json, *, path: str) -> CommandSequence:
    """A command sequence from ``[[name, argument], ...]``."""
    if not isinstance(value, list) or not value:
        raise DecodeError(path, "expected a non-empty list of [command, argument] pairs")
    commands = []
    for i, item in enumerate(value):
        sub = f"{path}[{i}]"
        if not isinstance(item, list) or len(item) != 2:
            raise DecodeError(sub, f"expected [command, argument], got {item!r}")
        code = _command_code(item[0], sub)
        commands.append(Command(code, _argument_from_json(code, item[1], f"{sub}.{item[0]}")))
    return CommandSequence(tuple(commands))


def _command_code(name: Json, path: str) -> int:
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    if isinstance(name, str):
        name = name.removeprefix("suit-")
        if name in _COMMAND_BY_NAME:
            return _COMMAND_BY_NAME[name]
        match = _NUMBER.match(name)
        if match:
            return int(match.group(1))
    raise DecodeError(path, f"unknown command {name!r}")


def _argument_from_json(code: int, arg: Json, path: str) -> CommandArgument:
    if code in (Cmd.OVERRIDE_PARAMETERS, Cmd.SET_PARAMETERS):
        return parameters_from_json(arg, path=path)
    if code == Cmd.RUN_SEQUENCE:
        return sequence_from_json(arg, path=path)
    if code == Cmd.TRY_EACH:
        if not isinstance(arg, list):
            raise DecodeError(path, "expected a list of sequences")
        fallback = bool(arg) and arg[-1] is None
        options = arg[:-1] if fallback else arg
        if len(options) < 2:
            raise DecodeError(path, f"expected at least 2 sequences, got {len(options)}")
        return TryEach(tuple(sequence_from_json(s, path=f"{path}[{i}]")
                             for i, s in enumerate(options)), fallback)
    if code == Cmd.SET_COMPONENT_INDEX:
        if arg is True:
            return True
        if isinstance(arg, list) and arg and all(_is_uint(v) for v in arg):
            return tuple(arg)
        if _is_uint(arg):
            return int(arg)
        raise DecodeError(path, f"expected an index, true or a list of indices, got {arg!r}")
    if code == Cmd.OVERRIDE_MULTIPLE:
        if not isinstance(arg, Mapping) or not arg:
            raise DecodeError(path, "expected {index: parameters}")
        return FrozenDict({_index(i, path): parameters_from_json(p, path=f"{path}[{i}]")
                           for i, p in arg.items()})
    if code == Cmd.COPY_PARAMS:
        if not isinstance(arg, Mapping) or not arg:
            raise DecodeError(path, "expected {index: [parameter, ...]}")
        return FrozenDict({_index(i, path): tuple(_parameter_number(p, path) for p in ps)
                           for i, ps in arg.items()})
    if code < 0:
        if arg is None or isinstance(arg, int | str):
            return arg
        raise DecodeError(path, f"custom command argument must be int, text or null, got {arg!r}")
    if _is_uint(arg):
        return int(arg)
    raise DecodeError(path, f"expected a reporting policy (unsigned integer), got {arg!r}")


def _is_uint(value: Json) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _index(value: Json, path: str) -> int:
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise DecodeError(path, f"expected a component index, got {value!r}") from None
    if index < 0:
        raise DecodeError(path, f"expected a component index, got {value!r}")
    return index


def _parameter_number(name: Json, path: str) -> int:
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    if isinstance(name, str):
        if name in _PARAMETER_BY_NAME:
            return _PARAMETER_BY_NAME[name]
        match = _NUMBER.match(name)
        if match:
            return int(match.group(1))
    raise DecodeError(path, f"unknown parameter {name!r}")


def parameters_from_json(value: Json, *, path: str) -> Parameters:
    """Parameters from ``{name: value}`` with the conventions of this module."""
    if not isinstance(value, Mapping) or not value:
        raise DecodeError(path, "expected a non-empty map of parameters")
    items: dict[int, object] = {}
    for name, raw in value.items():
        number = _parameter_number(name, path)
        items[number] = _parameter_value(number, raw, f"{path}.{name}")
    return Parameters.from_items(items)


def _parameter_value(number: int, raw: Json, path: str) -> object:
    try:
        if number in (P.VENDOR_IDENTIFIER,) and isinstance(raw, Mapping) and "cbor-pen" in raw:
            return Pen(bytes.fromhex(raw["cbor-pen"]))
        if number in (P.VENDOR_IDENTIFIER, P.CLASS_IDENTIFIER, P.DEVICE_IDENTIFIER):
            return UUID(str(raw))
        if number == P.IMAGE_DIGEST:
            return digest_from_json(raw, path=path)
        if number in (P.CONTENT, P.ENCRYPTION_INFO, P.INVOKE_ARGS, P.FETCH_ARGUMENTS):
            return bytes.fromhex(raw)
        if number == P.URI:
            if not isinstance(raw, str):
                raise TypeError("expected a text string")
            return raw
        if number in (P.STRICT_ORDER, P.SOFT_FAILURE):
            if not isinstance(raw, bool):
                raise TypeError("expected true or false")
            return raw
        if number == P.VERSION:
            return VersionMatch(int(raw["comparison-type"]),
                                tuple(int(v) for v in raw["comparison-value"]))
        if number in (P.USE_BEFORE, P.COMPONENT_SLOT, P.IMAGE_SIZE, P.SOURCE_COMPONENT,
                      P.MINIMUM_BATTERY, P.UPDATE_PRIORITY):
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise TypeError("expected an integer")
            if number != P.UPDATE_PRIORITY and raw < 0:
                raise ValueError("expected an unsigned integer")
            return raw
        if number in (P.WAIT_INFO, P.COMPONENT_METADATA):
            return FrozenDict({int(k): v for k, v in raw.items()})
    except DecodeError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise DecodeError(path, f"invalid value {raw!r}: {e}") from None
    return raw


def digest_from_json(raw: Json, *, path: str) -> Digest:
    """A SUIT_Digest from ``{"algorithm-id": "sha256", "digest-bytes": "<hex>"}``."""
    if not isinstance(raw, Mapping):
        raise DecodeError(path, "expected {algorithm-id, digest-bytes}")
    alg = raw.get("algorithm-id", "sha256")
    algorithm = _DIGEST_BY_NAME.get(alg) if isinstance(alg, str) else alg
    if not isinstance(algorithm, int):
        raise DecodeError(path, f"unknown digest algorithm {alg!r}")
    try:
        value = bytes.fromhex(raw["digest-bytes"])
    except (KeyError, TypeError, ValueError):
        raise DecodeError(path, "digest-bytes must be a hex string") from None
    return Digest(int(algorithm), value)


def component_id_to_json(cid: ComponentIdentifier) -> Json:
    """A component identifier as a list of ``"0x<hex>"`` strings (read back by
    ``component_id_from_json``)."""
    return ["0x" + part.hex() for part in cid]


def component_id_from_json(raw: Json, *, path: str) -> ComponentIdentifier:
    """A component identifier from a list of parts: ``"0x.."``/hex-looking strings are bytes
    given in hex when prefixed with ``0x``; other strings are UTF-8 text."""
    if not isinstance(raw, list):
        raise DecodeError(path, f"expected a list of parts, got {raw!r}")
    parts = []
    for i, part in enumerate(raw):
        if not isinstance(part, str):
            raise DecodeError(f"{path}[{i}]", f"expected a string, got {part!r}")
        if part.startswith("0x"):
            try:
                parts.append(bytes.fromhex(part[2:]))
            except ValueError:
                raise DecodeError(f"{path}[{i}]", f"invalid hex {part!r}") from None
        else:
            parts.append(part.encode())
    return tuple(parts)
