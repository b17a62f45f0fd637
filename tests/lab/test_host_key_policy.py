"""Specification: airgap_host_key_policy against a real sshd in a lab node. strict refuses a host whose key is not
in known_hosts; accept-new records it, and then strict lets the same host in."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGE = "airgap-lab-node:bookworm"
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"
PLAY = [{"hosts": "node", "gather_facts": False, "roles": ["airgap.kubernetes.cluster_defaults"],
         "tasks": [{"ansible.builtin.raw": "echo reached-$(hostname)", "changed_when": False}]}]

pytestmark = pytest.mark.lab


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], text=True, capture_output=True, check=check, timeout=120)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> tuple[str, Path]:
    """(address, private key) of a lab node running sshd with its own fresh host keys."""
    if not _docker("images", "-q", IMAGE).stdout.strip():
        pytest.skip(f"{IMAGE} is missing: python3 tools/lab/lab.py image --release bookworm")
    key = tmp_path_factory.mktemp("sshd") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    name = f"t{os.getpid()}-host-key-policy"
    _docker("rm", "-f", name, check=False)
    _docker("run", "-d", "--name", name, "--hostname", "policy-node", "--entrypoint", "sleep", IMAGE, "infinity")
    try:
        _docker("exec", name, "sh", "-euc", f"""
            ssh-keygen -A >/dev/null && mkdir -p /run/sshd /root/.ssh && chmod 0700 /root/.ssh
            echo '{key.with_suffix(".pub").read_text().strip()}' > /root/.ssh/authorized_keys
            /usr/sbin/sshd""")
        address = _docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                          name).stdout.strip()
        yield address, key
    finally:
        _docker("rm", "-f", name, check=False)


def _play(tmp_path: Path, sshd: tuple[str, Path], policy: str, known_hosts: Path) -> subprocess.CompletedProcess:
    address, key = sshd
    node = {"ansible_host": address, "ansible_user": "root", "ansible_ssh_private_key_file": str(key),
            "airgap_host_key_policy": policy, "airgap_ssh_args": f"-o UserKnownHostsFile={known_hosts}"}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {"node": node}}}))
    (tmp_path / "play.yml").write_text(yaml.safe_dump(PLAY))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           # A control master of its own per run: a reused connection would skip the host-key check.
           "PYTHONPATH": str(REPO / ".collections"), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / f"cp-{policy}")}
    return subprocess.run(["ansible-playbook", "-v", "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml")],
                          capture_output=True, text=True, env=env, timeout=120)


def test_the_strict_policy_refuses_a_host_whose_key_is_unknown(tmp_path, sshd):
    known_hosts = tmp_path / "known_hosts"
    proc = _play(tmp_path, sshd, "strict", known_hosts)
    assert proc.returncode != 0 and "Host key verification failed" in proc.stdout, proc.stdout
    assert not known_hosts.exists() or known_hosts.read_text() == ""


def test_accept_new_records_the_first_key_and_strict_then_lets_that_host_in(tmp_path, sshd):
    known_hosts = tmp_path / "known_hosts"
    first = _play(tmp_path, sshd, "accept-new", known_hosts)
    assert first.returncode == 0 and "reached-policy-node" in first.stdout, first.stdout
    assert subprocess.run(["ssh-keygen", "-F", sshd[0], "-f", str(known_hosts)], capture_output=True).returncode == 0
    again = _play(tmp_path, sshd, "strict", known_hosts)
    assert again.returncode == 0 and "reached-policy-node" in again.stdout, again.stdout
