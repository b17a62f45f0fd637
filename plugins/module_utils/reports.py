"""Messages layer 00 prints about the hosts it probed over SSH: one line per unreachable host, in ssh's own words."""
from __future__ import annotations

from typing import Any, Mapping

PROBE = "airgap_ssh_probe"


def _said(message: Any) -> list[str]:
    """ssh's output as non-empty lines (it ends lines with \\r\\n)."""
    return [line.strip() for line in str(message or "").replace("\r", "").split("\n") if line.strip()]


def unreachable_report(hostvars: Mapping[str, Mapping[str, Any]], probe: str = PROBE) -> list[str]:
    """One line per host whose probe came back unreachable, in hostvars' order.

    Each line names the host, the address and user it was tried with, and ssh's last line, which says what failed.
    A changed host key also gets the removal command ssh itself prints, since that is the fix.
    """
    lines = []
    for host, values in hostvars.items():
        result = values.get(probe) or {}
        if not result.get("unreachable"):
            continue
        said = _said(result.get("msg"))
        line = (f"- {host} ({values.get('ansible_host') or host}, user {values.get('ansible_user') or 'default'}): "
                f"{said[-1] if said else 'no answer'}")
        fix = next((text for text in said if text.startswith("ssh-keygen ")), None)
        if fix:
            line += (f" The host key differs from the one recorded: if the host was reinstalled, remove the old key "
                     f"({fix}) and rerun.")
        lines.append(line)
    return lines
