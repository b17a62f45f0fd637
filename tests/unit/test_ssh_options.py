"""Specification of the host-key policy: airgap_host_key_policy is what ssh really applies, on a host and on its
bastion hop, read from the ssh command Ansible runs and from `ssh -G` (ssh's own view of its options)."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"
PLAY = [{"hosts": "all:!bastion1", "gather_facts": False, "roles": ["airgap.kubernetes.cluster_defaults"],
         "tasks": [{"ansible.builtin.raw": "true", "ignore_unreachable": True}]}]
# Port 1 on loopback refuses at once: the ssh command line is all the test needs.
HOSTS = {"default": {}, "strict": {"airgap_host_key_policy": "strict"},
         "weakened": {"airgap_host_key_policy": "strict", "airgap_ssh_args": "-o StrictHostKeyChecking=no"}}


def _env() -> dict:
    return {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "PYTHONPATH": str(REPO / ".collections"), "ANSIBLE_FORCE_COLOR": "0"}


def _run(tmp_path: Path, hosts: dict) -> subprocess.CompletedProcess:
    """The play on every host, all behind the bastion bastion1."""
    inventory = {"all": {"hosts": {"bastion1": {"ansible_host": "127.0.0.99", "ansible_port": 1}},
                         "children": {"bastion": {"hosts": {"bastion1": {}}}}}}
    for number, (name, hostvars) in enumerate(hosts.items(), start=2):
        inventory["all"]["hosts"][name] = {"ansible_host": f"127.0.0.{number}", "ansible_port": 1, **hostvars}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(yaml.safe_dump(PLAY))
    return subprocess.run(["ansible-playbook", "-vvv", "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml")],
                          capture_output=True, text=True, env=_env(), timeout=120)


def ssh_commands(tmp_path: Path, hosts: dict) -> dict:
    """host -> the argv of the ssh command Ansible runs for it (ssh_args, then the inventory's options)."""
    address = {f"127.0.0.{n}": name for n, name in enumerate(hosts, start=2)}
    proc = _run(tmp_path, hosts)
    found = {}
    for line in proc.stdout.splitlines():
        if "SSH: EXEC ssh " in line:
            argv = shlex.split(line.split("SSH: EXEC ", 1)[1])
            found[address[argv[-2]]] = argv[:-2]  # without the host and the remote command
    assert set(found) == set(hosts), proc.stdout + proc.stderr
    return found


def effective(argv: list, host: str = "node.example") -> dict:
    """ssh's own resolved configuration for these options: `ssh -G`, which neither connects nor resolves."""
    options = [a for a in argv[1:] if a != "-tt"]
    proc = subprocess.run(["ssh", "-G", *options, host], capture_output=True, text=True, check=True,
                          env={**os.environ, "HOME": "/nonexistent"})
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


def proxy_command(argv: list) -> list:
    """The bastion hop's ssh argv, from the ProxyCommand option."""
    value = next(a.split("=", 1)[1] for a in argv if a.startswith("ProxyCommand="))
    return [a for a in shlex.split(value) if a not in ("-W", "%h:%p")]


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> dict:
    return ssh_commands(tmp_path_factory.mktemp("ssh"), HOSTS)


def test_the_default_policy_records_a_new_hosts_key_and_refuses_a_changed_one(commands):
    assert effective(commands["default"])["stricthostkeychecking"] == "accept-new"
    assert effective(proxy_command(commands["default"]))["stricthostkeychecking"] == "accept-new"


def test_the_strict_policy_is_what_ssh_applies(commands):
    assert effective(commands["strict"])["stricthostkeychecking"] == "true"


def test_the_strict_policy_reaches_the_bastion_hop_too(commands):
    hop = proxy_command(commands["strict"])
    assert hop[0] == "ssh" and effective(hop)["stricthostkeychecking"] == "true"


def test_strict_host_key_checking_in_airgap_ssh_args_cannot_weaken_the_policy(commands):
    # ssh keeps an option's first value: the policy comes before airgap_ssh_args, and ansible.cfg sets none.
    assert effective(commands["weakened"])["stricthostkeychecking"] == "true"
    assert effective(proxy_command(commands["weakened"]))["stricthostkeychecking"] == "true"


def test_an_unknown_policy_fails_the_connection_naming_the_setting_and_the_values(tmp_path):
    proc = _run(tmp_path, {"typo": {"airgap_host_key_policy": "no"}})
    assert "airgap_host_key_policy no is not a host-key policy: use accept-new or strict" in proc.stdout + proc.stderr


def test_ansible_cfg_leaves_the_host_key_policy_to_the_inventory():
    cfg = (REPO / "ansible.cfg").read_text()
    ssh_args = next(line for line in cfg.splitlines() if line.startswith("ssh_args"))
    assert "StrictHostKeyChecking" not in ssh_args
