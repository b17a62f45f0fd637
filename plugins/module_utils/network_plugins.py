"""Which pod network plugin a running cluster has, and whether layer 04 may deploy another one (pure functions)."""
from __future__ import annotations

from typing import Any, Mapping, Optional

# The DaemonSet that each plugin's manifests create, by namespace and name (flannel's older manifests used
# kube-system).
PLUGIN_DAEMONSETS = {
    ("kube-system", "calico-node"): "calico",
    ("kube-system", "cilium"): "cilium",
    ("kube-flannel", "kube-flannel-ds"): "flannel",
    ("kube-system", "kube-flannel-ds"): "flannel",
}

# What a plugin leaves on every node, which a switch would leave behind.
LEFTOVERS = {
    "calico": "tunl0 or vxlan.calico, the cali* interfaces, BIRD's routes, the cali- iptables chains and /var/lib/calico",
    "cilium": "the cilium_* interfaces, its BPF programs and maps, the CILIUM_ iptables chains and /var/run/cilium",
    "flannel": "flannel.1 and cni0, the routes to the other nodes' subnets, the FLANNEL- iptables chains and /run/flannel",
    "bridge": "cni0, the routes of protocol 211, the AIRGAP-POD-MASQ chain and the airgap-pod-network service",
}


def plugin_in_use(record: Optional[Mapping[str, Any]], daemonsets: Optional[Mapping[str, Any]],
                  bridge_unit: bool = False) -> dict:
    """The plugins a cluster runs, from the ConfigMap layer 04 writes (`kubectl get configmap -o json`, or None),
    the DaemonSets (`kubectl get daemonsets -A -o json`) and whether the bridge plugin's unit is on the node.

    Returns {"plugins": [names, sorted], "evidence": "one phrase per finding"}; no plugin found means a new cluster.
    """
    found: dict = {}
    recorded = ((record or {}).get("data") or {}).get("plugin")
    if recorded:
        name = (record or {}).get("metadata", {}).get("name", "")
        found.setdefault(recorded, []).append(f"the ConfigMap kube-system/{name} records {recorded}")
    for item in (daemonsets or {}).get("items", []):
        meta = item.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if key in PLUGIN_DAEMONSETS:
            found.setdefault(PLUGIN_DAEMONSETS[key], []).append(f"the DaemonSet {key[0]}/{key[1]} exists")
    if bridge_unit:
        found.setdefault("bridge", []).append("the first control plane runs airgap-pod-network.service")
    return {"plugins": sorted(found), "evidence": "; ".join(e for name in sorted(found) for e in found[name])}


def switch_problem(in_use: Mapping[str, Any], wanted: str, force: bool = False) -> str:
    """Why layer 04 refuses to deploy `wanted` on a cluster that runs another plugin, or "" when it may."""
    others = [p for p in in_use.get("plugins", []) if p != wanted]
    if not others or force:
        return ""
    current = " and ".join(others)
    leftovers = "; ".join(f"{p}: {LEFTOVERS.get(p, 'its interfaces, routes and iptables rules')}" for p in others)
    return (f"kube_network_plugin is {wanted}, but this cluster runs {current} ({in_use.get('evidence', '')}). "
            f"Layer 04 does not switch the network plugin of a live cluster: what {current} set up stays on every "
            f"node ({leftovers}) and the running pods keep addresses only {current} routes, so two plugins would "
            f"fight over the pod network. Set kube_network_plugin: {others[0]} again, or drain the workloads and "
            f"redeploy with {wanted} (remove-cluster resets the nodes, then deploy-cluster). "
            f"network_plugin_switch_force: true deploys {wanted} anyway, for nodes you have cleaned yourself.")
