"""Specification: the bundle_server role refuses a tampered bundle, naming the file and the image, before it changes the host;
and a coordinated tamper (a file, its manifest entry and the tarball's .sha256) by its signature, from the tarball,
before it unpacks anything."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import bundle_fixture  # noqa: E402

ETCD = "files/github.com/etcd-io/etcd/releases/download/v3.4.23/etcd"
PAUSE = "registry.k8s.io/pause:3.10.2"
BUNDLE_ON_HOST = "/srv/airgap/bundle"
ARCHIVE_ON_HOST = "/srv/airgap/bundle.tar.gz"

from ansible_collections.airgap.kubernetes.tools import build_bundle as builder  # noqa: E402

from .served_bundle import IMAGE, changes, docker  # noqa: E402

pytestmark = pytest.mark.lab


def _blob(bundle: Path, digest: str) -> Path:
    return bundle / bundlefmt.REGISTRY_V2 / "blobs" / "sha256" / digest[7:9] / digest[7:] / "data"


@pytest.fixture(scope="module")
def tampered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An unpacked fixture bundle with etcd modified, the pause image's config blob modified and a symlink in
    registry storage."""
    out = tmp_path_factory.mktemp("tamper")
    bundle = bundle_fixture.build_bundle(out, tarball=False).dir
    copy = out / "tampered"
    shutil.copytree(bundle, copy, symlinks=True)
    with open(copy / ETCD, "ab") as f:
        f.write(b"\0")
    manifest = json.loads(_blob(copy, bundlefmt.read_tag_digest(copy, PAUSE)).read_bytes())
    config = manifest["config"]["digest"]
    blob = _blob(copy, config)
    blob.write_bytes(blob.read_bytes().replace(b"/bin/sleep", b"/bin/evil!"))
    assert bundlefmt.sha256_file(blob) != config[7:]
    # A link in registry storage: the registry would serve, and a recursive chown would reach, what it points at.
    (copy / bundlefmt.REGISTRY_V2 / "repositories" / "shadow").symlink_to("/etc")
    return copy, config


@pytest.fixture
def coordinated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the signed fixture bundle, a tarball of it with etcd changed, its manifest entry changed to match and a
    .sha256 that matches the tarball): everything a bundle can say about itself agrees."""
    out = tmp_path_factory.mktemp("coordinated")
    bundle = bundle_fixture.build_bundle(out, tarball=False).dir
    copy = out / "tampered" / bundle.name
    shutil.copytree(bundle, copy, symlinks=True)
    with open(copy / ETCD, "ab") as f:
        f.write(b"\0")
    manifest = json.loads((copy / bundlefmt.MANIFEST).read_text())
    manifest["files"][ETCD] = {"sha256": bundlefmt.sha256_file(copy / ETCD), "size": (copy / ETCD).stat().st_size}
    (copy / bundlefmt.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    assert bundlefmt.verify_bundle(copy) == []
    tarball = builder.make_tarball(copy, out / "tampered")  # not the fixture's, which would sign it again
    return bundle, tarball


def _host(name: str) -> str:
    """A lab node with no network at all."""
    if not docker("images", "-q", IMAGE).stdout.strip():
        pytest.skip(f"{IMAGE} is missing: python3 tools/lab/lab.py image --release bookworm")
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, "--network", "none", "--entrypoint", "sleep", IMAGE, "infinity")
    docker("exec", name, "mkdir", "-p", "/srv/airgap")
    return name


@pytest.fixture
def bundle_host(tampered: tuple[Path, str]) -> str:
    """A lab node with no network at all, the tampered bundle at /srv/airgap/bundle."""
    name = f"t{os.getpid()}-bundle-tamper"
    try:
        docker("cp", str(tampered[0]), f"{_host(name)}:{BUNDLE_ON_HOST}")
        yield name
    finally:
        docker("rm", "-f", name, check=False)


def _serve(tmp_path: Path, host: str, role_vars: dict) -> str:
    """ansible-playbook with the bundle_server role on host; fails the test if it succeeds; returns its output."""
    (tmp_path / "hosts.yml").write_text(json.dumps(
        {"all": {"hosts": {host: {"ansible_connection": "community.docker.docker",
                                  "ansible_python_interpreter": "/usr/bin/python3"}}}}))
    (tmp_path / "serve.yml").write_text(json.dumps([{
        "name": "Serve the bundle", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Serve it", "ansible.builtin.include_role": {"name": "airgap.kubernetes.bundle_server"},
                   "vars": {"bundle_server_bundle_dir": BUNDLE_ON_HOST,
                            "bundle_trusted_keys": [bundle_fixture.release_fingerprint()], **role_vars}}]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["ansible-playbook", "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "serve.yml")],
                          cwd=REPO, env=env, text=True, capture_output=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    return out


def test_role_refuses_tampered_file_and_image_by_name_before_changing_the_host(
    bundle_host: str, tampered: tuple[Path, str], tmp_path: Path
) -> None:
    before = changes(bundle_host)
    out = _serve(tmp_path, bundle_host, {})
    assert "Verify the bundle against its manifest" in out, out
    assert f"{ETCD}: is modified" in out
    assert f"{PAUSE}: config blob {tampered[1]} is modified" in out
    assert f"{bundlefmt.REGISTRY_V2}/repositories/shadow: is a symlink to /etc" in out
    assert "docker.io/library/busybox" not in out.split("does not match its manifest", 1)[1].split("Fix:", 1)[0]
    assert "re-copy the bundle, compare with bundle.tar.gz.sha256" in out
    assert changes(bundle_host) == before, "the role changed the host before refusing the bundle"
    for path in ("/etc/apt/sources.list.d/airgap-bundle.sources", "/etc/airgap-kubernetes", "/etc/docker/registry"):
        assert docker("exec", bundle_host, "test", "-e", path, check=False).returncode != 0, path


def test_role_refuses_a_coordinated_tamper_by_its_signature_before_unpacking_it(
    coordinated: tuple[Path, Path], tmp_path: Path
) -> None:
    served, tarball = coordinated
    name = f"t{os.getpid()}-bundle-coordinated"
    try:
        host = _host(name)
        docker("cp", str(served), f"{host}:{BUNDLE_ON_HOST}")  # the bundle served now: the signed original
        for suffix in ("", ".sha256"):
            docker("cp", f"{tarball}{suffix}", f"{host}:{ARCHIVE_ON_HOST}{suffix}")
        tree = "cd /srv/airgap/bundle && find . -print0 | sort -z | xargs -0 sha256sum 2>/dev/null; ls -a /srv/airgap"
        before_tree, before = docker("exec", host, "sh", "-c", tree).stdout, changes(host)
        out = _serve(tmp_path, host, {"bundle_server_bundle_archive": ARCHIVE_ON_HOST})
        # Refused from the tarball's head, before anything of it is unpacked.
        assert "Check the bundle tarball's signature before unpacking it" in out, out[-3000:]
        assert (f"manifest.json in {ARCHIVE_ON_HOST} does not match its signature by key" in out
                and "changed after signing" in out), out[-3000:]
        assert "Extract the bundle tarball" not in out and "Swap the new bundle in" not in out
        assert docker("exec", host, "sh", "-c", tree).stdout == before_tree, "the served tree changed"
        assert changes(host) == before, changes(host) ^ before  # not even <bundle dir>.new
        for path in ("/etc/apt/sources.list.d/airgap-bundle.sources", "/etc/airgap-kubernetes", "/etc/docker/registry",
                     f"{BUNDLE_ON_HOST}.archive-sha256"):
            assert docker("exec", host, "test", "-e", path, check=False).returncode != 0, path
    finally:
        docker("rm", "-f", name, check=False)
