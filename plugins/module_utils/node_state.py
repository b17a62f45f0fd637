"""Pure functions over `kubectl get nodes -o json`: what to label or taint, and which nodes are not Ready and why."""
from __future__ import annotations

from typing import Any, Mapping


def _items(nodes: Any) -> dict:
    items = nodes.get("items", []) if isinstance(nodes, Mapping) else nodes
    return {n["metadata"]["name"]: n for n in items}


def _taint_arg(taint: Mapping[str, Any]) -> str:
    value = taint.get("value")
    return f"{taint['key']}{'=' + str(value) if value not in (None, '') else ''}:{taint.get('effect', 'NoSchedule')}"


def label_taint_commands(nodes: Any, desired: Mapping[str, Mapping[str, Any]]) -> list:
    """kubectl argv lists that bring each node's labels and taints to what the inventory asks, and nothing more.

    desired: node name -> {"labels": {key: value}, "taints": [{key, value, effect}], "untaint": [keys]}.
    Labels and taints the inventory does not name are left alone (controllers and operators set their own);
    "untaint" lists taints this collection put there and must take away (the control-plane taint when it is off).
    A node not registered yet is skipped: it gets its taints from kubeadm's registration.
    """
    current = _items(nodes)
    commands = []
    for name in sorted(desired):
        node = current.get(name)
        if node is None:
            continue
        want = desired[name]
        labels = node["metadata"].get("labels") or {}
        changes = [f"{k}={v}" for k, v in sorted((want.get("labels") or {}).items()) if labels.get(k) != str(v)]
        if changes:
            commands.append(["kubectl", "label", "node", name, "--overwrite", *changes])
        have = node.get("spec", {}).get("taints") or []
        have_set = {(t["key"], str(t.get("value") or ""), t.get("effect")) for t in have}
        add = [t for t in want.get("taints") or []
               if (t["key"], str(t.get("value") or ""), t.get("effect", "NoSchedule")) not in have_set]
        if add:
            commands.append(["kubectl", "taint", "node", name, "--overwrite", *map(_taint_arg, add)])
        remove = sorted({t["key"] for t in have if t["key"] in set(want.get("untaint") or [])})
        if remove:
            commands.append(["kubectl", "taint", "node", name, *[f"{key}-" for key in remove]])
    return commands


def nodes_not_ready(nodes: Any, expected: list) -> list:
    """One line per expected node that is not Ready: its name and the kubelet's own reason, or that it never
    registered. An empty list means every expected node is Ready."""
    current = _items(nodes)
    problems = []
    for name in expected:
        node = current.get(name)
        if node is None:
            problems.append(f"{name}: not registered with the API server (its kubelet never joined or cannot reach "
                            f"the API through its local load balancer)")
            continue
        ready = next((c for c in node.get("status", {}).get("conditions") or [] if c.get("type") == "Ready"), None)
        if ready is None:
            problems.append(f"{name}: no Ready condition yet (the kubelet has not reported)")
        elif ready.get("status") != "True":
            problems.append(f"{name}: {ready.get('reason') or 'NotReady'}: {ready.get('message') or 'no message'}")
    return problems


def pod_cidrs(nodes: Any) -> dict:
    """Node name -> {"pod_cidr", "address"} for every node the controller manager gave a pod CIDR."""
    out = {}
    for name, node in sorted(_items(nodes).items()):
        cidr = node.get("spec", {}).get("podCIDR")
        addresses = {a["type"]: a["address"] for a in node.get("status", {}).get("addresses") or []}
        if cidr and addresses.get("InternalIP"):
            out[name] = {"pod_cidr": cidr, "address": addresses["InternalIP"]}
    return out
