"""Test helper: a systemd lab node on Docker's default bridge that serves the fixture bundle with the bundle_server role."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from ansible_collections.airgap.kubernetes.tools.lab import lab

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import bundle_fixture  # noqa: E402

IMAGE = "airgap-lab-node:bookworm"
ARCHIVE = "/srv/airgap/bundle.tar.gz"
BUNDLE = "/srv/airgap/bundle"
PKI = "/etc/airgap-kubernetes/pki"
# The node shares the host's kernel clock: chrony serves time but must not set it. The fixture signs every bundle it
# packs with its release key, pinned here by fingerprint as a site pins its own.
ROLE_VARS = {"bundle_server_bundle_archive": ARCHIVE, "bundle_server_chrony_daemon_opts": "-F 1 -x",
             "bundle_server_ntp_allow": ["127.0.0.0/8"], "bundle_trusted_keys": [bundle_fixture.release_fingerprint()]}


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], text=True, capture_output=True, check=check, timeout=300)


def run_role(tmp_path: Path, container: str, role_vars: dict) -> subprocess.CompletedProcess:
    """ansible-playbook with the bundle_server role on the container, over docker exec."""
    (tmp_path / "hosts.yml").write_text(json.dumps(
        {"all": {"hosts": {container: {"ansible_connection": "community.docker.docker",
                                       "ansible_python_interpreter": "/usr/bin/python3"}}}}))
    (tmp_path / "serve.yml").write_text(json.dumps([{
        "name": "Serve the bundle", "hosts": "all", "gather_facts": False,
        "roles": [{"role": "airgap.kubernetes.bundle_server", "vars": role_vars}]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["ansible-playbook", "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "serve.yml")],
                          cwd=REPO, env=env, text=True, capture_output=True, timeout=900)


def write_sha256(tarball: Path) -> None:
    """tarball.sha256 beside tarball, in sha256sum's format, as build-bundle writes it."""
    Path(f"{tarball}.sha256").write_text(f"{bundle_fixture.bundlefmt.sha256_file(tarball)}  {tarball.name}\n")


def changes(container: str) -> set[str]:
    """Paths changed against the image, without Ansible's own scratch space."""
    lines = docker("diff", container).stdout.splitlines()
    return {line for line in lines if "/.ansible" not in line and not line.endswith((" /root", " /tmp"))}


def put_tarball(container: str, tarball: Path) -> None:
    """tarball and its .sha256 at ARCHIVE."""
    for suffix in ("", ".sha256"):
        docker("cp", f"{tarball}{suffix}", f"{container}:{ARCHIVE}{suffix}")


@contextlib.contextmanager
def serving_node(name: str, out: Path) -> Iterator[tuple[str, str, bundle_fixture.FixtureBundle]]:
    """(container, address, fixture bundle): the role has served the fixture tarball; removed afterwards."""
    if not docker("images", "-q", IMAGE).stdout.strip():
        pytest.skip(f"{IMAGE} is missing: python3 tools/lab/lab.py image --release bookworm")
    fixture = bundle_fixture.build_bundle(out)
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, "--hostname", name, *lab.NODE_RUN_FLAGS, IMAGE)
    try:
        docker("exec", name, "systemctl", "is-system-running", "--wait", check=False)
        # As on an air-gapped host: no Debian source, no package lists from one (the node image has both).
        docker("exec", name, "sh", "-c", "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources"
               " /var/lib/apt/lists/deb.debian.org_* && mkdir -p /srv/airgap")
        put_tarball(name, fixture.tarball)
        proc = run_role(out, name, ROLE_VARS)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        address = docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()
        yield name, address, fixture
    finally:
        docker("rm", "-f", name, check=False)
