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


def task_seconds(log: str) -> list[tuple[str, str, float]]:
    """(play, task, seconds) for every task of an ansible-playbook log, from profile_tasks' per-task lines: each TASK
    or PLAY header is followed by a line with the previous task's duration, "(0:00:52.138)"."""
    lines, found, play, task = log.splitlines(), [], "", None
    for i, line in enumerate(lines):
        header = re.match(r"^(TASK|PLAY|RUNNING HANDLER) \[(.*?)\]", line)
        if not header:
            continue
        took = re.search(r"\((\d+):(\d+):(\d+\.\d+)\)", lines[i + 1]) if i + 1 < len(lines) else None
        if took and task:
            found.append((*task, int(took[1]) * 3600 + int(took[2]) * 60 + float(took[3])))
        if header[1] == "PLAY":
            play, task = header[2], None
        else:
            task = (play, header[2])
    return found


def where_time_goes(prepared: cluster.Prepared, count: int) -> tuple[list, list]:
    """The plays of every layer with their seconds and task counts, and the slowest tasks."""
    plays, tasks = [], []
    for log in sorted((prepared.inventory.parent / ".airgap" / "logs").glob("*.log")):
        per_play: dict[str, list[float]] = {}
        for play, task, secs in task_seconds(log.read_text()):
            per_play.setdefault(play, []).append(secs)
            tasks.append((secs, f"{log.stem}: {task}"))
        plays += [(f"{log.stem}: {play}", sum(s), len(s)) for play, s in per_play.items()]
    return plays, sorted(tasks, reverse=True)[:count]


def print_where_time_goes(prepared: cluster.Prepared, count: int, title: str) -> None:
    plays, tasks = where_time_goes(prepared, count)
    print(f"{title}, per play (seconds, tasks):")
    for name, secs, n in plays:
        print(f"  {secs:6.1f} s  {n:3d} tasks  {name}")
    print(f"{title}, slowest tasks:")
    for secs, task in tasks:
        print(f"  {secs:6.1f} s  {task}")


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
        print_where_time_goes(prepared, args.slowest, "fresh deploy")
        wall, _ = deploy(prepared)
        print(f"rerun, step file kept (every step skipped): {wall:.1f} s", flush=True)
        (prepared.inventory.parent / ".airgap" / "steps.json").unlink()
        noop, per_step = deploy(prepared)
        print(f"no-op rerun, step file removed: {noop:.1f} s = {noop / fresh:.0%} of the fresh deploy (" +
              ", ".join(f"{s} {v:.1f} s" for s, v in per_step.items()) + ")")
        print_where_time_goes(prepared, args.slowest, "no-op rerun")
        changed = changed_hosts(prepared)
        print(f"no-op rerun changed: {changed or 'nothing (changed=0 on every host)'}")
    finally:
        if not args.keep:
            cluster.lab.down(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
