"""Fuzzing in the normal test run: Hypothesis against the device, and the atheris target's
regression vectors.

The manifest and command-sequence strategies are the codec's (tests/core/test_codec_properties:
``manifests``, ``sequences``); here they drive the whole device: an envelope signed by the
device's own trusted key (the worst case: a buggy or compromised author), installed through
``Consumer.install``. Whatever it says, the consumer returns an outcome (never raises), a
refused update leaves counters, pending state and running images alone, and any SUIT report it
produces survives the trip to the status tracker (encode, decode).

``fuzz/fuzz_suit.py`` is the coverage-guided fuzzer (atheris, optional extra ``fuzz``);
``one_input`` is importable without atheris, so its seeds, its minimised corpus and every crash
it ever found (tests/security/vectors/) replay here.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core.test_codec_properties import manifests, sequences
from device.device_kit import Author, boot, confirm, image_bytes, install, new_device
from security.kit import CLASS, VENDOR
from suitkit.core import codec
from suitkit.core.model import Command, CommandSequence, Common, Parameters
from suitkit.core.numbers import Command as Cmd
from suitkit.core.report import decode_report, encode_report
from suitkit.core.sign import sign_envelope
from suitkit.device.wiring import open_device
from suitkit.errors import SuitError

ROOT = Path(__file__).resolve().parents[2]
VECTORS = Path(__file__).parent / "vectors"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Author, Path]]:
    """(author, device folder running release 1) shared by the examples: each example opens
    the folder afresh and never saves, so none sees another's writes."""
    folder = tmp_path_factory.mktemp("fuzzed")
    author = Author.create(folder / "author")
    device = new_device(folder / "dev", [author.anchor])
    assert install(device, author.release(1)[0]).installed
    boot(device)
    confirm(device)
    yield author, device


COMPATIBLE = CommandSequence((
    Command(Cmd.OVERRIDE_PARAMETERS, Parameters(vendor_identifier=VENDOR,
                                                class_identifier=CLASS)),
    Command(Cmd.VENDOR_IDENTIFIER, 15), Command(Cmd.CLASS_IDENTIFIER, 15)))


@st.composite
def device_manifests(draw: st.DrawFn) -> object:
    """Generated manifests, half of them aimed at this device (its component [h'00'] first,
    its vendor and class in a shared sequence that then continues with generated commands),
    so that processing gets past the compatibility checks."""
    manifest = draw(manifests)
    if draw(st.booleans()):
        tail = draw(st.one_of(st.none(), sequences(1)))
        shared = CommandSequence(COMPATIBLE.commands + (tail.commands if tail else ()))
        manifest = replace(manifest, sequence_number=draw(st.integers(1, 3)), common=Common(
            components=((b"\x00",), *manifest.common.components[1:]), shared_sequence=shared))
    return manifest


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(manifest=device_manifests(), nonce=st.binary(max_size=8))
def test_generated_manifests_signed_by_a_trusted_key_never_crash_the_device(
        rig: tuple[Author, Path], manifest: object, nonce: bytes) -> None:
    author, folder = rig
    try:
        envelope = codec.encode_envelope(sign_envelope(
            codec.build_envelope(manifest), author.key.signer()))  # type: ignore[arg-type]
    except SuitError:
        return  # the encoder refuses it (e.g. over a limit): nothing to deliver
    opened = open_device(folder)
    before = opened.bootloader.read_counters()

    outcome = opened.consumer().install(envelope, nonce=nonce or None)

    assert outcome.reason.startswith(("rejected: ", "failed: ", "installed ")), outcome.reason
    event(outcome.reason.split(" ")[0] + (" with a report" if outcome.report else ""))
    if outcome.report is not None:
        assert decode_report(encode_report(outcome.report)) == outcome.report
    if not outcome.installed:
        assert not opened.bootloader.pending_update()
    assert opened.bootloader.read_counters() == before  # only a confirmed boot moves them


_EDITS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 16), st.integers(0, 255)),
                  min_size=1, max_size=4)


def _edit(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        at = where % max(len(out), 1)
        if kind == 0 and out:
            out[at] ^= value or 1
        elif kind == 1:
            out.insert(at, value)
        elif out:
            del out[at]
    return bytes(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_EDITS)
def test_envelopes_mutated_on_the_wire_install_only_what_was_signed(
        rig: tuple[Author, Path], edits: list[tuple[int, int, int]]) -> None:
    author, folder = rig
    image = image_bytes("wire", 300)
    genuine = author.envelope(2, [author.component("w.bin", image)])
    mutated = _edit(genuine, edits)
    opened = open_device(folder)

    outcome = opened.consumer().install(mutated)

    if outcome.installed:  # then the signed manifest and the image are the genuine ones
        parts = codec.decode_envelope_parts(mutated)
        assert parts.manifest_bytes == codec.decode_envelope_parts(genuine).manifest_bytes
        assert outcome.result is not None and outcome.result.succeeded
    else:
        assert outcome.reason.startswith(("rejected: ", "failed: ")), outcome.reason
        assert not opened.bootloader.pending_update()


# ------------------------------------------------------------------------ the atheris target


def _fuzz_target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_suit", ROOT / "fuzz" / "fuzz_suit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_suit", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["decode", "verify", "process"])
def test_fuzz_corpus_and_regression_vectors_replay(mode: str) -> None:
    """The fuzzer's minimised corpus of a mode (``vectors/corpus-<mode>.hex``, one input per
    line: the inputs that reached new code) and every input it ever crashed on
    (``vectors/<mode>-<what>.bin``) end with a SuitError or normally."""
    target = _fuzz_target()
    corpus = (VECTORS / f"corpus-{mode}.hex").read_text().split()
    crashes = sorted(VECTORS.glob(f"{mode}-*.bin"))
    assert len(corpus) >= 50
    for line in corpus:
        target.one_input(mode, bytes.fromhex(line))
    for path in crashes:
        target.one_input(mode, path.read_bytes())


@pytest.mark.parametrize("mode", ["decode", "verify", "process"])
def test_fuzz_target_runs_on_its_seeds(tmp_path: Path, mode: str) -> None:
    """The target works without atheris: its seed corpus (the spec's vectors) runs clean, and
    in verify/process mode a seed manifest really reaches processing (the wrapper signs it)."""
    target = _fuzz_target()
    assert target.write_seeds(mode, tmp_path) >= 20
    for seed in sorted(tmp_path.iterdir()):
        target.one_input(mode, seed.read_bytes())
    if mode != "decode":
        manifest = (tmp_path / "example1").read_bytes()
        verified = target.verify_envelope(target.wrap_manifest(manifest),
                                          target.fakes.TEST_ANCHORS)
        assert verified.manifest.sequence_number == 1
