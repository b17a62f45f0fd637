"""End to end: a bare Debian host inside the air gap installs the tool from the bundle and deploys from there.

One lab per controller release (Debian 12, Debian 13) on an --internal network: the bundle host, which has only
Debian's minimal system and python3 (no pip, no venv, no Ansible), is the controller. It receives the bundle tarball
(built with its wheelhouse), runs the bundle's install.sh, then `run.sh deploy-cluster` against itself (the bundle
server) and node1, the one cluster node (control plane, etcd member and worker, so untainted and Ready alone). A
copy of the bundle with one flipped byte in the wheelhouse is refused by the installer, by name, before it changes
anything. The lab runs the real Kubernetes v1.20.2; the deploy must reach layer 04 with every node Ready.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.airgap.kubernetes.tools.lab import cluster, upstream

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("00-ssh", "01-bootstrap-os", "02-etcd", "03-control-plane", "04-network")
CONTROLLER = "bundle"
PREFIX = "/opt/airgap-kubernetes"
# dpkg-query -W alone succeeds for a package dpkg merely knows of ("unknown ok not-installed" on Debian 12).
NOT_INSTALLED = "! dpkg-query -W -f '${{Status}}' {0} 2>/dev/null | grep -q 'install ok installed'"

pytestmark = [pytest.mark.e2e, pytest.mark.lab]


def on(prepared, host: str, script: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(prepared.lab.ssh_args(host) + [script], text=True, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def rebuild_with_wheelhouse(prepared) -> Path:
    """The lab's bundle built again into the same OUT with its wheelhouse (cluster.prepare builds it without):
    everything else is reused, and the wheelhouse comes from ~/.cache/airgap-kubernetes/wheelhouse when cached."""
    the_lab = prepared.lab
    key_home, key = cluster.lab.release_key()
    out = prepared.bundle_dir.parent
    vars_path = upstream.up(the_lab.dir / "upstream", log=lambda line: None)
    try:
        # The upstream listens on new ports each time it starts: where the builder fetches from, as prepare gives it.
        config = yaml.safe_load(vars_path.read_text())
        builder_vars = the_lab.dir / "build-bundle-vars-wheelhouse.yml"
        builder_vars.write_text("---\n" + yaml.safe_dump(
            {k: config[k] for k in ("upstream_bases", "upstream_insecure_registries")}))
        cmd = [str(REPO / "run.sh"), "build-bundle", "-i", str(the_lab.dir / "inventory"),
               "-e", f"@{builder_vars}", "--arch", "amd64",
               "--os", cluster.OS_OF_RELEASE[the_lab.release], "--out", str(out), "--progress", "lines",
               "--requirements", str(REPO / "requirements-runtime.txt"), "--sign-key", key,
               "--sign-homedir", str(key_home)]
        proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, timeout=1800)
        assert proc.returncode == 0, f"build-bundle with the wheelhouse failed:\n{proc.stderr[-3000:]}"
    finally:
        upstream.down(the_lab.dir / "upstream")
    (out / ".built-from").unlink(missing_ok=True)  # no longer what cluster.prepare built: never reused as that
    return out


def send(prepared, host: str, paths: list) -> None:
    """Copies files to the same absolute paths on a lab host, as an operator carries them across the gap."""
    container = prepared.lab.host(host).container
    for path in paths:
        path = Path(path)
        subprocess.run(["docker", "exec", container, "mkdir", "-p", str(path.parent)], check=True)
        subprocess.run(["docker", "cp", str(path), f"{container}:{path}"], check=True, capture_output=True)


@pytest.fixture(scope="module", params=["bookworm", "trixie"])
def controller(request):
    """A lab (node1 + the bundle host, Debian RELEASE), its signed bundle with the wheelhouse, and on the bundle host
    what the operator brings: the tarball, its .sha256, the inventory and the SSH key."""
    release = request.param
    name = f"e2e-boot-{release}"
    cluster.lab.down(name)
    try:
        prepared = cluster.prepare(name, nodes=1, release=release)
        t0 = time.monotonic()
        out = rebuild_with_wheelhouse(prepared)
        seconds = {**prepared.seconds, "build-bundle with wheelhouse": time.monotonic() - t0}
        inventory = prepared.inventory.parent
        overlays = yaml.safe_load((inventory / "group_vars" / "all" / "upstream.yml").read_text()).get(
            "catalog_overlay_files", [])
        # The inventory names files by their paths on this host; the controller gets them at the same paths.
        send(prepared, CONTROLLER, [out / "bundle.tar.gz", out / "bundle.tar.gz.sha256", prepared.lab.key,
                                    prepared.lab.dir / "known_hosts", *overlays,
                                    *(p for p in inventory.rglob("*") if p.is_file() and ".airgap" not in p.parts)])
        yield prepared, out, seconds
    finally:
        cluster.lab.down(name)


def test_the_controller_starts_bare_python3_without_pip_venv_or_ansible(controller):
    prepared, _, _ = controller
    proc = on(prepared, CONTROLLER, "python3 --version && ! python3 -m pip --version && ! python3 -m venv /tmp/venv-check "
                                    "&& ! command -v ansible-playbook && ! command -v ansible && "
                                    f"{NOT_INSTALLED.format('python3-venv')} && {NOT_INSTALLED.format('python3-pip')}")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_flipped_byte_in_the_wheelhouse_is_refused_by_name_before_anything_changes(controller):
    prepared, out, _ = controller
    fpr = cluster.lab.release_key()[1]
    proc = on(prepared, CONTROLLER, f"""set -e
        mkdir -p /root/tampered && cd /root/tampered && tar -xzf {out}/bundle.tar.gz
        wheel=$(ls airgap-bundle/wheelhouse/ansible_core-*.whl)
        printf '\\x5a' | dd of="$wheel" bs=1 seek=4096 conv=notrunc status=none
        echo "flipped $wheel"
        rc=0; airgap-bundle/install.sh --trusted-key {fpr} --tarball {out}/bundle.tar.gz || rc=$?
        echo "exit $rc"; test ! -e {PREFIX} && {NOT_INSTALLED.format('python3-venv')} && echo untouched
        rm -rf /root/tampered""")
    text = proc.stdout + proc.stderr
    print(text)
    wheel = next(line.split("/")[-1] for line in proc.stdout.splitlines() if line.startswith("flipped "))
    assert "exit 2" in text
    assert f"wheelhouse/{wheel}: modified" in text
    assert "untouched" in proc.stdout


@pytest.fixture(scope="module")
def installed(controller):
    prepared, out, seconds = controller
    fpr = cluster.lab.release_key()[1]
    t0 = time.monotonic()
    first = on(prepared, CONTROLLER, f"cd {out} && tar -xzf bundle.tar.gz && airgap-bundle/install.sh --trusted-key {fpr}",
               timeout=900)
    seconds["install.sh"] = time.monotonic() - t0
    print(first.stdout[-3000:], first.stderr[-3000:])
    assert first.returncode == 0, f"install.sh failed:\n{first.stdout[-2000:]}\n{first.stderr[-3000:]}"
    return first


def test_install_sh_installs_from_the_bundle_and_prints_the_next_command(controller, installed):
    prepared, out, _ = controller
    assert f"{PREFIX}/run.sh deploy-cluster -i <inventory> --bundle {out}/airgap-bundle" in installed.stdout
    assert "manifest.json is signed by " + cluster.lab.release_key()[1] in installed.stdout
    proc = on(prepared, CONTROLLER, f"dpkg-query -W python3-venv && {PREFIX}/venv/bin/ansible-playbook --version")
    assert proc.returncode == 0 and "core 2.19.14" in proc.stdout, proc.stdout + proc.stderr


def test_a_second_install_sh_changes_nothing(controller, installed):
    prepared, out, _ = controller
    proc = on(prepared, CONTROLLER, f"{out}/airgap-bundle/install.sh --trusted-key {cluster.lab.release_key()[1]}")
    assert proc.returncode == 0, proc.stderr
    for line in ("installed already", "is from this wheelhouse already", "is installed already"):
        assert line in proc.stdout
    assert "installing" not in proc.stdout and "making venv" not in proc.stdout


@pytest.fixture(scope="module")
def deployed(controller, installed):
    prepared, out, seconds = controller
    t0 = time.monotonic()
    proc = on(prepared, CONTROLLER, f"NO_COLOR=1 {PREFIX}/run.sh deploy-cluster -i {prepared.inventory} "
                                    f"--bundle {out}/airgap-bundle", timeout=2400)
    seconds["deploy-cluster"] = time.monotonic() - t0
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("==")))
    print(f"\n{prepared.lab.release}: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return proc


def test_deploy_cluster_from_the_controller_reaches_layer_04(controller, deployed):
    for layer in LAYERS:
        assert f"== {layer} done" in deployed.stdout, deployed.stdout[-4000:] + deployed.stderr[-2000:]


def test_every_node_is_ready(controller, deployed):
    prepared, _, _ = controller
    proc = on(prepared, "node1", "kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    nodes = json.loads(proc.stdout)["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == ["node1"]
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", f"{node['metadata']['name']} is not Ready"


def test_the_deploy_ran_on_the_controller_not_on_this_host(controller, deployed):
    prepared, _, _ = controller
    logs = on(prepared, CONTROLLER, f"ls {prepared.inventory.parent}/.airgap/logs/")
    assert "04-network.log" in logs.stdout
    assert not (prepared.inventory.parent / ".airgap" / "logs" / "04-network.log").exists()
