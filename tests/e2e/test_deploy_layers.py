"""End to end: `run.sh deploy-cluster` deploys layers 00-02 on lab nodes with no route out, from a bundle built by
`run.sh build-bundle`; a run killed in 01 resumes there; a second full run changes nothing."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
from ansible_collections.airgap.kubernetes.tools.lab import cluster  # noqa: E402

NAME = "e2e-layers"
LAYERS = ("00-ssh", "01-bootstrap-os", "02-etcd")
# What deploy-cluster prints when it reaches the first layer this version does not have yet.
NOT_YET = "== stop at 03-control-plane"
PYTHONLESS = "node3"

pytestmark = [pytest.mark.e2e, pytest.mark.lab]


@pytest.fixture(scope="module")
def prepared():
    """3 nodes (3 etcd members) + bundle host on an --internal network, and the bundle built for them."""
    cluster.lab.down(NAME)
    try:
        ready = cluster.prepare(NAME, nodes=3)
        # node3 starts like a minimal image without python3: layer 01 must bring it from the bundle.
        purge = ready.lab.ssh_args(PYTHONLESS) + [
            "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "
            "$(dpkg-query -W -f '${Package}\\n' 'python3*' 'libpython3*') && ! command -v python3"]
        subprocess.run(purge, check=True, capture_output=True, timeout=300)
        print(f"\nprepared in {', '.join(f'{k} {v:.1f} s' for k, v in ready.seconds.items())}")
        yield ready
    finally:
        cluster.lab.down(NAME)


def deploy_argv(prepared, *extra: str) -> list[str]:
    return [str(REPO / "run.sh"), "deploy-cluster", "-i", str(prepared.inventory), "--bundle",
            str(prepared.bundle_dir), *extra]


def deploy(prepared, *extra: str) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    proc = subprocess.run(deploy_argv(prepared, *extra), cwd=REPO, text=True, capture_output=True,
                          env={**os.environ, "NO_COLOR": "1"}, timeout=2400)
    print(f"deploy-cluster {' '.join(extra)}: exit {proc.returncode} in {time.monotonic() - t0:.1f} s")
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("==")))
    return proc


def log_of(prepared, step: str) -> str:
    return (prepared.inventory.parent / ".airgap" / "logs" / f"{step}.log").read_text()


def ssh(prepared, host: str, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(prepared.lab.ssh_args(host) + [script], text=True, capture_output=True, timeout=120)


def test_a_deploy_killed_in_01_resumes_there_and_finishes(prepared):
    proc = subprocess.Popen(deploy_argv(prepared), cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"}, start_new_session=True)
    log = prepared.inventory.parent / ".airgap" / "logs" / "01-bootstrap-os.log"
    deadline = time.monotonic() + 900
    # Killed once the nodes' own bootstrap is under way: the bundle server is up, the nodes half done.
    while not (log.exists() and "Install the cluster CA into the trust store" in log.read_text()):
        assert proc.poll() is None, f"deploy ended before 01 got to the nodes:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "01-bootstrap-os did not reach the nodes in 900 s"
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = proc.stdout.read()
    assert "== 00-ssh done" in first and "== 01-bootstrap-os done" not in first

    steps = subprocess.run([str(REPO / "run.sh"), "steps", "-i", str(prepared.inventory)], cwd=REPO, text=True,
                           capture_output=True, env={**os.environ, "NO_COLOR": "1"})
    assert re.search(r"01-bootstrap-os\s+running", steps.stdout), steps.stdout

    # What a dpkg run cut off by the kill leaves behind: its journal. apt refuses to work until it is finished.
    assert ssh(prepared, "node1", "touch /var/lib/dpkg/updates/0000").returncode == 0

    resumed = deploy(prepared)
    assert resumed.returncode == 3, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    assert re.search(r"== skip 00-ssh: done .*, inputs unchanged", resumed.stdout)
    assert "== run 01-bootstrap-os" in resumed.stdout and "== 01-bootstrap-os done" in resumed.stdout
    assert "== 02-etcd done" in resumed.stdout
    assert NOT_YET in resumed.stdout
    assert ssh(prepared, "node1", "ls -A /var/lib/dpkg/updates").stdout.strip() == ""


def test_a_node_without_python3_got_it_from_the_bundle(prepared):
    assert f"python3 is missing on {PYTHONLESS}: layer 01 installs it from the bundle's apt repo" in log_of(prepared, "00-ssh")
    out = ssh(prepared, PYTHONLESS, "command -v python3 && apt-cache policy python3")
    assert out.returncode == 0, out.stderr
    # Installed from the bundle's repo (the only source left): the policy names the bundle server.
    assert "/apt" in out.stdout and "deb.debian.org" not in out.stdout, out.stdout


def test_a_rerun_with_nothing_changed_skips_every_layer(prepared):
    proc = deploy(prepared)
    assert proc.returncode == 3
    for step in LAYERS:
        assert re.search(f"== skip {step}: done .*, inputs unchanged", proc.stdout), proc.stdout


def test_a_second_full_run_reports_changed_0(prepared):
    proc = deploy(prepared, "--from", "00-ssh")
    assert proc.returncode == 3, proc.stdout[-4000:]
    for step in LAYERS:
        hosts = cluster.play_recap(log_of(prepared, step))
        assert hosts, f"no PLAY RECAP in {step}'s log"
        changed = {h: c["changed"] for h, c in hosts.items() if c["changed"] or c["failed"] or c["unreachable"]}
        assert changed == {}, f"{step}: second run changed or failed on {changed}"


def test_etcd_is_a_healthy_tls_cluster_of_every_member(prepared):
    out = ssh(prepared, "node1", "set -a; . /etc/etcd/etcdctl.env; set +a; etcdctl endpoint health --cluster")
    assert out.returncode == 0, out.stderr
    members = [h for h in prepared.lab.nodes]
    # etcdctl prints endpoint health on stderr.
    health = out.stdout + out.stderr
    assert health.count("is healthy") == len(members), health
    assert "https://" in health


def test_nodes_pull_upstream_image_names_from_the_bundle_registry(prepared):
    out = ssh(prepared, "node2", "ctr -n k8s.io images pull --hosts-dir /etc/containerd/certs.d "
                                 "registry.k8s.io/kube-proxy:v1.20.2 >/dev/null && "
                                 "ctr -n k8s.io images ls -q name==registry.k8s.io/kube-proxy:v1.20.2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "registry.k8s.io/kube-proxy:v1.20.2"


def test_nodes_use_only_the_bundle_for_packages_and_time(prepared):
    out = ssh(prepared, "node3", "grep -rh '^[^#]' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; "
                                 "chronyc -n sources")
    assert out.returncode == 0, out.stderr
    bundle_ip = prepared.lab.host("bundle").ip
    assert "deb.debian.org" not in out.stdout
    assert f"^* {bundle_ip}" in out.stdout or f"^+ {bundle_ip}" in out.stdout, out.stdout
