"""Trust domains for the tests: an operator, two authors each scoped to its component, and
a device that trusts them (``Domains``); real keys, descriptions and envelopes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from device.device_kit import CLASS, VENDOR, Author, image_bytes
from suitkit.device.config import create_device
from suitkit.device.wiring import open_device

SHAPES = {"linux": ("app", "data"), "secure-split": ("secure", "nonsecure")}


class Domains:
    """The operator and two authors, and a device that trusts them with their scopes."""

    def __init__(self, root: Path, shape: str = "linux") -> None:
        self.root = root
        self.operator = Author.create(root / "operator", name="operator")
        self.a = Author.create(root / "author-a", name="author-a")
        self.b = Author.create(root / "author-b", name="author-b")
        self.images = SHAPES[shape]
        self.device = root / "device"
        create_device(
            self.device, vendor_id=VENDOR, class_id=CLASS, shape=shape,
            trust_anchors=[("operator", self.operator.anchor), ("author", self.a.anchor),
                           ("author", self.b.anchor)],
            scopes=[None, [(b"\x00",)], [(b"\x01",)]],
            required_roles=("operator",), dependency_roles=("author",),
            images=self.images if shape == "linux" else None)
        open_device(self.device).save()

    def component_manifest(self, who: Author, sequence: int, index: int, *,
                           tag: str = "", uri: str | None = None) -> tuple[bytes, bytes]:
        """(envelope, image) of an author's manifest for component [h'0<index>']."""
        image = image_bytes(f"{who.folder.name}-{sequence}-{index}-{tag}", 3000 + 100 * index)
        envelope = who.envelope(sequence, [who.component(f"img-{sequence}-{index}{tag}.bin",
                                                         image, index=index, uri=uri)])
        return envelope, image

    def root_manifest(self, sequence: int, dependencies: list[dict[str, Any]], *,
                      signer: Author | None = None,
                      extra: dict[str, Any] | None = None) -> bytes:
        """The operator's root manifest: no image of its own, only the dependencies."""
        who = signer or self.operator
        for dep in dependencies:
            name = dep.pop("bytes", None)
            if name is not None:
                (who.folder / dep["envelope"]).write_bytes(name)
        return who.envelope(sequence, [], top={"dependencies": dependencies, **(extra or {})})
