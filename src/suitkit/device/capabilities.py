"""What a device supports, as a SUIT_Capability_Report (draft-ietf-suit-report §6).

``capability_report(opened)`` builds it from the device as it is wired, not from a list kept by
hand:

- components: the SUIT component identifiers of the device's configuration (each exact: the
  device has no component it could create under a prefix);
- commands and parameters: what the processor runs (``processor.supported_commands`` /
  ``supported_parameters``) with the custom ones the device registered (``OpenDevice.
  extensions``; report §6: extensions MUST be reported), less component metadata
  (update-management §4.6) on a shape that has nowhere to keep it (the flash shapes refuse it);
- algorithms: the COSE algorithms its trust anchors accept (each key's own set), the manifest
  digest algorithms, and, when it holds decryption keys, their key-wrap or key-agreement
  algorithms and the content algorithms it decrypts (draft-ietf-suit-firmware-encryption);
- the envelope, manifest, common, text, component-text and dependency elements the decoder
  understands (the delegation element 1 of the envelope is historic: not listed).

The agent sends it with the inventory (base64 of its CBOR) and in each SUIT report (key 8).
Not here: encoding (``core.report``), sending it (``device.agent``).
"""

from __future__ import annotations

from suitkit.core import crypto
from suitkit.core.numbers import (
    CommonKey,
    ComponentTextKey,
    CoseAlg,
    DependencyKey,
    EnvelopeKey,
    ManifestKey,
    Parameter,
    TextKey,
)
from suitkit.core.processor import supported_commands, supported_parameters
from suitkit.core.report import CapabilityReport, ComponentCapability
from suitkit.device.config import BOOTLOADER_ID
from suitkit.device.wiring import OpenDevice
from suitkit.errors import SuitError

__all__ = ["capability_report"]

_CTR = (int(CoseAlg.A128CTR), int(CoseAlg.A192CTR), int(CoseAlg.A256CTR))
_ECDH_ES = (int(CoseAlg.ECDH_ES_A128KW), int(CoseAlg.ECDH_ES_A192KW),
            int(CoseAlg.ECDH_ES_A256KW))


def capability_report(opened: OpenDevice) -> CapabilityReport:
    """The capability report of the device in ``opened`` (see the module's docstring).

    A trust anchor or decryption key that does not load is left out (the install reports
    that error; the capability report says what works)."""
    config = opened.config
    parameters = set(supported_parameters(opened.extensions))
    if opened.consumer().metadata_sink is None:  # the shape has nowhere to keep it
        parameters.discard(int(Parameter.COMPONENT_METADATA))
    algorithms: set[int] = set()
    try:
        anchors = config.trust_anchors()
        for anchor in anchors.anchors:
            algorithms.update(anchor.key.algorithms)
        algorithms.update(anchors.digest_algorithms)
    except SuitError:
        pass
    try:
        keys = config.decryption_keys()
    except SuitError:
        keys = []
    for key in keys:
        if isinstance(key, crypto.AesKwKey):
            algorithms.add(key.algorithm)
        else:
            algorithms.update(_ECDH_ES)
    if keys:
        algorithms.update(crypto.AEAD_ALGORITHMS)
        algorithms.update(_CTR)
    return CapabilityReport(
        components=tuple(ComponentCapability(spec.suit_id) for spec in config.components)
        # a device with a stage 0 updates its stage-1 bootloader too (docs/selfupdate.md)
        + ((ComponentCapability(BOOTLOADER_ID),) if config.stage1 else ()),
        commands=supported_commands(opened.extensions),
        parameters=tuple(sorted(parameters)),
        algorithms=tuple(sorted(algorithms)) or (int(CoseAlg.SHA256),),
        envelope=tuple(sorted(int(k) for k in EnvelopeKey if k != EnvelopeKey.DELEGATION)),
        manifest=tuple(sorted(int(k) for k in ManifestKey)),
        common=tuple(sorted(int(k) for k in CommonKey)),
        text=tuple(sorted(int(k) for k in TextKey)),
        component_text=tuple(sorted(int(k) for k in ComponentTextKey)),
        dependency=tuple(sorted(int(k) for k in DependencyKey)),
    )
