"""Checks of a cluster's inputs that must pass before any host changes; every problem names itself and its fix."""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping


def _network(value: Any, knob: str, problems: list):
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        problems.append(f"{knob} {value!r} is not a network in CIDR form ({exc}): set e.g. 10.233.64.0/18")
        return None


def network_problems(pod_subnet: str, service_subnet: str, node_addresses: Mapping[str, str],
                     node_prefix: Any = 24) -> list:
    """The pod and service networks must be valid, must not overlap each other, and must hold no node's address;
    the per-node prefix must fit inside the pod network."""
    problems: list = []
    pods = _network(pod_subnet, "kube_pods_subnet", problems)
    services = _network(service_subnet, "kube_service_addresses", problems)
    if pods and services and pods.overlaps(services):
        problems.append(f"kube_pods_subnet {pods} overlaps kube_service_addresses {services}: "
                        f"give them disjoint ranges")
    for host, address in sorted(node_addresses.items()):
        try:
            ip = ipaddress.ip_address(str(address))
        except ValueError:
            continue  # a hostname: the inventory checks name it elsewhere
        for net, knob in ((pods, "kube_pods_subnet"), (services, "kube_service_addresses")):
            if net and ip in net:
                problems.append(f"{knob} {net} holds {host}'s address {ip}: pick a range outside the node network")
    if pods:
        try:
            prefix = int(node_prefix)
        except (TypeError, ValueError):
            prefix = -1
        if not pods.prefixlen <= prefix <= pods.max_prefixlen - 2:
            problems.append(f"kube_network_node_prefix {node_prefix!r} must lie between {pods.prefixlen} (the size of "
                            f"kube_pods_subnet {pods}) and {pods.max_prefixlen - 2}")
    return problems


def bundle_lacks(manifest: Mapping[str, Any], files: Iterable[Mapping[str, Any]],
                 images: Iterable[Mapping[str, Any]], what: str = "kube_version") -> list:
    """The resolved files and images a layer needs that the bundle's manifest does not carry, one line each."""
    carried_files = set((manifest.get("files") or {}))
    carried_images = set((manifest.get("images") or {}))
    versions = manifest.get("versions") or {}
    problems = []
    for item in files:
        if f"files/{item['mirror_path']}" not in carried_files:
            problems.append(f"{item['name']} {item['version']} is not in the bundle (it carries "
                            f"{versions.get(item['name'], 'none')}): set {what} to a version the bundle carries, "
                            f"or build a bundle for this one")
    for item in images:
        if item["canonical"] not in carried_images:
            problems.append(f"image {item['canonical']} is not in the bundle: set {what} to a version the bundle "
                            f"carries, or build a bundle for this one")
    return problems


def _days(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def certificate_lifetime_problems(ca_days: Any, cert_days: Any, renew_days: Any,
                                  knobs: Iterable[str] = ("etcd_ca_validity_days", "etcd_cert_validity_days",
                                                          "etcd_cert_renew_days")) -> list:
    """A CA's leaves must expire before it, and the renewal window must be shorter than a leaf's life (else every
    run renews every certificate). knobs: the three settings' names, for the messages."""
    ca_knob, cert_knob, renew_knob = knobs
    values = {ca_knob: _days(ca_days), cert_knob: _days(cert_days), renew_knob: _days(renew_days)}
    given = {ca_knob: ca_days, cert_knob: cert_days, renew_knob: renew_days}
    problems = [f"{knob} {given[knob]!r} is not a whole number of days: set it to one"
                for knob, days in values.items() if days is None]
    problems += [f"{knob} {days} must be at least {1 if knob != renew_knob else 0}: set it to a positive number of days"
                 for knob, days in values.items() if days is not None and days < (1 if knob != renew_knob else 0)]
    if problems:
        return problems
    ca, cert, renew = values[ca_knob], values[cert_knob], values[renew_knob]
    if cert >= ca:
        problems.append(f"{cert_knob} {cert} is not shorter than {ca_knob} {ca}: a certificate must expire before "
                        f"the CA that signed it; set {cert_knob} to e.g. {min(365, ca // 2) or 1}")
    if renew >= cert:
        problems.append(f"{renew_knob} {renew} is not shorter than {cert_knob} {cert}: every run would renew every "
                        f"certificate; set {renew_knob} to e.g. {min(30, cert // 4)}")
    return problems
