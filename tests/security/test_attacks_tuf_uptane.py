"""The TUF and Uptane attack lists, mounted against a suitkit device, one test per attack.

TUF (theupdateframework.io "Attacks") and Uptane (Design §"Threat model", deployment best
practices) name attacks on update systems: arbitrary software, rollback, indefinite freeze,
fast-forward, mix-and-match, endless data, slow retrieval, partial bundles; the issue adds wrong
precursors, algorithm substitution, signature stripping, severed-member substitution and CBOR
encoding tricks. A compromised firmware server and the network are the attacker here
(``security.hostile`` over real HTTP and CoAP on loopback); keys are the device's trust anchors.

As in test_threats_rfc9124.py, each test checks the refusal the status tracker receives, that
the device runs what it ran, and that the next valid update still goes through (Uptane's test
plan: "after a rejected attack the ECU must still accept a valid update").
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cbor2
import pytest

from device.device_kit import (
    boot,
    confirm,
    counters,
    image_bytes,
    install,
    new_device,
    running,
)
from security.hostile import HostileCoap, HostileHttp
from security.kit import (
    SHARED,
    Author,
    Baseline,
    Symptom,
    assert_refused,
    assert_still_updates,
    fetcher,
    sha256,
    sign_raw_manifest,
)
from suitkit.bootloader.api import stage_set
from suitkit.core import codec
from suitkit.core.numbers import Command as Cmd
from suitkit.core.numbers import CoseAlg, ManifestKey, ReportReason
from suitkit.core.sign import sign_envelope
from suitkit.device.agent import TrackerError, fetch_envelope
from suitkit.device.consumer import slot_record
from suitkit.device.wiring import open_device

INSTALL = 20
NOW = 1_800_000_000


def detached(author: Author, sequence: int, url: str, image: bytes) -> bytes:
    return author.envelope(sequence, [author.component(f"d-{sequence}.bin", image, uri=url)])


# ---------------------------------------------------------------------- arbitrary software


@pytest.mark.parametrize("how", ["attacker's envelope", "attacker's payload over coap"])
def test_arbitrary_software(tmp_path: Path, author: Author, device: Path,  # noqa: PLR0917
                            http: HostileHttp, coap: HostileCoap, how: str) -> None:
    """A compromised server offers its own firmware: in an envelope of its own (signed with
    its own key), or as the payload behind a genuine envelope's URI."""
    evil = image_bytes("arbitrary", 2000)
    if how == "attacker's envelope":
        attacker = Author.create(tmp_path / "attacker", name="attacker")
        envelope = detached(attacker, 99, http.serve("/evil.bin", evil), evil)
    else:
        envelope = detached(author, 2, coap.serve("/fw/app.bin", evil), image_bytes("real", 2000))
    before = Baseline(device)

    outcome = install(device, envelope, fetcher())

    if how == "attacker's envelope":
        assert_refused(outcome, envelope, "rejected: no authentication block verifies with a "
                                          "trusted key")
        assert http.requests == []  # not one byte of its payload was fetched
        before.assert_unchanged(flash_untouched=True)
    else:
        assert_refused(outcome, envelope, Symptom(INSTALL, Cmd.FETCH,
                                                  ReportReason.OPERATION_FAILED))
        before.assert_unchanged(flash_untouched=False)
    assert_still_updates(author, device, 2)


# -------------------------------------------------------------------------------- rollback


def test_rollback_attack(tmp_path: Path, author: Author) -> None:
    """A two-image device (secure + non-secure) at release 2: the server offers the genuine
    release 1 of one image only. The counter of that image refuses it (THREAT.IMG.EXPIRED for
    the single-image case: test_threats_rfc9124.py::test_threat_img_expired)."""
    folder = new_device(tmp_path / "dev", [author.anchor], "secure-split")
    for sequence in (1, 2):
        envelope = author.envelope(sequence, [
            author.component(f"s{sequence}.bin", image_bytes(f"s{sequence}", 3000), index=0),
            author.component(f"n{sequence}.bin", image_bytes(f"n{sequence}", 4000), index=1)])
        assert install(folder, envelope).installed
        boot(folder)
        assert confirm(folder) == {"secure": sequence, "nonsecure": sequence}
    old = author.envelope(1, [author.component("n1.bin", image_bytes("n1", 4000), index=1)])
    before = Baseline(folder)

    outcome = install(folder, old)

    assert_refused(outcome, old, "rejected: rollback: sequence number 1 is lower than the "
                                 "installed 2 of nonsecure")
    before.assert_unchanged(flash_untouched=True)
    assert_set_still_updates(author, folder, 3)


# ---------------------------------------------------------------------- indefinite freeze


def test_indefinite_freeze(author: Author, device: Path, http: HostileHttp) -> None:
    """The server keeps the device on an old release by serving a manifest that was current
    once: past its use-before, the device refuses it (and the tracker hears why), so a frozen
    server shows up as failures, not as a silently stale fleet."""
    image = image_bytes("frozen", 1500)
    stale = author.envelope(2, [author.component("s.bin", image, uri=http.serve("/s.bin",
                                                                                  image))],
                            top={"use-before": NOW - 3600})
    before = Baseline(device)

    outcome = install(device, stale, fetcher(), clock=lambda: NOW)

    assert_refused(outcome, stale, Symptom(SHARED, Cmd.USE_BEFORE,
                                           ReportReason.CONDITION_FAILED))
    assert http.requests == []
    before.assert_unchanged(flash_untouched=True)
    fresh = author.envelope(2, [author.component("s.bin", image, uri=http.url + "/s.bin")],
                            top={"use-before": NOW + 3600})
    assert install(device, fresh, fetcher(), clock=lambda: NOW).installed
    assert running(boot(device)) == {"app": (2, sha256(image))}
    assert confirm(device) == {"app": 2}


# --------------------------------------------------------------------------- fast-forward


HUGE = 2**64 - 1


@pytest.mark.parametrize("how", ["unauthorized key", "key scoped elsewhere",
                                 "authorized key, bad payload", "authorized key, not confirmed",
                                 "authorized key, beyond the counter"])
def test_fast_forward(tmp_path: Path, author: Author, device: Path, how: str) -> None:
    """A huge sequence number would lock the device out of every later genuine update if the
    counter took it. It must be reached only by a confirmed, authentic update: signed by a key
    that may not sign (or sign for this component), failing to install, or installed but never
    confirmed, it leaves the counter where it was."""
    image = image_bytes("ff", 1000)
    if how == "unauthorized key":
        attacker = Author.create(tmp_path / "attacker", name="attacker")
        envelope = attacker.envelope(HUGE, [attacker.component("ff.bin", image)])
    elif how == "key scoped elsewhere":
        from security.test_threats_rfc9124 import set_anchors
        from suitkit.device.config import load_config

        scoped = Author.create(tmp_path / "scoped", name="scoped")
        config = load_config(device)
        (device / "anchors" / "01-scoped.pub").write_bytes(scoped.anchor.read_bytes())
        set_anchors(device, anchors=(*config.anchors, replace(
            config.anchors[0], file="01-scoped.pub", components=((b"\x01",),))))
        envelope = scoped.envelope(HUGE, [scoped.component("ff.bin", image)])
    else:
        # The counter holds 2048 values per image (bootloader.profiles): "not confirmed" and
        # "bad payload" use the largest it can hold, "beyond the counter" one it cannot.
        sequence = 2048 if how.endswith(("not confirmed", "bad payload")) else HUGE
        envelope = author.envelope(sequence, [author.component("ff.bin", image)],
                                   payloads={"#ff.bin": image_bytes("other", 1000)}
                                   if how.endswith("bad payload") else None)
    before = Baseline(device)

    outcome = install(device, envelope)

    if how == "authorized key, not confirmed":
        assert outcome.installed, outcome.reason
        result = boot(device)
        assert result.trial and running(result)["app"][0] == 2048
        assert counters(device) == {"app": 1}  # the counter moves on confirm only
        result = boot(device)  # not confirmed: reverted
        assert running(result)["app"][0] == 1 and not result.trial
    elif how == "authorized key, beyond the counter":
        # The consumer sees the counter's capacity (Bootloader.counter_capacity) and refuses
        # before staging; the report points at the sequence number (manifest member 2).
        assert_refused(outcome, envelope, Symptom(ManifestKey.SEQUENCE_NUMBER, None,
                                                  ReportReason.OPERATION_FAILED))
        assert outcome.reason == (f"rejected: sequence number {HUGE} exceeds what the security "
                                  "counter of app can hold (2048); the bootloader could never "
                                  "confirm it")
    elif how == "authorized key, bad payload":
        assert_refused(outcome, envelope, Symptom(INSTALL, Cmd.FETCH,
                                                  ReportReason.OPERATION_FAILED))
    else:
        assert_refused(outcome, envelope, "rejected: ")
    assert counters(device) == {"app": 1}
    if how != "authorized key, not confirmed":  # (that one's status says "reverted")
        before.assert_unchanged(flash_untouched=how.endswith(("key", "elsewhere")))
    assert_still_updates(author, device, 2)


# ------------------------------------------------------------------------- mix-and-match


def _two_image_release(author: Author, sequence: int,
                       payloads: dict[str, bytes] | None = None) -> tuple[bytes, list[bytes]]:
    images = [image_bytes(f"r{sequence}-{i}", 3000 + 1000 * i) for i in range(2)]
    names = ("secure", "nonsecure")
    return author.envelope(sequence, [author.component(f"{names[i]}-{sequence}.bin", images[i],
                                                       index=i) for i in range(2)],
                           payloads=payloads), images


def assert_set_still_updates(author: Author, folder: Path, sequence: int) -> None:
    """The next valid two-image release installs, boots on trial and confirms as a set."""
    envelope, images = _two_image_release(author, sequence)
    outcome = install(folder, envelope)
    assert outcome.installed, outcome.reason
    result = boot(folder)
    assert result.trial and running(result) == {"secure": (sequence, sha256(images[0])),
                                                "nonsecure": (sequence, sha256(images[1]))}
    assert confirm(folder) == {"secure": sequence, "nonsecure": sequence}


def test_mix_and_match(tmp_path: Path, author: Author) -> None:
    """Release 3's manifest with the genuine non-secure image of release 2 in place of its
    own: each image is authentic, the combination was never released. The manifest binds each
    component to its digest, so the set is refused and nothing of it is pending."""
    folder = new_device(tmp_path / "dev", [author.anchor], "secure-split")
    for sequence in (1, 2):
        envelope, _ = _two_image_release(author, sequence)
        assert install(folder, envelope).installed
        boot(folder)
        confirm(folder)
    _, images2 = _two_image_release(author, 2)
    mixed, _ = _two_image_release(author, 3, payloads={"#nonsecure-3.bin": images2[1]})
    before = Baseline(folder)

    outcome = install(folder, mixed)

    assert_refused(outcome, mixed, Symptom(INSTALL, Cmd.FETCH, ReportReason.OPERATION_FAILED,
                                           component=1))
    before.assert_unchanged(flash_untouched=False)
    assert_set_still_updates(author, folder, 4)


def test_mix_and_match_staged_behind_the_consumer(tmp_path: Path, author: Author) -> None:
    """Bootloader layer: an attacker with flash access stages the secure image of release 4
    with the non-secure image of release 5 (both manifests address both images)."""
    folder = new_device(tmp_path / "dev", [author.anchor], "secure-split")
    envelope1, _ = _two_image_release(author, 1)
    assert install(folder, envelope1).installed
    boot(folder)
    confirm(folder)
    e4, i4 = _two_image_release(author, 4)
    e5, i5 = _two_image_release(author, 5)
    opened = open_device(folder)
    stage_set(opened.bootloader, {
        "secure": (slot_record((b"\x00",), codec.decode_envelope(e4)), i4[0]),
        "nonsecure": (slot_record((b"\x01",), codec.decode_envelope(e5)), i5[1])})
    opened.save()

    result = boot(folder)

    assert running(result) == {"secure": (1, sha256(image_bytes("r1-0", 3000))),
                               "nonsecure": (1, sha256(image_bytes("r1-1", 4000)))}


# ------------------------------------------------------------------------------ endless data


@pytest.mark.parametrize("how", ["http chunked", "http headers", "coap blocks"])
def test_endless_data(author: Author, device: Path, http: HostileHttp, coap: HostileCoap,
                      how: str) -> None:
    """A server that never stops sending (no length announced): the device stops reading at
    image-size and refuses; what the server managed to push stays bounded."""
    image = image_bytes("endless", 5000)
    url = {"http chunked": lambda: http.endless("/e.bin"),
           "http headers": lambda: http.endless_headers("/e.bin"),
           "coap blocks": lambda: coap.endless("/fw/e.bin")}[how]()
    envelope = detached(author, 2, url, image)
    before = Baseline(device)

    outcome = install(device, envelope, fetcher())

    assert_refused(outcome, envelope, Symptom(INSTALL, Cmd.FETCH,
                                              ReportReason.OPERATION_FAILED))
    if how == "http headers":  # the HTTP parser's header bound, then bounded retries
        assert "RemoteProtocolError after 2 attempts at byte 0" in outcome.reason, outcome.reason
    else:
        assert "more than the 5000 bytes the manifest allows (image-size)" in outcome.reason
    if how.startswith("coap"):
        assert [n for _, n in coap.requests] == list(range(5))  # 1 KiB blocks 0-4, then stop
    before.assert_unchanged(flash_untouched=False)
    assert_still_updates(author, device, 2)


# ---------------------------------------------------------------------------- slow retrieval


@pytest.mark.parametrize("how", ["http trickle", "coap silent", "coap trickle"])
def test_slow_retrieval(author: Author, device: Path, http: HostileHttp, coap: HostileCoap,
                        how: str) -> None:
    """A server that answers too slowly to ever finish: the fetch deadline ends the download
    (here 0.8 s; the agent's default is minutes) and the update fails cleanly."""
    image = image_bytes("slow", 4000)
    url = {"http trickle": lambda: http.trickle("/slow.bin", image, 0.02),
           "coap silent": lambda: coap.silent("/fw/slow.bin"),
           "coap trickle": lambda: coap.trickle("/fw/slow.bin", image, 0.3)}[how]()
    envelope = detached(author, 2, url, image)
    before = Baseline(device)

    outcome = install(device, envelope, fetcher(deadline=0.8))

    assert_refused(outcome, envelope, Symptom(INSTALL, Cmd.FETCH,
                                              ReportReason.OPERATION_FAILED))
    assert ("download took longer than 0.8 s" in outcome.reason
            or "no answer for block 0" in outcome.reason), outcome.reason
    if how == "http trickle":
        assert 0 < http.sent["/slow.bin"] < len(image)
    before.assert_unchanged(flash_untouched=False)
    assert_still_updates(author, device, 2)


# ---------------------------------------------------------------------------- partial bundle


@pytest.mark.parametrize("how", ["truncated envelope", "integrated payload missing",
                                 "severed install not delivered", "one image of two missing"])
def test_partial_bundle(tmp_path: Path, author: Author, how: str) -> None:
    """Part of an update is delivered: the device refuses it as a whole."""
    shape = "secure-split" if how == "one image of two missing" else "mcu"
    folder = new_device(tmp_path / "dev", [author.anchor], shape)
    if shape == "mcu":
        first = author.release(1)[0]
    else:
        first, _ = _two_image_release(author, 1)
    assert install(folder, first).installed
    boot(folder)
    confirm(folder)
    image = image_bytes("partial", 2000)
    full = author.envelope(2, [author.component("p.bin", image)],
                           top={"sever": ["install"]} if how.startswith("severed") else None)
    decoded = codec.decode_envelope(full)
    if how == "truncated envelope":
        envelope = full[: len(full) // 2]
        expected: Symptom | str = "rejected: "
    elif how == "integrated payload missing":
        envelope = codec.encode_envelope(replace(decoded, integrated={}))  # type: ignore[arg-type]
        expected = Symptom(INSTALL, Cmd.FETCH, ReportReason.OPERATION_FAILED)
    elif how.startswith("severed"):
        envelope = codec.encode_envelope(codec.sever(decoded, frozenset({ManifestKey.INSTALL})))
        expected = "failed: "
    else:
        envelope, _ = _two_image_release(author, 2)
        decoded = codec.decode_envelope(envelope)
        envelope = codec.encode_envelope(replace(decoded, integrated={  # type: ignore[arg-type]
            k: v for k, v in decoded.integrated.items() if "nonsecure" not in k}))
        expected = Symptom(INSTALL, Cmd.FETCH, ReportReason.OPERATION_FAILED, component=1)
    before = Baseline(folder)

    outcome = install(folder, envelope)

    if isinstance(expected, str) and expected == "failed: ":
        assert not outcome.installed
        assert outcome.reason.startswith("failed: "), outcome.reason
        assert "install" in outcome.reason, outcome.reason
    else:
        assert_refused(outcome, envelope, expected)
    before.assert_unchanged(flash_untouched=how == "truncated envelope")
    assert not open_device(folder).bootloader.pending_update()
    if shape == "mcu":
        assert_still_updates(author, folder, 2)
    else:
        assert_set_still_updates(author, folder, 2)


# -------------------------------------------------------------- algorithm substitution


def test_algorithm_substitution(author: Author, device: Path) -> None:
    """The manifest names a digest algorithm the device's trust anchors do not allow (SHA-512
    where SHA-256 is the policy): refused before anything else, although the signature over it
    is valid. Signature algorithms pinned by the anchor file:
    tests/device/test_device_threats.py::test_algorithm_substitution_rejected."""
    genuine = codec.decode_envelope(author.release(2)[0])
    envelope = sign_raw_manifest(genuine.manifest_bytes, author.key.signer(),
                                 algorithm=CoseAlg.SHA512)
    before = Baseline(device)

    outcome = install(device, envelope)

    assert_refused(outcome, envelope, "rejected: manifest digest algorithm SHA512 is not "
                                      "accepted")
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


# ------------------------------------------------------------------- signature stripping


@pytest.mark.parametrize("how", ["every block", "the operator's block"])
def test_signature_stripping(tmp_path: Path, author: Author, how: str) -> None:
    operator = Author.create(tmp_path / "operator", name="operator")
    folder = new_device(tmp_path / "dev", [("author", author.anchor),  # type: ignore[list-item]
                                           ("operator", operator.anchor)])
    from security.test_threats_rfc9124 import set_anchors

    set_anchors(folder, required_roles=("author", "operator"))

    def both(sequence: int, tag: str) -> bytes:
        signed = codec.decode_envelope(author.envelope(sequence, [author.component(
            f"{tag}.bin", image_bytes(tag, 1200))]))
        return codec.encode_envelope(sign_envelope(signed, operator.key.signer()))

    assert install(folder, both(1, "one")).installed
    boot(folder)
    confirm(folder)
    signed = codec.decode_envelope(both(2, "two"))
    blocks = () if how == "every block" else signed.authentication.blocks[:1]
    stripped = codec.encode_envelope(replace(signed, authentication=replace(
        signed.authentication, blocks=blocks)))
    before = Baseline(folder)

    outcome = install(folder, stripped)

    assert_refused(outcome, stripped,
                   "rejected: the envelope carries no authentication block (unsigned)"
                   if how == "every block" else
                   "rejected: missing a valid signature from: operator (signed by: author)")
    before.assert_unchanged(flash_untouched=True)
    assert install(folder, both(3, "three")).installed
    assert running(boot(folder))["app"][0] == 3


# ----------------------------------------------------------- severed-member substitution


def test_severed_member_substitution(author: Author, device: Path) -> None:
    """The install sequence travels severed (only its digest is signed); the server swaps in
    the install sequence of another genuine manifest, which would fetch other firmware."""
    mine = codec.decode_envelope(author.envelope(2, [author.component(
        "a.bin", image_bytes("a", 1000))], top={"sever": ["install"]}))
    other = codec.decode_envelope(author.envelope(2, [author.component(
        "b.bin", image_bytes("b", 1000))], top={"sever": ["install"]}))
    swapped = replace(mine, severable={**mine.severable,  # type: ignore[arg-type]
                                       ManifestKey.INSTALL: other.severable[ManifestKey.INSTALL]},
                      integrated=other.integrated)
    envelope = codec.encode_envelope(swapped)
    before = Baseline(device)

    outcome = install(device, envelope)

    assert_refused(outcome, envelope, "rejected: ")
    assert "install" in outcome.reason and "digest" in outcome.reason, outcome.reason
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


# ------------------------------------------------------------- duplicate keys, CBOR tricks


def _with_duplicate(map_bytes: bytes, key: int, value: object) -> bytes:
    """A CBOR map (small, definite length) with one more entry whose key it already has."""
    head = map_bytes[0]
    assert 0xA1 <= head < 0xB7, "a map of fewer than 23 entries"
    return bytes([head + 1]) + map_bytes[1:] + cbor2.dumps(key) + cbor2.dumps(value)


@pytest.mark.parametrize("where", ["envelope: second manifest", "signed manifest: second "
                                   "sequence number", "envelope: second install member",
                                   "COSE header: second kid"])
def test_duplicate_map_keys(author: Author, device: Path, where: str) -> None:
    """A duplicate key lets two parsers see two different documents (the last value wins in
    one, the first in another). Refused wherever it appears, even inside signed bytes."""
    genuine = author.release(2)[0]
    body = cbor2.loads(genuine).value
    raw = cbor2.dumps(body)
    other_manifest = codec.decode_envelope(author.release(9)[0]).manifest_bytes
    if where.startswith("envelope: second manifest"):
        envelope = b"\xd8\x6b" + _with_duplicate(raw, 3, other_manifest)
    elif where.startswith("signed"):
        manifest = body[3]
        envelope = sign_raw_manifest(_with_duplicate(manifest, 2, 2**40), author.key.signer())
    elif where.startswith("COSE"):
        wrapper = cbor2.loads(body[2])
        block = cbor2.loads(wrapper[1])  # COSE_Sign1: [protected, unprotected, nil, signature]
        protected, _, _, signature = block.value
        unprotected = b"\xa2" + cbor2.dumps(4) + cbor2.dumps(b"a") + cbor2.dumps(4) + \
            cbor2.dumps(b"b")
        raw_block = (b"\xd2\x84" + cbor2.dumps(protected) + unprotected + b"\xf6"
                     + cbor2.dumps(signature))
        envelope = cbor2.dumps(cbor2.CBORTag(107, {**body, 2: cbor2.dumps(
            [wrapper[0], raw_block])}))
    else:
        severed = cbor2.loads(author.envelope(2, [author.component("s.bin", b"s" * 500)],
                                              top={"sever": ["install"]})).value
        envelope = b"\xd8\x6b" + _with_duplicate(cbor2.dumps(severed), 20, b"\x80")
    before = Baseline(device)

    outcome = install(device, envelope)

    assert_refused(outcome, envelope, "rejected: ")
    assert "duplicate map key" in outcome.reason.lower(), outcome.reason
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


@pytest.mark.parametrize("trick", ["non-preferred integer key", "indefinite-length map",
                                   "trailing bytes", "re-encoded digest in the wrapper"])
def test_non_canonical_cbor(author: Author, device: Path, trick: str) -> None:
    """The same envelope, encoded differently: every alternative encoding is refused, so the
    bytes that were signed are the only bytes a device accepts."""
    genuine = author.release(2)[0]
    body = cbor2.loads(genuine).value
    raw = cbor2.dumps(body)
    if trick == "non-preferred integer key":
        # key 3 as 0x18 0x03 (one extra byte) instead of 0x03
        entries = b"".join(b"\x18\x03" + cbor2.dumps(v) if k == 3 else
                           cbor2.dumps(k) + cbor2.dumps(v) for k, v in body.items())
        envelope = b"\xd8\x6b" + raw[:1] + entries
    elif trick == "indefinite-length map":
        envelope = b"\xd8\x6b\xbf" + raw[1:] + b"\xff"
    elif trick == "trailing bytes":
        envelope = genuine + b"\x00"
    else:
        wrapper = cbor2.loads(body[2])
        algorithm, value = cbor2.loads(wrapper[0])
        longer = b"\x82" + b"\x38" + bytes([-1 - algorithm]) + cbor2.dumps(value)
        assert cbor2.loads(longer) == [algorithm, value] and longer != wrapper[0]
        envelope = cbor2.dumps(cbor2.CBORTag(107, {**body, 2: cbor2.dumps(
            [longer, *wrapper[1:]])}))
    assert envelope != genuine
    before = Baseline(device)

    outcome = install(device, envelope)

    assert_refused(outcome, envelope, "rejected: ")
    before.assert_unchanged(flash_untouched=True)
    assert install(device, genuine).installed  # the canonical bytes are fine
    assert running(boot(device))["app"][0] == 2


def test_mix_and_match_dependency() -> None:
    """Processor layer (the device's consumer has no dependency manifests): a dependent binds
    its dependency by manifest digest; the server hands over another genuine, validly signed
    dependency (release B where the dependent names release A). dependency-integrity fails,
    the dependency is never processed, and its image is never written."""
    from core.processor_fakes import (
        TEST_ANCHORS,
        MemoryComponent,
        envelope_bytes,
        index,
        manifest,
        override,
        rig,
        seq,
        verified,
    )
    from core.processor_fakes import c as command

    def dependency(content: bytes) -> bytes:
        return envelope_bytes(manifest(((b"dep-image",),), install=seq(
            override(content=content), command(Cmd.WRITE))))

    release_a, release_b = dependency(b"dependency A"), dependency(b"dependency B")
    digest_a = codec.decode_envelope(release_a).authentication.digest
    dependent = verified(manifest(((b"\x00",),), dependencies={1: (b"dep.suit",)}, install=seq(
        index(1), override(uri="http://server/dep.suit", image_digest=digest_a),
        command(Cmd.FETCH), command(Cmd.DEPENDENCY_INTEGRITY),
        command(Cmd.PROCESS_DEPENDENCY, 0))))

    def device(served: bytes) -> object:
        return rig({(b"\x00",): MemoryComponent(), (b"dep.suit",): MemoryComponent(),
                    (b"dep-image",): MemoryComponent()},
                   payloads={"http://server/dep.suit": served}, anchors=TEST_ANCHORS)

    attacked = device(release_b)
    result = attacked.run(dependent)  # type: ignore[attr-defined]

    assert not result.succeeded
    assert result.reason.startswith("install[3] condition-dependency-integrity"), result.reason
    failure = result.report.result
    assert failure is not True and failure.reason == ReportReason.UNAUTHORISED
    assert (failure.record.manifest_section, failure.record.component_index) == (INSTALL, 1)
    assert attacked[(b"dep-image",)].untouched  # type: ignore[index]
    honest = device(release_a)
    assert honest.run(dependent).succeeded  # type: ignore[attr-defined]
    assert honest[(b"dep-image",)].content == b"dependency A"  # type: ignore[index]


def test_slow_retrieval_of_the_envelope(http: HostileHttp) -> None:
    """The agent's envelope download has a deadline for the whole transfer, not only per read:
    a server that trickles the envelope byte by byte is cut off."""
    url = http.trickle("/slow.suit", b"\xa2" * 400, 0.02)

    with pytest.raises(TrackerError, match=r"download took longer than 0\.5 s"):
        fetch_envelope(url, 10_000, deadline=0.5)
    assert 0 < http.sent["/slow.suit"] < 400
