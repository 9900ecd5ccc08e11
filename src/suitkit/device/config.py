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
from dataclasses import dataclass, field
from pathlib import Path

from suitkit.core import cbor, crypto
from suitkit.core.model import ComponentIdentifier
from suitkit.core.numbers import CoseAlg
from suitkit.core.verify import ANCHORS_COMPONENT, ROOT_ROLE, TrustAnchor, TrustAnchors
from suitkit.device.anchors import AnchorMedium, StoredAnchors, read_store
from suitkit.device.tls import ClientTls
from suitkit.errors import DecodeError, KeyMaterialError, PolicyError, SuitError
from suitkit.fileio import atomic_write

__all__ = [
    "AGENT_ID",
    "AGENT_IMAGE",
    "BOOTLOADER_ID",
    "BOOTLOADER_IMAGE",
    "REPORT_KEY",
    "SHAPE_COMPONENTS",
    "UNPACK_ALL",
    "AnchorSpec",
    "ComponentSpec",
    "DeviceConfig",
    "HealthConfig",
    "bind_tracker_id",
    "check_tracker_id",
    "check_unpack",
    "create_device",
    "load_config",
    "set_health",
]

CONFIG = "device.json"
FORMAT = 1

SHAPE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "mcu": ("app",),
    "secure-split": ("secure", "nonsecure"),
    "dual-cpu": ("main", "coproc"),
    "linux": ("app",),
    "mcu-inplace": ("app",),
}
"""The images of each shape's boot set; component i is SUIT component ``[h'0i']``.
``mcu-inplace``: one slot, no room for a second copy; updates are in-place deltas
(docs/delta.md §9)."""

AGENT_ID: ComponentIdentifier = (b"suitkit", b"agent")
"""The SUIT component identifier of the device agent (``device.selfupdate``; Linux-class
devices made with ``agent=True``)."""
AGENT_IMAGE = "agent"
"""The agent's image name in the slot directories."""

BOOTLOADER_ID: ComponentIdentifier = (b"suitkit", b"bootloader")
"""The SUIT component identifier of the stage-1 bootloader of an mcu device made with a
stage 0 (``stage1=True``; ``bootloader.stage0.STAGE1_ID``, docs/selfupdate.md)."""
BOOTLOADER_IMAGE = "bootloader"
"""The stage-1 bootloader's image name (outside the boot set: stage 0 switches it)."""

UNPACK_ALL = ("zlib", "zstd", "xz", "bzip2", "delta")
"""Every kind of packed payload a device can accept (``DeviceConfig.unpack``)."""

IMAGE_SECTORS: dict[str, int] = {"mcu": 80, "secure-split": 40, "dual-cpu": 40, "linux": 0,
                                 "mcu-inplace": 80}
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


MAX_HEALTH_WINDOW = 7 * 24 * 3600.0
_MAX_HEALTH_TEXT = 2048


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """How the agent watches the application after an update (``device.json``'s ``health``):
    for ``window`` seconds after the new image started it stays on trial (the bootloader does
    not confirm it yet) and every ``interval`` seconds the agent checks that the application
    still runs (Linux-class: its process; a crash beyond ``max_crashes`` is unhealthy, others
    restart it), runs ``command`` (exit 0: healthy; ``{pid}`` is the application's process
    id) and fetches ``url`` (2xx: healthy), each within ``timeout`` seconds, and reports to
    the tracker. Healthy at the end of the window: confirmed."""

    window: float
    interval: float = 5.0
    command: str | None = None
    url: str | None = None
    max_crashes: int = 0
    timeout: float = 10.0

    def check(self) -> None:
        """Raises: ValueError: a value out of range (one line, naming it)."""
        if not 0 < self.window <= MAX_HEALTH_WINDOW:
            raise ValueError(f"health window: expected seconds in (0, {MAX_HEALTH_WINDOW:g}], "
                             f"got {self.window}")
        if not 0 < self.interval <= self.window:
            raise ValueError(f"health interval: expected seconds in (0, window], got "
                             f"{self.interval}")
        if not 0 < self.timeout <= 300:
            raise ValueError(f"health timeout: expected seconds in (0, 300], got {self.timeout}")
        if not 0 <= self.max_crashes <= 1000:
            raise ValueError(f"max crashes: expected 0 to 1000, got {self.max_crashes}")
        if self.command is not None and not 0 < len(self.command) <= _MAX_HEALTH_TEXT:
            raise ValueError("health command: expected a command line")
        if self.url is not None and (len(self.url) > _MAX_HEALTH_TEXT
                                     or not self.url.startswith(("http://", "https://"))):
            raise ValueError(f"health url: expected an http(s) URL, got {self.url[:80]!r}")

    def to_json(self) -> dict[str, object]:
        return {"window": self.window, "interval": self.interval, "command": self.command,
                "url": self.url, "max-crashes": self.max_crashes, "timeout": self.timeout}

    @classmethod
    def of(cls, doc: object) -> HealthConfig:
        """Raises: ValueError: not a health configuration."""
        if not isinstance(doc, dict):
            raise ValueError("health: expected an object")
        unknown = set(doc) - {"window", "interval", "command", "url", "max-crashes", "timeout"}
        if unknown:
            raise ValueError(f"health: unknown key {sorted(unknown)[0]!r}")
        numbers = {k: doc.get(k) for k in ("window", "interval", "timeout", "max-crashes")}
        for key, value in numbers.items():
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)):
                raise ValueError(f"health.{key}: expected a number")
        crashes = numbers["max-crashes"]
        if crashes is not None and not isinstance(crashes, int):
            raise ValueError("health.max-crashes: expected an integer")
        for key in ("command", "url"):
            if doc.get(key) is not None and not isinstance(doc.get(key), str):
                raise ValueError(f"health.{key}: expected a string")
        if numbers["window"] is None:
            raise ValueError("health.window: missing")
        window = float(numbers["window"])
        interval = numbers["interval"]
        config = cls(window=window,
                     interval=float(interval) if interval is not None else min(5.0, window),
                     command=doc.get("command"), url=doc.get("url"),
                     max_crashes=int(numbers["max-crashes"] or 0),
                     timeout=float(numbers["timeout"] or 10.0))
        config.check()
        return config


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
    health: HealthConfig | None = None
    """How the agent watches the application after an update; ``None``: it confirms a new
    image as soon as it started (the default)."""
    tls: ClientTls = field(default_factory=ClientTls)
    """The agent's TLS: CA bundle, client certificate and key (paths relative to the folder
    are the folder's); flags and ``SUITKIT_TLS_*`` take precedence (``device run``)."""
    dependency_roles: tuple[str, ...] = ()
    """Trust domains (draft-ietf-suit-trust-domains): the roles whose anchors may sign
    dependency manifests, each one alone, within its anchor's component scope (delegation by
    the device's policy). Empty: dependency manifests meet the same policy as the root."""
    unpack: tuple[str, ...] = UNPACK_ALL
    """The packed payloads the device accepts (docs/delta.md): compression codecs (zlib,
    zstd, xz, bzip2) and ``delta`` (SKD1 patches); a manifest asking for another is refused."""
    stage1: bool = False
    """mcu devices only: an immutable stage 0 runs one of two stage-1 bootloader copies, and
    the stage 1 is a component (``BOOTLOADER_ID``) updated by SUIT manifests."""
    anchor_medium: AnchorMedium | None = field(default=None, compare=False, repr=False)
    """Where the device keeps its anchor store instead of ``anchors.cbor`` (flash shapes: a
    flash area, set by ``device.wiring.open_device``); not part of ``device.json``."""

    def client_tls(self) -> ClientTls:
        """``tls`` with relative paths resolved against the device folder."""
        def at(path: Path | None) -> Path | None:
            return None if path is None else self.directory / path
        return ClientTls(at(self.tls.ca), at(self.tls.cert), at(self.tls.key))

    def component(self, suit_id: ComponentIdentifier) -> ComponentSpec | None:
        """The component with this SUIT identifier, or ``None`` (the stage-1 bootloader of a
        device with a stage 0 is one, outside the boot set ``components``)."""
        for spec in self.components:
            if spec.suit_id == suit_id:
                return spec
        if self.stage1 and suit_id == BOOTLOADER_ID:
            return ComponentSpec(BOOTLOADER_ID, BOOTLOADER_IMAGE)
        return None

    def stored_anchors(self) -> StoredAnchors | None:
        """The anchor store (``device.anchors``), from the flash area on flash shapes opened
        by ``open_device``; ``None``: device init's anchors, version 0.

        Raises:
            KeyMaterialError: the store is damaged.
        """
        return read_store(self.directory, self.anchor_medium)

    def trust_anchors(self) -> TrustAnchors:
        """The trust anchors and signer policy of the device.

        Raises:
            KeyMaterialError: none, or one is unreadable.
        """
        stored = self.stored_anchors()
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
            anchors.append(TrustAnchor(key, role=spec.role, components=scope, name=spec.file))
        return TrustAnchors(tuple(anchors), self.required_roles)

    def anchors_version(self) -> int:
        """The version of the device's trust anchors (0: those ``device init`` wrote).

        Raises:
            KeyMaterialError: the stored anchors are damaged.
        """
        stored = self.stored_anchors()
        return 0 if stored is None else stored.document.version

    def dependency_anchors(self) -> TrustAnchors:
        """The trust anchors dependency manifests are verified against: the anchors of the
        ``dependency_roles`` with no required role (each signer alone, in its scope), or the
        root's policy when no role is named.

        Raises:
            KeyMaterialError: none, or one is unreadable.
        """
        anchors = self.trust_anchors()
        if not self.dependency_roles:
            return anchors
        chosen = tuple(a for a in anchors.anchors if a.role in self.dependency_roles)
        if not chosen:
            raise KeyMaterialError(f"{self.directory}: no trust anchor has a dependency role "
                                   f"({', '.join(self.dependency_roles)})")
        return TrustAnchors(chosen, (), anchors.digest_algorithms)

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

    def report_signer(self) -> crypto.Signer | None:
        """The signer of the device's SUIT reports (report §8: COSE_Sign1, or COSE_Mac0 for
        an HMAC key), from ``REPORT_KEY`` in the folder; ``None``: the device has none and
        sends its reports unsigned.

        Raises:
            KeyMaterialError: the file is there and is not a private key.
        """
        path = self.directory / REPORT_KEY
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise KeyMaterialError(f"{path}: cannot read: {e.strerror or e}") from None
        try:
            key = crypto.load_private_key(data)
        except KeyMaterialError as e:
            raise KeyMaterialError(f"{path}: not a report signing key: {e}") from None
        if isinstance(key, crypto.HssLmsPrivateKey):
            # a one-time-signature state would be reused by every report: report §8 falls
            # back to ESP256 for devices whose manifests use HSS-LMS
            raise KeyMaterialError(f"{path}: an HSS-LMS key cannot sign reports (its state "
                                   "is not kept here); use an ESP256, Ed25519 or HMAC key")
        return key.signer()

    def ensure_report_key(self, algorithm: str = "ESP256") -> crypto.Verifier:
        """The public half of the device's report key, made first (``algorithm``, written
        atomically with mode 0600) when the folder has none: what the tracker registers to
        check its signed reports with.

        Raises:
            KeyMaterialError: the existing file is not a private key.
            StorageError: it cannot be written.
        """
        path = self.directory / REPORT_KEY
        if not path.exists():
            key = crypto.generate_private_key(algorithm)
            atomic_write(path, key.to_pem(), mode=0o600)
        try:
            return crypto.load_private_key(path.read_bytes()).public_key()
        except OSError as e:
            raise KeyMaterialError(f"{path}: cannot read: {e.strerror or e}") from None

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
        if self.health is not None:
            doc["health"] = self.health.to_json()
        if not self.tls.empty:
            doc["tls"] = self.tls.to_json()
        if self.dependency_roles:
            doc["dependency-roles"] = list(self.dependency_roles)
        if self.unpack != UNPACK_ALL:
            doc["unpack"] = list(self.unpack)
        if self.stage1:
            doc["stage1"] = True
        return json.dumps(doc, indent=2).encode() + b"\n"


def check_unpack(names: Sequence[str], *, path: str = "unpack") -> tuple[str, ...]:
    """The packed payload kinds ``names`` (each once), in the canonical order.

    Raises:
        DecodeError: an unknown name, listing the known ones.
    """
    for name in names:
        if name not in UNPACK_ALL:
            raise DecodeError(path, f"unknown payload packing {str(name)[:40]!r}; expected "
                              f"some of {', '.join(UNPACK_ALL)} (or none)")
    return tuple(n for n in UNPACK_ALL if n in names)


REPORT_KEY = "report.key"
"""The file of a device folder holding the private key its SUIT reports are signed with."""


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
            app_command=doc.get("app-command"), tracker_id=_tracker_id(doc.get("tracker-id")),
            health=(HealthConfig.of(doc["health"]) if doc.get("health") is not None
                    else None),
            tls=_tls(doc.get("tls")),
            dependency_roles=_roles(doc.get("dependency-roles", [])),
            unpack=_unpack(doc.get("unpack", list(UNPACK_ALL))),
            stage1=_stage1(doc.get("stage1", False), shape))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DecodeError(str(path), f"malformed: {e}") from None


_MAX_TRACKER_ID = 64
MAX_IMAGES = 8
"""Images a Linux-class device's boot set may have (``create_device(images=...)``)."""


def _roles(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > 16 \
            or not all(isinstance(r, str) and 0 < len(r) <= 64 for r in value):
        raise ValueError(f"dependency-roles must be a list of role names, got "
                         f"{str(value)[:80]!r}")
    return tuple(value)


def _image_name(name: str) -> str:
    if not (0 < len(name) <= 32 and name.isascii()
            and all(c.isalnum() or c in "-_" for c in name) and name[0].isalnum()):
        raise DecodeError("--image", f"image name {name[:40]!r} must be 1 to 32 letters, "
                          "digits, - or _, starting with a letter or digit")
    return name


def _stage1(value: object, shape: str) -> bool:
    if not isinstance(value, bool) or (value and shape != "mcu"):
        raise ValueError(f"stage1 must be true or false (true on the mcu shape only), got "
                         f"{str(value)[:40]!r}")
    return value


def _tls(doc: object) -> ClientTls:
    if doc is None:
        return ClientTls()
    if not isinstance(doc, dict) or set(doc) - {"ca", "cert", "key"}:
        raise ValueError("tls: expected an object {ca, cert, key} of file paths")
    paths: list[Path | None] = []
    for key in ("ca", "cert", "key"):
        value = doc.get(key)
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 4096):
            raise ValueError(f"tls.{key}: expected a file path")
        paths.append(Path(value) if value is not None else None)
    return ClientTls(*paths)


def _unpack(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("unpack must be a list of names")
    try:
        return check_unpack(value)
    except DecodeError as e:
        raise ValueError(str(e)) from None


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


def set_health(directory: Path, health: HealthConfig | None) -> DeviceConfig:
    """Set (or, with ``None``, clear) the device's health watch in ``device.json``.

    Raises:
        DecodeError: the folder is not a device, or ``health`` is out of range.
        StorageError: ``device.json`` cannot be written.
    """
    config = load_config(directory)
    if health is not None:
        try:
            health.check()
        except ValueError as e:
            raise DecodeError("health", str(e)) from None
    changed = dataclasses.replace(config, health=health)
    atomic_write(directory / CONFIG, changed.to_json())
    return changed


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
                  app_command: str | None = None,
                  health: HealthConfig | None = None,
                  tls: ClientTls | None = None,
                  images: Sequence[str] | None = None,
                  scopes: Sequence[Sequence[ComponentIdentifier] | None] | None = None,
                  dependency_roles: Sequence[str] = (),
                  unpack: Sequence[str] | None = None,
                  agent: bool = False,
                  stage1: bool = False) -> DeviceConfig:
    """Create a device folder: ``device.json``, ``anchors/`` and ``keys/``.

    ``trust_anchors``: key files, or ``(role, file)`` pairs (a plain file is an ``author``).
    ``required_roles``: every one of these must have signed an update.
    ``app_command``: Linux-class devices only, the command that starts the application.
    ``health``: watch the application after each update (``HealthConfig``).
    ``tls``: the agent's CA bundle and client certificate (``ClientTls``; kept as given).
    ``images``: Linux-class devices only, the images of the boot set (default ``app``);
    image i is SUIT component ``[h'0i']``. ``scopes``: per trust anchor, the component
    identifiers its signer may update (``None``: any). ``dependency_roles``: the roles whose
    anchors sign dependency manifests alone (``DeviceConfig.dependency_roles``).
    ``agent``: Linux-class devices only: the device agent is a component too (``AGENT_ID``,
    image ``agent``), updated like the application (``device.selfupdate``).

    ``unpack``: the packed payloads it accepts (default: every kind, ``UNPACK_ALL``).
    ``stage1``: mcu devices only: an immutable stage 0 and two stage-1 bootloader copies; the
    stage 1 is component ``BOOTLOADER_ID`` (its factory copy is installed like an update).

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
    if stage1 and shape != "mcu":
        raise DecodeError("--stage1", f"only the mcu shape has a stage 0 and an updatable "
                          f"bootloader (docs/selfupdate.md), not {shape}")
    if agent and shape != "linux":
        raise DecodeError("--agent", "only Linux-class devices run an updatable agent (MCU "
                          "shapes update their bootloader: docs/bootloader.md)")
    if not trust_anchors:
        raise DecodeError("--trust-anchor", "a device needs at least one trust anchor")
    if shape == "mcu-inplace" and unpack is not None and "delta" not in unpack:
        raise DecodeError("--unpack", "an mcu-inplace device installs in-place deltas only "
                          "(docs/delta.md §10): keep delta in --unpack")
    if health is not None:
        try:
            health.check()
        except ValueError as e:
            raise DecodeError("--health-*", str(e)) from None
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
    names = SHAPE_COMPONENTS[shape]
    if images is not None:
        if shape != "linux":
            raise DecodeError("--image", "only Linux-class devices choose their images")
        names = tuple(_image_name(n) for n in images)
        if not 0 < len(names) <= MAX_IMAGES or len(set(names)) != len(names):
            raise DecodeError("--image", f"expected 1 to {MAX_IMAGES} distinct image names")
    if agent and AGENT_IMAGE in names:
        raise DecodeError("--image", f"{AGENT_IMAGE!r} is the agent's image name (--agent)")
    if scopes is not None and len(scopes) != len(pairs):
        raise DecodeError("--scope", f"{len(scopes)} scopes for {len(pairs)} trust anchors")
    for role in dependency_roles:
        if role not in {r for r, _ in pairs}:
            raise DecodeError("--dependency-role", f"no trust anchor has the role {role!r}")
    specs = tuple(AnchorSpec(f"{i:02d}-{role}-{path.name}", role,
                             None if scopes is None or scopes[i] is None
                             else tuple(tuple(c) for c in scopes[i] or ()))
                  for i, (role, path) in enumerate(pairs))
    config = DeviceConfig(
        directory=directory, shape=shape, vendor_id=vendor_id, class_id=class_id,
        device_id=device_id or uuid.uuid4(),
        image_sectors=IMAGE_SECTORS[shape] if image_sectors is None else image_sectors,
        components=tuple(ComponentSpec((bytes([i]),), name) for i, name in enumerate(names))
        + ((ComponentSpec(AGENT_ID, AGENT_IMAGE),) if agent else ()),
        anchors=specs, required_roles=tuple(required_roles), app_command=app_command,
        health=health, tls=tls or ClientTls(), dependency_roles=tuple(dependency_roles),
        unpack=UNPACK_ALL if unpack is None else check_unpack(unpack, path="--unpack"),
        stage1=stage1)
    (directory / "anchors").mkdir(parents=True, exist_ok=True)
    (directory / "keys").mkdir(exist_ok=True)
    for spec, (_, path) in zip(specs, pairs, strict=True):
        shutil.copyfile(path, directory / "anchors" / spec.file)
    for path in decryption_keys or []:
        shutil.copyfile(path, directory / "keys" / path.name)
    atomic_write(directory / CONFIG, config.to_json())
    return config
