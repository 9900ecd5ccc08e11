#!/usr/bin/env python3
"""atheris fuzz target for suitkit's device-facing parsers: decode, verify and process.

Modes (``--mode=NAME``, else the ``FUZZ_MODE`` environment variable, default ``decode``; use
the variable for libFuzzer's ``-merge=1`` and ``-fork``, which re-run the script without it):

``decode``
    The input is an envelope: ``codec.decode_envelope``, ``verify_envelope`` (against the
    spec's example key and an HMAC key), ``report.decode_report``. Reaches the CBOR reader, the
    envelope and manifest decoders, the COSE block decoder.
``verify``
    The input is a *manifest*: it is wrapped in an envelope with the right digest and a valid
    HMAC (what an authorised but buggy or hostile author could sign), then ``verify_envelope``
    runs. Since suitkit authenticates before it parses (manifest §6.2), this is the only way
    random bytes reach the manifest parser and the signer-policy checks.
``process``
    As ``verify``, then the four procedures (``update``, ``invoke``, ``staging``,
    ``installation``) run on an in-memory device (tests/core/processor_fakes.py) and the SUIT
    report is encoded and decoded again. The device counts writes past the bound the processor
    set: any is a crash.
``fastpath``
    The first byte is a depth limit (``% 20``), the rest CBOR bytes: the compiled fast path
    ``cbor.FAST`` against ``cbor.decode_reference`` (tests/core/strictcbor_kit.py). A crash is a
    broken contract: FAST raised, decided what the reference refuses or decodes differently
    (types included), or left an item of its common subset undecided.

The contract checked: every input ends normally or with a ``SuitError``; anything else
(``TypeError``, ``KeyError``, ``RecursionError``, ``MemoryError``...) is a crash.

Run (after ``pip install -e '.[fuzz]'``)::

    python fuzz/fuzz_suit.py --mode=decode --seeds fuzz/corpus/decode   # write the seeds
    python fuzz/fuzz_suit.py --mode=decode -atheris_runs=600000 fuzz/corpus/decode

``one_input(mode, data)`` is the target without atheris; tests/security replays the kept
regression vectors through it.
"""

# ruff: noqa: PLC0415 - imports wait for atheris.instrument_imports (and for sys.path)

from __future__ import annotations

import os
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

# Bound by _imports(): inside atheris.instrument_imports when fuzzing, plainly otherwise.
cbor: Any = None
codec: Any = None
cose: Any = None
crypto: Any = None
report: Any = None
verify_envelope: Any = None
process: Any = None
SuitError: Any = None
TrustAnchors: Any = None
fakes: Any = None
strictcbor: Any = None

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
MODES = ("decode", "verify", "process", "fastpath")
PROCEDURES = ("update", "invoke", "staging", "installation")


def _imports() -> None:
    """Import what the target drives (inside ``atheris.instrument_imports`` when fuzzing)."""
    global cbor, codec, cose, crypto, report, verify_envelope, process
    global SuitError, TrustAnchors, fakes, strictcbor  # noqa: PLW0603
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))  # processor_fakes: the in-memory device of the tests
    import core.processor_fakes as fakes_module
    import core.strictcbor_kit as strictcbor_module
    from suitkit.core import cbor as cbor_module
    from suitkit.core import codec as codec_module
    from suitkit.core import cose as cose_module
    from suitkit.core import crypto as crypto_module
    from suitkit.core import report as report_module
    from suitkit.core.processor import process as process_fn
    from suitkit.core.verify import TrustAnchors as anchors_type
    from suitkit.core.verify import verify_envelope as verify_fn
    from suitkit.errors import SuitError as error_type

    cbor, codec, cose, crypto, report = (cbor_module, codec_module, cose_module, crypto_module,
                                         report_module)
    verify_envelope, process, SuitError, TrustAnchors = (verify_fn, process_fn, error_type,
                                                          anchors_type)
    fakes = fakes_module
    strictcbor = strictcbor_module


_state: dict[str, object] = {}


def _setup() -> None:
    if _state:
        return
    _imports()
    example = crypto.load_public_key((TESTS / "vectors" / "example-key-public.pem").read_bytes())
    _state["anchors"] = TrustAnchors.of(example, fakes.TEST_KEY)
    _state["hmac_anchors"] = fakes.TEST_ANCHORS


def wrap_manifest(manifest_bytes: bytes) -> bytes:
    """An envelope around ``manifest_bytes`` with its digest and a valid HMAC (TEST_KEY)."""
    _setup()
    digest = codec.member_digest(manifest_bytes)
    digest_bytes = cbor.encode([digest.algorithm, digest.value])
    block = cose.sign_detached(fakes.TEST_KEY, digest_bytes)
    return cbor.encode({2: cbor.encode([digest_bytes, block]), 3: manifest_bytes})


def _device() -> object:
    components = {(b"\x00",): fakes.MemoryComponent(b"old image"),
                  (b"\x01",): fakes.MemoryComponent(),
                  (b"\x02",): fakes.MemoryComponent(slot=1)}
    payloads = {"http://example.com/file.bin": fakes.PLAINTEXT,
                "http://example.com/file1.bin": b"\x01" * 64,
                "http://example.com/file2.bin": b"\x02" * 64}
    return fakes.rig(components, payloads=payloads, anchors=fakes.TEST_ANCHORS)


def one_input(mode: str, data: bytes) -> None:
    """The target: returns, or raises ``SuitError``, for every input; anything else is a bug."""
    _setup()
    if mode == "fastpath":
        if data:
            strictcbor.check_contract(data[1:], data[0] % 20)
        return
    if mode == "decode":
        with suppress(SuitError):
            codec.decode_envelope(data)
        with suppress(SuitError):
            verify_envelope(data, _state["anchors"])
        with suppress(SuitError):
            report.decode_report(data)
        return
    try:
        verified = verify_envelope(wrap_manifest(data), _state["hmac_anchors"])
    except SuitError:
        return
    if mode == "verify":
        return
    for procedure in PROCEDURES:
        rig = _device()
        result = process(verified, procedure, rig.device)
        for component in rig.store.components.values():
            if component.overflows:
                raise AssertionError(f"{procedure}: a write went past the processor's bound")
        encoded = report.encode_report(result.report)
        report.decode_report(encoded)


def write_seeds(mode: str, folder: Path) -> int:
    """Seed inputs from the spec's vectors: envelopes (decode), their manifests, or (fastpath)
    the depth limit 16 followed by each vector and each CBOR item nested in one."""
    _setup()
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    if mode == "fastpath":
        for path in sorted((TESTS / "vectors").glob("*.hex")):
            data = bytes.fromhex(path.read_text().strip())
            items = [data]
            with suppress(SuitError):
                items += strictcbor.nested_items(cbor.decode(data, path="seed", max_depth=64))
            for i, item in enumerate(items):
                (folder / f"{path.stem}-{i}").write_bytes(b"\x10" + item)
                count += 1
        return count
    for path in sorted((TESTS / "vectors").glob("*.hex")):
        data = bytes.fromhex(path.read_text().strip())
        if mode != "decode":
            try:
                data = codec.decode_envelope_parts(data).manifest_bytes
            except SuitError:
                continue
        (folder / path.stem).write_bytes(data)
        count += 1
    return count


def main(argv: list[str]) -> None:
    mode = os.environ.get("FUZZ_MODE", "decode")
    rest = [argv[0]]
    seeds: Path | None = None
    args = iter(argv[1:])
    for arg in args:
        if arg.startswith("--mode="):
            mode = arg.removeprefix("--mode=")
        elif arg == "--seeds":
            seeds = Path(next(args))
        else:
            rest.append(arg)
    if mode not in MODES:
        raise SystemExit(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    if seeds is not None:
        print(f"{write_seeds(mode, seeds)} seeds written to {seeds}")
        return

    import atheris  # the optional extra: pip install -e '.[fuzz]'

    # The C code is not instrumented (that needs clang -fsanitize=fuzzer-no-link); in fastpath
    # mode the contract check's branches on the decoded item's shape guide the search instead.
    with atheris.instrument_imports(include=["suitkit", "core.strictcbor_kit"]):
        _imports()
    if mode == "fastpath" and cbor.FAST is None:
        raise SystemExit("--mode=fastpath needs the extension: pip install -e . (gcc and the "
                         "Python headers), and SUITKIT_NO_EXTENSION unset")
    sys.setrecursionlimit(10_000)
    atheris.Setup(rest, lambda data: one_input(mode, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
