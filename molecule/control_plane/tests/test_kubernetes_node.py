"""Specification of a prepared Kubernetes node (layer 03's "Prepare the Kubernetes nodes" play, role kubernetes_node)
on the control plane and the worker: kubelet, kubeadm and kubectl from the bundle at the lab's v1.20.2, byte for byte
the bundle's; the kubelet's unit in kubeadm's layout, enabled, and running since kubeadm started it."""
from __future__ import annotations

import json

import yaml

from cluster import FIXTURE, KUBE_NODES, KUBE_VERSION

testinfra_hosts = [f"docker://{name}" for name in KUBE_NODES]

BIN = "/usr/local/bin"
MIRROR = f"files/dl.k8s.io/release/{KUBE_VERSION}/bin/linux/amd64"


def test_binaries_report_the_lab_kubernetes_version(host):
    assert host.check_output(f"{BIN}/kubeadm version -o short").strip() == KUBE_VERSION
    assert host.check_output(f"{BIN}/kubelet --version").strip() == f"Kubernetes {KUBE_VERSION}"
    assert KUBE_VERSION in host.check_output(f"{BIN}/kubectl version --client --short")


def test_binaries_are_the_bundle_files_and_match_the_catalog_sha256(host):
    overlay = yaml.safe_load((FIXTURE / "runtime-overlay.yml").read_text())
    manifest = json.loads((FIXTURE / "airgap-bundle" / "manifest.json").read_text())
    for name in ("kubeadm", "kubelet", "kubectl"):
        installed = host.file(f"{BIN}/{name}")
        assert installed.mode == 0o755 and installed.user == "root", name
        assert installed.sha256sum == overlay["components"][name]["sha256"]["amd64"][KUBE_VERSION[1:]], name
        assert installed.sha256sum == manifest["files"][f"{MIRROR}/{name}"]["sha256"], name


def test_kubelet_runs_from_kubeadms_unit_layout(host):
    kubelet = host.service("kubelet")
    assert kubelet.is_enabled
    assert kubelet.is_running
    # kubeadm's drop-in replaces the unit's ExecStart with one that takes the flags kubeadm writes.
    unit = host.check_output("systemctl show kubelet -p DropInPaths -p ExecStart -p Environment")
    assert "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf" in unit
    assert f"argv[]={BIN}/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS" in unit
    assert "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf" in unit
    assert "KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml" in unit
    # kubeadm filled in what the unit reads.
    assert host.file("/var/lib/kubelet/config.yaml").is_file
    assert host.file("/var/lib/kubelet/kubeadm-flags.env").is_file
    assert host.file("/etc/kubernetes/manifests").is_directory


def test_kubelet_runs_with_the_lab_settings(host):
    config = yaml.safe_load(host.file("/var/lib/kubelet/config.yaml").content_string)
    # tools/lab/node-settings.yml, through the kubeadm configuration.
    assert config["failSwapOn"] is False
    assert config["evictionHard"] == {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"}
    assert config["imageGCHighThresholdPercent"] == 100
    assert config["imageGCLowThresholdPercent"] == 99
    # The collection's security defaults.
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    # 0 (no read-only port) is the config file's default, which the serialised configuration leaves out.
    assert config.get("readOnlyPort", 0) == 0
    assert ":10255 " not in host.check_output("ss -Hltn")
    assert config["cgroupDriver"] == "systemd"
