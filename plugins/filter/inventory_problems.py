"""Filter plugin: inventory_problems, the shape checks run before any host is touched."""
from __future__ import annotations

from ansible_collections.airgap.kubernetes.plugins.module_utils.inventory_checks import inventory_problems, target_problems

DOCUMENTATION = r"""
name: inventory_problems
author: airgap.kubernetes maintainers
version_added: "0.1.0"
short_description: List what is wrong with an inventory's shape
description:
  - Checks groups and host variables for the problems that must stop a deploy before any host changes
    (empty required groups, an even etcd count, a host in no group, duplicate addresses).
  - Returns one message per problem, each naming the problem and its fix; an empty list means usable.
options:
  _input:
    description: The C(groups) magic variable.
    type: dict
    required: true
  hostvars:
    description: The C(hostvars) magic variable.
    type: dict
    required: true
  allow_even_etcd:
    description: Accept an even number of etcd members.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Fail on inventory problems
  ansible.builtin.fail:
    msg: "{{ problems | join('\n') }}"
  vars:
    problems: "{{ groups | airgap.kubernetes.inventory_problems(hostvars) }}"
  when: problems | length > 0
"""

RETURN = r"""
_value:
  description: One message per problem.
  type: list
  elements: str
"""


def _inventory_problems(groups, hostvars, allow_even_etcd=False):
    plain = {host: dict(hostvars[host]) for host in groups.get("all", [])}
    return inventory_problems(groups, plain, allow_even_etcd)


def _target_problems(targets, command, groups):
    """The nodes a day-2 command names: in the inventory, in k8s_cluster, of a kind the command handles."""
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.replace(":", ",").split(",") if t.strip()]
    return target_problems(command, list(targets), groups)


class FilterModule:
    """Inventory checks."""

    def filters(self):
        return {"inventory_problems": _inventory_problems, "target_problems": _target_problems}
