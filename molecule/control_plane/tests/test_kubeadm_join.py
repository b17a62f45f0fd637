"""Specification of the worker's join (role kubeadm_join): the worker is a Node of the cluster, its kubelet reaches
the API through the node's own balancer, and the join's credentials (a short-lived token, a join configuration under
/run) are nowhere on the disks they passed through."""
from __future__ import annotations

import yaml

from cluster import CONTROL, LB_PORT, WORKER, kubectl, node, nodes

testinfra_hosts = [f"docker://{WORKER}"]

JOIN_CONFIG = "/run/airgap-kubeadm-join.yaml"
# Where a token could have been written on the way: configuration, state, temporary and log directories.
SEARCHED = "/etc /run /tmp /root /var/lib/kubelet /var/log /var/tmp"
# kubeadm's token format, id.secret: [a-z0-9]{6}.[a-z0-9]{16}.
TOKEN_PATTERN = r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b"


def _bootstrap_tokens() -> list[str]:
    """The cluster's bootstrap tokens (id.secret) as kubeadm keeps them: Secrets in kube-system."""
    secrets = kubectl("get", "secrets", "-n", "kube-system", "--field-selector", "type=bootstrap.kubernetes.io/token",
                      "-o", "jsonpath={range .items[*]}{.data.token-id} {.data.token-secret}{\"\\n\"}{end}").stdout
    tokens = []
    for line in secrets.split("\n"):
        if line.strip():
            token_id, secret = (node(CONTROL).check_output(f"echo {part} | base64 -d") for part in line.split())
            tokens.append(f"{token_id}.{secret}")
    return tokens


def test_the_worker_is_a_node_of_the_cluster(host):
    worker = nodes()[WORKER]
    assert worker["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"
    # No control-plane role: it joined as a worker.
    assert not any(label.startswith("node-role.kubernetes.io/") for label in worker["metadata"]["labels"])
    assert not host.file("/etc/kubernetes/manifests/kube-apiserver.yaml").exists


def test_the_kubelet_reaches_the_api_through_the_local_balancer(host):
    config = yaml.safe_load(host.file("/etc/kubernetes/kubelet.conf").content_string)
    assert [c["cluster"]["server"] for c in config["clusters"]] == [f"https://localhost:{LB_PORT}"]
    # Its live connections go to the balancer, none straight to the control plane's API server.
    connections = host.check_output("ss -Htnp state established")
    kubelet = [line.split()[3] for line in connections.splitlines() if '"kubelet"' in line]
    assert f"127.0.0.1:{LB_PORT}" in kubelet, connections
    assert not any(peer.endswith(":6443") for peer in kubelet), connections


def test_no_join_configuration_is_left(host):
    assert not host.file(JOIN_CONFIG).exists
    assert not node(CONTROL).file(JOIN_CONFIG).exists
    # kubeadm removes the bootstrap kubeconfig (it holds the token) once the kubelet has its own certificate.
    assert not host.file("/etc/kubernetes/bootstrap-kubelet.conf").exists


def test_no_join_token_is_on_the_workers_disk(host):
    # Neither one the cluster still lists nor anything shaped like a bootstrap token (one may have expired already).
    for token in _bootstrap_tokens():
        found = host.run(f"grep -rIlsF {token} {SEARCHED}")
        assert found.rc == 1 and not found.stdout, f"token {token.split('.')[0]} is in {found.stdout}"
    found = host.run(f"grep -rIlsE '{TOKEN_PATTERN}' {SEARCHED}")
    assert found.rc == 1 and not found.stdout, f"something shaped like a bootstrap token is in {found.stdout}"


def test_no_bootstrap_token_outlives_the_join_token_lifetime(host):
    # kubeadm init makes a 24-hour token unless its configuration names one: ours says 15 minutes.
    expirations = kubectl("get", "secrets", "-n", "kube-system", "--field-selector",
                          "type=bootstrap.kubernetes.io/token", "-o",
                          "jsonpath={range .items[*]}{.data.expiration}{\"\\n\"}{end}").stdout.split()
    assert expirations, "kubeadm init and the join made bootstrap tokens"
    now = int(node(CONTROL).check_output("date +%s"))
    for encoded in expirations:
        expires = int(node(CONTROL).check_output(f"date -d \"$(echo {encoded} | base64 -d)\" +%s"))
        assert expires - now <= 15 * 60, f"a bootstrap token lives {(expires - now) // 60} more minutes"
