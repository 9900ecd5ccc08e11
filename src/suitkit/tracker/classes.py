"""Device classes and releases by name (issue #17): the class registry's rules, and the names
and versions an operator's view of a device shows.

A class ID (manifest §8.4.8.2) is a UUID; people know the class by its vendor's and its own
name. The registry (``model.DeviceClass``) holds them, from a release's manifest text
(component text vendor-name, model-name, vendor-domain: manifest §8.4.4) or from an operator.
When the vendor domain is known the names must give the IDs as the manifest recommends
(§8.4.8.1: vendor ID = UUID5(NAMESPACE_DNS, vendor domain); §8.4.8.2: class ID = UUID5(vendor
ID, class-specific information), suitkit's author using the class name): ``check_names``
refuses a contradiction with a message naming both IDs. An operator's names are kept over a
manifest's (``learn``: a release never renames a class its operator named).

Device JSON gains ``vendor_name``, ``class_name`` and ``version`` (``name_devices``): the
version of the release it runs, where the tracker can tell (the release it reported
``succeeded``, if that release has a version; else the version its inventory gives of its
first image, update-management §4.4).

Deliberately not here: SQL (``tracker.store``), HTTP (``edges.http_api``); the firmware
server reads the names out of a manifest (``server.app``), the CLI's wiring hands them over.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from suitkit.tracker.model import MAX_CLASS_NAME, MAX_VENDOR_DOMAIN, DeviceClass
from suitkit.tracker.store import Tx

__all__ = [
    "ClassNames",
    "ClassRefused",
    "check_names",
    "class_json",
    "learn",
    "name_devices",
    "printable",
    "version_text",
]

_PRE_RELEASES = {-1: "rc", -2: "beta", -3: "alpha"}
_ANCHORS_ID = [b"suitkit".hex(), b"anchors".hex()]


class ClassRefused(Exception):
    """Names that cannot be given to a class: ``kind`` ``invalid`` (bad text, 400) or
    ``mismatch`` (they contradict the IDs' derivation, or a vendor ID, 422)."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class ClassNames:
    """The names of one class: its IDs (UUID text), vendor and class names, and the vendor's
    domain when known (``None``: not known)."""

    vendor_id: str
    class_id: str
    vendor_name: str | None = None
    class_name: str | None = None
    vendor_domain: str | None = None


def printable(text: str, where: str, limit: int) -> str:
    """``text`` if it is 1 to ``limit`` printable characters (no control characters, no
    leading or trailing space); ``ClassRefused`` naming ``where`` otherwise."""
    if not text or len(text) > limit:
        raise ClassRefused("invalid", f"{where}: expected 1 to {limit} characters, got "
                                      f"{len(text)}")
    if not text.isprintable() or text != text.strip():
        raise ClassRefused("invalid", f"{where}: expected printable text without leading or "
                                      f"trailing spaces, got {text[:40]!r}")
    return text


def check_names(names: ClassNames) -> ClassNames:
    """``names`` if their text is storable and, when the vendor domain is known, the IDs are
    the ones the names derive (manifest §8.4.8.1-2); ``ClassRefused`` otherwise.

    The domain is known when it is given, or when the vendor name itself is a domain that
    derives the vendor ID."""
    for where, value, limit in (("vendor_name", names.vendor_name, MAX_CLASS_NAME),
                                ("class_name", names.class_name, MAX_CLASS_NAME),
                                ("vendor_domain", names.vendor_domain, MAX_VENDOR_DOMAIN)):
        if value is not None:
            printable(value, where, limit)
    vendor = uuid.UUID(names.vendor_id)
    domain = names.vendor_domain
    if domain is None and names.vendor_name is not None \
            and uuid.uuid5(uuid.NAMESPACE_DNS, names.vendor_name) == vendor:
        domain = names.vendor_name
    if domain is None:
        return names
    derived_vendor = uuid.uuid5(uuid.NAMESPACE_DNS, domain)
    if derived_vendor != vendor:
        raise ClassRefused("mismatch", (
            f"vendor domain {domain!r} gives vendor id {derived_vendor} (UUID5 of the DNS "
            f"namespace, manifest §8.4.8.1), not {vendor}"))
    if names.class_name is not None:
        derived_class = uuid.uuid5(vendor, names.class_name)
        if str(derived_class) != names.class_id:
            raise ClassRefused("mismatch", (
                f"class name {names.class_name!r} gives class id {derived_class} (UUID5 of "
                f"vendor id {vendor}, manifest §8.4.8.2), not {names.class_id}"))
    return ClassNames(names.vendor_id, names.class_id, names.vendor_name, names.class_name,
                      domain)


def class_json(row: DeviceClass | None, class_id: str, vendor_id: str | None,
               devices: int) -> dict[str, Any]:
    """A class as the API shows it (``GET /api/v1/classes``)."""
    return {"vendor_id": row.vendor_id if row is not None else vendor_id,
            "class_id": class_id,
            "vendor_name": row.vendor_name if row is not None else None,
            "class_name": row.class_name if row is not None else None,
            "vendor_domain": row.vendor_domain if row is not None else None,
            "source": row.source if row is not None else None,
            "devices": devices}


def store_names(tx: Tx, names: ClassNames, *, source: str, by: str) -> DeviceClass:
    """Write ``names`` (checked) as the class's registry row, under the lock of its id; a
    manifest's names never replace an operator's (the row is returned unchanged)."""
    row = tx.lock_device_class(names.class_id)
    if row is None:
        row = DeviceClass(class_id=names.class_id, vendor_id=names.vendor_id,
                          source=source, updated=tx.now(), updated_by=by[:128])
        tx.add(row)
    elif source == "manifest" and row.source == "operator":
        return row
    row.vendor_id = names.vendor_id
    row.vendor_name = names.vendor_name
    row.class_name = names.class_name
    row.vendor_domain = names.vendor_domain
    row.source, row.updated, row.updated_by = source, tx.now(), by[:128]
    return row


def learn(tx: Tx, found: Iterable[ClassNames], release_id: str) -> None:
    """Register the names a release's manifest text gives its classes (``source``
    ``manifest``); names that are not storable or contradict the IDs' derivation are left
    out (the release itself is fine: its text is only text)."""
    for names in found:
        if names.vendor_name is None and names.class_name is None:
            continue
        try:
            checked = check_names(names)
        except (ClassRefused, ValueError):
            continue
        store_names(tx, checked, source="manifest", by=f"release {release_id}")


def version_text(parts: Sequence[int] | None) -> str | None:
    """A version of update-management §4.4 (``[1, 2, -1, 3]``) as people write it
    (``1.2-rc.3``); ``None`` for none."""
    if not parts:
        return None
    release: list[str] = []
    for i, part in enumerate(parts):
        if part < 0:
            kind = _PRE_RELEASES.get(part, f"pre{-part}")
            rest = ".".join(str(p) for p in parts[i + 1:])
            return ".".join(release) + f"-{kind}" + (f".{rest}" if rest else "")
        release.append(str(part))
    return ".".join(release)


def name_devices(tx: Tx, docs: Sequence[dict[str, Any]],
                 components: Mapping[str, Sequence[Any]] | None = None) -> None:
    """Add ``vendor_name``, ``class_name`` and ``version`` to each device of ``docs`` (three
    or four queries for the whole page; ``components``: the page's installed components by
    device id, when read already)."""
    if not docs:
        return
    ids = [d["id"] for d in docs]
    classes = tx.device_classes_of([d["class_id"] for d in docs if d.get("class_id")])
    assignments = tx.assignments_of(ids)
    running = {device_id: a.release for device_id, a in assignments.items()
               if a.done is not None}
    releases = tx.releases_of(running.values())
    installed = components if components is not None else tx.components_of(ids)
    for doc in docs:
        row = classes.get(doc.get("class_id") or "")
        doc["vendor_name"] = row.vendor_name if row is not None else None
        doc["class_name"] = row.class_name if row is not None else None
        version = None
        release = releases.get(running.get(doc["id"], ""))
        if release is not None and doc.get("state") == "succeeded":
            version = (release.record or {}).get("version")
        if version is None:
            version = next((version_text(c.version) for c in installed.get(doc["id"], ())
                            if c.version and c.component_id != _ANCHORS_ID), None)
        doc["version"] = version
