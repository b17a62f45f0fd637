"""Specification of the bundle format: manifest.json and what verify_bundle refuses, by name."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bf

IMAGE = "registry.k8s.io/pause:3.10.2"
ETCD = "files/github.com/etcd-io/etcd/releases/download/v3.4.23/etcd"
V2 = Path(bf.REGISTRY_V2)


def _put_blob(root: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = root / V2 / "blobs" / "sha256" / digest[7:9] / digest[7:] / "data"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _link(path: Path, digest: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "link").write_text(digest)


def _put_image(root: Path, ref: str, layer: bytes) -> tuple[str, str, str]:
    """The on-disk layout docker-registry writes for a pushed image; returns (manifest, config, layer) digests."""
    repository, tag, _ = bf.split_reference(ref)
    layer_digest = _put_blob(root, layer)
    config_digest = _put_blob(root, json.dumps({"architecture": "amd64", "os": "linux"}).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config_digest, "size": 1},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer_digest, "size": 1}],
    }
    manifest_digest = _put_blob(root, json.dumps(manifest).encode())
    repo = root / V2 / "repositories" / repository
    for digest in (layer_digest, config_digest):
        _link(repo / "_layers" / "sha256" / digest[7:], digest)
    _link(repo / "_manifests" / "revisions" / "sha256" / manifest_digest[7:], manifest_digest)
    _link(repo / "_manifests" / "tags" / str(tag) / "current", manifest_digest)
    return manifest_digest, config_digest, layer_digest


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A small bundle: two mirrored files, an apt suite with its key, one image in registry storage."""
    root = tmp_path / "airgap-bundle"
    for rel, data in {
        ETCD: b"\x7fELF etcd",
        "files/dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubectl": b"\x7fELF kubectl",
        "apt/dists/bookworm/InRelease": b"signed release",
        "apt/pool/bookworm/main/nginx_1.22.1-9_amd64.deb": b"!<arch>",
        bf.APT_KEY: b"-----BEGIN PGP PUBLIC KEY BLOCK-----",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    _put_image(root, IMAGE, b"layer-bytes")
    bf.write_manifest(root, images={IMAGE: bf.read_tag_digest(root, IMAGE)}, arches=["amd64"], apt_suites=["bookworm"])
    return root


def _names(problems: list[bf.Problem]) -> list[str]:
    return [p.name for p in problems]


def test_clean_bundle_has_no_problems(bundle: Path) -> None:
    assert bf.verify_bundle(bundle) == []


def test_manifest_lists_every_file_outside_registry_storage_with_sha256(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == bf.FORMAT and manifest["format_version"] == 1
    assert manifest["files"][ETCD]["sha256"] == hashlib.sha256(b"\x7fELF etcd").hexdigest()
    assert not [p for p in manifest["files"] if p.startswith("registry/") or p == "manifest.json"]
    assert manifest["apt"] == {"key": bf.APT_KEY, "suites": ["bookworm"]}


def test_modified_file_is_named(bundle: Path) -> None:
    (bundle / ETCD).write_bytes(b"\x7fELF evil")
    problems = bf.verify_bundle(bundle)
    assert _names(problems) == [ETCD]
    assert problems[0].kind == "modified"


def test_missing_file_is_named(bundle: Path) -> None:
    (bundle / ETCD).unlink()
    problems = bf.verify_bundle(bundle)
    assert [(p.kind, p.name) for p in problems] == [("missing", ETCD)]


def test_file_not_in_manifest_is_refused(bundle: Path) -> None:
    extra = bundle / "files" / "example.com" / "extra.sh"
    extra.parent.mkdir(parents=True)
    extra.write_text("curl evil | sh")
    problems = bf.verify_bundle(bundle)
    assert [(p.kind, p.name) for p in problems] == [("unexpected", "files/example.com/extra.sh")]


def test_symlink_in_served_tree_is_refused(bundle: Path) -> None:
    (bundle / "files" / "shadow").symlink_to("/etc/shadow")
    assert [(p.kind, p.name) for p in bf.verify_bundle(bundle)] == [("unexpected", "files/shadow")]


def test_a_symlink_in_registry_storage_is_refused_even_to_a_blob_with_the_right_content(bundle: Path) -> None:
    digest = bf.read_tag_digest(bundle, IMAGE)
    blob = bundle / V2 / "blobs" / "sha256" / digest[7:9] / digest[7:] / "data"
    copy = bundle.parent / "elsewhere"
    copy.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(copy)
    (bundle / V2 / "repositories" / "shadow").symlink_to("/etc")
    problems = bf.verify_bundle(bundle)
    assert [(p.kind, p.name, p.detail) for p in problems] == [
        ("unexpected", blob.relative_to(bundle).as_posix(),
         f"is a symlink to {copy}: a bundle holds only regular files and directories"),
        ("unexpected", f"{bf.REGISTRY_V2}/repositories/shadow",
         "is a symlink to /etc: a bundle holds only regular files and directories")]


def test_registry_storage_that_is_itself_a_symlink_is_refused(bundle: Path) -> None:
    (bundle / "registry").rename(bundle.parent / "registry")
    (bundle / "registry").symlink_to(bundle.parent / "registry")
    assert ("unexpected", "registry") in [(p.kind, p.name) for p in bf.verify_bundle(bundle)]


def test_a_fifo_in_registry_storage_is_refused(bundle: Path) -> None:
    os.mkfifo(bundle / V2 / "pipe")
    assert [str(p) for p in bf.verify_bundle(bundle)] == [
        f"{bf.REGISTRY_V2}/pipe: is a fifo: a bundle holds only regular files and directories"]


def test_modified_layer_blob_is_named_with_its_image_reference(bundle: Path) -> None:
    _, _, layer = _put_image(bundle / "scratch", IMAGE, b"layer-bytes")  # same digest as in the bundle
    blob = bundle / V2 / "blobs" / "sha256" / layer[7:9] / layer[7:] / "data"
    blob.write_bytes(b"layer-bytes, tampered")
    problems = [p for p in bf.verify_bundle(bundle) if p.kind == "image"]
    assert _names(problems) == [IMAGE]
    assert layer in problems[0].detail and "modified" in problems[0].detail


def test_missing_config_blob_is_named_with_its_image_reference(bundle: Path) -> None:
    manifest_digest = bf.read_tag_digest(bundle, IMAGE)
    doc = json.loads((bundle / V2 / "blobs" / "sha256" / manifest_digest[7:9] / manifest_digest[7:] / "data").read_bytes())
    config = doc["config"]["digest"]
    (bundle / V2 / "blobs" / "sha256" / config[7:9] / config[7:] / "data").unlink()
    problems = bf.verify_bundle(bundle)
    assert _names(problems) == [IMAGE] and "missing" in problems[0].detail


def test_retagged_image_is_named(bundle: Path) -> None:
    other, _, _ = _put_image(bundle, "registry.k8s.io/pause:other", b"other layer")
    tag = bundle / V2 / "repositories" / "registry.k8s.io" / "pause" / "_manifests" / "tags" / "3.10.2" / "current" / "link"
    tag.write_text(other)
    problems = bf.verify_bundle(bundle)
    assert _names(problems) == [IMAGE] and other in problems[0].detail


def test_extra_content_in_registry_storage_is_tolerated(bundle: Path) -> None:
    _put_image(bundle, "docker.io/library/busybox:pushed-later", b"pushed on localhost")
    assert bf.verify_bundle(bundle) == []


def test_sparse_index_needs_only_the_bundle_arches(bundle: Path) -> None:
    amd64 = bf.read_tag_digest(bundle, IMAGE)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"digest": amd64, "platform": {"architecture": "amd64", "os": "linux"}},
            {"digest": "sha256:" + "a" * 64, "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }
    index_digest = _put_blob(bundle, json.dumps(index).encode())
    repo = bundle / V2 / "repositories" / "registry.k8s.io" / "pause" / "_manifests"
    _link(repo / "revisions" / "sha256" / index_digest[7:], index_digest)
    _link(repo / "tags" / "multi" / "current", index_digest)
    bf.write_manifest(bundle, images={"registry.k8s.io/pause:multi": index_digest}, arches=["amd64"],
                      apt_suites=["bookworm"])
    assert bf.verify_bundle(bundle) == []
    bf.write_manifest(bundle, images={"registry.k8s.io/pause:multi": index_digest}, arches=["amd64", "arm64"],
                      apt_suites=["bookworm"])
    assert _names(bf.verify_bundle(bundle)) == ["registry.k8s.io/pause:multi"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('{"format": "something else"}', "is not a bundle manifest"),
    (json.dumps({"format": bf.FORMAT, "format_version": 99}), "format_version 99"),
    (json.dumps({"format": bf.FORMAT, "format_version": 1, "files": {"a": {"sha256": "x"}}, "images": {}}), '"files"'),
])
def test_corrupt_manifest_is_a_clear_error(bundle: Path, content: str, message: str) -> None:
    (bundle / "manifest.json").write_text(content)
    with pytest.raises(bf.BundleError, match="manifest.json") as err:
        bf.verify_bundle(bundle)
    assert message in str(err.value)


def test_missing_manifest_says_this_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(bf.BundleError, match="not an unpacked bundle"):
        bf.verify_bundle(tmp_path)


def test_problems_read_as_name_then_what_is_wrong(bundle: Path) -> None:
    (bundle / ETCD).write_bytes(b"changed")
    assert str(bf.verify_bundle(bundle)[0]).startswith(f"{ETCD}: is modified")


def test_write_manifest_refuses_apt_suites_without_key(bundle: Path) -> None:
    (bundle / bf.APT_KEY).unlink()
    with pytest.raises(bf.BundleError, match=bf.APT_KEY):
        bf.write_manifest(bundle, images={}, arches=["amd64"], apt_suites=["bookworm"])


def test_summary_names_the_smallest_mirrored_file_for_health_checks(bundle: Path) -> None:
    summary = bf.summary(bundle)
    assert summary["sample_file"]["path"] == ETCD
    assert summary["repositories"] == ["registry.k8s.io/pause"]


# --------------------------------------------------------------------------- trust from outside the bundle
# Real gpg and gpgv, with throwaway keys in a GNUPGHOME under tmp_path.

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle_trust as bt  # noqa: E402
from ansible_collections.airgap.kubernetes.tools import bundle_sign  # noqa: E402
from ansible_collections.airgap.kubernetes.tools.build_bundle import make_tarball  # noqa: E402


@pytest.fixture
def keys(tmp_path: Path):
    """make(name) -> a new ed25519 release key (SigningKey) in a GNUPGHOME of this test; the agent is stopped after."""
    home = tmp_path / "g"
    home.mkdir(mode=0o700)

    def make(name: str) -> bundle_sign.SigningKey:
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quick-gen-key",
                        f"{name} <{name}@airgap.invalid>", "ed25519", "sign", "never"], check=True, capture_output=True)
        return bundle_sign.signing_key(f"{name}@airgap.invalid", home)

    yield make
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def _sign(root: Path, key: bundle_sign.SigningKey) -> None:
    """What build-bundle --sign-key does: ship the public key, record the signer, sign the manifest."""
    (root / bf.RELEASE_KEY).parent.mkdir(parents=True, exist_ok=True)
    (root / bf.RELEASE_KEY).write_text(bundle_sign.public_key(key))
    _rewrite(root, signed_by=key.fingerprint)
    bundle_sign.detach_sign(key, root / bf.MANIFEST, root / bf.SIGNATURE)


def _rewrite(root: Path, **kw) -> dict:
    """manifest.json written again for what the bundle now holds (what a tamperer with the builder's code does)."""
    return bf.write_manifest(root, images={IMAGE: bf.read_tag_digest(root, IMAGE)}, arches=["amd64"],
                             apt_suites=["bookworm"], **kw)


def test_a_coordinated_tamper_passes_every_self_check_but_not_the_pinned_signature(bundle: Path, keys, tmp_path):
    site = keys("site")
    _sign(bundle, site)
    assert bt.establish_trust(bundle, [site.fingerprint], checksum_verified=False) == site.fingerprint
    # The file, its manifest entry and the tarball's .sha256, all changed together.
    (bundle / ETCD).write_bytes(b"\x7fELF evil etcd")
    _rewrite(bundle, signed_by=site.fingerprint)
    tarball = make_tarball(bundle, tmp_path)
    assert bf.verify_bundle(bundle) == []
    assert (tmp_path / "bundle.tar.gz.sha256").read_text().split()[0] == bf.sha256_file(tarball)
    with pytest.raises(bt.TrustError, match=r"manifest.json does not match its signature by key .*changed after signing"):
        bt.establish_trust(bundle, [site.fingerprint], checksum_verified=False)


def test_an_unsigned_bundle_is_refused_when_a_key_is_pinned(bundle: Path, keys) -> None:
    site = keys("site")
    with pytest.raises(bt.TrustError) as err:
        bt.establish_trust(bundle, [site.fingerprint], checksum_verified=True)
    assert f"is unsigned (no {bf.SIGNATURE}), and bundle_trusted_keys pins {site.fingerprint}" in str(err.value)
    assert "run.sh build-bundle --sign-key" in str(err.value)


def test_a_bundle_signed_by_another_key_is_refused_naming_signer_and_pins(bundle: Path, keys) -> None:
    site, other = keys("site"), keys("other")
    _sign(bundle, other)  # the other key's public half is shipped in the bundle too: it is not used
    with pytest.raises(bt.TrustError) as err:
        bt.verify_signature(bundle, [site.fingerprint])
    assert f"is signed by key {other.fingerprint}, which is not pinned (bundle_trusted_keys pins {site.fingerprint})" \
        in str(err.value)


def test_a_swapped_shipped_key_does_not_stand_in_for_the_pinned_one(bundle: Path, keys) -> None:
    site, other = keys("site"), keys("other")
    _sign(bundle, other)
    (bundle / bf.RELEASE_KEY).write_text(bundle_sign.public_key(other) + bundle_sign.public_key(site))
    with pytest.raises(bt.TrustError, match=f"signed by key {other.fingerprint}, which is not pinned"):
        bt.verify_signature(bundle, [site.fingerprint])


def test_no_pinned_key_and_no_out_of_band_sha256_is_refused(bundle: Path, keys) -> None:
    _sign(bundle, keys("site"))  # a signature nobody pinned proves nothing either
    with pytest.raises(bt.TrustError) as err:
        bt.establish_trust(bundle, [], checksum_verified=False)
    assert "nothing outside the bundle vouches for it" in str(err.value)
    assert "bundle_trusted_keys" in str(err.value) and "bundle_sha256" in str(err.value)
    assert bt.establish_trust(bundle, [], checksum_verified=True) is None


def test_a_pin_may_be_the_armored_key_or_a_key_file_without_the_shipped_copy(bundle: Path, keys, tmp_path) -> None:
    site = keys("site")
    _sign(bundle, site)
    armored = bundle_sign.public_key(site)
    (bundle / bf.RELEASE_KEY).write_text("")  # the bundle's copy is not needed when the pin carries the key
    key_file = tmp_path / "site.asc"
    key_file.write_text(armored)
    assert bt.verify_signature(bundle, [armored]) == site.fingerprint
    assert bt.verify_signature(bundle, [str(key_file)]) == site.fingerprint
    spaced = " ".join(site.fingerprint[i:i + 4] for i in range(0, 40, 4)).lower()
    assert bt.anchors([spaced]).fingerprints == {site.fingerprint}


def test_a_key_id_is_not_accepted_as_a_pin(keys) -> None:
    with pytest.raises(bt.TrustError, match="16 hex digits: a key id is no pin"):
        bt.anchors([keys("site").fingerprint[-16:]])


def test_an_older_bundle_than_the_served_one_is_a_downgrade(bundle: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    shutil.copytree(bundle, served)
    _rewrite(served, created="2026-06-01T00:00:00Z")
    _rewrite(bundle, created="2026-05-01T00:00:00Z")
    problem = bf.downgrade_from(bundle, served)
    assert problem and "is older than the one being served (built 2026-06-01T00:00:00Z" in problem
    assert "bundle_allow_downgrade: true" in problem
    _rewrite(bundle, created="2026-07-01T00:00:00Z")
    assert bf.downgrade_from(bundle, served) is None
    assert bf.downgrade_from(bundle, tmp_path / "nothing-served-yet") is None


def test_the_serial_orders_bundles_before_their_dates(bundle: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    shutil.copytree(bundle, served)
    _rewrite(served, created="2026-01-01T00:00:00Z", serial=7)
    _rewrite(bundle, created="2026-02-01T00:00:00Z", serial=6)
    assert "(built 2026-02-01T00:00:00Z, serial 6) is older" in str(bf.downgrade_from(bundle, served))


@pytest.mark.parametrize("key", ["../../etc/shadow", "/etc/shadow", "keys/other.asc", "apt/dists/bookworm/InRelease"])
def test_an_apt_key_path_other_than_the_bundles_own_is_refused(bundle: Path, key: str) -> None:
    manifest = json.loads((bundle / bf.MANIFEST).read_text())
    manifest["apt"]["key"] = key
    (bundle / bf.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(bf.BundleError, match=f"apt.key is '{re.escape(key)}'; a bundle's apt key is always {bf.APT_KEY}"):
        bf.verify_bundle(bundle)


def test_an_apt_key_that_is_a_symlink_is_refused(bundle: Path) -> None:
    (bundle / bf.APT_KEY).unlink()
    (bundle / bf.APT_KEY).symlink_to("/etc/shadow")
    assert ("modified", bf.APT_KEY) in [(p.kind, p.name) for p in bf.verify_bundle(bundle)]


def test_a_host_without_gpgv_checks_the_signature_with_sqv(bundle: Path, keys) -> None:
    """A minimal Debian 13 has sqv (its apt's verifier) and no gpgv: the same pins, the same refusals. Real sqv."""
    assert shutil.which("sqv"), "sqv is missing: .ci/setup-host.sh installs it"
    site, other = keys("site"), keys("other")
    _sign(bundle, site)
    no_gpgv = "/nonexistent/gpgv"
    assert bt.verify_signature(bundle, [site.fingerprint], gpgv=no_gpgv) == site.fingerprint
    with pytest.raises(bt.TrustError, match=f"signed by key {site.fingerprint}, which is not pinned"):
        bt.verify_signature(bundle, [other.fingerprint], gpgv=no_gpgv)
    (bundle / bf.MANIFEST).write_text((bundle / bf.MANIFEST).read_text() + " ")
    with pytest.raises(bt.TrustError, match="does not match its signature: it was changed after signing"):
        bt.verify_signature(bundle, [site.fingerprint], gpgv=no_gpgv)
    with pytest.raises(bt.TrustError, match="neither /nonexistent/gpgv nor /nonexistent/sqv is installed"):
        bt.verify_signature(bundle, [site.fingerprint], gpgv=no_gpgv, sqv="/nonexistent/sqv")
