"""Specification of the control plane (role control_plane): kubeadm's v1.20.2 control plane on layer 02's etcd,
reached with admin.conf; the inventory's labels and taints on the Nodes; Secrets encrypted at rest with the
configuration the role wrote; kube-apiserver running with the flags the settings ask for."""
from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

from cluster import CONTROL, IPS, KUBE_VERSION, WORKER, kubectl, kubectl_json, nodes

testinfra_hosts = [f"docker://{CONTROL}"]

# Line 1.20's control-plane taint (plugins/module_utils/kubeadm_config.py).
CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}
ENCRYPTION_DIR = "/etc/kubernetes/encryption"


def _apiserver_flags(host) -> dict:
    """--name=value flags of the running kube-apiserver process."""
    pid = host.check_output("pgrep -o -x kube-apiserver")
    argv = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").splitlines()
    return dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)


def test_the_api_server_is_ready_at_the_lab_version(host):
    assert kubectl("get", "--raw", "/readyz").stdout == "ok"
    version = kubectl_json("version")
    assert version["serverVersion"]["gitVersion"] == KUBE_VERSION


def test_the_control_plane_components_run_as_static_pods(host):
    pods = kubectl_json("get", "pods", "-n", "kube-system")["items"]
    running = {p["metadata"]["name"] for p in pods if p["status"]["phase"] == "Running"}
    for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert f"{component}-{CONTROL}" in running, sorted(running)
    # No stacked etcd: layer 02's etcd serves the API server.
    assert not any(name.startswith("etcd-") for name in running), sorted(running)


def test_nodes_carry_the_inventorys_labels_and_taints(host):
    cluster = nodes()
    control_taints = [{k: t[k] for k in ("key", "effect")} for t in cluster[CONTROL]["spec"].get("taints", [])]
    assert control_taints == [CONTROL_PLANE_TAINT]
    worker = cluster[WORKER]
    assert worker["metadata"]["labels"]["airgap.example/pool"] == "workers"
    assert worker["spec"]["taints"] == [{"key": "airgap.example/dedicated", "value": "workers",
                                         "effect": "PreferNoSchedule"}]


def test_the_api_server_runs_with_the_settings_flags(host):
    flags = _apiserver_flags(host)
    assert flags["enable-admission-plugins"] == "NodeRestriction,AlwaysPullImages"
    assert flags["profiling"] == "false"
    assert flags["shutdown-delay-duration"] == "10s"
    assert flags["advertise-address"] == IPS[CONTROL]
    # kube_apiserver_extra_args in the scenario's inventory.
    assert flags["default-not-ready-toleration-seconds"] == "120"
    # Layer 02's etcd, with the client certificate this role had its CA sign.
    assert flags["etcd-servers"] == f"https://{IPS[CONTROL]}:2379"
    assert flags["etcd-cafile"] == "/etc/kubernetes/pki/etcd-external/ca.crt"
    assert flags["etcd-certfile"] == "/etc/kubernetes/pki/etcd-external/apiserver-etcd-client.crt"
    # The audit policy and log.
    assert host.file(flags["audit-policy-file"]).mode == 0o600
    assert flags["audit-log-path"] == "/var/log/kubernetes/audit/audit.log"
    assert host.file(flags["audit-log-path"]).size > 0


def test_the_encryption_configuration_is_in_place(host):
    path = _apiserver_flags(host)["encryption-provider-config"]
    assert os.path.dirname(path) == ENCRYPTION_DIR
    config = host.file(path)
    assert config.mode == 0o600 and config.user == "root"
    document = yaml.safe_load(config.content_string)
    assert document["kind"] == "EncryptionConfiguration"
    (resource,) = document["resources"]
    assert resource["resources"] == ["secrets"]
    # secretbox first (what new writes use); identity after it only reads what predates encryption.
    assert list(resource["providers"][0]) == ["secretbox"]
    assert resource["providers"][1:] == [{"identity": {}}]
    keys = resource["providers"][0]["secretbox"]["keys"]
    assert len(keys) == 1 and keys[0]["name"].startswith("key-")
    assert host.file(f"{ENCRYPTION_DIR}/keys.json").mode == 0o600


def test_a_secret_is_stored_encrypted_in_etcd(host):
    name = f"airgap-probe-{int(time.time())}"
    plaintext = "not-in-etcd-as-such"
    kubectl("create", "secret", "generic", name, f"--from-literal=probe={plaintext}")
    try:
        assert kubectl("get", "secret", name, "-o", "jsonpath={.data.probe}").stdout.strip()
        stored = host.check_output("sh -c %s", "set -a; . /etc/etcd/etcdctl.env; set +a; "
                                   f"etcdctl get --print-value-only /registry/secrets/default/{name}"
                                   " | tr -c '[:print:]' '?'")
        assert stored.startswith("k8s:enc:secretbox:v1:key-"), stored[:80]
        assert plaintext not in stored
    finally:
        kubectl("delete", "secret", name, check=False)


def test_the_admin_kubeconfig_was_handed_to_the_controller(host):
    # roles/control_plane/tasks/nodes.yml: next to the inventory, pointing at the first control plane.
    handed = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory" / ".airgap" / "admin.conf"
    assert handed.stat().st_mode & 0o777 == 0o600
    config = yaml.safe_load(handed.read_text())
    assert config["clusters"][0]["cluster"]["server"] == f"https://{IPS[CONTROL]}:6443"
    on_node = yaml.safe_load(host.file("/etc/kubernetes/admin.conf").content_string)
    assert config["users"] == on_node["users"]
