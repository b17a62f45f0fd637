"""Layer 00's checks of the hosts themselves, from one read-only probe per host: python3, the clock, memory, free
disk, the route to the bundle server and when the CAs on the host expire. Every problem names the host, what is
wrong and the fix."""
from __future__ import annotations

import re
import shlex
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

MARK = "airgap-probe"


# The CAs the probe reads, by the name it reports them under, and the fix for one that has expired.
CA_LABELS = {"etcd": "the etcd CA", "bundle": "the bundle CA"}
CA_FIXES = {
    "etcd": 'rotate it as docs/etcd.md says ("Rotating the etcd CA")',
    "bundle": "move ca.crt and ca.key out of bundle_server_pki_dir (/etc/airgap-kubernetes/pki) on the bundle server "
              "and rerun from layer 01, which makes a new bundle CA and has every node trust it",
}


def probe_script(controller_time: int, bundle_address: str, bundle_port: int, path: str = "/var",
                 ca_files: Mapping[str, str] | None = None) -> str:
    """The POSIX shell the probe runs with `raw` (no python needed). It changes nothing on the host.
    ca_files: {name: path of a CA certificate}; the probe reports each one's notAfter (ca_<name>=Mon_D_HH:MM:SS_YYYY_GMT,
    `none` when the file is absent, `unreadable` when openssl cannot read it)."""
    reach = ("skip" if not bundle_address else
             f"$(out=$(timeout 3 bash -c ': </dev/tcp/{bundle_address}/{bundle_port}' 2>&1); rc=$?; "
             f"case \"$rc:$out\" in 0:*) echo open;; *refused*) echo refused;; 124:*) echo timeout;; "
             f"*) echo failed;; esac)")
    cas = "".join(
        f" ca_{name}=$(f={shlex.quote(ca_path)}; if [ ! -e \"$f\" ]; then echo none; else "
        f"openssl x509 -noout -enddate -in \"$f\" 2>/dev/null | sed -n 's/^notAfter=//p' | tr ' ' _ | grep . "
        f"|| echo unreadable; fi)"
        for name, ca_path in sorted((ca_files or {}).items()) if re.fullmatch(r"[a-z0-9]+", name))
    return (f"command -v python3 || echo no-python3; echo \"{MARK} controller={int(controller_time)} "
            f"time=$(date +%s) mem_kb=$(awk '/^MemTotal:/ {{print $2}}' /proc/meminfo) "
            f"disk_kb=$(df -Pk {path} | awk 'NR==2 {{print $4}}') bundle={reach}{cas}\"")


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
    ({group: MiB}, the largest of the host's groups counts), min_free_disk_mb; bundle: 'address:port' for messages.
    A CA the probe read that has expired by the controller's clock is a problem too (ca_warnings names those near it)."""
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
    problems += [f"{', '.join(hosts)}: {CA_LABELS.get(name, name)} expired on {_day(not_after)} "
                 f"({(now - not_after) // 86400} days ago), and every certificate it signed fails with it: "
                 f"{CA_FIXES.get(name, 'issue a new CA')}"
                 for name, not_after, now, hosts in _ca_expiries(probes) if not_after <= now]
    return problems


def _not_after(value: str) -> int | None:
    """Epoch seconds of the probe's ca_<name> value (openssl's notAfter with _ for spaces), None if it is none."""
    try:
        return int(datetime.strptime(" ".join(value.replace("_", " ").split()), "%b %d %H:%M:%S %Y GMT")
                   .replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        return None


def _day(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d")


def _ca_expiries(probes: Mapping[str, str]) -> Iterable[tuple[str, int, int, list[str]]]:
    """(CA name, notAfter, the controller's time, hosts) for each CA the probes read, one entry per certificate: the
    etcd CA's copies on every member count once."""
    found: dict[tuple[str, int], tuple[int, list[str]]] = {}
    for host, stdout in sorted(probes.items()):
        facts = parse_probe(stdout or "")
        now = _int(facts.get("controller"))
        for key, value in sorted(facts.items()):
            not_after = _not_after(value) if key.startswith("ca_") else None
            if now is not None and not_after is not None:
                found.setdefault((key[3:], not_after), (now, []))[1].append(host)
    return [(name, not_after, now, hosts) for (name, not_after), (now, hosts) in sorted(found.items())]


def ca_warnings(probes: Mapping[str, str], warn_days: Any = 180) -> list[str]:
    """One line for each CA on the hosts that expires within warn_days of the controller's time (an expired one is a
    problem of host_problems, and an unreadable one is named here)."""
    days = _int(warn_days) or 0
    warnings = [f"{', '.join(hosts)}: {CA_LABELS.get(name, name)} expires on {_day(not_after)}, in "
                f"{(not_after - now) // 86400} days (airgap_ca_warn_days is {days}): before then, "
                f"{CA_FIXES.get(name, 'issue a new CA')}"
                for name, not_after, now, hosts in _ca_expiries(probes) if now < not_after <= now + days * 86400]
    for host, stdout in sorted(probes.items()):
        for key, value in sorted(parse_probe(stdout or "").items()):
            if key.startswith("ca_") and value == "unreadable":
                warnings.append(f"{host}: {CA_LABELS.get(key[3:], key[3:])} is there but openssl could not read its "
                                f"expiry (openssl missing, or not a PEM certificate): check it by hand")
    return warnings
