"""Network and bundle checks that run before any host changes (plugins/module_utils/preflight.py)."""
from __future__ import annotations

from ansible_collections.airgap.kubernetes.plugins.module_utils import preflight as pf

NODES = {"node1": "172.30.1.11", "node2": "172.30.1.12"}


def test_disjoint_networks_outside_the_node_network_pass():
    assert pf.network_problems("10.233.64.0/18", "10.233.0.0/18", NODES, 24) == []


def test_pod_and_service_networks_that_overlap_are_named():
    problems = pf.network_problems("10.233.0.0/16", "10.233.0.0/18", NODES, 24)
    assert problems == ["kube_pods_subnet 10.233.0.0/16 overlaps kube_service_addresses 10.233.0.0/18: "
                        "give them disjoint ranges"]


def test_a_pod_network_holding_a_node_address_is_named_with_the_node():
    problems = pf.network_problems("172.30.0.0/16", "10.233.0.0/18", NODES, 24)
    assert "kube_pods_subnet 172.30.0.0/16 holds node1's address 172.30.1.11" in problems[0]
    assert len(problems) == 2


def test_an_invalid_cidr_is_named():
    assert "kube_service_addresses '10.0.0.300/24' is not a network" in \
        pf.network_problems("10.233.64.0/18", "10.0.0.300/24", {}, 24)[0]


def test_a_node_prefix_outside_the_pod_network_is_named():
    assert "kube_network_node_prefix 16" in pf.network_problems("10.233.64.0/18", "10.233.0.0/18", {}, 16)[0]


def test_a_hostname_address_is_left_to_the_inventory_checks():
    assert pf.network_problems("10.233.64.0/18", "10.233.0.0/18", {"n": "node1.example"}, 24) == []


def test_files_and_images_the_bundle_lacks_are_named_with_the_version_it_carries():
    manifest = {"files": {"files/dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubeadm": {}},
                "images": {"registry.k8s.io/pause:3.2": {}}, "versions": {"kubeadm": "1.20.2"}}
    files = [{"name": "kubeadm", "version": "1.20.3", "mirror_path": "dl.k8s.io/release/v1.20.3/bin/linux/amd64/kubeadm"}]
    images = [{"canonical": "registry.k8s.io/pause:3.2"}, {"canonical": "registry.k8s.io/kube-proxy:v1.20.3"}]
    problems = pf.bundle_lacks(manifest, files, images)
    assert problems[0].startswith("kubeadm 1.20.3 is not in the bundle (it carries 1.20.2): set kube_version")
    assert problems[1].startswith("image registry.k8s.io/kube-proxy:v1.20.3 is not in the bundle")
    assert len(problems) == 2
