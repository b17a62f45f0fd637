"""The control_plane scenario's nodes, and kubectl on the control plane with kubeadm's admin.conf: what every role's
tests share. Addresses and names are the scenario's (molecule.yml, inventory/)."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import testinfra

BUNDLE = "mol-cp-bundle"
CONTROL = "mol-cp-control"
WORKER = "mol-cp-worker"
IPS = {BUNDLE: "10.213.64.10", CONTROL: "10.213.64.11", WORKER: "10.213.64.12"}
KUBE_NODES = (CONTROL, WORKER)
KUBE_VERSION = "v1.20.2"
# group_vars/all/kubernetes.yml's defaults, which the scenario keeps.
PODS_SUBNET = "10.233.64.0/18"
LB_PORT = 6444
FIXTURE = Path(os.environ.get("RUNTIME_FIXTURE_DIR", Path.home() / ".cache/airgap-kubernetes/runtime-fixture"))


def node(name: str):
    """A scenario container, through docker exec (faster than an Ansible connection per command)."""
    return testinfra.get_host(f"docker://{name}")


def kubectl(*args: str, check: bool = True):
    """kubectl on the control plane with /etc/kubernetes/admin.conf; the CommandResult."""
    cmd = "kubectl --kubeconfig /etc/kubernetes/admin.conf " + " ".join(shlex.quote(a) for a in args)
    result = node(CONTROL).run(cmd)
    if check:
        assert result.rc == 0, f"{cmd}: {result.stderr}"
    return result


def kubectl_json(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def nodes() -> dict:
    """The cluster's Node objects by name."""
    return {item["metadata"]["name"]: item for item in kubectl_json("get", "nodes")["items"]}
