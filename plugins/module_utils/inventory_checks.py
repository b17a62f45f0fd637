"""Checks an inventory's shape before any host is touched; every problem names itself and its fix."""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Iterable, Mapping

REQUIRED_GROUPS = ("kube_control_plane", "etcd", "k8s_cluster", "bundle_server")
# Groups a host may belong to; a host in none of them has no job and is almost always a typo.
ROLE_GROUPS = ("kube_control_plane", "kube_node", "etcd", "bundle_server", "bastion")
HOST_KEY_POLICIES = ("accept-new", "strict")
# A Kubernetes node name (and an etcd member's): an RFC 1123 DNS subdomain, in lower case.
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
NODE_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def node_address(host: str, hostvars: Mapping[str, Mapping[str, Any]]) -> Any:
    """A host's cluster address: the inventory's `ip`, else the address of its default route (a gathered fact)."""
    own = hostvars[host]
    if "ip" in own:
        return own["ip"]
    address = ((own.get("ansible_facts") or {}).get("default_ipv4") or {}).get("address")
    if not address:
        raise ValueError(f"{host} has no ip in the inventory and no default_ipv4 fact: set ip for {host}, "
                         f"or gather its facts first")
    return address


def _addresses(hostvars: Mapping[str, object], host: str) -> set[str]:
    """The addresses that must belong to this host alone: its cluster ip and its SSH endpoint."""
    ssh = str(hostvars.get("ansible_host") or host)
    port = hostvars.get("ansible_port")
    found = {ssh if port in (None, "", 22, "22") else f"{ssh} port {port}"}
    if hostvars.get("ip"):
        found.add(str(hostvars["ip"]))
    return found


def inventory_problems(groups: Mapping[str, Iterable[str]], hostvars: Mapping[str, Mapping[str, object]],
                       allow_even_etcd: bool = False) -> list[str]:
    """Returns one message per problem; an empty list means the inventory is usable."""
    groups = {name: list(members) for name, members in groups.items()}
    problems: list[str] = []
    for name in REQUIRED_GROUPS:
        if not groups.get(name):
            problems.append(f"group {name} is empty or missing: put at least one host in it")
    etcd = groups.get("etcd", [])
    if etcd and len(etcd) % 2 == 0 and not allow_even_etcd:
        problems.append(f"etcd has {len(etcd)} members ({', '.join(etcd)}): an even count tolerates no more "
                        f"failures than one member fewer; use {len(etcd) - 1} or {len(etcd) + 1}, "
                        f"or set etcd_allow_even_members: true")
    cluster = set(groups.get("k8s_cluster", []))
    for name in ("kube_control_plane", "kube_node"):
        outside = [h for h in groups.get(name, []) if h not in cluster]
        if outside:
            problems.append(f"{', '.join(outside)} in {name} but not in k8s_cluster: "
                            f"make {name} a child of k8s_cluster")
    for host in sorted(set(groups.get("k8s_cluster", [])) | set(groups.get("etcd", []))):
        if len(host) > 253 or not NODE_NAME.match(host):
            fixed = re.sub(r"[^a-z0-9.-]+", "-", host.lower()).strip("-.") or "node1"
            problems.append(f"host {host} is not a valid node name (RFC 1123: lower-case letters, digits, '-' and '.', "
                            f"starting and ending with a letter or digit): rename it in the inventory, e.g. {fixed}")
    placed = {h for g in ROLE_GROUPS for h in groups.get(g, [])}
    for host in sorted(set(groups.get("all", [])) - placed - {"localhost"}):
        problems.append(f"host {host} is in no group ({', '.join(ROLE_GROUPS)}): add it to one, or delete it")
    by_address: dict[str, list[str]] = defaultdict(list)
    for host in groups.get("all", []):
        for address in _addresses(hostvars.get(host, {}), host):
            by_address[address].append(host)
    for address, hosts in sorted(by_address.items()):
        if len(hosts) > 1:
            problems.append(f"hosts {', '.join(sorted(hosts))} share the address {address}: "
                            f"give each host its own ip and ansible_host")
    if len(groups.get("bundle_server", [])) > 1:
        problems.append(f"bundle_server has {len(groups['bundle_server'])} hosts: it takes exactly one")
    for host in groups.get("all", []):
        problems.extend(_host_key_problems(host, hostvars.get(host, {})))
    return problems


def _host_key_problems(host: str, hostvars: Mapping[str, object]) -> list[str]:
    """The host-key policy is airgap_host_key_policy alone: ssh keeps an option's first value, and the policy
    comes first, so StrictHostKeyChecking in airgap_ssh_args would be silently ignored."""
    problems = []
    policy = hostvars.get("airgap_host_key_policy", "accept-new")
    if policy not in HOST_KEY_POLICIES:
        problems.append(f"host {host}: airgap_host_key_policy {policy!r} is not a host-key policy: "
                        f"use {' or '.join(HOST_KEY_POLICIES)}")
    if "stricthostkeychecking" in str(hostvars.get("airgap_ssh_args") or "").lower():
        problems.append(f"host {host}: airgap_ssh_args sets StrictHostKeyChecking, which ssh ignores after "
                        f"airgap_host_key_policy: remove it and set airgap_host_key_policy: strict (or accept-new)")
    return problems


def target_problems(command: str, targets: Iterable[str], groups: Mapping[str, Iterable[str]]) -> list[str]:
    """What is wrong with the nodes a day-2 command names (add-node's --limit, remove-node's list), one line each."""
    groups = {name: list(members) for name, members in groups.items()}
    targets = [t for t in targets if t != "localhost"]
    if not targets:
        return [f"{command} needs the nodes it acts on: ./run.sh {command} node5 (or ansible-playbook "
                f"--limit node5 with the playbook)"]
    problems = []
    unknown = [t for t in targets if t not in groups.get("all", [])]
    if unknown:
        problems.append(f"{', '.join(unknown)} not in the inventory: add {'them' if len(unknown) > 1 else 'it'} "
                        f"to kube_node there first")
    known = [t for t in targets if t not in unknown]
    outside = [t for t in known if t not in groups.get("k8s_cluster", []) and t not in groups.get("etcd", [])]
    if outside:
        problems.append(f"{', '.join(outside)} not in k8s_cluster: put {'them' if len(outside) > 1 else 'it'} "
                        f"in kube_node (a worker) in the inventory")
    for group, why in (("bundle_server", "the bundle server is not a Kubernetes node"),):
        hit = [t for t in known if t in groups.get(group, [])]
        if hit:
            problems.append(f"{', '.join(hit)} in {group}: {why}; use another host")
    etcd = groups.get("etcd", [])
    new_members = [t for t in known if t in etcd]
    if command == "add-node" and len(new_members) > 1:
        problems.append(f"{', '.join(new_members)} are all new etcd members: etcd takes one new member at a time; "
                        f"add-node {new_members[0]} first, then the next")
    if command == "add-node" and new_members and etcd and etcd[0] in new_members:
        problems.append(f"{etcd[0]} is new and first in the etcd group, which makes it the etcd CA's host: list the "
                        f"existing members first in the etcd group")
    remaining = [t for t in groups.get("all", []) if t not in targets]
    if command == "add-node" and not any(t in groups.get("kube_control_plane", []) for t in remaining):
        problems.append("no existing control plane outside the new nodes: deploy the cluster first "
                        "(./run.sh deploy-cluster)")
    return problems
