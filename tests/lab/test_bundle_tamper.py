"""Specification: the bundle_server role refuses a tampered bundle, naming the file and the image, before it changes the host."""
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
def bundle_host(tampered: tuple[Path, str]) -> str:
    """A lab node with no network at all, the tampered bundle at /srv/airgap/bundle."""
    if not docker("images", "-q", IMAGE).stdout.strip():
        pytest.skip(f"{IMAGE} is missing: python3 tools/lab/lab.py image --release bookworm")
    name = f"t{os.getpid()}-bundle-tamper"
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, "--network", "none", "--entrypoint", "sleep", IMAGE, "infinity")
    try:
        docker("exec", name, "mkdir", "-p", "/srv/airgap")
        docker("cp", str(tampered[0]), f"{name}:{BUNDLE_ON_HOST}")
        yield name
    finally:
        docker("rm", "-f", name, check=False)


def test_role_refuses_tampered_file_and_image_by_name_before_changing_the_host(
    bundle_host: str, tampered: tuple[Path, str], tmp_path: Path
) -> None:
    before = changes(bundle_host)
    (tmp_path / "hosts.yml").write_text(json.dumps(
        {"all": {"hosts": {bundle_host: {"ansible_connection": "community.docker.docker",
                                         "ansible_python_interpreter": "/usr/bin/python3"}}}}))
    (tmp_path / "serve.yml").write_text(
        "- name: Serve the bundle\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Serve it\n      ansible.builtin.include_role:\n        name: airgap.kubernetes.bundle_server\n"
        f"      vars:\n        bundle_server_bundle_dir: {BUNDLE_ON_HOST}\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["ansible-playbook", "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "serve.yml")],
                          cwd=REPO, env=env, text=True, capture_output=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Verify the bundle against its manifest" in out, out
    assert f"{ETCD}: is modified" in out
    assert f"{PAUSE}: config blob {tampered[1]} is modified" in out
    assert f"{bundlefmt.REGISTRY_V2}/repositories/shadow: is a symlink to /etc" in out
    assert "docker.io/library/busybox" not in out.split("does not match its manifest", 1)[1].split("Fix:", 1)[0]
    assert "re-copy the bundle, compare with bundle.tar.gz.sha256" in out
    assert changes(bundle_host) == before, "the role changed the host before refusing the bundle"
    for path in ("/etc/apt/sources.list.d/airgap-bundle.sources", "/etc/airgap-kubernetes", "/etc/docker/registry"):
        assert docker("exec", bundle_host, "test", "-e", path, check=False).returncode != 0, path
