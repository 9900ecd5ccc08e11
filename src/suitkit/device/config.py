"""A device kept in a folder: its identity, shape, components, trust anchors and keys.

``device.json`` says who the device is (vendor, class and device identifiers, compared with the
manifest's compatibility conditions, RFC 9124 REQ.SEC.COMPATIBLE), its shape (RFC 9019 §5:
``mcu``, ``secure-split``, ``dual-cpu``, ``linux``) and which SUIT component identifier maps to
which image of the boot set. ``anchors/`` holds the trust anchors (public keys, or MAC keys for
symmetric devices) and ``keys/`` the decryption keys (AES-KW KEKs as COSE_Key files, ECDH P-256
private keys as PEM). Rollback protection lives with the bootloader's security counters.

``tracker-id`` (once registered) is the id the status tracker gave the device: the folder runs
only with that device's credential (``bind_tracker_id``, ``check_tracker_id``), so a folder given
another device's credential cannot report in that device's name.

Files are written atomically (``fileio.atomic_write``); every malformed file gives one
``DecodeError`` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from suitkit.core import cbor, crypto
from suitkit.core.model import ComponentIdentifier
from suitkit.core.numbers import CoseAlg
from suitkit.core.verify import ANCHORS_COMPONENT, ROOT_ROLE, TrustAnchor, TrustAnchors
from suitkit.device.anchors import read_store
from suitkit.errors import DecodeError, KeyMaterialError, PolicyError, SuitError
from suitkit.fileio import atomic_write

__all__ = [
    "AGENT_ID",
    "AGENT_IMAGE",
    "SHAPE_COMPONENTS",
    "AnchorSpec",
    "ComponentSpec",
    "DeviceConfig",
    "bind_tracker_id",
    "check_tracker_id",
    "create_device",
    "load_config",
]

CONFIG = "device.json"
FORMAT = 1

SHAPE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "mcu": ("app",),
    "secure-split": ("secure", "nonsecure"),
    "dual-cpu": ("main", "coproc"),
    "linux": ("app",),
}
"""The images of each shape's boot set; component i is SUIT component ``[h'0i']``."""

AGENT_ID: ComponentIdentifier = (b"suitkit", b"agent")
"""The SUIT component identifier of the device agent (``device.selfupdate``; Linux-class
devices made with ``agent=True``)."""
AGENT_IMAGE = "agent"
"""The agent's image name in the slot directories."""

IMAGE_SECTORS: dict[str, int] = {"mcu": 80, "secure-split": 40, "dual-cpu": 40, "linux": 0}
"""Default slot size of each simulated flash shape in 4 KiB sectors (mcu: 320 KiB; the
two-image shapes 160 KiB each, so that one 4 KiB trailer sector can log a whole set's swap)."""


@dataclass(frozen=True, slots=True)
class ComponentSpec:
    """One component: its SUIT identifier and the boot-set image it is stored as."""

    suit_id: ComponentIdentifier
    image: str


@dataclass(frozen=True, slots=True)
class AnchorSpec:
    """A trust anchor file in ``anchors/``, the authority it speaks for, and (optionally) the
    component identifiers it may update."""

    file: str
    role: str = "author"
    components: tuple[ComponentIdentifier, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceConfig:
    """What ``device.json`` holds."""

    directory: Path
    shape: str
    vendor_id: uuid.UUID
    class_id: uuid.UUID
    device_id: uuid.UUID
    components: tuple[ComponentSpec, ...]
    image_sectors: int = 80
    """Slot size of simulated flash shapes, in 4 KiB sectors (80: 320 KiB)."""
    anchors: tuple[AnchorSpec, ...] = ()
    required_roles: tuple[str, ...] = ()
    """Authorities that must all have signed (RFC 9019 §3.9, e.g. author and operator)."""
    app_command: str | None = None
    """Linux-class devices: how to start the application image (``{image}`` is its path)."""
    tracker_id: str | None = None
    """The status tracker's id of this device, once registered (``bind_tracker_id``)."""

    def component(self, suit_id: ComponentIdentifier) -> ComponentSpec | None:
        """The component with this SUIT identifier, or ``None``."""
        for spec in self.components:
            if spec.suit_id == suit_id:
                return spec
        return None

    def trust_anchors(self) -> TrustAnchors:
        """The trust anchors and signer policy of the device.

        Raises:
            KeyMaterialError: none, or one is unreadable.
        """
        stored = read_store(self.directory)
        if stored is not None:  # rotated at least once: device.json's anchors are history
            return stored.trust_anchors()
        if not self.anchors:
            raise KeyMaterialError(f"{self.directory}: no trust anchor")
        anchors = []
        for spec in self.anchors:
            path = self.directory / "anchors" / spec.file
            try:
                key = crypto.load_public_key(path.read_bytes())
            except (OSError, SuitError) as e:
                raise KeyMaterialError(f"{path}: {e}") from None
            # a root key signs trust-anchor updates only (docs/keys.md)
            scope = (ANCHORS_COMPONENT,) if spec.role == ROOT_ROLE else spec.components
            anchors.append(TrustAnchor(key, role=spec.role, components=scope))
        return TrustAnchors(tuple(anchors), self.required_roles)

    def anchors_version(self) -> int:
        """The version of the device's trust anchors (0: those ``device init`` wrote).

        Raises:
            KeyMaterialError: the stored anchors are damaged.
        """
        stored = read_store(self.directory)
        return 0 if stored is None else stored.document.version

    def decryption_keys(self) -> list[crypto.RecipientPrivate]:
        """The device's decryption keys in ``keys/``: AES-KW KEKs and ECDH-ES private keys
        (P-256 or X25519; COSE_Key or PKCS#8 PEM).

        Raises:
            KeyMaterialError: a file is none of them.
        """
        keys: list[crypto.RecipientPrivate] = []
        for path in sorted((self.directory / "keys").glob("*")):
            try:
                keys.append(crypto.load_recipient_private(path.read_bytes()))
            except OSError as e:
                raise KeyMaterialError(f"{path}: cannot read: {e.strerror or e}") from None
            except KeyMaterialError as e:
                raise KeyMaterialError(f"{path}: not a decryption key (a KEK, P-256 or X25519 "
                                       f"key): {e}") from None
        return keys

    def recipient_public_keys(self) -> list[bytes]:
        """The encoded COSE_Keys of the device's ECDH-ES public keys (what an author encrypts
        for; a KEK is a shared secret and never leaves the device)."""
        out = []
        for key in self.decryption_keys():
            if not isinstance(key, crypto.AesKwKey):
                out.append(cbor.encode({**key.public_key().to_cose_key(),
                                        3: int(CoseAlg.ECDH_ES_A128KW)}))
        return out

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "shape": self.shape,
            "vendor-id": str(self.vendor_id),
            "class-id": str(self.class_id),
            "device-id": str(self.device_id),
            "image-sectors": self.image_sectors,
            "components": [{"id": _cid_json(c.suit_id), "image": c.image}
                           for c in self.components],
            "anchors": [{"file": a.file, "role": a.role,
                         "components": None if a.components is None
                         else [_cid_json(c) for c in a.components]} for a in self.anchors],
            "required-roles": list(self.required_roles),
            "app-command": self.app_command,
        }
        if self.tracker_id is not None:
            doc["tracker-id"] = self.tracker_id
        return json.dumps(doc, indent=2).encode() + b"\n"


def _cid_json(cid: ComponentIdentifier) -> list[str]:
    return ["0x" + part.hex() for part in cid]


def _cid(raw: list[str]) -> ComponentIdentifier:
    return tuple(bytes.fromhex(p.removeprefix("0x")) for p in raw)


def load_config(directory: Path) -> DeviceConfig:
    """Read ``DIRECTORY/device.json``.

    Raises:
        DecodeError: missing or malformed, naming the field.
    """
    path = directory / CONFIG
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DecodeError(str(path), "not a device folder (run suitkit device init)") from None
    except (OSError, ValueError) as e:
        raise DecodeError(str(path), f"unreadable: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DecodeError(str(path), f"expected format {FORMAT}")
    try:
        shape = doc["shape"]
        if shape not in SHAPE_COMPONENTS:
            raise ValueError(f"unknown shape {shape!r}")
        components = tuple(ComponentSpec(_cid(c["id"]), str(c["image"]))
                           for c in doc["components"])
        anchors = tuple(
            AnchorSpec(str(a["file"]), str(a.get("role", "author")),
                       None if a.get("components") is None
                       else tuple(_cid(c) for c in a["components"]))
            for a in doc["anchors"])
        return DeviceConfig(
            directory=directory, shape=shape, vendor_id=uuid.UUID(doc["vendor-id"]),
            class_id=uuid.UUID(doc["class-id"]), device_id=uuid.UUID(doc["device-id"]),
            components=components, image_sectors=int(doc.get("image-sectors", 80)),
            anchors=anchors, required_roles=tuple(str(r) for r in doc["required-roles"]),
            app_command=doc.get("app-command"), tracker_id=_tracker_id(doc.get("tracker-id")))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DecodeError(str(path), f"malformed: {e}") from None


_MAX_TRACKER_ID = 64


def _tracker_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_TRACKER_ID \
            or not value.isascii() or not all(c.isalnum() or c in "-_" for c in value):
        raise ValueError(f"tracker-id must be the tracker's device id, got {str(value)[:80]!r}")
    return value


def check_tracker_id(config: DeviceConfig, tracker_id: str) -> None:
    """The credential of tracker device ``tracker_id`` may run this folder: the folder has no
    tracker id yet, or the same one.

    Raises:
        PolicyError: the folder is registered as another device.
    """
    if config.tracker_id is not None and config.tracker_id != tracker_id:
        raise PolicyError(f"{config.directory}: the credential is for tracker device "
                          f"{tracker_id[:64]}, but this device folder is registered as "
                          f"{config.tracker_id}; use its own credential")


def bind_tracker_id(directory: Path, tracker_id: str) -> DeviceConfig:
    """Record in ``device.json`` that the device is ``tracker_id`` on the status tracker (a
    no-op when it already is); returns the configuration as stored.

    Raises:
        DecodeError: the folder is not a device or ``tracker_id`` is not an id.
        PolicyError: the folder is registered as another device.
        StorageError: ``device.json`` cannot be written.
    """
    config = load_config(directory)
    check_tracker_id(config, tracker_id)
    if config.tracker_id == tracker_id:
        return config
    try:
        _tracker_id(tracker_id)
    except ValueError as e:
        raise DecodeError("tracker id", str(e)) from None
    bound = dataclasses.replace(config, tracker_id=tracker_id)
    atomic_write(directory / CONFIG, bound.to_json())
    return bound


def create_device(directory: Path, *, vendor_id: uuid.UUID, class_id: uuid.UUID,
                  trust_anchors: Sequence[Path | tuple[str, Path]], shape: str = "mcu",
                  device_id: uuid.UUID | None = None,
                  decryption_keys: list[Path] | None = None,
                  image_sectors: int | None = None,
                  required_roles: Sequence[str] = (),
                  app_command: str | None = None, agent: bool = False) -> DeviceConfig:
    """Create a device folder: ``device.json``, ``anchors/`` and ``keys/``.

    ``trust_anchors``: key files, or ``(role, file)`` pairs (a plain file is an ``author``).
    ``required_roles``: every one of these must have signed an update.
    ``app_command``: Linux-class devices only, the command that starts the application.
    ``agent``: Linux-class devices only: the device agent is a component too (``AGENT_ID``,
    image ``agent``), updated like the application (``device.selfupdate``).

    Raises:
        DecodeError: the folder already holds a device, a key file is unreadable, or a
            required role has no anchor.
    """
    if shape not in SHAPE_COMPONENTS:
        raise DecodeError("--shape", f"unknown shape {shape!r}; expected one of "
                          f"{', '.join(SHAPE_COMPONENTS)}")
    if (directory / CONFIG).exists():
        raise DecodeError(str(directory), "already holds a device")
    if app_command is not None and shape != "linux":
        raise DecodeError("--app-command", "only Linux-class devices start an application")
    if agent and shape != "linux":
        raise DecodeError("--agent", "only Linux-class devices run an updatable agent (MCU "
                          "shapes update their bootloader: docs/bootloader.md)")
    if not trust_anchors:
        raise DecodeError("--trust-anchor", "a device needs at least one trust anchor")
    pairs = [a if isinstance(a, tuple) else ("author", a) for a in trust_anchors]
    for role in required_roles:
        if role == ROOT_ROLE:
            raise DecodeError("--require", f"{ROOT_ROLE!r} keys sign trust-anchor updates "
                              "only (docs/keys.md); they cannot be required on firmware")
        if role not in {r for r, _ in pairs}:
            raise DecodeError("--require", f"no trust anchor has the role {role!r}")
    if all(role == ROOT_ROLE for role, _ in pairs):
        raise DecodeError("--trust-anchor", f"every key is a {ROOT_ROLE!r} key, which signs "
                          "trust-anchor updates only: no firmware could be installed")
    for _, path in pairs:
        try:
            crypto.load_public_key(path.read_bytes())  # refuse a bad anchor now, not later
        except OSError as e:
            raise DecodeError(str(path), f"cannot read: {e.strerror}") from None
        except KeyMaterialError as e:  # e.g. a private key: never copied onto the device
            raise KeyMaterialError(f"--trust-anchor {path}: {e}") from None
    for path in decryption_keys or []:
        try:
            crypto.load_recipient_private(path.read_bytes())  # refuse a bad key now
        except OSError as e:
            raise DecodeError(str(path), f"cannot read the decryption key: "
                              f"{e.strerror or e}") from None
        except KeyMaterialError as e:
            raise KeyMaterialError(f"--decryption-key {path}: {e}") from None
    specs = tuple(AnchorSpec(f"{i:02d}-{role}-{path.name}", role)
                  for i, (role, path) in enumerate(pairs))
    config = DeviceConfig(
        directory=directory, shape=shape, vendor_id=vendor_id, class_id=class_id,
        device_id=device_id or uuid.uuid4(),
        image_sectors=IMAGE_SECTORS[shape] if image_sectors is None else image_sectors,
        components=tuple(ComponentSpec((bytes([i]),), name)
                         for i, name in enumerate(SHAPE_COMPONENTS[shape]))
        + ((ComponentSpec(AGENT_ID, AGENT_IMAGE),) if agent else ()),
        anchors=specs, required_roles=tuple(required_roles), app_command=app_command)
    (directory / "anchors").mkdir(parents=True, exist_ok=True)
    (directory / "keys").mkdir(exist_ok=True)
    for spec, (_, path) in zip(specs, pairs, strict=True):
        shutil.copyfile(path, directory / "anchors" / spec.file)
    for path in decryption_keys or []:
        shutil.copyfile(path, directory / "keys" / path.name)
    atomic_write(directory / CONFIG, config.to_json())
    return config
