"""Specification of a prepared Kubernetes node (layer 03's "Prepare the Kubernetes nodes" play): kubelet, kubeadm
and kubectl from the bundle at the lab's v1.20.2, byte for byte the bundle's; the kubelet's unit in kubeadm's layout,
enabled but left stopped for kubeadm; haproxy from the bundle on loopback only, health-checking every control plane's
API server."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

testinfra_hosts = ["ansible://mol-k8s-node"]

NODE = "mol-k8s-node"
NODE_IP = "10.213.63.11"
KUBE_VERSION = "1.20.2"
BIN = "/usr/local/bin"
MIRROR = f"files/dl.k8s.io/release/v{KUBE_VERSION}/bin/linux/amd64"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
FIXTURE = Path(os.environ.get("RUNTIME_FIXTURE_DIR", Path.home() / ".cache/airgap-kubernetes/runtime-fixture"))


def _config_section(config: str, header: str) -> list[str]:
    """The stripped lines of one haproxy section (`backend kube_apiserver`), up to the next section."""
    lines = config.splitlines()
    start = lines.index(header) + 1
    section = []
    for line in lines[start:]:
        if line and not line[0].isspace():
            break
        if line.strip() and not line.strip().startswith("#"):
            section.append(line.strip())
    return section


def test_binaries_report_the_lab_kubernetes_version(host):
    assert host.check_output(f"{BIN}/kubeadm version -o short").strip() == f"v{KUBE_VERSION}"
    assert host.check_output(f"{BIN}/kubelet --version").strip() == f"Kubernetes v{KUBE_VERSION}"
    assert f"v{KUBE_VERSION}" in host.check_output(f"{BIN}/kubectl version --client --short")


def test_binaries_are_the_bundle_files_and_match_the_catalog_sha256(host):
    overlay = yaml.safe_load((FIXTURE / "runtime-overlay.yml").read_text())
    manifest = json.loads((FIXTURE / "airgap-bundle" / "manifest.json").read_text())
    for name in ("kubeadm", "kubelet", "kubectl"):
        installed = host.file(f"{BIN}/{name}")
        assert installed.mode == 0o755 and installed.user == "root", name
        assert installed.sha256sum == overlay["components"][name]["sha256"]["amd64"][KUBE_VERSION], name
        assert installed.sha256sum == manifest["files"][f"{MIRROR}/{name}"]["sha256"], name


def test_kubelet_is_enabled_but_left_for_kubeadm_to_start(host):
    kubelet = host.service("kubelet")
    assert kubelet.is_enabled
    assert not kubelet.is_running
    assert host.run("systemctl is-failed kubelet").stdout.strip() != "failed"
    # kubeadm's drop-in replaces the unit's ExecStart with one that takes the flags kubeadm writes.
    unit = host.check_output("systemctl show kubelet -p DropInPaths -p ExecStart -p Environment")
    assert "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf" in unit
    assert f"argv[]={BIN}/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS" in unit
    assert "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf" in unit
    assert "KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml" in unit
    assert host.file("/etc/kubernetes/manifests").is_directory


def test_haproxy_runs_under_systemd_from_the_bundle_repo(host):
    haproxy = host.service("haproxy")
    assert haproxy.is_running and haproxy.is_enabled
    policy = host.check_output("apt-cache policy haproxy")
    assert "bundle.airgap.internal" in policy, policy


def test_haproxy_listens_on_loopback_only(host):
    listening = host.check_output("ss -Hltnp")
    haproxy = sorted(line.split()[3] for line in listening.splitlines() if '"haproxy"' in line)
    assert haproxy == ["127.0.0.1:6444"], listening


def test_haproxy_health_checks_every_control_plane_api_server(host):
    backend = _config_section(host.file(HAPROXY_CFG).content_string, "backend kube_apiserver")
    assert "option httpchk GET /readyz" in backend
    default_server = next(line.split() for line in backend if line.startswith("default-server "))
    assert "check" in default_server and "check-ssl" in default_server
    assert f"server {NODE} {NODE_IP}:6443" in backend
    assert host.run(f"haproxy -c -f {HAPROXY_CFG}").rc == 0


def test_haproxy_marks_an_api_server_that_is_not_ready_down(host):
    # No API server runs yet (kubeadm has not), so the active check takes the node's server out.
    log = host.check_output("journalctl --no-pager -u haproxy")
    assert re.search(rf"Server kube_apiserver/{NODE} is DOWN", log), log
