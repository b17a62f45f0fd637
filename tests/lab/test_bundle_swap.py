"""Specification: a new bundle is unpacked beside the served one and swapped in only once it verifies; a bad one
leaves the served tree whole and served, and a bundle directory that a swap could harm is refused before any change."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from . import served_bundle
from .served_bundle import ARCHIVE, BUNDLE, PKI, ROLE_VARS, docker

pytestmark = pytest.mark.lab

ETCD = "files/github.com/etcd-io/etcd/releases/download/v3.4.23/etcd"


@pytest.fixture(scope="module")
def served(serving_node):
    return serving_node


def _tree(container: str) -> str:
    """Every path and file checksum of the served tree, and the record of which tarball it came from."""
    return docker("exec", container, "sh", "-c", f"cd {BUNDLE} && find . | sort && find . -type f -print0 | sort -z"
                  f" | xargs -0 sha256sum && cat {BUNDLE}.archive-sha256").stdout


def _served_manifest(container: str, address: str) -> str:
    return docker("exec", container, "curl", "-sS", "--fail", "--cacert", f"{PKI}/ca.crt",
                  f"https://{address}:8443/manifest.json").stdout


def _assert_old_tree_served(container: str, address: str, tree: str, fixture_dir: Path) -> None:
    assert _tree(container) == tree, "the served tree changed"
    assert _served_manifest(container, address) == (fixture_dir / "manifest.json").read_text()


def test_a_tampered_new_bundle_leaves_the_old_tree_served_and_intact(served, tmp_path: Path) -> None:
    container, address, fixture = served
    tree = _tree(container)
    tampered = tmp_path / "airgap-bundle"
    shutil.copytree(fixture.dir, tampered, symlinks=True)
    with open(tampered / ETCD, "ab") as f:
        f.write(b"\0")
    # A tarball that matches its .sha256: only the manifest check can catch it.
    served_bundle.put_tarball(container, served_bundle.bundle_fixture.make_tarball(tampered, tmp_path))
    proc = served_bundle.run_role(tmp_path, container, ROLE_VARS)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    _assert_old_tree_served(container, address, tree, fixture.dir)
    assert "Verify the new bundle against its manifest" in out and f"{ETCD}: is modified" in out, out[-3000:]


def test_a_tarball_that_fails_to_extract_leaves_the_old_tree_served_and_intact(served, tmp_path: Path) -> None:
    container, address, fixture = served
    tree = _tree(container)
    broken = tmp_path / "bundle.tar.gz"
    data = fixture.tarball.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    served_bundle.write_sha256(broken)
    served_bundle.put_tarball(container, broken)
    proc = served_bundle.run_role(tmp_path, container, ROLE_VARS)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    _assert_old_tree_served(container, address, tree, fixture.dir)
    assert "Extract the bundle tarball" in out.split("fatal:")[0].rsplit("TASK [", 1)[1], out[-3000:]


@pytest.mark.parametrize(("bundle_dir", "problem"), [
    ("/srv/airgap", f"holds bundle_server_bundle_archive {ARCHIVE}"),
    ("/srv/", "is / or has fewer than 2 path components"),
    ("/", "is / or has fewer than 2 path components"),
])
def test_a_bundle_dir_a_swap_could_harm_is_refused_before_any_change(bundle_dir: str, problem: str,
                                                                      tmp_path: Path) -> None:
    name = f"t{os.getpid()}-bundle-dir"
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, "--network", "none", "--entrypoint", "sleep", served_bundle.IMAGE, "infinity")
    try:
        # A tarball that matches its .sha256, so nothing but the setting check stands before the unpack.
        (tmp_path / "bundle.tar.gz").write_text("not a bundle\n")
        served_bundle.write_sha256(tmp_path / "bundle.tar.gz")
        docker("exec", name, "mkdir", "-p", "/srv/airgap/bundle")
        served_bundle.put_tarball(name, tmp_path / "bundle.tar.gz")
        before = served_bundle.changes(name)
        proc = served_bundle.run_role(tmp_path, name, {**ROLE_VARS, "bundle_server_bundle_dir": bundle_dir})
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-3000:]
        assert f"bundle_server_bundle_dir {bundle_dir} {problem}" in out, out[-3000:]
        assert "set bundle_server_bundle_dir to a directory of its own" in out
        assert served_bundle.changes(name) == before, "the role changed the host before refusing the setting"
    finally:
        docker("rm", "-f", name, check=False)
