"""Trust domains on real device shapes (draft-ietf-suit-trust-domains): a root manifest signed
by the operator depends on two component manifests, each by an author authorised only for its
own component (the device's anchor scopes), integrated in the root's envelope or fetched from
a firmware server; the set installs in lockstep, all or nothing, and boots; an author touching
another author's component is refused naming the signer and the component.

Everything goes through the real library (``parse_description`` with ``dependencies:``,
``sign_envelope``, ``open_device`` -> ``Consumer.install`` -> ``boot`` -> ``confirm``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from device.device_kit import (
    boot,
    confirm,
    counters,
    firmware_server,
    image_bytes,
    install,
    running,
)
from device.trust_kit import SHAPES, Domains
from suitkit.bootloader.flash import PowerCut
from suitkit.core import codec
from suitkit.device.consumer import InstallOutcome
from suitkit.device.fetch import HttpFetcher
from suitkit.device.wiring import SlotDependencies, open_device
from suitkit.limits import Limits


def _factory(domains: Domains) -> dict[str, tuple[int, bytes]]:
    """Install and confirm release 1 (both authors' images) as the starting point."""
    env_a, _ = domains.component_manifest(domains.a, 1, 0)
    env_b, _ = domains.component_manifest(domains.b, 1, 1)
    root = domains.root_manifest(1, [
        {"envelope": "a1.suit", "bytes": env_a, "id": ["author-a.suit"]},
        {"envelope": "b1.suit", "bytes": env_b, "id": ["author-b.suit"]}])
    outcome = install(domains.device, root)
    assert outcome.installed, outcome.reason
    booted = boot(domains.device)
    confirm(domains.device)
    return running(booted)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_root_with_two_authors_installs_both_integrated(tmp_path: Path, shape: str) -> None:
    domains = Domains(tmp_path, shape)
    env_a, image_a = domains.component_manifest(domains.a, 3, 0)
    env_b, image_b = domains.component_manifest(domains.b, 7, 1)
    root = domains.root_manifest(5, [
        {"envelope": "a.suit", "bytes": env_a, "id": ["author-a.suit"]},
        {"envelope": "b.suit", "bytes": env_b, "id": ["author-b.suit"]}])

    outcome = install(domains.device, root)

    assert outcome.installed, outcome.reason
    assert sorted(outcome.written) == sorted(domains.images)
    booted = running(boot(domains.device))
    first, second = domains.images
    # Each image is kept with (and checked at boot against) its author's manifest.
    assert booted[first][0] == 3 and booted[second][0] == 7
    assert confirm(domains.device) == {first: 3, second: 7}
    opened = open_device(domains.device)
    assert opened.bootloader.running(first)[1].read(0, len(image_a)) == image_a
    assert opened.bootloader.running(second)[1].read(0, len(image_b)) == image_b


def test_fetched_dependencies_from_a_server(tmp_path: Path) -> None:
    domains = Domains(tmp_path)
    with firmware_server() as (base, served):
        env_a, image_a = domains.component_manifest(domains.a, 2, 0, uri=f"{base}/a.bin")
        env_b, image_b = domains.component_manifest(domains.b, 2, 1, uri=f"{base}/b.bin")
        served.files.update({"/a.bin": image_a, "/b.bin": image_b, "/a.suit": env_a,
                             "/b.suit": env_b})
        root = domains.root_manifest(2, [
            {"envelope": "a.suit", "bytes": env_a, "uri": f"{base}/a.suit"},
            {"envelope": "b.suit", "bytes": env_b, "uri": f"{base}/b.suit"}])
        assert len(root) < len(env_a) + len(env_b)  # nothing integrated

        outcome = install(domains.device, root, HttpFetcher())

        assert outcome.installed, outcome.reason
        assert {"/a.suit", "/b.suit", "/a.bin", "/b.bin"} <= set(served.requests)
    booted = running(boot(domains.device))
    assert {name: seq for name, (seq, _) in booted.items()} == {"app": 2, "data": 2}
    opened = open_device(domains.device)
    assert opened.bootloader.running("app")[1].read(0, len(image_a)) == image_a
    assert opened.bootloader.running("data")[1].read(0, len(image_b)) == image_b


def test_author_touching_another_authors_component_refused(tmp_path: Path) -> None:
    """RFC 9124 REQ.SEC.ACCESS_CONTROL: author A is authorised for [h'00'] only; its manifest
    for B's component [h'01'] is refused, naming the signer and the component, and nothing
    is staged."""
    domains = Domains(tmp_path)
    before = _factory(domains)
    env_a, _ = domains.component_manifest(domains.a, 2, 0)
    hostile, _ = domains.component_manifest(domains.a, 2, 1, tag="hostile")
    root = domains.root_manifest(2, [
        {"envelope": "a.suit", "bytes": env_a, "id": ["author-a.suit"]},
        {"envelope": "b.suit", "bytes": hostile, "id": ["author-b.suit"]}])

    outcome = install(domains.device, root)

    assert not outcome.installed
    assert "dependency envelope: signer of role 'author' (01-author-author-a.pub) may not " \
           "update component [h'01']; its scope is [h'00']" in outcome.reason, outcome.reason
    assert not open_device(domains.device).bootloader.pending_update()
    assert running(boot(domains.device)) == before


def test_author_alone_cannot_sign_the_root(tmp_path: Path) -> None:
    """The root is the operator's: an author's root is refused before anything runs (the
    dependency slot it writes is out of the author's scope; the operator's signature is
    required too)."""
    domains = Domains(tmp_path)
    env_a, _ = domains.component_manifest(domains.a, 2, 0)
    root = domains.root_manifest(2, [{"envelope": "a.suit", "bytes": env_a}],
                                 signer=domains.a)
    outcome = install(domains.device, root)
    assert not outcome.installed
    assert outcome.reason == (
        "rejected: signer of role 'author' (01-author-author-a.pub) may not update component "
        "[h'646570656e64656e63792d302e73756974']; its scope is [h'00']"), outcome.reason


def test_dependency_integrity_other_manifest_refused(tmp_path: Path) -> None:
    """trust-domains §5.6.4: the root names its dependency by digest; another envelope, even
    one validly signed by the same author, in its place is refused."""
    domains = Domains(tmp_path)
    before = _factory(domains)
    env_a, _ = domains.component_manifest(domains.a, 2, 0)
    other_a, _ = domains.component_manifest(domains.a, 2, 0, tag="other")
    env_b, _ = domains.component_manifest(domains.b, 2, 1)
    root = domains.root_manifest(2, [
        {"envelope": "a.suit", "bytes": env_a, "id": ["author-a.suit"]},
        {"envelope": "b.suit", "bytes": env_b, "id": ["author-b.suit"]}])
    envelope = codec.decode_envelope(root)
    swapped = codec.encode_envelope(type(envelope).from_fields({
        **{f: getattr(envelope, f) for f in envelope.__dataclass_fields__},
        "integrated": {**envelope.integrated, "#a.suit": other_a}}))

    outcome = install(domains.device, swapped)

    assert not outcome.installed
    assert "dependency manifest digest" in outcome.reason and "does not match" in \
        outcome.reason, outcome.reason
    assert not open_device(domains.device).bootloader.pending_update()
    assert running(boot(domains.device)) == before


def test_dependency_rollback_refused(tmp_path: Path) -> None:
    """RFC 9124 REQ.SEC.SEQUENCE holds for dependency manifests: a new root bringing author
    B's older manifest is refused (the security counter of B's image is 1)."""
    domains = Domains(tmp_path)
    _factory(domains)
    env_a, _ = domains.component_manifest(domains.a, 3, 0)
    old_b, _ = domains.component_manifest(domains.b, 0, 1)
    root = domains.root_manifest(3, [{"envelope": "a.suit", "bytes": env_a},
                                     {"envelope": "b.suit", "bytes": old_b}])
    outcome = install(domains.device, root)
    assert not outcome.installed
    assert "rollback: sequence number 0 is lower than the installed 1 of data" in \
        outcome.reason, outcome.reason
    assert counters(domains.device) == {"app": 1, "data": 1}


def test_lockstep_power_cut_before_the_set_is_pending(tmp_path: Path) -> None:
    """The whole set is atomic on the Linux-class device: a power cut after author A's image
    is staged and before the set is marked pending leaves release 1 running, both images;
    the same root installed again then installs both."""
    domains = Domains(tmp_path)
    before = _factory(domains)
    env_a, _ = domains.component_manifest(domains.a, 2, 0)
    env_b, _ = domains.component_manifest(domains.b, 2, 1)
    root = domains.root_manifest(2, [{"envelope": "a.suit", "bytes": env_a},
                                     {"envelope": "b.suit", "bytes": env_b}])
    labels: list[str] = []

    def cut(label: str) -> None:
        labels.append(label)
        if "state" in label and any("data.manifest" in seen for seen in labels):
            raise PowerCut(label)

    device = open_device(domains.device, crash=cut)
    with pytest.raises(PowerCut):
        device.consumer().install(root)
    assert any("app.image" in seen for seen in labels), labels
    assert running(boot(domains.device)) == before

    outcome = install(domains.device, root)
    assert outcome.installed, outcome.reason
    assert {name: seq for name, (seq, _) in running(boot(domains.device)).items()} == \
        {"app": 2, "data": 2}


def test_image_identifier_is_not_a_dependency_slot(tmp_path: Path) -> None:
    """A root that declares an image's identifier ([h'00']) as a dependency is refused before
    anything is written: the image slot never holds a manifest."""
    domains = Domains(tmp_path)
    env_a, _ = domains.component_manifest(domains.a, 2, 0)
    root = domains.root_manifest(2, [{"envelope": "a.suit", "bytes": env_a, "id": ["0x00"]}])
    outcome = install(domains.device, root)
    assert not outcome.installed
    assert "app is an image of this device, not a dependency manifest slot" in \
        outcome.reason, outcome.reason


# ---------------------------------------------------------------------------- uninstall


def _installed(domains: Domains) -> tuple[int, list[tuple[bytes, ...]]]:
    sequence, stored = SlotDependencies(open_device(domains.device).bootloader,  # type: ignore[arg-type]
                                        Limits()).installed()
    return sequence, sorted(stored)


def _uninstall(domains: Domains, envelope: bytes) -> InstallOutcome:
    device = open_device(domains.device)
    try:
        return device.consumer().uninstall(envelope)
    finally:
        device.save()


def test_uninstall_removes_the_dependency_it_unlinks(tmp_path: Path) -> None:
    """trust-domains §6: the operator's uninstall manifest unlinks author B's manifest; B's
    own suit-uninstall runs (with B's stored manifest), B leaves the device's manifest store
    at the next boot, A stays, and the images keep running."""
    domains = Domains(tmp_path)
    before = _factory(domains)
    assert _installed(domains) == (1, [(b"author-a.suit",), (b"author-b.suit",)])
    env_b = (domains.operator.folder / "b1.suit").read_bytes()
    removal = domains.root_manifest(2, [
        {"envelope": "b-again.suit", "bytes": env_b, "id": ["author-b.suit"]}],
        extra={"uninstall": {"unlink": [["author-b.suit"]]}})

    outcome = _uninstall(domains, removal)

    assert outcome.installed, outcome.reason
    assert outcome.reason.startswith("uninstalled [h'617574686f722d622e73756974']")
    assert _installed(domains) == (1, [(b"author-a.suit",), (b"author-b.suit",)])  # pending
    assert running(boot(domains.device)) == before
    confirm(domains.device)
    assert _installed(domains) == (2, [(b"author-a.suit",)])


def test_uninstall_of_an_image_refused(tmp_path: Path) -> None:
    """Author B's manifest unlinks its image in its suit-uninstall: the boot set's images
    cannot be removed, so the uninstall fails and nothing changes."""
    domains = Domains(tmp_path)
    image_b = image_bytes("b-unlinks", 1500)
    env_b = domains.b.envelope(1, [domains.b.component("b.bin", image_b, index=1)],
                               top={"uninstall": {"unlink": [["0x01"]]}})
    env_a, _ = domains.component_manifest(domains.a, 1, 0)
    root = domains.root_manifest(1, [{"envelope": "a.suit", "bytes": env_a, "id": ["a"]},
                                     {"envelope": "b.suit", "bytes": env_b, "id": ["b"]}])
    assert install(domains.device, root).installed
    before = running(boot(domains.device))
    confirm(domains.device)
    removal = domains.root_manifest(2, [{"envelope": "b2.suit", "bytes": env_b, "id": ["b"]}],
                                    extra={"uninstall": {"unlink": [["b"]]}})

    outcome = _uninstall(domains, removal)

    assert not outcome.installed
    assert outcome.reason == ("failed: unlink of data: an image of the boot set cannot be "
                              "removed (the bootloader boots the whole set); install its "
                              "replacement instead"), outcome.reason
    assert not open_device(domains.device).bootloader.pending_update()
    assert _installed(domains) == (1, [(b"a",), (b"b",)])
    assert running(boot(domains.device)) == before


def test_uninstall_replay_of_an_older_root_refused(tmp_path: Path) -> None:
    """RFC 9124 THREAT.UPD.REPLAY: an uninstall manifest older than the installed root cannot
    remove what the newer root installed."""
    domains = Domains(tmp_path)
    env_b, _ = domains.component_manifest(domains.b, 1, 1)
    old_removal = domains.root_manifest(0, [
        {"envelope": "b.suit", "bytes": env_b, "id": ["author-b.suit"]}],
        extra={"uninstall": {"unlink": [["author-b.suit"]]}})
    _factory(domains)
    outcome = _uninstall(domains, old_removal)
    assert outcome.reason == ("rejected: rollback: sequence number 0 is lower than the "
                              "installed root's 1"), outcome.reason
    assert _installed(domains)[1] == [(b"author-a.suit",), (b"author-b.suit",)]


def test_uninstall_refused_on_a_flash_shape(tmp_path: Path) -> None:
    """Flash shapes process dependency manifests but keep no manifest store."""
    domains = Domains(tmp_path, "secure-split")
    env_b, _ = domains.component_manifest(domains.b, 1, 1)
    removal = domains.root_manifest(2, [{"envelope": "b.suit", "bytes": env_b}],
                                    extra={"uninstall": {"unlink": [["dependency-0.suit"]]}})
    outcome = _uninstall(domains, removal)
    assert outcome.reason == ("rejected: this device's shape (secure-split) keeps no "
                              "dependency manifests, so there is nothing to uninstall")


def test_candidate_verification_of_a_dependency_runs_before_install(tmp_path: Path) -> None:
    """trust-domains §7: Installation = candidate-verification, then install. Author B's
    manifest checks its image in candidate-verification, before its install fetched it: the
    check fails on the device, and neither author's image is staged (all or nothing)."""
    domains = Domains(tmp_path)
    before = _factory(domains)
    env_a, _ = domains.component_manifest(domains.a, 2, 0)
    image_b = image_bytes("b-candidate", 2500)
    env_b = domains.b.envelope(2, [domains.b.component("b2.bin", image_b, index=1)],
                               top={"candidate-verification": [["condition-image-match", 15]]})
    root = domains.root_manifest(2, [{"envelope": "a.suit", "bytes": env_a},
                                     {"envelope": "b.suit", "bytes": env_b}])

    outcome = install(domains.device, root)

    assert not outcome.installed
    assert outcome.reason.startswith("failed: dependency 1 candidate-verification[0] "
                                     "condition-image-match"), outcome.reason
    assert not open_device(domains.device).bootloader.pending_update()
    assert running(boot(domains.device)) == before


def test_the_same_root_again_while_pending_is_already_installed(tmp_path: Path) -> None:
    """The agent's retry after a crash that fell after the commit: the pending set was staged
    by this very root (its images keep the authors' manifests), so installing it again says
    "already installed" instead of failing; another root is refused while it is pending."""
    domains = Domains(tmp_path)
    env_a, _ = domains.component_manifest(domains.a, 1, 0)
    env_b, _ = domains.component_manifest(domains.b, 1, 1)
    root = domains.root_manifest(1, [{"envelope": "a.suit", "bytes": env_a},
                                     {"envelope": "b.suit", "bytes": env_b}])
    assert install(domains.device, root).installed

    again = install(domains.device, root)

    assert again.installed and again.reason.startswith("already installed"), again.reason
    other = domains.root_manifest(2, [{"envelope": "a.suit", "bytes": env_a},
                                      {"envelope": "b.suit", "bytes": env_b}])
    refused = install(domains.device, other)
    assert not refused.installed and "an update is already pending" in refused.reason
