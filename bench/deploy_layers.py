"""Benchmark: seconds per layer of `run.sh deploy-cluster` on a fresh lab (bundle already built), then a rerun that
skips every step, then a no-op rerun with the step file removed (every layer runs, nothing to change).

Prints the lab and bundle preparation, each layer's wall time, the slowest tasks of the fresh deploy (where the time
goes), and the hosts that the no-op run changed (expected: none). The lab is torn down at the end unless --keep.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / ".collections"))
from ansible_collections.airgap.kubernetes.tools.lab import cluster  # noqa: E402
from ansible_collections.airgap.kubernetes.tools import steps  # noqa: E402


def deploy(prepared: cluster.Prepared, *extra: str) -> tuple[float, dict]:
    """Runs deploy-cluster; returns its wall time and {step: seconds} from the step file."""
    t0 = time.monotonic()
    subprocess.run([str(REPO / "run.sh"), "deploy-cluster", "-i", str(prepared.inventory), "--bundle",
                    str(prepared.bundle_dir), *extra], cwd=REPO, capture_output=True, text=True,
                   env={**os.environ, "NO_COLOR": "1"}, timeout=3600)
    wall = time.monotonic() - t0
    records = steps.StateFile(prepared.inventory.parent / ".airgap" / "steps.json").load().get("deploy-cluster", {})
    return wall, {step: rec.seconds for step, rec in records.items() if rec.status == "done"}


def slowest_tasks(prepared: cluster.Prepared, count: int) -> list[tuple[float, str]]:
    """The slowest tasks of every layer's last run, from profile_tasks' recap in the step logs."""
    found = []
    for log in sorted((prepared.inventory.parent / ".airgap" / "logs").glob("*.log")):
        for task, secs in re.findall(r"^(\S.*?) -{3,} (\d+\.\d+)s$", log.read_text(), re.M):
            found.append((float(secs), f"{log.stem}: {task}"))
    return sorted(found, reverse=True)[:count]


def changed_hosts(prepared: cluster.Prepared) -> dict:
    changed = {}
    for log in sorted((prepared.inventory.parent / ".airgap" / "logs").glob("*.log")):
        for host, counts in cluster.play_recap(log.read_text()).items():
            if counts["changed"]:
                changed[f"{log.stem}/{host}"] = counts["changed"]
    return changed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--control-planes", type=int, default=3)
    p.add_argument("--slowest", type=int, default=12, help="how many of the slowest tasks to list")
    p.add_argument("--keep", action="store_true", help="leave the lab running")
    args = p.parse_args()
    name = f"bench{os.getpid()}"
    try:
        prepared = cluster.prepare(name, nodes=args.nodes, log=lambda m: None, control_planes=args.control_planes)
        print(f"lab of {args.nodes} nodes ({args.control_planes} control planes) + bundle host: " +
              ", ".join(f"{k} {v:.1f} s" for k, v in prepared.seconds.items()), flush=True)
        fresh, per_step = deploy(prepared)
        print(f"fresh deploy: {fresh:.1f} s (" + ", ".join(f"{s} {v:.1f} s" for s, v in per_step.items()) + ")")
        print("slowest tasks of the fresh deploy:")
        for secs, task in slowest_tasks(prepared, args.slowest):
            print(f"  {secs:6.1f} s  {task}")
        wall, _ = deploy(prepared)
        print(f"rerun, step file kept (every step skipped): {wall:.1f} s", flush=True)
        (prepared.inventory.parent / ".airgap" / "steps.json").unlink()
        noop, per_step = deploy(prepared)
        print(f"no-op rerun, step file removed: {noop:.1f} s = {noop / fresh:.0%} of the fresh deploy (" +
              ", ".join(f"{s} {v:.1f} s" for s, v in per_step.items()) + ")")
        changed = changed_hosts(prepared)
        print(f"no-op rerun changed: {changed or 'nothing (changed=0 on every host)'}")
    finally:
        if not args.keep:
            cluster.lab.down(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
