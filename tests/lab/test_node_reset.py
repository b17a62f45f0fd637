"""Specification of roles/node_reset (playbooks/remove-cluster.yml) on a real lab node, without a deploy first: a
footprint like the deploy's is planted (a unit, a mount under the kubelet's directory, the bridge, configuration and
state files), beside things the site owns that look alike (a unit, a link, a mount, files next to ours). The reset
must take exactly ours, and a second run must change nothing. The lab image has no iptables (the deploy installs it
from the bundle), so the rules are not planted here: tests/e2e/test_deploy_layers.py compares each node's
iptables-save, files, units and mounts before a real deploy and after remove-cluster."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.tools.lab import lab

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"

pytestmark = pytest.mark.lab

UNIT = "[Unit]\nDescription={}\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"

PLANT = f"""set -eu
# The deploy's.
mkdir -p /etc/kubernetes/manifests /var/lib/kubelet/pods/p1/volumes/v /var/lib/etcd/member /etc/etcd/pki \
    /etc/cni/net.d /etc/containerd/certs.d/registry.k8s.io /var/lib/airgap-kubernetes
echo ours > /etc/kubernetes/admin.conf
echo ours > /var/lib/etcd/member/db
echo ours > /etc/etcd/pki/ca.crt
echo '{{}}' > /etc/cni/net.d/10-airgap-bridge.conflist
echo ours > /etc/containerd/certs.d/registry.k8s.io/hosts.toml
echo br_netfilter > /etc/modules-load.d/airgap-kubernetes.conf
echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/99-airgap-kubernetes.conf
mount -t tmpfs kubelet-volume /var/lib/kubelet/pods/p1/volumes/v
printf '{UNIT.format("ours")}' > /etc/systemd/system/airgap-pod-network.service
ip link add cni0 type bridge
# The site's, next to ours and alike.
mkdir -p /mnt/site-data /etc/site
echo site > /etc/site/agent.conf
echo site > /etc/modules-load.d/site.conf
mount -t tmpfs site-data /mnt/site-data
printf '{UNIT.format("site")}' > /etc/systemd/system/site-agent.service
ip link add site0 type bridge
systemctl daemon-reload
systemctl enable --now airgap-pod-network.service site-agent.service 2>/dev/null
"""

# What the site owns, as one listing: each line must be the same after the reset.
SITE_STATE = """set -u
cat /etc/site/agent.conf /etc/modules-load.d/site.conf
systemctl is-active site-agent.service; systemctl is-enabled site-agent.service
ip -o link show site0 | awk '{print $2}'
awk '$5 == "/mnt/site-data" {print $5}' /proc/self/mountinfo
"""

OURS_LEFT = """set -u
for f in /etc/kubernetes /var/lib/kubelet /var/lib/etcd /etc/etcd /etc/cni/net.d/10-airgap-bridge.conflist \
    /etc/containerd /etc/modules-load.d/airgap-kubernetes.conf /etc/sysctl.d/99-airgap-kubernetes.conf \
    /etc/systemd/system/airgap-pod-network.service /var/lib/airgap-kubernetes; do
  [ -e "$f" ] && echo "file $f"
done
awk 'index($5, "/var/lib/kubelet") == 1 {print "mount " $5}' /proc/self/mountinfo
ip link show cni0 >/dev/null 2>&1 && echo "link cni0"
systemctl is-active --quiet airgap-pod-network.service && echo "unit airgap-pod-network.service"
exit 0
"""


@pytest.fixture(scope="module")
def node() -> lab.Lab:
    name = f"t{os.getpid()}-reset"
    try:
        the_lab = lab.up(name, nodes=1)
        yield the_lab
    finally:
        lab.down(name)


def _on_node(the_lab: lab.Lab, script: str) -> str:
    proc = subprocess.run(the_lab.ssh_args("node1") + ["bash", "-s"], input=script, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _remove_cluster(the_lab: lab.Lab) -> tuple[str, dict[str, int]]:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "PYTHONPATH": str(REPO / ".collections"), "NO_COLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    # -v: the script's RESET-CHANGED lines are in the task result. The catalog's default line: the lab's v1.20.2
    # needs the catalog overlay that a lab bundle brings, and the reset only needs the artifacts' paths.
    proc = subprocess.run(["ansible-playbook", "-v", "-i", str(the_lab.dir / "inventory"), "-e", "kube_version=",
                           str(REPO / "playbooks" / "remove-cluster.yml")],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    recap = re.search(r"^node1\s+:.*?changed=(\d+).*?failed=(\d+)", proc.stdout, re.M)
    assert recap, proc.stdout[-2000:]
    return proc.stdout, {"changed": int(recap[1]), "failed": int(recap[2])}


def test_node_reset_takes_the_deploys_footprint_and_nothing_of_the_sites(node):
    _on_node(node, PLANT)
    site_before = _on_node(node, SITE_STATE)
    assert "site0" in site_before and "/mnt/site-data" in site_before
    assert "file /etc/kubernetes" in _on_node(node, OURS_LEFT)

    out, recap = _remove_cluster(node)
    assert recap == {"changed": 1, "failed": 0}, out[-3000:]
    assert _on_node(node, OURS_LEFT) == "", "left by the reset"
    assert _on_node(node, SITE_STATE) == site_before, "the site's own units, links, mounts and rules changed"
    for said in ("stopped airgap-pod-network.service", "unmounted 1 mount(s) under /var/lib/kubelet",
                 "deleted the bridge cni0"):
        assert said in out, f"the reset did not report: {said}"

    out, recap = _remove_cluster(node)
    assert recap == {"changed": 0, "failed": 0}, f"a second reset changed something:\n{out[-3000:]}"
    assert _on_node(node, SITE_STATE) == site_before
