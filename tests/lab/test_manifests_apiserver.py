"""The 1.20 line's manifests against a real Kubernetes v1.20.2 API server: the lab's own build, with etcd from
Debian, on loopback, for the length of this module. kubernetes-validate has no 1.20 schemas, so this is where the
lab line's manifests are checked: layer 05 (playbooks/05-apps.yml, run against this API server with the lab's
v1.20.2 kubectl) applies every addon, and its second run changes nothing; the network plugins' manifests go through
`kubectl apply --dry-run=server`. No controller manager, scheduler or kubelet runs, and no addon image exists here:
every workload is applied and checked by the API server, never run."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils import manifests

from . import etcd_fixture

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "lab" / "build-kubernetes.sh"
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"
TOKEN = "airgap-test-admin-token"
ADDONS = {"coredns": "CoreDNS", "nodelocaldns": "NodeLocal DNSCache", "metrics_server": "metrics-server",
          "local_path_provisioner": "local-path-provisioner"}
PLUGINS = {"calico": "network_calico", "cilium": "network_cilium", "flannel": "network_flannel"}

pytestmark = pytest.mark.k8s_build


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready after {timeout} s")


@pytest.fixture(scope="module")
def kube_bin() -> Path:
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, f"build-kubernetes.sh failed:\n{proc.stderr[-3000:]}"
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin"


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory, kube_bin) -> dict:
    """{kubeconfig, path (PATH with the v1.20.2 kubectl first), version} of a running v1.20.2 API server."""
    work = tmp_path_factory.mktemp("apiserver")
    tarball = Path(etcd_fixture.build()["tarball"])
    with tarfile.open(tarball) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/etcd"))
        member.name = "etcd"
        tar.extract(member, work)
    etcd_client, etcd_peer, secure = _free_port(), _free_port(), _free_port()
    procs = []
    logs = {name: (work / f"{name}.log").open("w") for name in ("etcd", "kube-apiserver")}
    try:
        procs.append(subprocess.Popen(
            [str(work / "etcd"), "--data-dir", str(work / "etcd-data"),
             "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
             "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
             "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
             "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}"],
            stdout=logs["etcd"], stderr=subprocess.STDOUT))
        subprocess.run(["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(work / "sa.key"), "-pubout", "-out", str(work / "sa.pub")],
                       check=True, capture_output=True)
        (work / "tokens.csv").write_text(f'{TOKEN},admin,admin,"system:masters"\n')
        procs.append(subprocess.Popen(
            [str(kube_bin / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_client}",
             # Loopback only: the API server logs that its own Endpoints cannot name 127.0.0.1, which nothing here uses.
             "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={secure}",
             "--insecure-port=0", f"--cert-dir={work / 'certs'}", "--service-cluster-ip-range=10.233.0.0/18",
             f"--token-auth-file={work / 'tokens.csv'}", "--authorization-mode=Node,RBAC",
             "--service-account-issuer=https://kubernetes.default.svc",
             f"--service-account-key-file={work / 'sa.pub'}", f"--service-account-signing-key-file={work / 'sa.key'}",
             "--enable-admission-plugins=NodeRestriction,AlwaysPullImages",
             # What kubeadm sets: network plugins run privileged containers.
             "--allow-privileged=true"],
            stdout=logs["kube-apiserver"], stderr=subprocess.STDOUT))
        kubeconfig = work / "admin.conf"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": f"https://127.0.0.1:{secure}",
                                                      "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}]}))
        kubectl = [str(kube_bin / "kubectl"), "--kubeconfig", str(kubeconfig)]

        def ready() -> bool:
            for proc in procs:
                assert proc.poll() is None, f"{proc.args[0]} exited:\n{(work / 'kube-apiserver.log').read_text()[-3000:]}"
            out = subprocess.run(kubectl + ["get", "--raw", "/readyz"], capture_output=True, text=True)
            ns = subprocess.run(kubectl + ["get", "namespace/kube-system", "priorityclass/system-node-critical"],
                                capture_output=True, text=True)
            return out.stdout.strip() == "ok" and ns.returncode == 0
        t0 = time.monotonic()
        _wait("the v1.20.2 API server", ready)
        version = json.loads(subprocess.run(kubectl + ["version", "-o", "json"], capture_output=True, text=True,
                                            check=True).stdout)["serverVersion"]["gitVersion"]
        print(f"\nkube-apiserver {version} and etcd on loopback, ready in {time.monotonic() - t0:.1f} s")
        yield {"kubeconfig": kubeconfig, "kubectl": kubectl, "version": version,
               "path": f"{kube_bin}:{os.environ['PATH']}"}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.values():
            log.close()


def _playbook(apiserver: dict, work: Path, playbook: str, *extra: str) -> subprocess.CompletedProcess:
    inventory = work / "hosts.yml"
    inventory.write_text(
        "all:\n  children:\n    k8s_cluster:\n      children:\n        kube_control_plane:\n          hosts:\n"
        f"            localhost: {{ansible_connection: local, ansible_python_interpreter: {VENV_BIN / 'python'}}}\n"
        "        kube_node:\n          hosts:\n            localhost: {}\n    etcd:\n      hosts:\n"
        "        localhost: {}\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "PATH": apiserver["path"]}
    exe = VENV_BIN / "ansible-playbook" if (VENV_BIN / "ansible-playbook").exists() else "ansible-playbook"
    return subprocess.run([str(exe), "-i", str(inventory), playbook, *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)


def _recap(stdout: str) -> dict:
    match = re.search(r"^localhost\s+: (ok=\d+.*)$", stdout, re.M)
    assert match, stdout[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


LAYER05_VARS = ["-e", "kube_version=v1.20.2", "-e", "kube_network_plugin=bridge", "-e", "dns_enabled=true",
                "-e", "nodelocaldns_enabled=true", "-e", "metrics_server_enabled=true",
                "-e", "local_path_provisioner_enabled=true", "-e", "addons_wait_for_rollout=false"]


def test_layer_05_applies_every_addon_to_a_v1_20_api_server_and_a_second_run_changes_nothing(apiserver, tmp_path):
    extra = [*LAYER05_VARS, "-e", f"manifests_dir={tmp_path / 'manifests'}",
             "-e", f"manifests_apply_kubeconfig={apiserver['kubeconfig']}"]
    first = _playbook(apiserver, tmp_path, "playbooks/05-apps.yml", *extra)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    second = _playbook(apiserver, tmp_path, "playbooks/05-apps.yml", *extra)
    assert second.returncode == 0, second.stdout[-5000:]
    print(f"\nlayer 05 on {apiserver['version']}: first run {_recap(first.stdout)}, second run {_recap(second.stdout)}")
    for addon, title in ADDONS.items():
        assert f"{title}: applied, not run" in first.stdout
        print(f"  {title}: applied to the {apiserver['version']} API server, not run (no image here, no kubelet)")
    assert _recap(first.stdout)["changed"] >= len(ADDONS)
    assert _recap(second.stdout)["changed"] == 0


def test_the_applied_objects_name_only_bundle_registry_images(apiserver, tmp_path):
    kubectl = apiserver["kubectl"]
    out = subprocess.run(kubectl + ["get", "deployments,daemonsets", "-A", "-l", "app.kubernetes.io/managed-by="
                                    "airgap-kubernetes", "-o", "json"], capture_output=True, text=True, check=True)
    items = json.loads(out.stdout)["items"]
    images = {c["image"] for i in items for c in i["spec"]["template"]["spec"]["containers"]}
    names = sorted(f"{i['kind']}/{i['metadata']['name']}" for i in items)
    print(f"\napplied workloads: {names}\nimages: {sorted(images)}")
    assert names == ["DaemonSet/node-local-dns", "Deployment/coredns", "Deployment/local-path-provisioner",
                     "Deployment/metrics-server"]
    assert images and all(i.startswith("bootstrap:5000/") for i in images), images


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_a_network_plugins_1_20_manifests_pass_the_api_servers_dry_run(apiserver, tmp_path, plugin):
    if not (REPO / "roles" / PLUGINS[plugin] / "tasks" / "render.yml").is_file():
        pytest.skip(f"roles/{PLUGINS[plugin]} has no tasks/render.yml in this collection: nothing to check")
    out = tmp_path / "manifests"
    proc = _playbook(apiserver, tmp_path, "playbooks/render_manifests.yml", "-e", f"manifests_dir={out}",
                     "-e", "kube_version=v1.20.2", "-e", f"kube_network_plugin={plugin}", "-e", "dns_enabled=false",
                     "-e", "nodelocaldns_enabled=false")
    assert proc.returncode == 0, proc.stdout[-4000:]
    rendered = out / PLUGINS[plugin]
    files = sorted(rendered.glob("*.yaml"))
    assert files, f"render_manifests.yml wrote nothing into {rendered}"
    # Namespaces and CRDs first, for real: a dry run creates neither, so the objects in them would be refused.
    first = [d for f in files for d in manifests.load_documents(f.read_text(), str(f))
             if d["kind"] in ("Namespace", "CustomResourceDefinition")]
    if first:
        (tmp_path / "first.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": first}))
        applied = subprocess.run(apiserver["kubectl"] + ["apply", "-f", str(tmp_path / "first.json")],
                                 capture_output=True, text=True)
        assert applied.returncode == 0, f"{plugin}'s namespaces and CRDs: {applied.stderr}"
    dry = subprocess.run(apiserver["kubectl"] + ["apply", "--dry-run=server", "-f", str(rendered)],
                         capture_output=True, text=True)
    print(f"\n{plugin} on {apiserver['version']} (dry run, not run): {len(files)} files\n{dry.stdout}{dry.stderr}")
    assert dry.returncode == 0, dry.stderr
