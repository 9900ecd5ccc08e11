"""Whatever an authentic manifest says, processing ends in a result, never a foreign exception.

A compromised or careless author can sign anything; the processor must still only report
failures (RFC 9124 REQ.USE.PARSE, design rule: untrusted input raises only SuitError).
"""

from __future__ import annotations

import contextlib

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.processor_fakes import TEST_ANCHORS, TEST_KEY, MemoryComponent, rig
from core.test_codec_properties import _mutate
from suitkit.core import codec
from suitkit.core.processor import process
from suitkit.core.sign import sign_envelope
from suitkit.core.verify import verify_decoded
from suitkit.errors import SuitError

from helpers import ALL_ENVELOPES, vector


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(ALL_ENVELOPES), st.data(),
       st.sampled_from(["update", "invoke", "staging", "installation"]))
def test_signed_mutations_process_to_a_result(name: str, data: st.DataObject,
                                              procedure: str) -> None:
    original = codec.decode_envelope(vector(name))
    mutated = cbor2.dumps(_mutate(cbor2.loads(original.manifest_bytes), data))
    with contextlib.suppress(SuitError):
        manifest = codec.decode_manifest(mutated)
        envelope = codec.build_envelope(manifest, integrated=dict(original.integrated))
        verified = verify_decoded(sign_envelope(envelope, TEST_KEY), TEST_ANCHORS)
        device = rig({(bytes([i]),): MemoryComponent(b"\x5a" * 64) for i in range(3)},
                     payloads={"http://example.com/file.bin": b"\x5a" * 64}).device
        result = process(verified, procedure, device)  # type: ignore[arg-type]
        assert result.succeeded in (True, False)
        assert result.reason
