"""suitkit: the IETF SUIT firmware update architecture (RFC 9019) in Python.

The pure core (``suitkit.core``) holds the manifest model, the byte-exact codec, COSE and the
verifier; the roles (author, firmware server, status tracker, device, bootloader) sit around it.
"""

__version__ = "0.1.0"

SPEC = "draft-ietf-suit-manifest-34"
"""The manifest draft whose numbers and rules this implementation follows."""
