"""Filter plugin: unreachable_report, layer 00's one line per host it could not reach over SSH."""
from __future__ import annotations

from ansible_collections.airgap.kubernetes.plugins.module_utils.reports import PROBE, unreachable_report

DOCUMENTATION = r"""
name: unreachable_report
author: airgap.kubernetes maintainers
version_added: "0.1.0"
short_description: One line per host that a probe task could not reach, with ssh's reason
description:
  - Reads each host's registered probe result (a task run with C(ignore_unreachable)) and returns one line per
    unreachable host in the order of the input, naming the host, the address and user it was tried with,
    and ssh's last line, which says what failed.
  - A changed host key adds the C(ssh-keygen -R) command ssh printed, which removes the old key.
  - Hosts that answered, and C(localhost), give no line.
options:
  _input:
    description: Host names, usually C(groups['all']).
    type: list
    elements: str
    required: true
  hostvars:
    description: The C(hostvars) magic variable.
    type: dict
    required: true
  probe:
    description: The variable the probe task registered.
    type: str
    default: airgap_ssh_probe
"""

EXAMPLES = r"""
- name: Fail with one line per unreachable host
  ansible.builtin.fail:
    msg: "{{ unreachable | length }} host(s) unreachable:\n{{ unreachable | join('\n') }}"
  vars:
    unreachable: "{{ groups['all'] | airgap.kubernetes.unreachable_report(hostvars) }}"
  when: unreachable | length > 0
"""

RETURN = r"""
_value:
  description: One line per unreachable host; empty when every host answered.
  type: list
  elements: str
"""

_READ = ("ansible_host", "ansible_user")


def _unreachable_report(hosts, hostvars, probe=PROBE):
    # Only the variables the report reads: templating a host's every variable would be slow, and could fail.
    wanted = {host: {key: hostvars[host].get(key) for key in (probe,) + _READ}
              for host in hosts if host != "localhost"}
    return unreachable_report(wanted, probe)


class FilterModule:
    """Layer 00's reports."""

    def filters(self):
        return {"unreachable_report": _unreachable_report}
