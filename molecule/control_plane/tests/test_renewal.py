"""Runs last (file order): the API server's etcd client certificate, re-signed by hand for one day as one near its end,
is renewed by a rerun of layer 03, and the API server is restarted to read it (a Go process keeps the client
certificate it read at start): it then talks to etcd with the new certificate, and the rest of the cluster is
untouched."""
from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cluster import CONTROL, kubectl, node

PKI = "/etc/kubernetes/pki/etcd-external"
CERT = f"{PKI}/apiserver-etcd-client.crt"
ETCD_PKI = "/etc/etcd/pki"  # CONTROL is the scenario's only etcd member, so also the etcd CA host


def run_layer_03() -> subprocess.CompletedProcess:
    """playbooks/03-control-plane.yml again, with molecule's own inventory and settings."""
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    env = dict(os.environ, ANSIBLE_CONFIG=str(ephemeral / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(project / ".collections"), ANSIBLE_ROLES_PATH=str(project / "roles"),
               RUNTIME_FIXTURE_DIR=os.environ.get("RUNTIME_FIXTURE_DIR",
                                                  str(Path.home() / ".cache/airgap-kubernetes/runtime-fixture")))
    return subprocess.run(["ansible-playbook", "-i", str(ephemeral / "inventory"),
                           str(project / "playbooks" / "03-control-plane.yml")],
                          env=env, capture_output=True, text=True, timeout=1500)


def _not_after(path: str) -> datetime:
    out = node(CONTROL).check_output(f"openssl x509 -in {path} -noout -enddate").split("=", 1)[1]
    return datetime.strptime(out.strip(), "%b %d %H:%M:%S %Y %Z")


def _apiserver_started() -> str:
    """The running kube-apiserver's start time, in clock ticks since boot (/proc/PID/stat field 22)."""
    return node(CONTROL).check_output(
        "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = kube-apiserver ] && "
        "awk '{print $22}' $p/stat; done | sort | tail -n 1")


def test_a_renewed_etcd_client_certificate_restarts_the_api_server_which_then_uses_it():
    csr = node(CONTROL).check_output(f"cat {PKI}/apiserver-etcd-client.csr")
    short = subprocess.run(["docker", "exec", "-i", CONTROL, "openssl", "x509", "-req", "-CA", f"{ETCD_PKI}/ca.crt",
                            "-CAkey", f"{ETCD_PKI}/ca.key", "-days", "1", "-copy_extensions", "copy"],
                           input=csr + "\n", capture_output=True, text=True, check=True).stdout
    subprocess.run(["docker", "exec", "-i", CONTROL, "sh", "-c", f"cat > {CERT}"], input=short, text=True, check=True)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert _not_after(CERT) < now + timedelta(days=2)
    started = _apiserver_started()
    result = run_layer_03()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"Renewed {CONTROL}'s {CERT} (old expiry" in result.stdout
    assert "Stop the API server so that the kubelet starts it again" in result.stdout
    assert _not_after(CERT) > now + timedelta(days=300)
    assert _apiserver_started() != started, "kube-apiserver kept the process that read the old certificate"
    # The new process reaches etcd with the new certificate: it serves and stores.
    deadline = time.monotonic() + 120
    while kubectl("get", "--raw", "/readyz", check=False).rc != 0:
        assert time.monotonic() < deadline, "the API server is not ready after its restart"
        time.sleep(2)
    kubectl("create", "configmap", "renewal-check", "-n", "default", "--from-literal=k=v")
    assert kubectl("get", "configmap", "renewal-check", "-n", "default", "-o", "jsonpath={.data.k}").stdout == "v"
