"""Node labels, taints, readiness and pod CIDRs read from `kubectl get nodes -o json` (plugins/module_utils/node_state.py)."""
from __future__ import annotations

from ansible_collections.airgap.kubernetes.plugins.module_utils import node_state as ns

CP_TAINT = {"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}


def node(name, labels=None, taints=None, ready="True", reason="KubeletReady", message="ok", cidr="10.233.64.0/24",
         ip="172.30.1.11"):
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"taints": taints or [], "podCIDR": cidr},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": message}],
                       "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}}


def test_nothing_to_do_when_labels_and_taints_match():
    nodes = {"items": [node("n1", {"zone": "a"}, [CP_TAINT])]}
    assert ns.label_taint_commands(nodes, {"n1": {"labels": {"zone": "a"}, "taints": [CP_TAINT]}}) == []


def test_missing_or_different_labels_are_set_with_overwrite():
    nodes = {"items": [node("n1", {"zone": "a", "other": "x"})]}
    assert ns.label_taint_commands(nodes, {"n1": {"labels": {"zone": "b", "rack": 3}}}) == [
        ["kubectl", "label", "node", "n1", "--overwrite", "rack=3", "zone=b"]]


def test_missing_taints_are_added_and_foreign_taints_left_alone():
    foreign = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
    nodes = {"items": [node("n1", taints=[foreign])]}
    want = {"n1": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoExecute"}]}}
    assert ns.label_taint_commands(nodes, want) == [["kubectl", "taint", "node", "n1", "--overwrite", "gpu=yes:NoExecute"]]


def test_the_control_plane_taint_is_removed_when_switched_off():
    nodes = {"items": [node("n1", taints=[CP_TAINT])]}
    assert ns.label_taint_commands(nodes, {"n1": {"untaint": [CP_TAINT["key"]]}}) == [
        ["kubectl", "taint", "node", "n1", "node-role.kubernetes.io/master-"]]


def test_a_node_not_registered_yet_is_skipped():
    assert ns.label_taint_commands({"items": []}, {"n9": {"labels": {"a": "b"}}}) == []


def test_not_ready_nodes_are_named_with_the_kubelets_reason():
    nodes = {"items": [node("n1"), node("n2", ready="False", reason="KubeletNotReady",
                                        message="network plugin is not ready: cni config uninitialized")]}
    assert ns.nodes_not_ready(nodes, ["n1", "n2", "n3"]) == [
        "n2: KubeletNotReady: network plugin is not ready: cni config uninitialized",
        "n3: not registered with the API server (its kubelet never joined or cannot reach the API through its "
        "local load balancer)"]


def test_every_node_ready_means_no_problem():
    assert ns.nodes_not_ready({"items": [node("n1"), node("n2")]}, ["n1", "n2"]) == []


def test_pod_cidrs_map_each_node_to_its_cidr_and_address():
    nodes = {"items": [node("n1"), node("n2", cidr="10.233.65.0/24", ip="172.30.1.12"), node("n3", cidr=None)]}
    assert ns.pod_cidrs(nodes) == {"n1": {"pod_cidr": "10.233.64.0/24", "address": "172.30.1.11"},
                                   "n2": {"pod_cidr": "10.233.65.0/24", "address": "172.30.1.12"}}
