"""Specification of the bridge pod network (role network_bridge): both nodes Ready; on each node the CNI
configuration on its own podCIDR, a route to the other node's podCIDR, and the masquerade chain that leaves pod
traffic inside the pod network alone; a pod on the worker reaches the API server through its Service (kube-proxy,
the bridge, masquerading)."""
from __future__ import annotations

import ipaddress
import json
import time

from cluster import IPS, KUBE_NODES, PODS_SUBNET, WORKER, kubectl, kubectl_json, nodes

testinfra_hosts = [f"docker://{name}" for name in KUBE_NODES]

CHAIN = "AIRGAP-POD-MASQ"
CNI_CONF = "/etc/cni/net.d/10-airgap-bridge.conflist"
BUSYBOX = "docker.io/library/busybox:1.35.0"


def _pod_cidr(name: str) -> str:
    return nodes()[name]["spec"]["podCIDR"]


def _this(host) -> str:
    return host.check_output("hostname")


def test_both_nodes_are_ready():
    for name in KUBE_NODES:
        conditions = {c["type"]: c["status"] for c in nodes()[name]["status"]["conditions"]}
        assert conditions["Ready"] == "True", (name, conditions)


def test_each_node_has_its_own_pod_cidr_out_of_the_pod_network():
    cidrs = [ipaddress.ip_network(_pod_cidr(name)) for name in KUBE_NODES]
    assert all(c.subnet_of(ipaddress.ip_network(PODS_SUBNET)) and c.prefixlen == 24 for c in cidrs), cidrs
    assert not cidrs[0].overlaps(cidrs[1])


def test_cni_configuration_uses_the_nodes_pod_cidr(host):
    conf = json.loads(host.file(CNI_CONF).content_string)
    bridge = conf["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "cni0" and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": _pod_cidr(_this(host))}]]


def test_a_route_leads_to_the_other_nodes_pods(host):
    this = _this(host)
    (peer,) = [name for name in KUBE_NODES if name != this]
    # The service's routes carry its own protocol number: only those does it ever remove.
    route = host.check_output(f"ip -4 route show {_pod_cidr(peer)} proto 211")
    assert route.split()[:3] == [_pod_cidr(peer), "via", IPS[peer]], route
    service = host.service("airgap-pod-network")
    assert service.is_enabled and service.is_running


def test_only_traffic_leaving_the_pod_network_is_masqueraded(host):
    chain = host.check_output(f"iptables -t nat -S {CHAIN}").splitlines()
    assert chain == [f"-N {CHAIN}", f"-A {CHAIN} -d {PODS_SUBNET} -j RETURN", f"-A {CHAIN} -j MASQUERADE"]
    postrouting = host.check_output("iptables -t nat -S POSTROUTING").splitlines()
    assert postrouting.count(f"-A POSTROUTING -s {_pod_cidr(_this(host))} -j {CHAIN}") == 1, postrouting


def test_a_pod_on_the_worker_reaches_the_api_server_through_its_service():
    service_ip = kubectl("get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}").stdout
    name = f"airgap-net-probe-{int(time.time())}"
    # busybox's wget speaks no TLS: plain HTTP to the API server's TLS port is answered by its Go server with
    # "400 Bad Request", which only the real API server, reached through the Service, can send.
    overrides = {"spec": {"nodeName": WORKER, "tolerations": [{"operator": "Exists"}]}}
    kubectl("run", name, f"--image={BUSYBOX}", "--restart=Never", f"--overrides={json.dumps(overrides)}",
            "--command", "--", "sh", "-c", f"wget -q -O- http://{service_ip}:443/ 2>&1; true")
    try:
        deadline = time.monotonic() + 90
        while (phase := kubectl_json("get", "pod", name)["status"].get("phase")) not in ("Succeeded", "Failed"):
            assert time.monotonic() < deadline, kubectl("describe", "pod", name, check=False).stdout
            time.sleep(2)
        pod = kubectl_json("get", "pod", name)
        assert phase == "Succeeded", pod["status"]
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(_pod_cidr(WORKER))
        assert "400 Bad Request" in kubectl("logs", name).stdout
    finally:
        kubectl("delete", "pod", name, "--wait=false", check=False)
