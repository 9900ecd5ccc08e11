"""Shared pieces of the attack suite: the device, the checks after an attack, the tracker's view.

The device side reuses tests/device (``device_kit`` and the ``Baseline`` / ``assert_still_updates``
checks of test_device_threats): a real device folder, reopened for every step, with the real
consumer and the real bootloader on simulated flash.

``tracker_view(outcome)`` is what reaches the status tracker: the agent (device/agent.py) posts
``encode_report(outcome.report)`` when there is a report and the one-line ``outcome.reason``
otherwise (an envelope refused before processing has no manifest to report on). The tracker
decodes the report with ``decode_report``; so do the tests.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import cbor2

from device.device_kit import CLASS, VENDOR, Author
from device.test_device_threats import Baseline, assert_still_updates, running_device
from suitkit.core import cbor, codec, cose, crypto
from suitkit.core.numbers import Command as Cmd
from suitkit.core.numbers import CoseAlg, ReportReason
from suitkit.core.report import Report, ResultFailure, decode_report, encode_report
from suitkit.device.consumer import InstallOutcome
from suitkit.device.fetch import CoapFetcher, HttpFetcher, RoutingFetcher

__all__ = ["CLASS", "VENDOR", "Author", "Baseline", "Symptom", "assert_refused",
           "assert_still_updates", "fetcher", "running_device", "sha256", "sign_raw_manifest",
           "tracker_view"]

SHARED = 3  # report §4 / processor: a shared-sequence failure is reported as suit-common (3)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def fetcher(deadline: float = 5.0) -> RoutingFetcher:
    """The device's fetchers with small bounds (the CLI's defaults are minutes)."""
    return RoutingFetcher(HttpFetcher(timeout=2.0, retries=1, deadline=deadline, backoff=0.01),
                          coap=CoapFetcher(timeout=0.5, retries=1, deadline=deadline,
                                           backoff=0.01))


def tracker_view(outcome: InstallOutcome) -> Report | str:
    """What the status tracker receives about ``outcome``: the decoded SUIT report, or the
    reason line when the envelope never got to processing."""
    if outcome.report is None:
        return outcome.reason
    return decode_report(encode_report(outcome.report))


@dataclass(frozen=True)
class Symptom:
    """Where a check failed, as the report names it: the manifest section (member key, 3 for
    the shared sequence), the command found at the record's section-offset, the component
    index and the SUIT_Report_Reason."""

    section: int
    command: int | None
    """``None``: a setup failure (record at offset 0 of the section, no command there)."""
    reason: ReportReason
    component: int = 0


def _section_bytes(envelope: bytes, section: int) -> bytes:
    top = cbor2.loads(envelope)
    members = top.value if isinstance(top, cbor2.CBORTag) else top
    manifest = cbor2.loads(members[3])
    if section == SHARED:
        return bytes(cbor2.loads(manifest[3])[4])
    value = manifest[section]
    return bytes(value if isinstance(value, bytes) else members[section])


def command_at(sequence: bytes, offset: int) -> int:
    """The command code encoded at ``offset`` of a command sequence's bytes."""
    return int(cbor2.CBORDecoder(io.BytesIO(sequence[offset:])).decode())


def assert_refused(outcome: InstallOutcome, envelope: bytes, symptom: Symptom | str) -> None:
    """Not installed, and the tracker is told why: a report whose failure record points at the
    failing command (``Symptom``), or the reason line (a prefix, for pre-processing refusals)."""
    assert not outcome.installed, outcome.reason
    seen = tracker_view(outcome)
    if isinstance(symptom, str):
        assert isinstance(seen, str), f"expected a refusal before processing, got a report: " \
                                      f"{outcome.reason}"
        assert seen.startswith(symptom), seen
        return
    assert isinstance(seen, Report), f"expected a SUIT report, got {seen!r}"
    failure = seen.result
    assert isinstance(failure, ResultFailure), "the report says the update succeeded"
    record = failure.record
    assert (record.manifest_section, record.component_index, failure.reason) == (
        symptom.section, symptom.component, symptom.reason), (record, failure, outcome.reason)
    if symptom.command is None:
        assert record.section_offset == 0, record
        return
    found = command_at(_section_bytes(envelope, symptom.section), record.section_offset)
    assert found == symptom.command, (Cmd(found).name, Cmd(symptom.command).name, outcome.reason)


def sign_raw_manifest(manifest_bytes: bytes, signer: crypto.Signer, *,
                      algorithm: int = CoseAlg.SHA256) -> bytes:
    """An envelope around manifest bytes built by hand (so they may hold what the encoder
    refuses: duplicate keys, odd encodings), with their digest and a valid signature: what a
    careless or compromised signing service could produce."""
    digest = codec.member_digest(manifest_bytes, algorithm)
    digest_bytes = cbor.encode([digest.algorithm, digest.value])
    block = cose.sign_detached(signer, digest_bytes)
    return cbor2.dumps(cbor2.CBORTag(107, {2: cbor.encode([digest_bytes, block]),
                                           3: manifest_bytes}))
