"""Which etcd members a removal takes out, and whether the members left keep a quorum. Pure functions."""
from __future__ import annotations

import json
from typing import Any, Iterable


def _parse(text: str) -> tuple[list, list]:
    """`etcdctl member list -w json`, a line `---`, then `etcdctl endpoint health --cluster -w json` (may be empty)."""
    members_part, _, health_part = text.partition("\n---")
    members = json.loads(members_part).get("members") or []
    health_part = health_part.strip()
    health = json.loads(health_part) if health_part else []
    return members, health


def etcd_removal(text: str, targets: Iterable[str]) -> dict[str, Any]:
    """{'remove': [{'id': hex, 'name': n}], 'problems': [...]} for removing the members named in targets."""
    members, health = _parse(text)
    targets = set(targets)
    healthy_urls = {h.get("endpoint") for h in health if h.get("health") in (True, "true")}
    remove = [{"id": format(int(m["ID"]), "x"), "name": m.get("name", "")}
              for m in members if m.get("name") in targets]
    left = [m for m in members if m.get("name") not in targets]
    healthy = [m for m in left if healthy_urls & set(m.get("clientURLs") or [])]
    problems = []
    need = len(left) // 2 + 1
    if remove and len(healthy) < need:
        sick = sorted(m.get("name") or format(int(m["ID"]), "x") for m in left if m not in healthy)
        problems.append(
            f"removing {', '.join(r['name'] for r in remove)} leaves {len(left)} etcd member(s), {len(healthy)} of "
            f"them healthy, and etcd needs {need} for a quorum: bring {', '.join(sick)} back to health first "
            f"(etcdctl endpoint health --cluster on a member)")
    return {"remove": remove, "problems": problems}
