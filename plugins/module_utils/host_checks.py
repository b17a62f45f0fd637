"""Layer 00's checks of the hosts themselves, from one read-only probe per host: python3, the clock, memory, free
disk and the route to the bundle server. Every problem names the host, what is wrong and the fix."""
from __future__ import annotations

import re
from typing import Any, Mapping

MARK = "airgap-probe"


def probe_script(controller_time: int, bundle_address: str, bundle_port: int, path: str = "/var") -> str:
    """The POSIX shell the probe runs with `raw` (no python needed). It changes nothing on the host."""
    reach = ("skip" if not bundle_address else
             f"$(out=$(timeout 3 bash -c ': </dev/tcp/{bundle_address}/{bundle_port}' 2>&1); rc=$?; "
             f"case \"$rc:$out\" in 0:*) echo open;; *refused*) echo refused;; 124:*) echo timeout;; "
             f"*) echo failed;; esac)")
    return (f"command -v python3 || echo no-python3; echo \"{MARK} controller={int(controller_time)} "
            f"time=$(date +%s) mem_kb=$(awk '/^MemTotal:/ {{print $2}}' /proc/meminfo) "
            f"disk_kb=$(df -Pk {path} | awk 'NR==2 {{print $4}}') bundle={reach}\"")


def parse_probe(stdout: str) -> dict[str, str]:
    line = next((l for l in stdout.splitlines() if l.startswith(MARK + " ")), "")
    return dict(re.findall(r"(\w+)=(\S*)", line))


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def host_problems(probes: Mapping[str, str], roles: Mapping[str, list], limits: Mapping[str, Any],
                  bundle: str = "") -> list[str]:
    """probes: {host: the probe's stdout}; roles: {host: its groups}; limits: max_clock_skew (s), min_memory_mb
    ({group: MiB}, the largest of the host's groups counts), min_free_disk_mb; bundle: 'address:port' for messages."""
    problems = []
    max_skew = _int(limits.get("max_clock_skew"))
    min_memory = limits.get("min_memory_mb") or {}
    min_disk = _int(limits.get("min_free_disk_mb"))
    for host, stdout in sorted(probes.items()):
        facts = parse_probe(stdout or "")
        if not facts:
            continue  # unreachable, or an old probe: reported elsewhere
        now, theirs = _int(facts.get("controller")), _int(facts.get("time"))
        if max_skew is not None and now is not None and theirs is not None and abs(theirs - now) > max_skew:
            way = "ahead of" if theirs > now else "behind"
            problems.append(f"{host}: its clock is {abs(theirs - now)} s {way} the controller's (at most {max_skew} s): "
                            f"set its time (date -s, or its time source), or raise airgap_max_clock_skew")
        need = max([_int(min_memory.get(g)) or 0 for g in roles.get(host, [])] + [0])
        have = _int(facts.get("mem_kb"))
        if have is not None and need and have // 1024 < need:
            problems.append(f"{host}: {have // 1024} MiB of memory, its role needs {need} MiB: give it more, or "
                            f"lower airgap_min_memory_mb")
        free = _int(facts.get("disk_kb"))
        if min_disk and free is not None and free // 1024 < min_disk:
            problems.append(f"{host}: {free // 1024} MiB free on /var, it needs {min_disk} MiB: free space there, or "
                            f"lower airgap_min_free_disk_mb")
        reach = facts.get("bundle", "skip")
        if reach in ("timeout", "failed"):
            why = "timed out" if reach == "timeout" else "failed (no route?)"
            problems.append(f"{host}: its connection to the bundle server {bundle} {why}: open the route and the "
                            f"firewall from {host} to the bundle server")
    return problems
