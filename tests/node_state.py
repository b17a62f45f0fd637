"""A lab node's state as remove-cluster must restore it, read over SSH: the files outside /proc, /sys, /run, /tmp and
logs (and Ansible's own remote temporary directory, ~/.ansible, which Ansible makes at its first contact), the units
and their enablement, the mounts, and the iptables rules of both backends (counters and the built-in chains' default
policies left out)."""
from __future__ import annotations

import subprocess

STATE_SCRIPT = r"""
echo '== files'
find / -xdev \( -path /proc -o -path /sys -o -path /run -o -path /tmp -o -path /var/tmp -o -path /var/log \
  -o -path /root/.ansible \) -prune -o -print | sort
echo '== units'
systemctl list-unit-files --no-legend --no-pager | awk '{print $1, $2}' | sort
echo '== mounts'
findmnt -rn -o TARGET | sort
echo '== iptables'
for save in iptables-save iptables-legacy-save; do
  command -v $save >/dev/null && $save | grep -E '^(-A|:)' | grep -vE '^:(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ' \
    | sed 's/\[[0-9]*:[0-9]*\]//' | sed "s/^/$save /"
done
true
"""


def node_state(ssh_args: list[str]) -> dict[str, list[str]]:
    """{section: sorted lines} for the host that ssh_args reach (ssh's argv up to the remote command)."""
    proc = subprocess.run(ssh_args + ["bash -s"], input=STATE_SCRIPT, text=True, capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"reading the node's state failed: {proc.stderr.strip()[-500:]}")
    sections: dict[str, list[str]] = {}
    current = None
    for line in proc.stdout.splitlines():
        if line.startswith("== "):
            current = sections.setdefault(line[3:], [])
        elif current is not None:
            current.append(line)
    return sections


def differences(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, tuple[list, list]]:
    """{section: (left over, lost)} for every section that differs."""
    out = {}
    for section in sorted(set(before) | set(after)):
        was, now = set(before.get(section, [])), set(after.get(section, []))
        if was != now:
            out[section] = (sorted(now - was), sorted(was - now))
    return out
