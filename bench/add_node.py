"""Benchmark: `run.sh add-node` of one worker to a cluster of 3 and to a cluster of 8 existing nodes, side by side.

Two labs are made (each: 3 control planes, also the etcd members, the rest workers, plus one spare node left out of
the first deploy), each deployed fresh with the bundle already built; then the spare joins each with add-node. Prints
both add-node wall times, their ratio (target: at most 1.2, and 2 minutes or less each), the tasks the existing
nodes ran (expected: none) and where add-node's time goes. Both labs are torn down at the end unless --keep.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / ".collections"))
sys.path.insert(0, str(REPO / "bench"))
from ansible_collections.airgap.kubernetes.tools.lab import cluster  # noqa: E402
import deploy_layers  # noqa: E402

SPARE_NOTE = "spare.yml"


def prepare(name: str, existing: int) -> cluster.Prepared:
    """A lab of existing + 1 nodes whose inventory leaves the last node out, deployed fresh."""
    prepared = cluster.prepare(name, nodes=existing + 1, log=lambda m: None, control_planes=3)
    spare = f"node{existing + 1}"
    data = yaml.safe_load(prepared.inventory.read_text())
    (prepared.inventory.parent / SPARE_NOTE).write_text(yaml.safe_dump({spare: data["all"]["hosts"].pop(spare)}))
    del data["all"]["children"]["kube_node"]["hosts"][spare]
    prepared.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    fresh, per_step = deploy_layers.deploy(prepared)
    print(f"{existing} existing nodes: fresh deploy {fresh:.1f} s ("
          + ", ".join(f"{s} {v:.1f} s" for s, v in per_step.items()) + ")", flush=True)
    return prepared


def add_node(prepared: cluster.Prepared) -> tuple[str, float, str]:
    spare, hostvars = next(iter(yaml.safe_load((prepared.inventory.parent / SPARE_NOTE).read_text()).items()))
    data = yaml.safe_load(prepared.inventory.read_text())
    data["all"]["hosts"][spare] = hostvars
    data["all"]["children"]["kube_node"]["hosts"][spare] = {}
    prepared.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    t0 = time.monotonic()
    proc = subprocess.run([str(REPO / "run.sh"), "add-node", spare, "-i", str(prepared.inventory)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=3600)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"add-node {spare} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    return spare, seconds, (prepared.inventory.parent / ".airgap" / "logs" / "scale-nodes.log").read_text()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", type=int, default=3, help="existing nodes of the small cluster")
    p.add_argument("--large", type=int, default=8, help="existing nodes of the large cluster")
    p.add_argument("--slowest", type=int, default=8)
    p.add_argument("--keep", action="store_true", help="leave the labs running")
    args = p.parse_args()
    names = {n: f"addnode{n}-{os.getpid()}" for n in (args.small, args.large)}
    try:
        prepared = {n: prepare(name, n) for n, name in names.items()}
        results = {n: add_node(prep) for n, prep in prepared.items()}
        print("\nadd-node of one worker:")
        for n, (spare, seconds, log) in results.items():
            others = {h: c for h, c in cluster.play_recap(log).items() if h not in (spare, "localhost")}
            print(f"  {n} existing nodes: {seconds:6.1f} s  (existing nodes in the play recap: {others or 'none'})")
        small, large = results[args.small][1], results[args.large][1]
        print(f"  ratio {args.large}/{args.small}: {large / small:.2f} (target at most 1.2); "
              f"slowest {max(small, large):.1f} s (target 120 s)")
        for n, (_, _, log) in results.items():
            tasks = sorted(((s, f"{play}: {task}") for play, task, s in deploy_layers.task_seconds(log)),
                           reverse=True)[:args.slowest]
            print(f"where add-node's time goes, {n} existing nodes (slowest tasks):")
            for secs, task in tasks:
                print(f"  {secs:6.1f} s  {task}")
    finally:
        if not args.keep:
            for name in names.values():
                cluster.lab.down(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
