"""Hard limits on untrusted input (design rule 6: limits before decoding).

A frozen dataclass passed to the decoder and verifier; never a global. The defaults suit a
device with tens of KiB for the manifest; raise them for Linux-class devices if needed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Upper bounds enforced while decoding and processing untrusted manifests."""

    max_envelope_bytes: int = 16 * 1024 * 1024
    """Whole envelope, integrated payloads included."""
    max_manifest_bytes: int = 64 * 1024
    """The bstr-wrapped SUIT_Manifest (RFC 9124 REQ.SEC.MFST.CONST: it must fit in memory)."""
    max_depth: int = 16
    """CBOR container nesting inside any one decoded item."""
    max_components: int = 64
    max_commands: int = 256
    """Commands in one sequence."""
    max_sequence_nesting: int = 8
    """try-each / run-sequence nesting."""
    max_auth_blocks: int = 8
    max_integrated: int = 16
    """Integrated payloads and dependencies in one envelope."""
    max_map_entries: int = 64
    """Entries in any parameter, text or dependency map."""
    max_component_id_parts: int = 16
    max_payload_bytes: int = 1 << 34
    """Largest image-size a device will consider (16 GiB)."""
