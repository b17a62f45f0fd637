"""PROPOSAL, not yet run: layer 05 on the shared end-to-end lab (issue 11 §5). The addons' objects exist, refer only to
bundle-registry images, and a second run of 05-apps reports changed=0.

Why it is not part of the suite yet: the lab's bundle cannot carry any addon image (CoreDNS, NodeLocal DNSCache,
metrics-server and local-path-provisioner have no source to build from here, and no stand-in may pretend to be one),
so tools/lab/upstream.py switches dns_enabled and nodelocaldns_enabled off and the lab's layer 05 applies nothing.
Until a lab can carry those images, tests/lab/test_manifests_apiserver.py is where the 1.20 addons are applied: to a
real v1.20.2 API server, through playbooks/05-apps.yml, twice (the second run changed=0), applied but not run.

To make this real: let the lab inventory enable the addons with addons_wait_for_rollout: false, and give build-bundle
the images (an operator-built bundle, or a lab upstream that can serve them), then drop the skip below. It reuses the
shared cluster of test_deploy_layers.py (its `prepared` and `deployed` fixtures), so it adds no deploy of its own."""
from __future__ import annotations

import json
import re

import pytest

from .test_deploy_layers import deployed, kubectl, log_of, prepared  # noqa: F401 (the shared fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.lab,
              pytest.mark.skip(reason="PROPOSAL: the lab's bundle carries no addon image, so its layer 05 applies no "
                                      "addon; see the module docstring")]

MANAGED = "app.kubernetes.io/managed-by=airgap-kubernetes"


def test_layer_05_ran_and_named_what_it_applied_but_did_not_run(prepared, deployed):
    log = log_of(prepared, "05-apps")
    assert re.search(r"Addons enabled: .*applied, not run", log), log[-2000:]


def test_the_addons_objects_exist_and_name_only_bundle_registry_images(prepared, deployed):
    items = json.loads(kubectl(prepared, "get", "deployments,daemonsets", "-A", "-l", MANAGED, "-o", "json").stdout)
    images = {c["image"] for i in items["items"] for c in i["spec"]["template"]["spec"]["containers"]}
    assert {i["metadata"]["name"] for i in items["items"]} >= {"coredns", "node-local-dns"}
    assert images and all(i.startswith("bootstrap:5000/") for i in images), images


def test_the_dns_service_is_the_kubelets_cluster_dns(prepared, deployed):
    service = json.loads(kubectl(prepared, "-n", "kube-system", "get", "service", "kube-dns", "-o", "json").stdout)
    kubelet = json.loads(kubectl(prepared, "get", "--raw", "/api/v1/nodes/node1/proxy/configz").stdout)
    assert kubelet["kubeletconfig"]["clusterDNS"] == [service["spec"]["clusterIP"]]


def test_a_second_run_of_layer_05_changes_nothing(prepared, deployed):
    log = log_of(prepared, "05-apps")
    recaps = re.findall(r"^\S+\s+: ok=\d+\s+changed=(\d+)", log, re.M)
    assert recaps and all(c == "0" for c in recaps[-len(recaps) // 2:]), log[-2000:]
