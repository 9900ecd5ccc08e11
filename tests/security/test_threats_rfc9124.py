"""RFC 9124 §4.2 threats (suit-spec.md §15.2), one test per THREAT.*, named after it.

Each test mounts the attack against a real device (tests/device/device_kit: consumer, wiring,
bootloader on simulated flash), delivering payloads through the hostile servers of
``security.hostile`` over real HTTP or CoAP on loopback where the threat is on the network, and
checks three things: the precise refusal the status tracker receives (the SUIT report's failing
section, command and reason, or the reason line of a refusal before processing); that the
device still runs what it ran (``Baseline``: status, counters, boot result); and that it still
installs, boots and confirms the next valid update (``assert_still_updates``).

Lower-level tests of the same mitigations (processor, fetchers, review regressions) are listed
next to each row of docs/security.md; they are not repeated here.
"""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import pytest

from core.processor_fakes import c, envelope_bytes, manifest, override, seq
from device.device_kit import boot, confirm, counters, image_bytes, install, running
from device.test_device_threats import corrupt, slot_address
from security.hostile import HostileCoap, HostileHttp
from security.kit import (
    CLASS,
    SHARED,
    VENDOR,
    Author,
    Baseline,
    Symptom,
    assert_refused,
    assert_still_updates,
    fetcher,
    running_device,
    sha256,
)
from suitkit.bootloader.api import stage_set
from suitkit.core import codec, cose, crypto
from suitkit.core.model import Digest
from suitkit.core.numbers import Command as Cmd
from suitkit.core.numbers import CoseAlg, ManifestKey, ReportReason
from suitkit.core.sign import sign_envelope
from suitkit.device.config import CONFIG, load_config
from suitkit.device.consumer import slot_record
from suitkit.device.wiring import open_device
from suitkit.errors import AuthenticationError
from suitkit.fileio import atomic_write

NOW = 1_800_000_000
INSTALL = 20
COMPATIBILITY = (override(vendor_identifier=VENDOR, class_identifier=CLASS),
                 c(Cmd.VENDOR_IDENTIFIER), c(Cmd.CLASS_IDENTIFIER))


def detached(author: Author, sequence: int, url: str, image: bytes, name: str = "") -> bytes:
    """A signed one-image release whose payload the device fetches from ``url``."""
    return author.envelope(sequence, [author.component(name or f"d-{sequence}.bin", image,
                                                       uri=url)])


def digest_of(image: bytes) -> Digest:
    return Digest(CoseAlg.SHA256, sha256(image))


# ------------------------------------------------------------ THREAT.IMG.EXPIRED (§4.2.1)


def test_threat_img_expired(author: Author, device: Path, http: HostileHttp) -> None:
    """An old, validly signed release replayed by the server: refused before any download,
    and a staged copy is refused by the bootloader's security counter too."""
    old_image = image_bytes("old", 2000)
    old = detached(author, 1, http.serve("/old.bin", old_image), old_image)
    assert install(device, author.release(2)[0]).installed
    boot(device)
    assert confirm(device) == {"app": 2}
    before = Baseline(device)

    outcome = install(device, old, fetcher())

    assert_refused(outcome, old, "rejected: rollback: sequence number 1 is lower than the "
                                 "installed 2 of app")
    assert http.requests == []  # refused before a byte was fetched
    before.assert_unchanged(flash_untouched=True)

    # Bootloader layer: staged behind the consumer's back, the counter still refuses it.
    opened = open_device(device)
    stage_set(opened.bootloader, {"app": (slot_record((b"\x00",), codec.decode_envelope(old)),
                                          old_image)})
    opened.save()
    result = boot(device)
    assert running(result)["app"][0] == 2 and not result.trial
    assert any("sequence number 1 is below the security counter 2" in n for n in result.notes)
    assert_still_updates(author, device, 3)


# ---------------------------------------------------- THREAT.IMG.EXPIRED.OFFLINE (§4.2.2)


@pytest.mark.parametrize("clock", ["trusted clock past use-before", "no trusted clock"])
def test_threat_img_expired_offline(author: Author, device: Path, clock: str) -> None:
    before = Baseline(device)
    envelope = author.envelope(2, [author.component("late.bin", image_bytes("late", 900))],
                               top={"use-before": NOW - 1})

    if clock == "no trusted clock":  # a device without a clock cannot tell: it refuses
        opened = open_device(device)
        outcome = replace(opened.consumer(), clock=None).install(envelope)
        opened.save()
    else:
        outcome = install(device, envelope, clock=lambda: NOW)

    assert_refused(outcome, envelope, Symptom(SHARED, Cmd.USE_BEFORE,
                                              ReportReason.CONDITION_FAILED))
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


# -------------------------------------------------------- THREAT.IMG.INCOMPATIBLE (§4.2.3)


@pytest.mark.parametrize(("top", "command"), [
    ({"vendor-domain": "other.example"}, Cmd.VENDOR_IDENTIFIER),
    ({"class-name": "toaster"}, Cmd.CLASS_IDENTIFIER),
])
def test_threat_img_incompatible(author: Author, device: Path, http: HostileHttp,
                                 top: dict[str, str], command: int) -> None:
    before = Baseline(device)
    image = image_bytes("other device", 1500)
    envelope = author.envelope(2, [author.component("o.bin", image,
                                                    uri=http.serve("/o.bin", image))], top=top)

    outcome = install(device, envelope, fetcher())

    assert_refused(outcome, envelope, Symptom(SHARED, command, ReportReason.CONDITION_FAILED))
    assert http.requests == []  # the compatibility check comes before the download
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


# ------------------------------------------------------------- THREAT.IMG.FORMAT (§4.2.4)


@pytest.mark.parametrize("how", ["re-encoded payload", "content-encoding"])
def test_threat_img_format(author: Author, device: Path, http: HostileHttp, how: str) -> None:
    """The signed digest and size describe the bytes in the format the device runs: the same
    image in another format (compressed) is refused, whether served as the body or as an
    HTTP Content-Encoding the device did not ask for."""
    image = b"a firmware image that compresses well " * 80
    packed = gzip.compress(image)
    assert len(packed) < len(image)
    url = (http.serve("/f.bin", packed) if how == "re-encoded payload"
           else http.encoded("/f.bin", packed, "gzip"))
    envelope = detached(author, 2, url, image)
    before = Baseline(device)

    outcome = install(device, envelope, fetcher())

    assert_refused(outcome, envelope, Symptom(INSTALL, Cmd.FETCH,
                                              ReportReason.OPERATION_FAILED))
    said = ("is 77 bytes, expected image-size 3040" if how == "re-encoded payload"
            else "the server sent Content-Encoding 'gzip'; only identity is accepted")
    assert said in outcome.reason
    before.assert_unchanged(flash_untouched=False)
    assert_still_updates(author, device, 2)


# ----------------------------------------------------------- THREAT.IMG.LOCATION (§4.2.5)


def test_threat_img_location(author: Author, device: Path) -> None:
    """An image for a component the device does not have (another storage location)."""
    before = Baseline(device)
    envelope = author.envelope(2, [author.component("x.bin", b"x" * 1000, index=7)])

    outcome = install(device, envelope)

    assert_refused(outcome, envelope, Symptom(SHARED, None,
                                              ReportReason.COMPONENT_UNSUPPORTED))
    assert "[h'07'] does not exist on this device" in outcome.reason
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


# ----------------------------------------------------------- THREAT.NET.REDIRECT (§4.2.6)


@pytest.mark.parametrize("how", ["http 302", "http other firmware", "coap other firmware"])
def test_threat_net_redirect(author: Author, device: Path, http: HostileHttp,
                             coap: HostileCoap, how: str) -> None:
    """The device fetches only the URI in the signed manifest: an HTTP redirect is not
    followed, and whatever the location serves must match the signed digest."""
    image = image_bytes("genuine", 2500)
    foreign = image_bytes("attacker's firmware", 2500)
    http.serve("/evil.bin", foreign)
    if how == "http 302":
        url = http.redirect("/fw.bin", http.url + "/evil.bin")
    elif how == "http other firmware":
        url = http.serve("/fw.bin", foreign)
    else:
        url = coap.serve("/fw/app.bin", foreign)
    envelope = detached(author, 2, url, image)
    before = Baseline(device)

    outcome = install(device, envelope, fetcher())

    assert_refused(outcome, envelope, Symptom(INSTALL, Cmd.FETCH,
                                              ReportReason.OPERATION_FAILED))
    assert ("HTTP 302" in outcome.reason if how == "http 302"
            else "does not match expected" in outcome.reason), outcome.reason
    assert [p for p, _ in http.requests] == ([] if how.startswith("coap") else ["/fw.bin"])
    before.assert_unchanged(flash_untouched=False)
    assert_still_updates(author, device, 2)


# ------------------------------------------------------------- THREAT.NET.ONPATH (§4.2.7)


@pytest.mark.parametrize("where", ["manifest", "payload over http", "payload over coap"])
def test_threat_net_onpath(author: Author, device: Path, http: HostileHttp, coap: HostileCoap,
                           where: str) -> None:
    image = image_bytes("onpath", 3000)
    tampered = bytearray(image)
    tampered[1500] ^= 0x40
    url = (coap.serve("/fw/app.bin", bytes(tampered)) if where.endswith("coap")
           else http.serve("/app.bin", bytes(tampered) if where.endswith("http") else image))
    envelope = detached(author, 2, url, image)
    if where == "manifest":  # one bit of the signed manifest (the sequence number's byte)
        manifest = codec.decode_envelope_parts(envelope).manifest_bytes
        assert manifest[1:5] == bytes.fromhex("01010202")  # {1: 1, 2: 2, ...}
        wire = bytearray(envelope)
        wire[envelope.index(manifest) + 4] ^= 0x01
        envelope = bytes(wire)
    before = Baseline(device)

    outcome = install(device, envelope, fetcher())

    if where == "manifest":
        assert_refused(outcome, envelope, "rejected: manifest digest mismatch")
        assert http.requests == []
    else:
        assert_refused(outcome, envelope, Symptom(INSTALL, Cmd.FETCH,
                                                  ReportReason.OPERATION_FAILED))
    before.assert_unchanged(flash_untouched=where == "manifest")
    assert_still_updates(author, device, 2)


# ------------------------------------------------------------ THREAT.IMG.REPLACE (§4.2.8)


def test_threat_img_replace(author: Author, device: Path, http: HostileHttp) -> None:
    """After the update was verified and staged, the staged image is replaced in flash by
    another authentic image of the same size: the bootloader re-checks digest and size at
    boot and does not run it."""
    image2 = image_bytes("v2", 2000)
    envelope2 = detached(author, 2, http.serve("/v2.bin", image2), image2)
    assert install(device, envelope2, fetcher()).installed
    flash, image_at, _ = slot_address(device, "secondary")
    corrupt(device, flash, image_at, image_bytes("app-1-", 2000))  # release 1's genuine image

    result = boot(device)

    assert running(result)["app"][0] == 1 and not result.trial
    assert any("image digest" in note and "does not match the manifest's "
               f"{sha256(image2).hex()}" in note for note in result.notes), result.notes
    assert counters(device) == {"app": 1}
    assert_still_updates(author, device, 2)


# ----------------------------------------------------------- THREAT.IMG.NON_AUTH (§4.2.9)


@pytest.mark.parametrize("how", ["unsigned", "stranger's key", "signature of another manifest"])
def test_threat_img_non_auth(tmp_path: Path, author: Author, device: Path, how: str) -> None:
    before = Baseline(device)
    component = [author.component("n.bin", image_bytes("non-auth", 900))]
    if how == "unsigned":
        envelope = author.envelope(2, component, signer=None)
        expected = "rejected: the envelope carries no authentication block (unsigned)"
    elif how == "stranger's key":
        stranger = Author.create(tmp_path / "stranger", name="stranger")
        envelope = stranger.envelope(2, [stranger.component("n.bin", b"n" * 900)])
        expected = "rejected: no authentication block verifies with a trusted key"
    else:
        mine = codec.decode_envelope(author.envelope(2, component))
        other = codec.decode_envelope(author.release(3)[0])
        envelope = codec.encode_envelope(replace(mine, authentication=replace(
            mine.authentication, blocks=other.authentication.blocks)))
        expected = "rejected: no authentication block verifies with a trusted key"

    outcome = install(device, envelope)

    assert_refused(outcome, envelope, expected)
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


# ----------------------------------------------------- THREAT.UPD.WRONG_PRECURSOR (§4.2.10)


def test_threat_upd_wrong_precursor(author: Author, device: Path, http: HostileHttp) -> None:
    """A differential update names the digest of the image it applies to (its precursor); the
    install sequence checks the running image against it before fetching anything. The device
    runs another image than the one the delta was made for: refused, nothing fetched."""
    precursor = image_bytes("the image the delta was computed against", 2000)
    new = image_bytes("v2 rebuilt from the delta", 2000)
    url = http.serve("/delta.bin", new)
    m = manifest(
        sequence_number=2,
        shared=seq(*COMPATIBILITY, override(image_digest=digest_of(new), image_size=len(new))),
        install=seq(override(image_digest=digest_of(precursor), image_size=len(precursor)),
                    c(Cmd.IMAGE_MATCH),
                    override(image_digest=digest_of(new), image_size=len(new), uri=url),
                    c(Cmd.FETCH), c(Cmd.IMAGE_MATCH)))
    envelope = envelope_bytes(m, signer=author.key.signer())
    before = Baseline(device)

    outcome = install(device, envelope, fetcher())

    assert_refused(outcome, envelope, Symptom(INSTALL, Cmd.IMAGE_MATCH,
                                              ReportReason.CONDITION_FAILED))
    assert http.requests == []
    before.assert_unchanged(flash_untouched=True)

    # The same delta for the image the device does run is accepted.
    running_image = image_bytes("app-1-", 2000)
    good = envelope_bytes(manifest(
        sequence_number=2,
        shared=m.common.shared_sequence,
        install=seq(override(image_digest=digest_of(running_image),
                             image_size=len(running_image)),
                    c(Cmd.IMAGE_MATCH),
                    override(image_digest=digest_of(new), image_size=len(new), uri=url),
                    c(Cmd.FETCH), c(Cmd.IMAGE_MATCH))), signer=author.key.signer())
    assert install(device, good, fetcher()).installed
    assert running(boot(device)) == {"app": (2, sha256(new))}
    assert confirm(device) == {"app": 2}
    assert_still_updates(author, device, 3)


# --------------------------------------------------------- THREAT.UPD.UNAPPROVED (§4.2.11)


def set_anchors(folder: Path, **changes: object) -> None:
    """Edit the device's anchor policy in device.json (what provisioning would do)."""
    config = replace(load_config(folder), **changes)  # type: ignore[arg-type]
    atomic_write(folder / CONFIG, config.to_json())


@pytest.mark.parametrize("how", ["signer out of its scope", "required role missing"])
def test_threat_upd_unapproved(tmp_path: Path, author: Author, how: str) -> None:
    """RFC 9019 §3.9: who may update what. A key scoped to another component signs an update
    of [h'00']; or the operator, whose signature the device requires, did not sign."""
    operator = Author.create(tmp_path / "operator", name="operator")
    folder = tmp_path / "dev"
    from device.device_kit import new_device

    new_device(folder, [author.anchor])
    config = load_config(folder)
    (folder / "anchors" / "01-operator.pub").write_bytes(operator.anchor.read_bytes())
    specs = (replace(config.anchors[0], role="author"),
             replace(config.anchors[0], file="01-operator.pub", role="operator"))
    if how == "signer out of its scope":
        set_anchors(folder, anchors=(replace(specs[0], components=((b"\x01",),)), specs[1]))
        attack = author.envelope(1, [author.component("a.bin", b"a" * 700)])
        expected = "rejected: "
    else:
        set_anchors(folder, anchors=specs, required_roles=("author", "operator"))
        attack = author.envelope(1, [author.component("a.bin", b"a" * 700)])
        expected = "rejected: "

    outcome = install(folder, attack)

    assert_refused(outcome, attack, expected)
    assert outcome.reason == (
        "rejected: signer of role 'author' (00-author-author.pub) may not update component "
        "[h'00']; its scope is [h'01']"
        if how == "signer out of its scope" else
        "rejected: missing a valid signature from: operator (signed by: author)"), outcome.reason
    assert counters(folder) == {"app": 0}
    # Approved: the policy satisfied (in scope / both signatures).
    if how == "signer out of its scope":
        set_anchors(folder, anchors=(specs[0], specs[1]))
        good = author.envelope(1, [author.component("ok.bin", b"k" * 700)])
    else:
        good = author.envelope(1, [author.component("ok.bin", b"k" * 700)],
                               signer=author.key.signer())
        good = codec.encode_envelope(sign_envelope(codec.decode_envelope(good),
                                                   operator.key.signer()))
    assert install(folder, good).installed
    assert running(boot(folder))["app"][0] == 1
    assert confirm(folder) == {"app": 1}


# --------------------------------------------------------- THREAT.IMG.DISCLOSURE (§4.2.12)


def test_threat_img_disclosure(tmp_path: Path, author: Author, http: HostileHttp) -> None:
    """The payload travels encrypted (AES-KW + AES-GCM, draft-ietf-suit-firmware-encryption):
    the server and the network see only ciphertext; a device without the key cannot use it;
    the device holding the key decrypts while writing and checks the plaintext digest."""
    from device.device_kit import new_device

    kek = crypto.AesKwKey(b"K" * 16, key_id=b"fleet-kek")
    kek_file = tmp_path / "fleet.kek"
    kek_file.write_bytes(crypto.kek_to_pem(kek))
    secret = image_bytes("confidential firmware", 4000)
    info, ciphertext = cose.encrypt_payload(secret, content_alg=1, recipients=[kek])
    url = http.serve("/enc.bin", ciphertext)
    envelope = envelope_bytes(manifest(
        sequence_number=1,
        shared=seq(*COMPATIBILITY, override(image_digest=digest_of(secret),
                                            image_size=len(secret))),
        install=seq(override(uri=url, encryption_info=info), c(Cmd.FETCH),
                    c(Cmd.IMAGE_MATCH))), signer=author.key.signer())
    assert secret[:64] not in ciphertext and secret[:64] not in envelope

    from suitkit.device.config import create_device

    outsider = tmp_path / "outsider"
    new_device(outsider, [author.anchor])
    outcome = install(outsider, envelope, fetcher())
    assert_refused(outcome, envelope, Symptom(INSTALL, Cmd.FETCH, ReportReason.UNAUTHORISED))
    assert "the device has no key for any of them" in outcome.reason

    insider = tmp_path / "insider"
    create_device(insider, vendor_id=VENDOR, class_id=CLASS, trust_anchors=[author.anchor],
                  decryption_keys=[kek_file])
    open_device(insider).save()
    assert install(insider, envelope, fetcher()).installed
    assert running(boot(insider)) == {"app": (1, sha256(secret))}


# ----------------------------------------------------------- THREAT.MFST.OVERRIDE (§4.2.13)
# A processor rule (dependency set-parameters cannot override the dependent's override):
# tests/core/test_processor_threats.py::test_set_parameters_cannot_override_an_override.


# ----------------------------------------------------------- THREAT.MFST.EXPOSURE (§4.2.14)


def test_threat_mfst_exposure(author: Author, device: Path) -> None:
    """What a manifest says about the firmware beyond what the device needs (suit-text) is
    severable: a distributor strips it before the envelope leaves the trusted side, and the
    device installs the stripped envelope (the signature covers only the text's digest)."""
    text = "internal build 4711, fixes CVE-2026-0001 in the radio stack"
    image = image_bytes("exposure", 1200)
    full = author.envelope(2, [author.component("e.bin", image)],
                           top={"text": {"manifest-description": text}, "sever": ["text"]})
    assert text.encode() in full
    stripped = codec.encode_envelope(codec.sever(codec.decode_envelope(full),
                                                 frozenset({ManifestKey.TEXT})))
    assert text.encode() not in stripped  # only the digest of the text travels

    outcome = install(device, stripped)

    assert outcome.installed, outcome.reason
    assert running(boot(device)) == {"app": (2, sha256(image))}
    assert confirm(device) == {"app": 2}


# -------------------------------------------------------------- THREAT.IMG.EXTRA (§4.2.15)


@pytest.mark.parametrize("how", ["http announced", "http unannounced", "coap"])
def test_threat_img_extra(author: Author, device: Path, http: HostileHttp, coap: HostileCoap,
                          how: str) -> None:
    """More bytes than image-size: refused, never truncated (truncated, these would match).
    Endless streams: tests/security/test_attacks_tuf_uptane.py::test_endless_data."""
    image = image_bytes("extra", 2000)
    longer = image + b"\x00" * 100
    url = {"http announced": lambda: http.serve("/x.bin", longer),
           "http unannounced": lambda: http.unannounced("/x.bin", longer),
           "coap": lambda: coap.serve("/fw/x.bin", longer)}[how]()
    envelope = detached(author, 2, url, image)
    before = Baseline(device)

    outcome = install(device, envelope, fetcher())

    assert_refused(outcome, envelope, Symptom(INSTALL, Cmd.FETCH,
                                              ReportReason.OPERATION_FAILED))
    assert "more than the 2000 bytes the manifest allows (image-size)" in outcome.reason
    before.assert_unchanged(flash_untouched=False)
    assert_still_updates(author, device, 2)


# ------------------------------------------------------------ THREAT.KEY.EXPOSURE (§4.2.16)


def test_threat_key_exposure(tmp_path: Path, author: Author) -> None:
    """Key rotation and revocation: the device trusts the old and the new key during the
    rollover; once the old key is revoked (its anchor removed), what it signs is refused,
    while the device keeps running and updating with the new key."""
    successor = Author.create(tmp_path / "successor", name="successor")
    folder = running_device(tmp_path / "dev", author)
    config = load_config(folder)
    (folder / "anchors" / "01-author-successor.pub").write_bytes(successor.anchor.read_bytes())
    set_anchors(folder, anchors=(*config.anchors,
                                 replace(config.anchors[0], file="01-author-successor.pub")))
    assert install(folder, successor.release(2)[0]).installed  # rollover: new key accepted
    boot(folder)
    assert confirm(folder) == {"app": 2}

    set_anchors(folder, anchors=load_config(folder).anchors[1:])  # revoke the exposed key
    (folder / "anchors" / config.anchors[0].file).unlink()
    before = Baseline(folder)
    stolen = author.envelope(3, [author.component("stolen.bin", b"s" * 900)])

    outcome = install(folder, stolen)

    assert_refused(outcome, stolen, "rejected: no authentication block verifies with a "
                                    "trusted key")
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(successor, folder, 3)


# ------------------------------------------------------ THREAT.MFST.MODIFICATION (§4.2.17)


def test_threat_mfst_modification(author: Author, device: Path) -> None:
    """A manifest altered between its review and its signing: the signer re-checks the digest
    and refuses; altered after signing, the device refuses."""
    good = codec.decode_envelope(author.envelope(2, [author.component("m.bin", b"m" * 800)],
                                                 signer=None))
    altered = replace(good, manifest_bytes=good.manifest_bytes.replace(b"\x02\x02", b"\x02\x09"))
    assert altered.manifest_bytes != good.manifest_bytes
    with pytest.raises(AuthenticationError, match="refusing to sign"):
        sign_envelope(altered, author.key.signer())

    signed = sign_envelope(good, author.key.signer())
    after = codec.encode_envelope(replace(signed, manifest_bytes=altered.manifest_bytes))
    before = Baseline(device)
    assert_refused(install(device, after), after, "rejected: manifest digest mismatch")
    before.assert_unchanged(flash_untouched=True)
    assert_still_updates(author, device, 2)


# ----------------------------------------------------------- THREAT.MFST.TOCTOU (§4.2.18)


def test_threat_mfst_toctou(author: Author, device: Path, http: HostileHttp) -> None:
    """The caller's buffer is rewritten (another, lower-sequence manifest) while the install
    runs, after verification: the device works from its own immutable copy of the verified
    bytes, and what it stages for the bootloader is the manifest it verified."""
    image = image_bytes("toctou", 2000)
    envelope = detached(author, 2, http.serve("/t.bin", image), image)
    other = detached(author, 2, http.url + "/t.bin", image_bytes("other", 2000), "o.bin")
    buffer = bytearray(envelope)
    inner = fetcher()

    class Rewriting:
        def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
                  arguments: bytes | None = None):  # type: ignore[no-untyped-def]
            buffer[:] = other.ljust(len(envelope), b"\x00")[:len(envelope)]
            return inner.fetch(uri, max_bytes=max_bytes, offset=offset)

    outcome = install(device, buffer, Rewriting())  # type: ignore[arg-type]

    assert outcome.installed, outcome.reason
    assert bytes(buffer) != envelope
    result = boot(device)
    assert running(result) == {"app": (2, sha256(image))}
    assert confirm(device) == {"app": 2}
    assert_still_updates(author, device, 3)
