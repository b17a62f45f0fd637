"""Benchmark: seconds per layer of `run.sh deploy-cluster` on a fresh lab, first run and second (nothing to change).

Prints the lab and bundle preparation, each layer's wall time from the step file, and the hosts that the second
run changed (expected: none). The lab is torn down at the end unless --keep.
"""
from __future__ import annotations

import argparse
import os
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


def changed_hosts(prepared: cluster.Prepared) -> dict:
    changed = {}
    for log in sorted((prepared.inventory.parent / ".airgap" / "logs").glob("*.log")):
        for host, counts in cluster.play_recap(log.read_text()).items():
            if counts["changed"]:
                changed[f"{log.stem}/{host}"] = counts["changed"]
    return changed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="leave the lab running")
    args = p.parse_args()
    name = f"bench{os.getpid()}"
    try:
        prepared = cluster.prepare(name, nodes=args.nodes, log=lambda m: None)
        print(f"lab of {args.nodes} nodes + bundle host: " +
              ", ".join(f"{k} {v:.1f} s" for k, v in prepared.seconds.items()))
        for label, extra in (("first run", ()), ("second run", ("--from", "00-ssh"))):
            wall, per_step = deploy(prepared, *extra)
            layers = ", ".join(f"{s} {v:.1f} s" for s, v in per_step.items())
            print(f"{label}: {wall:.1f} s ({layers})")
        changed = changed_hosts(prepared)
        print(f"second run changed: {changed or 'nothing (changed=0 on every host)'}")
    finally:
        if not args.keep:
            cluster.lab.down(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
