"""Filter plugin: node_address, the one rule for a host's cluster address (inventory ip, else its default route's)."""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.airgap.kubernetes.plugins.module_utils.inventory_checks import node_address

DOCUMENTATION = r"""
name: node_address
author: airgap.kubernetes maintainers
version_added: "0.2.0"
short_description: A host's cluster address
description:
  - The host's C(ip) from the inventory, else the address of its default route from its gathered facts
    (C(ansible_facts.default_ipv4.address)).
  - Fails naming the host when it has neither.
  - Works for any host through C(hostvars), so roles reading other hosts' addresses use the same rule as
    C(node_address) does for the current host.
options:
  _input:
    description: The inventory name of the host.
    type: str
    required: true
  hostvars:
    description: The C(hostvars) magic variable.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Show every control plane's address
  ansible.builtin.debug:
    msg: "{{ groups['kube_control_plane'] | map('airgap.kubernetes.node_address', hostvars) | list }}"
"""

RETURN = r"""
_value:
  description: The host's address.
  type: str
"""


def _node_address(host, hostvars):
    try:
        return node_address(str(host), hostvars)
    except ValueError as exc:
        raise AnsibleFilterError(f"node_address: {exc}") from None


def _etcd_member_address(host, hostvars):
    """The address an etcd member serves on: the one its etcd play recorded, else its inventory etcd_address, else
    its node address. Under --limit (add-node) the other members ran no play, and only the last two rules apply."""
    own = hostvars[str(host)]
    for name in ("etcd_member_address", "etcd_address"):
        if own.get(name):
            return own[name]
    return _node_address(host, hostvars)


class FilterModule:
    """The cluster address of a host, and of an etcd member (documented in etcd_member_address.yml)."""

    def filters(self):
        return {"node_address": _node_address, "etcd_member_address": _etcd_member_address}
