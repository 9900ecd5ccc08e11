"""IANA registries of SUIT and COSE as IntEnums (draft-ietf-suit-manifest §11 and extensions).

Numbers come from draft-ietf-suit-manifest-34 §11, draft-ietf-suit-trust-domains-12 §9,
draft-ietf-suit-update-management-14 §7, draft-ietf-suit-firmware-encryption, draft-ietf-suit-report
and the COSE algorithm registry. The model stores plain ``int`` so that unknown values survive a
round trip (the spec allows extensions); ``name_of`` renders either kind for people.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class Tag(IntEnum):
    """CBOR tags SUIT uses."""

    ENVELOPE = 107
    MANIFEST = 1070
    COSE_MAC0 = 17
    COSE_SIGN1 = 18
    COSE_ENCRYPT = 96
    COSE_MAC = 97
    COSE_SIGN = 98
    CBOR_PEN = 112
    EPOCH_TIME = 1


class EnvelopeKey(IntEnum):
    """SUIT_Envelope members (manifest §11.1, trust-domains §9.1, update-management §7.1)."""

    DELEGATION = 1  # reserved, historic
    AUTHENTICATION_WRAPPER = 2
    MANIFEST = 3
    COSWID = 14
    DEPENDENCY_RESOLUTION = 15
    PAYLOAD_FETCH = 16
    CANDIDATE_VERIFICATION = 18
    INSTALL = 20
    TEXT = 23


class ManifestKey(IntEnum):
    """SUIT_Manifest members (manifest §11.2 and extensions)."""

    VERSION = 1
    SEQUENCE_NUMBER = 2
    COMMON = 3
    REFERENCE_URI = 4
    MANIFEST_COMPONENT_ID = 5
    SET_VERSION = 6
    VALIDATE = 7
    LOAD = 8
    INVOKE = 9
    COSWID = 14
    DEPENDENCY_RESOLUTION = 15
    PAYLOAD_FETCH = 16
    CANDIDATE_VERIFICATION = 18
    INSTALL = 20
    TEXT = 23
    UNINSTALL = 24


SEVERABLE_MEMBERS: frozenset[int] = frozenset(
    {
        ManifestKey.COSWID,
        ManifestKey.DEPENDENCY_RESOLUTION,
        ManifestKey.PAYLOAD_FETCH,
        ManifestKey.CANDIDATE_VERIFICATION,
        ManifestKey.INSTALL,
        ManifestKey.TEXT,
    }
)
"""Members that may be replaced by a SUIT_Digest and moved to the envelope (manifest §8.4.12)."""


class CommonKey(IntEnum):
    """SUIT_Common members."""

    DEPENDENCIES = 1
    COMPONENTS = 2
    SHARED_SEQUENCE = 4


class DependencyKey(IntEnum):
    """SUIT_Dependency_Metadata members (trust-domains §5.2)."""

    PREFIX = 1


class Command(IntEnum):
    """SUIT commands: conditions and directives (manifest §11.4 plus extensions)."""

    VENDOR_IDENTIFIER = 1
    CLASS_IDENTIFIER = 2
    IMAGE_MATCH = 3
    USE_BEFORE = 4
    COMPONENT_SLOT = 5
    CHECK_CONTENT = 6
    DEPENDENCY_INTEGRITY = 7
    IS_DEPENDENCY = 8
    PROCESS_DEPENDENCY = 11
    SET_COMPONENT_INDEX = 12
    ABORT = 14
    TRY_EACH = 15
    WRITE = 18
    SET_PARAMETERS = 19
    OVERRIDE_PARAMETERS = 20
    FETCH = 21
    COPY = 22
    INVOKE = 23
    DEVICE_IDENTIFIER = 24
    IMAGE_NOT_MATCH = 25
    MINIMUM_BATTERY = 26
    UPDATE_AUTHORIZED = 27
    VERSION = 28
    WAIT = 29
    SWAP = 31
    RUN_SEQUENCE = 32
    UNLINK = 33
    OVERRIDE_MULTIPLE = 34
    COPY_PARAMS = 35


CONDITIONS: frozenset[int] = frozenset(
    {
        Command.VENDOR_IDENTIFIER,
        Command.CLASS_IDENTIFIER,
        Command.IMAGE_MATCH,
        Command.USE_BEFORE,
        Command.COMPONENT_SLOT,
        Command.CHECK_CONTENT,
        Command.DEPENDENCY_INTEGRITY,
        Command.IS_DEPENDENCY,
        Command.ABORT,
        Command.DEVICE_IDENTIFIER,
        Command.IMAGE_NOT_MATCH,
        Command.MINIMUM_BATTERY,
        Command.UPDATE_AUTHORIZED,
        Command.VERSION,
    }
)
"""Commands that are conditions (no side effects; failure honours soft-failure)."""

CUSTOM_LIMIT = -256
"""Commands and parameters below this value are private use (manifest §11)."""


class Parameter(IntEnum):
    """SUIT parameters (manifest §11.5 plus extensions)."""

    VENDOR_IDENTIFIER = 1
    CLASS_IDENTIFIER = 2
    IMAGE_DIGEST = 3
    USE_BEFORE = 4
    COMPONENT_SLOT = 5
    STRICT_ORDER = 12
    SOFT_FAILURE = 13
    IMAGE_SIZE = 14
    CONTENT = 18
    ENCRYPTION_INFO = 19
    URI = 21
    SOURCE_COMPONENT = 22
    INVOKE_ARGS = 23
    DEVICE_IDENTIFIER = 24
    FETCH_ARGUMENTS = 25
    MINIMUM_BATTERY = 26
    UPDATE_PRIORITY = 27
    VERSION = 28
    WAIT_INFO = 29
    COMPONENT_METADATA = 30


class ReportingPolicy(IntFlag):
    """SUIT_Rep_Policy bits (manifest §8.4.7; names as in -37)."""

    NONE = 0
    SEND_RECORD_ON_SUCCESS = 1
    SEND_RECORD_ON_FAILURE = 2
    SEND_SYSINFO_SUCCESS = 4
    SEND_SYSINFO_FAILURE = 8


class TextKey(IntEnum):
    """Manifest-level SUIT_Text_Keys (manifest §8.4.4)."""

    MANIFEST_DESCRIPTION = 1
    UPDATE_DESCRIPTION = 2
    MANIFEST_JSON_SOURCE = 3
    MANIFEST_YAML_SOURCE = 4


class ComponentTextKey(IntEnum):
    """Component-level SUIT_Text_Component_Keys (manifest §8.4.4, update-management §3.3-3.4)."""

    VENDOR_NAME = 1
    MODEL_NAME = 2
    VENDOR_DOMAIN = 3
    MODEL_INFO = 4
    COMPONENT_DESCRIPTION = 5
    COMPONENT_VERSION = 6
    VERSION_REQUIRED = 7
    CURRENT_VERSION = 8


class VersionComparison(IntEnum):
    """SUIT_Condition_Version_Comparison_Types (update-management §4.4)."""

    GREATER = 1
    GREATER_EQUAL = 2
    EQUAL = 3
    LESSER_EQUAL = 4
    LESSER = 5


class WaitEvent(IntEnum):
    """SUIT_Wait_Events keys (update-management §4.5)."""

    AUTHORIZATION = 1
    POWER = 2
    NETWORK = 3
    OTHER_DEVICE_VERSION = 4
    TIME = 5
    TIME_OF_DAY = 6
    DAY_OF_WEEK = 7
    TIME_OF_DAY_UTC = 8
    DAY_OF_WEEK_UTC = 9


class CoseAlg(IntEnum):
    """COSE algorithm identifiers used by SUIT (IANA COSE Algorithms; SUIT MTI profiles)."""

    # signatures
    ES256 = -7
    EDDSA = -8
    ESP256 = -9
    ED25519 = -19
    ES384 = -35
    HSS_LMS = -46
    # MAC
    HMAC_256_256 = 5
    # digests
    SHA256 = -16
    SHAKE128 = -18
    SHA384 = -43
    SHA512 = -44
    SHAKE256 = -45
    # key distribution
    A128KW = -3
    A192KW = -4
    A256KW = -5
    ECDH_ES_A128KW = -29
    ECDH_ES_A192KW = -30
    ECDH_ES_A256KW = -31
    # content encryption
    A128GCM = 1
    A192GCM = 2
    A256GCM = 3
    CHACHA20_POLY1305 = 24
    A128CTR = -65534
    A192CTR = -65533
    A256CTR = -65532


DIGEST_ALGORITHMS: frozenset[int] = frozenset(
    {CoseAlg.SHA256, CoseAlg.SHAKE128, CoseAlg.SHA384, CoseAlg.SHA512, CoseAlg.SHAKE256}
)


class CoseHeader(IntEnum):
    """COSE header labels (RFC 9052 §3.1) that SUIT uses."""

    ALG = 1
    CRIT = 2
    CONTENT_TYPE = 3
    KID = 4
    IV = 5
    PARTIAL_IV = 6
    EPHEMERAL_KEY = -1
    SALT = -20


class ReportKey(IntEnum):
    """SUIT_Report members (draft-ietf-suit-report §4)."""

    NONCE = 2
    RECORDS = 3
    RESULT = 4
    RESULT_CODE = 5
    RESULT_RECORD = 6
    RESULT_REASON = 7
    CAPABILITY_REPORT = 8
    REFERENCE = 99


class ReportReason(IntEnum):
    """SUIT_Report_Reasons (draft-ietf-suit-report §4)."""

    OK = 0
    CBOR_PARSE = 1
    COSE_UNSUPPORTED = 2
    ALG_UNSUPPORTED = 3
    UNAUTHORISED = 4
    COMMAND_UNSUPPORTED = 5
    COMPONENT_UNSUPPORTED = 6
    COMPONENT_UNAUTHORISED = 7
    PARAMETER_UNSUPPORTED = 8
    SEVERING_UNSUPPORTED = 9
    CONDITION_FAILED = 10
    OPERATION_FAILED = 11
    INVOKE_PENDING = 12


_NAME_CACHE: dict[type[IntEnum], dict[int, str]] = {}


def name_of(enum: type[IntEnum], value: int) -> str:
    """The registry name of ``value`` in kebab case, or ``"unknown(N)"``/``"custom(N)"``."""
    names = _NAME_CACHE.get(enum)
    if names is None:
        names = _NAME_CACHE[enum] = {int(m): m.name.lower().replace("_", "-") for m in enum}
    name = names.get(value)
    if name is not None:
        return name
    return f"custom({value})" if value < CUSTOM_LIMIT else f"unknown({value})"
