"""End to end: run.sh drives the layers over SSH on lab nodes whose network has no route out."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.airgap.kubernetes.tools import steps
from ansible_collections.airgap.kubernetes.tools.lab import lab as lablib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import node_state as node_states  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LAB = [sys.executable, str(REPO / "tools" / "lab" / "lab.py")]
NAME = "e2e"

pytestmark = [pytest.mark.e2e, pytest.mark.lab]


def run_sh(*args: str, inventory: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(REPO / "run.sh"), *args, "-i", str(inventory)], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, "NO_COLOR": "1"}, timeout=1800)
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def lab():
    """A 3-node lab plus bundle host on an --internal network, torn down even after a failure."""
    subprocess.run(LAB + ["down", NAME], cwd=REPO, check=False, capture_output=True)
    subprocess.run(LAB + ["up", NAME, "--nodes", "3", "--internal"], cwd=REPO, check=True, timeout=900)
    inventory = REPO / ".lab" / NAME / "inventory" / "hosts.yml"
    # This lab gets no bundle, so no catalog overlay with the checksums of the lab's own v1.20.2 build: layer 00,
    # which resolves kube_version's artifacts from the catalog, runs against the catalog's default line instead.
    (inventory.parent / "group_vars" / "all" / "zz-e2e-no-bundle.yml").write_text("---\nkube_version: v1.36.4\n")
    try:
        yield inventory
    finally:
        subprocess.run(LAB + ["down", NAME], cwd=REPO, check=False)


def wait_for_ssh(nodes: list[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    for node in nodes:
        while subprocess.run(LAB + ["ssh", NAME, node, "true"], cwd=REPO, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, f"{node} did not answer SSH within {seconds} s"
            time.sleep(0.5)


def drop_ssh_masters(inventory: Path) -> None:
    for sock in steps.ssh_control_dir(inventory).glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "lab"], capture_output=True)


def hosts_of(inventory: Path) -> dict[str, dict]:
    return yaml.safe_load(inventory.read_text())["all"]["hosts"]


def derived_inventory(inventory: Path, name: str, change) -> Path:
    """A copy of the lab inventory, changed by `change`, in its own directory (own step file)."""
    data = yaml.safe_load(inventory.read_text())
    change(data)
    target = inventory.parent.parent / name / "hosts.yml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(data))
    src_vars = inventory.parent / "group_vars"
    if src_vars.exists() and not (target.parent / "group_vars").exists():
        (target.parent / "group_vars").symlink_to(src_vars)
    return target


def test_layer_00_reaches_every_node_and_caches_facts(lab):
    proc = run_sh("deploy-cluster", "--only", "00-ssh", inventory=lab)
    assert proc.returncode == 0
    facts = lab.parent / ".airgap" / "facts"
    # ansible-core 2.19's jsonfile cache names each file <schema prefix>_<host>.
    cached = {p.name.split("_", 1)[-1]: p for p in facts.iterdir()}
    assert set(hosts_of(lab)) <= set(cached)
    node1 = json.loads(json.loads(cached["node1"].read_text())["__payload__"])
    assert node1["ansible_distribution"] == "Debian"


def test_a_rerun_of_layer_00_skips_it(lab):
    run_sh("deploy-cluster", "--only", "00-ssh", inventory=lab)
    proc = run_sh("steps", inventory=lab)
    assert proc.returncode == 0
    assert "00-ssh" in proc.stdout and "done" in proc.stdout


def test_unreachable_hosts_are_all_listed_one_line_each(lab):
    stopped = [f"{NAME}-node2", f"{NAME}-node3"]
    hosts = hosts_of(lab)
    subprocess.run(["docker", "stop", "-t", "1", *stopped], check=True, capture_output=True)
    try:
        proc = run_sh("deploy-cluster", "--only", "00-ssh", inventory=lab)
    finally:
        subprocess.run(["docker", "start", *stopped], check=True, capture_output=True)
        wait_for_ssh(["node2", "node3"])
    assert proc.returncode != 0
    assert "2 host(s) unreachable" in proc.stdout
    for node in ("node2", "node3"):
        line = next(l for l in proc.stdout.splitlines() if l.strip().startswith(f"- {node} ("))
        assert f"({hosts[node]['ansible_host']}, user root)" in line
    assert "- node1 (" not in proc.stdout


def test_nodes_behind_a_bastion_are_reached_through_it(lab):
    hosts = hosts_of(lab)
    gateway = subprocess.run(["docker", "network", "inspect", f"airgap-lab-{NAME}", "-f",
                              "{{(index .IPAM.Config 0).Gateway}}"], capture_output=True, text=True,
                             check=True).stdout.strip()

    def with_bastion(data):
        data["all"]["children"]["bastion"] = {"hosts": {"bundle": {}}}

    inventory = derived_inventory(lab, "inventory-bastion", with_bastion)
    # node1 now refuses SSH sessions that come straight from this host: only the bastion's path works.
    deny = f"echo 'DenyUsers root@{gateway}' > /etc/ssh/sshd_config.d/e2e-deny.conf && systemctl reload ssh"
    subprocess.run(["docker", "exec", f"{NAME}-node1", "sh", "-c", deny], check=True)
    drop_ssh_masters(lab)  # a master opened earlier would carry the session past DenyUsers
    try:
        direct = run_sh("deploy-cluster", "--only", "00-ssh", inventory=lab)
        through = run_sh("deploy-cluster", "--only", "00-ssh", inventory=inventory)
    finally:
        subprocess.run(["docker", "exec", f"{NAME}-node1", "sh", "-c",
                        "rm -f /etc/ssh/sshd_config.d/e2e-deny.conf && systemctl reload ssh"], check=True)
        wait_for_ssh(["node1"])
    assert direct.returncode != 0 and f"- node1 ({hosts['node1']['ansible_host']}, user root)" in direct.stdout
    assert through.returncode == 0


def _even_etcd(data):
    data["all"]["children"]["etcd"] = {"hosts": {"node1": {}, "node2": {}}}


def _stray_host(data):
    data["all"]["hosts"]["node9"] = {"ansible_host": "172.30.255.9"}


def _duplicate_address(data):
    data["all"]["hosts"]["node3"]["ansible_host"] = data["all"]["hosts"]["node2"]["ansible_host"]


def _no_control_plane(data):
    data["all"]["children"]["kube_control_plane"] = {"hosts": {}}


def _control_plane_outside_k8s_cluster(data):
    data["all"]["children"]["k8s_cluster"]["children"].pop("kube_control_plane")


def _bad_node_name(data):
    data["all"]["hosts"]["Node_4"] = {"ansible_host": "172.30.255.4"}
    data["all"]["children"]["kube_node"]["hosts"]["Node_4"] = {}


def _two_bundle_servers(data):
    data["all"]["children"]["bundle_server"]["hosts"]["node3"] = {}


def _lax_host_keys(data):
    data["all"]["hosts"]["node2"]["airgap_host_key_policy"] = "lax"


def _strict_in_ssh_args(data):
    data["all"]["hosts"]["node2"]["airgap_ssh_args"] = "-o StrictHostKeyChecking=no"


def _no_bundle_server(data):
    data["all"]["children"]["bundle_server"] = {"hosts": {}}


# Each broken input, as an inventory change or extra vars, and a line its report must hold. The first ones fail
# before any host is contacted; the last ones are found by layer 00's read-only probe of the hosts.
BROKEN = [
    ("even-etcd", _even_etcd, [], "etcd has 2 members (node1, node2)"),
    ("stray-host", _stray_host, [], "host node9 is in no group ("),
    ("duplicate-address", _duplicate_address, [], "hosts node2, node3 share the address {node2}"),
    ("no-control-plane", _no_control_plane, [], "group kube_control_plane is empty or missing"),
    ("cp-outside", _control_plane_outside_k8s_cluster, [], "in kube_control_plane but not in k8s_cluster"),
    ("bad-node-name", _bad_node_name, [], "host Node_4 is not a valid node name (RFC 1123"),
    ("two-bundle-servers", _two_bundle_servers, [], "bundle_server has 2 hosts: it takes exactly one"),
    ("no-bundle-server", _no_bundle_server, [], "group bundle_server is empty or missing"),
    ("lax-host-keys", _lax_host_keys, [], "airgap_host_key_policy 'lax' is not a host-key policy"),
    ("strict-in-ssh-args", _strict_in_ssh_args, [], "airgap_ssh_args sets StrictHostKeyChecking"),
    ("pods-over-services", None, ["-e", "kube_pods_subnet=10.233.0.0/16"],
     "kube_pods_subnet 10.233.0.0/16 overlaps kube_service_addresses"),
    ("pods-over-nodes", None, ["-e", "kube_pods_subnet=172.30.0.0/16"],
     "kube_pods_subnet 172.30.0.0/16 holds node1's address"),
    ("cert-validity", None, ["-e", "kube_cert_validity_hours=0"], "kube_cert_validity_hours must be positive, not 0"),
    ("unknown-cni", None, ["-e", "kube_network_plugin=weave"], "kube_network_plugin 'weave' is not supported"),
    ("no-checksum", None, ["-e", "kube_version=v1.36.99"], "kube_version v1.36.99 has no sha256 for kubeadm/amd64"),
    ("memory", None, ["-e", '{"airgap_min_memory_mb": {"kube_node": 99999999}}'],
     "MiB of memory, its role needs 99999999 MiB"),
    ("disk", None, ["-e", "airgap_min_free_disk_mb=99999999"], "MiB free on /var, it needs 99999999 MiB"),
]
PROBED = {"memory", "disk"}


@pytest.fixture(scope="module")
def pristine(lab):
    """Each node's files, units, mounts and iptables rules before any broken run."""
    wait_for_ssh(["node1", "node2", "node3"])  # an earlier test's sshd reload closes port 22 for a moment
    return {h: node_state(h) for h in ("node1", "node2", "node3")}


def node_state(host: str) -> dict:
    return node_states.node_state(lablib.load(NAME).ssh_args(host))


@pytest.mark.parametrize("name, change, extra, expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_input_is_refused_with_every_problem_named_before_any_host_changes(lab, pristine, name, change,
                                                                                  extra, expected):
    inventory = derived_inventory(lab, f"inventory-{name}", change) if change else lab
    proc = run_sh("deploy-cluster", *extra, inventory=inventory)
    assert proc.returncode != 0
    assert expected.format(node2=hosts_of(lab)["node2"]["ansible_host"]) in proc.stdout
    assert "== 00-ssh failed" in proc.stdout and "== run 01-bootstrap-os" not in proc.stdout
    if name not in PROBED:
        assert "Open an SSH session" not in proc.stdout, "a host was contacted"
    for host, before in pristine.items():
        assert node_states.differences(before, node_state(host)) == {}, f"{name} changed {host}"


def test_a_kube_version_the_bundle_lacks_fails_before_any_host_is_contacted(lab, tmp_path):
    """The catalog knows v1.20.3 (an overlay adds its checksums), the bundle carries only v1.20.2."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    files = {f"files/dl.k8s.io/release/v1.20.2/bin/linux/amd64/{n}": {"sha256": "0" * 64, "size": 1}
             for n in ("kubeadm", "kubelet", "kubectl")}
    (bundle / "manifest.json").write_text(json.dumps({"format": "airgap.kubernetes/bundle", "format_version": 1,
                                                      "files": files, "images": {}, "versions": {"kubeadm": "1.20.2"}}))
    sha = "a" * 64
    overlay = tmp_path / "overlay.yml"
    # Layer 00 resolves the whole catalog first: the 1.20 line's etcd and crictl need checksums too.
    versions = {"kubeadm": "1.20.3", "kubelet": "1.20.3", "kubectl": "1.20.3", "etcd": "3.4.13", "crictl": "1.20.0"}
    overlay.write_text(yaml.safe_dump({"catalog_overlay": {"components": {
        n: {"sha256": {"amd64": {v: sha}}} for n, v in versions.items()}}}))
    proc = run_sh("deploy-cluster", "--only", "00-ssh", "--bundle", str(bundle), "-e", "kube_version=v1.20.3",
                  "-e", f"@{overlay}", inventory=lab)
    assert proc.returncode != 0
    assert "kubeadm 1.20.3 is not in the bundle (it carries 1.20.2): set kube_version" in proc.stdout
    assert "image registry.k8s.io/kube-apiserver:v1.20.3 is not in the bundle" in proc.stdout
    assert "Open an SSH session" not in proc.stdout


def test_a_host_whose_key_changed_is_refused_and_named(lab):
    """Host keys are checked: node1 answering with another host's key (a moved host, or an attack) is refused."""
    hosts = hosts_of(lab)
    known = (lab.parent.parent / "known_hosts").read_text().splitlines()
    node1, node2 = hosts["node1"]["ansible_host"], hosts["node2"]["ansible_host"]
    forged = [l for l in known if not l.startswith(node1 + " ")]
    forged += [node1 + l[len(node2):] for l in known if l.startswith(node2 + " ")]
    forged_file = lab.parent.parent / "known_hosts.forged"
    forged_file.write_text("\n".join(forged) + "\n")

    def forged_key(data):
        data["all"]["hosts"]["node1"]["airgap_ssh_args"] = f"-o UserKnownHostsFile={forged_file}"

    inventory = derived_inventory(lab, "inventory-forged", forged_key)
    proc = run_sh("deploy-cluster", "--only", "00-ssh", inventory=inventory)
    assert proc.returncode != 0
    line = next(l for l in proc.stdout.splitlines() if l.strip().startswith("- node1 ("))
    assert "Host key verification failed." in line and f"ssh-keygen -f \"{forged_file}\" -R \"{node1}\"" in line, line
    assert "- node2 (" not in proc.stdout
