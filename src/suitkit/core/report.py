"""SUIT_Report: what a device tells its status tracker about processing a manifest.

Implements the data model and the CBOR encoding of draft-ietf-suit-report-18 §4 (suit-spec.md §13):

::

    SUIT_Report = {
      suit-reference          (99) => [manifest-uri: tstr, manifest-digest: SUIT_Digest],
      ? suit-report-nonce      (2) => bstr,
      suit-report-records      (3) => [* SUIT_Record / system-property-claims],
      suit-report-result       (4) => true / {5: code, 6: SUIT_Record, 7: reason},
      ? suit-report-capability-report (8) => SUIT_Capability_Report,
      * $$SUIT_Report_Extensions
    }
    SUIT_Record = [manifest-id: [* uint], manifest-section: int, section-offset: uint,
                   component-index: uint, properties: {* $$SUIT_Parameters}, * extensions]
    system-property-claims = {0 => SUIT_Component_Identifier, + $$SUIT_Parameters}

Record properties are SUIT parameters and use the manifest's parameter encoding (an image digest
is ``bstr .cbor SUIT_Digest``), so they are ``model.Parameters`` here and go through the manifest
codec.
Encoding is deterministic (RFC 8949 §4.2.1). Decoding is strict and bounded, because the status
tracker decodes reports sent by devices it does not trust: every error is a ``DecodeError`` with a
path such as ``report.records[2].properties``.

The capability report (report §6, key 8; ``CapabilityReport``) is typed: what a device
supports, as component identifiers (with prefix wildcards) and lists of numbers from the SUIT
registries (commands, parameters, COSE algorithms, envelope, manifest, common, text, component
text and dependency elements), and new items keyed by their CBOR path (``[3, 3, 1] => [3]``).
``decode_capability_report`` reads one on its own (a device's inventory carries it).

Signed reports (report §8): ``sign_report`` wraps the encoded report in a tagged COSE_Sign1 (or
COSE_Mac0 for an HMAC key) whose payload is ``bstr .cbor SUIT_Report`` (media type
``application/suit-report+cose``); ``open_signed_report`` checks one against the key the
receiver holds for the device (the key, never the message, chooses the algorithm) and decodes
the report inside.

Deliberately not here: COSE_Encrypt0 and EAT containers, and producing reports (``processor``
does; a device adds its capability report and the nonce).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from suitkit.core import cbor, codec, cose, crypto
from suitkit.core.cbor import CBORTag
from suitkit.core.model import (
    CommandSequence,
    ComponentIdentifier,
    Digest,
    Envelope,
    FrozenDict,
    Parameters,
    TryEach,
)
from suitkit.core.numbers import Command as Cmd
from suitkit.core.numbers import (
    CoseAlg,
    CoseHeader,
    ManifestKey,
    Parameter,
    ReportKey,
    ReportReason,
    Tag,
    name_of,
)
from suitkit.core.typed import as_array, as_bstr, as_int, as_map, as_uint, describe, freeze, thaw
from suitkit.errors import DecodeError
from suitkit.limits import Limits

__all__ = [
    "CAPABILITY_LISTS",
    "MAX_CAPABILITY_BYTES",
    "MAX_CAPABILITY_ITEMS",
    "MAX_REPORT_BYTES",
    "MAX_REPORT_RECORDS",
    "SIGNED_REPORT_MEDIA_TYPE",
    "CapabilityReport",
    "ComponentCapability",
    "Record",
    "Reference",
    "Report",
    "ResultFailure",
    "SignedReport",
    "SystemPropertyClaims",
    "capability_gaps",
    "capability_json",
    "decode_capability_report",
    "decode_report",
    "encode_capability_report",
    "encode_report",
    "open_signed_report",
    "reason_name",
    "sign_report",
]

MAX_REPORT_BYTES = 64 * 1024
"""Default bound on an encoded report accepted by ``decode_report``."""
MAX_REPORT_RECORDS = 1024
"""Default bound on the number of records in one report."""

_SYSTEM_COMPONENT_ID = 0  # report §4: system-component-id key of system-property-claims
_EMPTY_PARAMETERS = Parameters()


@dataclass(frozen=True, slots=True)
class Reference:
    """SUIT_Reference: which manifest the report is about (report §4).

    ``manifest_uri`` MUST equal the manifest's suit-reference-uri (empty when it has none);
    ``manifest_digest`` MUST equal element 0 of the root manifest's authentication wrapper.
    """

    manifest_uri: str
    manifest_digest: Digest


@dataclass(frozen=True, slots=True)
class Record:
    """SUIT_Record: where a command ran and what it measured (report §4).

    ``manifest_id`` is the walk from the root through dependency component indices (``()`` is the
    root). ``manifest_section`` is the manifest member key of the sequence (e.g. 20 for install),
    ``section_offset`` the byte offset of the command inside that sequence's bytes,
    ``component_index`` the component it ran on, ``properties`` measured values as parameters
    (e.g. the digest actually found). ``extensions`` keeps trailing $$SUIT_Record_Extensions.
    """

    manifest_id: tuple[int, ...]
    manifest_section: int
    section_offset: int
    component_index: int
    properties: Parameters = _EMPTY_PARAMETERS
    extensions: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class SystemPropertyClaims:
    """system-property-claims: parameters describing one component of the system (report §4)."""

    component_id: ComponentIdentifier
    properties: Parameters


@dataclass(frozen=True, slots=True)
class ResultFailure:
    """The failure form of suit-report-result (report §4).

    ``code`` is implementation-specific (suitkit uses the reason's value), ``record`` names the
    command that failed, ``reason`` is a ``ReportReason`` value (unknown values are kept as int).
    """

    code: int
    record: Record
    reason: int


MAX_CAPABILITY_BYTES = 4096
"""Default bound on an encoded capability report read on its own."""
MAX_CAPABILITY_ITEMS = 256
"""Default bound on the numbers of one capability list, and on its components."""

CAPABILITY_LISTS: tuple[tuple[int, str], ...] = (
    (2, "commands"), (3, "parameters"), (4, "algorithms"), (5, "envelope"), (6, "manifest"),
    (7, "common"), (8, "text"), (9, "component_text"), (10, "dependency"))
"""The lists of numbers of SUIT_Capability_Report (report §6): key, field name. 2 to 4 are
mandatory; 5 to 10 optional."""
_MANDATORY_LISTS = frozenset({2, 3, 4})
_CAPABILITY_COMPONENTS = 1


@dataclass(frozen=True, slots=True)
class ComponentCapability:
    """SUIT_Component_Capability ``[*bstr, ?true]``: a component identifier the device
    accepts; ``wildcard``: any identifier that starts with ``parts`` (report §6)."""

    parts: ComponentIdentifier
    wildcard: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CapabilityReport:
    """SUIT_Capability_Report (report §6): what a device supports.

    ``components``: the component identifiers it accepts. ``commands``, ``parameters``,
    ``algorithms`` (COSE algorithm ids, signatures, digests and encryption alike): the numbers
    of the registries it implements, custom (negative) ones included. ``envelope``,
    ``manifest``, ``common``, ``text``, ``component_text``, ``dependency``: the elements of
    those maps it understands (``None``: not reported). ``extensions``: new items keyed by
    their CBOR path (e.g. ``(3, 3, 1): (3,)``); ``extra``: other integer keys, kept as sent.
    Each list is kept sorted and without repeats by ``capability_report``-producers; the
    decoder keeps the order sent.
    """

    components: tuple[ComponentCapability, ...]
    commands: tuple[int, ...]
    parameters: tuple[int, ...]
    algorithms: tuple[int, ...]
    envelope: tuple[int, ...] | None = None
    manifest: tuple[int, ...] | None = None
    common: tuple[int, ...] | None = None
    text: tuple[int, ...] | None = None
    component_text: tuple[int, ...] | None = None
    dependency: tuple[int, ...] | None = None
    extensions: FrozenDict[tuple[int, ...], tuple[int, ...]] = field(
        default_factory=FrozenDict)
    extra: FrozenDict[int, object] = field(default_factory=FrozenDict)

    def supports_component(self, component: ComponentIdentifier) -> bool:
        """Whether ``component`` is one the device accepts (exactly, or under a wildcard)."""
        return any(component == c.parts or (c.wildcard and component[:len(c.parts)] == c.parts)
                   for c in self.components)


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """SUIT_Report (report §4). ``result`` is ``True`` on success, else a ``ResultFailure``."""

    reference: Reference
    nonce: bytes | None = None
    records: tuple[Record | SystemPropertyClaims, ...] = ()
    result: Literal[True] | ResultFailure = True
    capability_report: CapabilityReport | None = None
    extra: FrozenDict[int, object] = field(default_factory=FrozenDict)

    @property
    def succeeded(self) -> bool:
        """Whether the report's result is ``true``."""
        return self.result is True


@dataclass(frozen=True, slots=True)
class SignedReport:
    """A report taken out of its COSE container (``open_signed_report``): the report, the
    exact payload bytes that were signed, and the container kind (``COSE_Sign1`` or
    ``COSE_Mac0``) with its algorithm."""

    report: Report
    payload: bytes
    kind: str
    algorithm: int


# --------------------------------------------------------------------------------- encoding


def encode_report(report: Report) -> bytes:
    """The deterministic CBOR encoding of ``report`` (RFC 8949 §4.2.1 map order)."""
    out: dict[int, object] = {
        ReportKey.REFERENCE: [report.reference.manifest_uri,
                              [report.reference.manifest_digest.algorithm,
                               report.reference.manifest_digest.value]],
        ReportKey.RECORDS: [_record_or_claims_obj(r) for r in report.records],
        ReportKey.RESULT: True if report.result is True else {
            ReportKey.RESULT_CODE: report.result.code,
            ReportKey.RESULT_RECORD: _record_obj(report.result.record),
            ReportKey.RESULT_REASON: report.result.reason,
        },
    }
    if report.nonce is not None:
        out[ReportKey.NONCE] = report.nonce
    if report.capability_report is not None:
        out[ReportKey.CAPABILITY_REPORT] = _capability_obj(report.capability_report)
    for key, value in report.extra.items():
        out[key] = _thaw(value)
    return cbor.encode({int(k): v for k, v in out.items()})


def _record_or_claims_obj(item: Record | SystemPropertyClaims) -> object:
    if isinstance(item, Record):
        return _record_obj(item)
    claims: dict[int, object] = {_SYSTEM_COMPONENT_ID: list(item.component_id)}
    claims.update(codec.parameters_obj(item.properties))
    return claims


def _record_obj(record: Record) -> list[object]:
    return [list(record.manifest_id), record.manifest_section, record.section_offset,
            record.component_index, codec.parameters_obj(record.properties),
            *(_thaw(e) for e in record.extensions)]


# --------------------------------------------------------------------------------- decoding


def decode_report(data: bytes, *, limits: Limits = codec.DEFAULT_LIMITS,
                  max_bytes: int = MAX_REPORT_BYTES,
                  max_records: int = MAX_REPORT_RECORDS) -> Report:
    """Decode a SUIT_Report received from a device (untrusted input).

    Refused with ``DecodeError``: more than ``max_bytes`` bytes or ``max_records`` records, any
    CBOR that ``cbor.decode`` refuses (duplicate keys, indefinite lengths, trailing bytes, deeper
    than ``limits.max_depth``), a missing or mistyped member, a record that is not a 5+ element
    array, parameters that do not decode, a result that is neither ``true`` nor the failure map.
    """
    path = "report"
    if type(data) is not bytes:
        raise DecodeError(path, f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise DecodeError(path, f"{len(data)} bytes is over the limit of {max_bytes}")
    top = cbor.decode(data, path=path, max_depth=limits.max_depth)
    entries = _map(top, path, limits.max_map_entries)
    reference: Reference | None = None
    records: tuple[Record | SystemPropertyClaims, ...] | None = None
    result: Literal[True] | ResultFailure | None = None
    nonce: bytes | None = None
    capability: CapabilityReport | None = None
    extra: dict[int, object] = {}
    for key, value in entries.items():
        if type(key) is not int:
            raise DecodeError(path, f"map key must be an int, got {_describe(key)}")
        sub = f"{path}.{name_of(ReportKey, key)}"
        if key == ReportKey.REFERENCE:
            reference = _reference(value, sub)
        elif key == ReportKey.NONCE:
            nonce = _bstr(value, sub)
        elif key == ReportKey.RECORDS:
            items = _array(value, sub, max_records)
            records = tuple(_record_or_claims(item, f"{sub}[{i}]", limits)
                            for i, item in enumerate(items))
        elif key == ReportKey.RESULT:
            result = _result(value, sub, limits)
        elif key == ReportKey.CAPABILITY_REPORT:
            capability = _capability(value, sub, limits)
        elif key in (ReportKey.RESULT_CODE, ReportKey.RESULT_RECORD, ReportKey.RESULT_REASON):
            raise DecodeError(sub, "belongs inside suit-report-result, not at the top level")
        else:
            extra[key] = _freeze(value)
    if reference is None:
        raise DecodeError(path, "missing suit-reference (key 99)")
    if records is None:
        raise DecodeError(path, "missing suit-report-records (key 3)")
    if result is None:
        raise DecodeError(path, "missing suit-report-result (key 4)")
    return Report(reference=reference, nonce=nonce, records=records, result=result,
                  capability_report=capability, extra=FrozenDict(extra))


def _reference(value: object, path: str) -> Reference:
    items = _array(value, path, 2)
    if len(items) != 2:
        raise DecodeError(path, f"expected [manifest-uri, manifest-digest], got {len(items)} "
                          "items")
    uri = items[0]
    if type(uri) is not str:
        raise DecodeError(f"{path}.manifest-uri", f"expected a text string, got "
                          f"{_describe(uri)}")
    digest = _array(items[1], f"{path}.manifest-digest", 2)
    if len(digest) != 2:
        raise DecodeError(f"{path}.manifest-digest", "expected SUIT_Digest [algorithm-id, "
                          f"bytes], got {len(digest)} items")
    return Reference(uri, Digest(_int(digest[0], f"{path}.manifest-digest.algorithm-id"),
                                 _bstr(digest[1], f"{path}.manifest-digest.bytes")))


def _record_or_claims(value: object, path: str,
                      limits: Limits) -> Record | SystemPropertyClaims:
    # report §4: "Maps inside records are system-property claims and arrays are records".
    if isinstance(value, Mapping):
        return _claims(value, path, limits)
    return _record(value, path, limits)


def _record(value: object, path: str, limits: Limits) -> Record:
    items = _array(value, path, 5 + limits.max_map_entries)
    if len(items) < 5:
        raise DecodeError(path, "expected SUIT_Record [manifest-id, manifest-section, "
                          f"section-offset, component-index, properties], got {len(items)} "
                          "items")
    ids = _array(items[0], f"{path}.manifest-id", limits.max_depth)
    manifest_id = tuple(_uint(v, f"{path}.manifest-id[{i}]") for i, v in enumerate(ids))
    return Record(
        manifest_id=manifest_id,
        manifest_section=_int(items[1], f"{path}.manifest-section"),
        section_offset=_uint(items[2], f"{path}.section-offset"),
        component_index=_uint(items[3], f"{path}.component-index"),
        properties=_properties(items[4], f"{path}.properties", limits),
        extensions=tuple(_freeze(e) for e in items[5:]),
    )


def _claims(value: Mapping[Any, Any], path: str, limits: Limits) -> SystemPropertyClaims:
    entries = _map(value, path, limits.max_map_entries + 1)
    if _SYSTEM_COMPONENT_ID not in entries:
        raise DecodeError(path, "system-property-claims without system-component-id (key 0)")
    sub = f"{path}.system-component-id"
    parts = _array(entries[_SYSTEM_COMPONENT_ID], sub, limits.max_component_id_parts)
    component_id = tuple(_bstr(p, f"{sub}[{i}]") for i, p in enumerate(parts))
    rest = {k: v for k, v in entries.items() if k != _SYSTEM_COMPONENT_ID}
    if not rest:  # CDDL: + $$SUIT_Parameters
        raise DecodeError(path, "system-property-claims must carry at least one parameter")
    return SystemPropertyClaims(component_id, codec.decode_parameters(rest, path=path,
                                                                      limits=limits))


def _properties(value: object, path: str, limits: Limits) -> Parameters:
    entries = _map(value, path, limits.max_map_entries)
    if not entries:  # CDDL: {* $$SUIT_Parameters}: an empty map is fine
        return _EMPTY_PARAMETERS
    return codec.decode_parameters(entries, path=path, limits=limits)


def _result(value: object, path: str, limits: Limits) -> Literal[True] | ResultFailure:
    if value is True:
        return True
    entries = _map(value, path, 3)  # exactly the three keys below
    missing = [name for key, name in ((ReportKey.RESULT_CODE, "result-code (5)"),
                                      (ReportKey.RESULT_RECORD, "result-record (6)"),
                                      (ReportKey.RESULT_REASON, "result-reason (7)"))
               if key not in entries]
    if missing:
        raise DecodeError(path, "expected true or {result-code, result-record, result-reason}; "
                          f"missing {', '.join(missing)}")
    return ResultFailure(
        code=_int(entries[ReportKey.RESULT_CODE], f"{path}.result-code"),
        record=_record(entries[ReportKey.RESULT_RECORD], f"{path}.result-record", limits),
        reason=_uint(entries[ReportKey.RESULT_REASON], f"{path}.result-reason"),
    )


# --------------------------------------------------------------------------------- small checks

_int, _uint, _bstr, _freeze, _thaw, _describe = as_int, as_uint, as_bstr, freeze, thaw, describe


def _array(value: object, path: str, limit: int) -> Sequence[Any]:
    return as_array(value, path, limit=limit)


def _map(value: object, path: str, limit: int) -> Mapping[Any, Any]:
    return as_map(value, path, limit=limit)


def reason_name(reason: int) -> str:
    """The registry name of a result reason, e.g. ``condition-failed``."""
    return name_of(ReportReason, reason)


# --------------------------------------------------------------------------------- capabilities


def encode_capability_report(capability: CapabilityReport) -> bytes:
    """The deterministic CBOR encoding of a SUIT_Capability_Report on its own."""
    return cbor.encode(_capability_obj(capability))


def _capability_obj(capability: CapabilityReport) -> dict[object, object]:
    out: dict[object, object] = {
        _CAPABILITY_COMPONENTS: [[*c.parts, True] if c.wildcard else list(c.parts)
                                 for c in capability.components]}
    for key, name in CAPABILITY_LISTS:
        numbers: tuple[int, ...] | None = getattr(capability, name)
        if numbers is not None:
            out[key] = list(numbers)
    for path, numbers in capability.extensions.items():
        out[tuple(path)] = list(numbers)  # cbor2 encodes a tuple key as an array
    for key, value in capability.extra.items():
        out[key] = _thaw(value)
    return out


def decode_capability_report(data: bytes, *, limits: Limits = codec.DEFAULT_LIMITS,
                             max_bytes: int = MAX_CAPABILITY_BYTES,
                             max_items: int = MAX_CAPABILITY_ITEMS) -> CapabilityReport:
    """Decode a SUIT_Capability_Report sent on its own (a device's inventory; untrusted).

    Raises:
        DecodeError: over ``max_bytes`` or any list over ``max_items``, CBOR that
            ``cbor.decode`` refuses, a missing mandatory list (components, commands,
            parameters, algorithms: report §6), an empty list (``[+ ...]``), a member of the
            wrong type; the path names it, e.g. ``capability-report.commands[2]``.
    """
    path = "capability-report"
    if type(data) is not bytes:
        raise DecodeError(path, f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise DecodeError(path, f"{len(data)} bytes is over the limit of {max_bytes}")
    return _capability(cbor.decode(data, path=path, max_depth=limits.max_depth), path, limits,
                       max_items)


def _capability(value: object, path: str, limits: Limits,
                max_items: int = MAX_CAPABILITY_ITEMS) -> CapabilityReport:
    entries = _map(value, path, limits.max_map_entries)
    names = dict(CAPABILITY_LISTS)
    lists: dict[str, tuple[int, ...]] = {}
    components: tuple[ComponentCapability, ...] | None = None
    extensions: dict[tuple[int, ...], tuple[int, ...]] = {}
    extra: dict[int, object] = {}
    for key, item in entries.items():
        if isinstance(key, list | tuple):  # * [+int] => [+int]: a new item by its CBOR path
            where = f"{path}[{', '.join(map(str, key))[:60]}]"
            if not key or len(key) > limits.max_depth:
                raise DecodeError(where, f"a path key must hold 1 to {limits.max_depth} "
                                         f"integers, got {len(key)}")
            extensions[tuple(_int(k, f"{where}.key[{i}]") for i, k in enumerate(key))] = \
                _numbers(item, where, max_items)
            continue
        if type(key) is not int:
            raise DecodeError(path, f"map key must be an int or an array of ints, got "
                                    f"{_describe(key)}")
        if key == _CAPABILITY_COMPONENTS:
            sub = f"{path}.components"
            items = _array(item, sub, max_items)
            if not items:
                raise DecodeError(sub, "expected at least one component capability")
            components = tuple(_component_capability(c, f"{sub}[{i}]", limits)
                               for i, c in enumerate(items))
        elif key in names:
            lists[names[key]] = _numbers(item, f"{path}.{names[key]}", max_items)
        else:
            extra[key] = _freeze(item)
    if components is None:
        raise DecodeError(path, "missing the component capabilities (key 1)")
    missing = [f"{names[k]} ({k})" for k in sorted(_MANDATORY_LISTS) if names[k] not in lists]
    if missing:
        raise DecodeError(path, f"missing {', '.join(missing)} (report §6: mandatory)")
    return CapabilityReport(components=components, **lists,
                            extensions=FrozenDict(extensions), extra=FrozenDict(extra))


def _component_capability(value: object, path: str, limits: Limits) -> ComponentCapability:
    items = list(_array(value, path, limits.max_component_id_parts + 1))
    wildcard = bool(items) and items[-1] is True
    if wildcard:
        items.pop()
    if len(items) > limits.max_component_id_parts:
        raise DecodeError(path, f"{len(items)} identifier parts is over the limit of "
                                f"{limits.max_component_id_parts}")
    return ComponentCapability(tuple(_bstr(p, f"{path}[{i}]") for i, p in enumerate(items)),
                               wildcard)


def _numbers(value: object, path: str, limit: int) -> tuple[int, ...]:
    items = _array(value, path, limit)
    if not items:  # [+int]
        raise DecodeError(path, "expected at least one number")
    return tuple(_int(v, f"{path}[{i}]") for i, v in enumerate(items))


def capability_json(capability: CapabilityReport) -> dict[str, Any]:
    """A capability report as JSON: components as lists of hex parts (``"wildcard": true``
    for a prefix), each list of numbers by its field name (absent lists left out), path-keyed
    items under ``"extensions"`` as ``{"3.3.1": [3]}``."""
    doc: dict[str, Any] = {"components": [
        {"id": [p.hex() for p in c.parts], "wildcard": c.wildcard}
        for c in capability.components]}
    for _, name in CAPABILITY_LISTS:
        numbers = getattr(capability, name)
        if numbers is not None:
            doc[name] = list(numbers)
    if capability.extensions:
        doc["extensions"] = {".".join(map(str, k)): list(v)
                             for k, v in capability.extensions.items()}
    if capability.extra:
        doc["other_keys"] = sorted(capability.extra)
    return doc


def capability_gaps(capability: CapabilityReport, envelope: Envelope, *,
                    limits: Limits = codec.DEFAULT_LIMITS) -> tuple[str, ...]:
    """What ``envelope`` uses that ``capability`` does not list, one line each (empty: the
    device says it supports all of it): components, commands and parameters (every command
    sequence, severed ones present in the envelope included, try-each and run-sequence
    inside), signature and digest algorithms. The author's check before a release: a device
    refuses a manifest with an unsupported element (manifest §6.1). Not checked: the
    algorithms inside encryption-info, text.

    Raises:
        DecodeError: a severed member of the envelope does not decode.
    """
    gaps: list[str] = []
    manifest = envelope.manifest
    for component in manifest.common.components:
        if not capability.supports_component(component):
            gaps.append(f"component [{', '.join(p.hex() for p in component)}] is not one the "
                        "device has")
    commands: set[int] = set()
    parameters: set[int] = set()
    algorithms = {envelope.authentication.digest.algorithm}
    for block in envelope.authentication.blocks:
        algorithms.add(cose.decode_auth_block(block, path="authentication").algorithm)
    sequences: list[CommandSequence] = []
    for key, member in ((ManifestKey.DEPENDENCY_RESOLUTION, manifest.dependency_resolution),
                        (ManifestKey.PAYLOAD_FETCH, manifest.payload_fetch),
                        (ManifestKey.CANDIDATE_VERIFICATION, manifest.candidate_verification),
                        (ManifestKey.INSTALL, manifest.install)):
        if isinstance(member, CommandSequence):
            sequences.append(member)
        elif isinstance(member, Digest) and int(key) in envelope.severable:
            sequences.append(codec.decode_command_sequence(
                envelope.severable[int(key)], path=f"envelope.{name_of(ManifestKey, key)}",
                limits=limits))
    sequences += [s for s in (manifest.common.shared_sequence, manifest.validate,
                              manifest.load, manifest.invoke, manifest.uninstall)
                  if s is not None]
    while sequences:
        for command in sequences.pop().commands:
            commands.add(command.code)
            arg = command.argument
            found = ([arg] if isinstance(arg, Parameters)
                     else [p for p in arg.values() if isinstance(p, Parameters)]
                     if isinstance(arg, FrozenDict) and command.code == Cmd.OVERRIDE_MULTIPLE
                     else [])
            for params in found:
                for number, value in params.items():
                    parameters.add(int(number))
                    if number == Parameter.IMAGE_DIGEST and isinstance(value, Digest):
                        algorithms.add(value.algorithm)
            if isinstance(arg, TryEach):
                sequences += arg.sequences
            elif isinstance(arg, CommandSequence):
                sequences.append(arg)
    for kind, used, listed, names in (
            ("command", commands, capability.commands, Cmd),
            ("parameter", parameters, capability.parameters, Parameter),
            ("algorithm", algorithms, capability.algorithms, CoseAlg)):
        for number in sorted(used - set(listed)):
            label = name_of(names, number)  # "custom(-300)" and "unknown(9)" name the number
            shown = label if "(" in label else f"{label} ({number})"
            gaps.append(f"{kind} {shown} is not one the device supports")
    return tuple(gaps)


# --------------------------------------------------------------------------------- containers

SIGNED_REPORT_MEDIA_TYPE = "application/suit-report+cose"
"""The media type of a report in a COSE_Sign1 or COSE_Mac0 (report §9)."""
_MAC_ALGORITHMS = frozenset({int(CoseAlg.HMAC_256_256)})


def sign_report(report: bytes, signer: crypto.Signer) -> bytes:
    """``report`` (an encoded SUIT_Report) in a tagged COSE_Sign1, or COSE_Mac0 for an HMAC
    key (report §8): protected ``{1: alg}``, unprotected ``{4: kid}`` when the signer has a key
    id, the payload attached as ``bstr .cbor SUIT_Report``."""
    protected = cbor.encode({CoseHeader.ALG: signer.algorithm})
    unprotected = {} if signer.key_id is None else {CoseHeader.KID: signer.key_id}
    if signer.algorithm in _MAC_ALGORITHMS:
        tag = signer.sign(cose.mac_structure(protected, report))
        return cbor.encode(CBORTag(Tag.COSE_MAC0, [protected, unprotected, report, tag]))
    signature = signer.sign(cose.sig_structure(protected, report))
    return cbor.encode(CBORTag(Tag.COSE_SIGN1, [protected, unprotected, report, signature]))


def open_signed_report(data: bytes, verifier: crypto.Verifier, *,
                       limits: Limits = codec.DEFAULT_LIMITS,
                       max_bytes: int = MAX_REPORT_BYTES,
                       max_records: int = MAX_REPORT_RECORDS) -> SignedReport:
    """Check a signed report (report §8) with ``verifier``, the key held for the device, and
    decode the report inside. COSE_Sign1 (tag 18) or COSE_Mac0 (tag 17), tagged or not (an
    untagged one is told apart by the algorithm of its protected header); the payload must be
    attached (a bstr holding the SUIT_Report). The report is decoded only after the signature
    verified.

    Raises:
        DecodeError: over ``max_bytes``, not a COSE_Sign1/COSE_Mac0 of four items, headers
            malformed (``alg`` missing or not in the protected header, critical headers), the
            payload detached or not a bstr, or the report inside malformed.
        PolicyError: the algorithm is not one ``verifier`` allows, or does not fit the
            container (a MAC algorithm in a COSE_Sign1 and the reverse).
        AuthenticationError: the signature or tag does not verify.
    """
    path = "signed-report"
    if type(data) is not bytes:
        raise DecodeError(path, f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise DecodeError(path, f"{len(data)} bytes is over the limit of {max_bytes}")
    item = cbor.decode(data, path=path, max_depth=limits.max_depth)
    tag: int | None = None
    if isinstance(item, CBORTag):
        tag, item = item.tag, item.value
        if tag not in (Tag.COSE_SIGN1, Tag.COSE_MAC0):
            raise DecodeError(path, f"expected COSE_Sign1 (tag 18) or COSE_Mac0 (tag 17), "
                                    f"got tag {tag}")
    items = _array(item, path, 4)
    if len(items) != 4:
        raise DecodeError(path, f"expected [protected, unprotected, payload, signature], got "
                                f"{len(items)} items")
    protected, unprotected, payload, signature = items
    if type(protected) is not bytes or type(signature) is not bytes:
        raise DecodeError(path, "protected header and signature must be byte strings")
    if not isinstance(unprotected, Mapping):
        raise DecodeError(f"{path}.unprotected", f"expected a map, got {_describe(unprotected)}")
    # the header checks of the manifest's authentication blocks (RFC 9052 §3: alg protected,
    # no crit, labels in one bucket), on a copy with the payload detached; what is verified
    # below is the protected header and the payload exactly as received
    block = cose.decode_auth_block(cbor.encode(CBORTag(
        tag if tag is not None else _untagged_kind(protected),
        [protected, _thaw(freeze(unprotected)), None, signature])), path=path)
    if payload is None:
        raise DecodeError(f"{path}.payload", "must be attached: bstr .cbor SUIT_Report "
                                             "(report §8)")
    if type(payload) is not bytes:
        raise DecodeError(f"{path}.payload", f"expected a byte string, got "
                                             f"{_describe(payload)}")
    cose.verify_detached(block, payload, verifier)  # the Sig_structure over the bytes sent
    report = decode_report(payload, limits=limits, max_bytes=max_bytes,
                           max_records=max_records)
    kind = "COSE_Mac0" if isinstance(block, cose.CoseMac0) else "COSE_Sign1"
    return SignedReport(report, payload, kind, block.algorithm)


def _untagged_kind(protected: bytes) -> int:
    """The tag an untagged container would have: COSE_Mac0 for a MAC algorithm."""
    try:
        header = cbor.decode(protected, path="signed-report.protected")
    except DecodeError:
        return int(Tag.COSE_SIGN1)  # decode_auth_block says what is wrong with it
    alg = header.get(CoseHeader.ALG) if isinstance(header, Mapping) else None
    return int(Tag.COSE_MAC0) if alg in _MAC_ALGORITHMS else int(Tag.COSE_SIGN1)
