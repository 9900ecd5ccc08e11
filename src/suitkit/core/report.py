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

Deliberately not here: the report container (COSE_Sign1 / COSE_Mac0 / COSE_Encrypt0 or an EAT,
report §8; the transport's job), the meaning of the capability report (kept as the decoded, frozen
map), and producing reports (``processor`` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from suitkit.core import cbor, codec
from suitkit.core.model import ComponentIdentifier, Digest, FrozenDict, Parameters
from suitkit.core.numbers import ReportKey, ReportReason, name_of
from suitkit.core.typed import as_array, as_bstr, as_int, as_map, as_uint, describe, freeze, thaw
from suitkit.errors import DecodeError
from suitkit.limits import Limits

__all__ = [
    "MAX_REPORT_BYTES",
    "MAX_REPORT_RECORDS",
    "Record",
    "Reference",
    "Report",
    "ResultFailure",
    "SystemPropertyClaims",
    "decode_report",
    "encode_report",
    "reason_name",
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """SUIT_Report (report §4). ``result`` is ``True`` on success, else a ``ResultFailure``."""

    reference: Reference
    nonce: bytes | None = None
    records: tuple[Record | SystemPropertyClaims, ...] = ()
    result: Literal[True] | ResultFailure = True
    capability_report: FrozenDict[Any, Any] | None = None
    extra: FrozenDict[int, object] = field(default_factory=FrozenDict)

    @property
    def succeeded(self) -> bool:
        """Whether the report's result is ``true``."""
        return self.result is True


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
        out[ReportKey.CAPABILITY_REPORT] = _thaw(report.capability_report)
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
    capability: FrozenDict[Any, Any] | None = None
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
            capability = _freeze_map(_map(value, sub, limits.max_map_entries))
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


def _freeze_map(value: Mapping[Any, Any]) -> FrozenDict[Any, Any]:
    frozen = freeze(value)
    assert isinstance(frozen, FrozenDict)
    return frozen


def reason_name(reason: int) -> str:
    """The registry name of a result reason, e.g. ``condition-failed``."""
    return name_of(ReportReason, reason)
