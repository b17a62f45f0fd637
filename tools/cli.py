"""Command-line front end of run.sh: parses the operator's command and hands it to the step engine."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from ansible_collections.airgap.kubernetes.tools import options, steps

REPO = Path(__file__).resolve().parents[1]

COMMANDS = {
    "deploy-cluster": "deploy the cluster: layers 00-ssh .. 05-apps, resuming where the last run stopped",
    "add-node": "add NODES (already in the inventory) to the cluster; nothing else is touched",
    "remove-node": "drain and remove NODES from the cluster",
    "remove-cluster": "remove the cluster from every host, then clear the step file",
    "upgrade": "upgrade the cluster to the inventory's kube_version",
    "steps": "show which steps are done, when, and how long each took",
    "list-artifacts": "list every file, image and package the inventory's config needs",
    "build-bundle": "on a connected host: download, verify and pack everything the config needs into one bundle",
    "demo": "set up this machine, start lab nodes and deploy a demo cluster on them",
    "test": "run the whole test suite (lint, unit, lab, molecule, end to end), as CI does",
}

DEMO_LAB = "demo"
DEMO_NODES = 4


def _tool(name: str) -> str:
    """Prefers the tool installed next to this Python (the venv), so run.sh works without activation."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _parser() -> argparse.ArgumentParser:
    width = max(len(c) for c in COMMANDS)
    epilog = "commands:\n" + "\n".join(f"  {c:<{width}}  {h}" for c, h in COMMANDS.items())
    epilog += ("\n\nThe inventory comes from -i, else $AIRGAP_INVENTORY, else inventory/local/hosts.yml."
               "\nExtra vars (an @file's content too) are part of the steps' fingerprint."
               "\nSteps, logs and the lock live in .airgap/ next to the inventory.")
    parser = argparse.ArgumentParser(prog="run.sh", description="Deploy and operate an air-gapped Kubernetes cluster.",
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[options.parent_parser()])
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    parser.add_argument("nodes", nargs="*", help="node names, for add-node and remove-node")
    parser.add_argument("--bundle", help="unpacked bundle directory; its manifest.json is part of the fingerprint")
    parser.add_argument("--from", dest="from_step", metavar="STEP", help="rerun from STEP (exact name) to the end")
    parser.add_argument("--only", dest="only_step", metavar="STEP", help="run only STEP (exact name)")
    parser.add_argument("--force", action="store_true",
                        help="remove-node: remove dead nodes from the cluster and etcd without reaching them")
    parser.add_argument("--yes", action="store_true", help="remove-cluster: do not ask for confirmation")
    parser.add_argument("--with-bundle-server", action="store_true",
                        help="remove-cluster: also reset the bundle server (it is kept by default)")
    parser.add_argument("--nodes", dest="demo_nodes", type=int, default=DEMO_NODES,
                        help=f"demo: lab node count (default {DEMO_NODES}; from 4 on, 3 of them are control planes)")
    parser.add_argument("--release", default="bookworm", choices=["bookworm", "trixie"],
                        help="demo: Debian release of the lab nodes")
    return parser


def inventory_hosts(inventory: Path) -> set[str]:
    """Every host in the inventory, as Ansible itself parses it."""
    proc = subprocess.run([_tool("ansible-inventory"), "-i", str(inventory), "--list"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise steps.StepError(f"inventory {inventory} does not parse: {proc.stderr.strip()[-500:]}")
    data = json.loads(proc.stdout)
    return set(data.get("_meta", {}).get("hostvars", {}))


def _targets(command: str, nodes: list[str], inventory: Path) -> tuple[str, ...]:
    if command not in ("add-node", "remove-node"):
        if nodes:
            raise steps.StepError(f"{command} takes no node names (got {' '.join(nodes)})")
        return ()
    names = tuple(n for arg in nodes for n in arg.split(",") if n)
    if not names:
        raise steps.StepError(f"{command} needs node names, e.g. ./run.sh {command} node5")
    unknown = sorted(set(names) - inventory_hosts(inventory))
    if unknown:
        raise steps.StepError(f"{', '.join(unknown)} not in inventory {inventory}: "
                              f"add {'them' if len(unknown) > 1 else 'it'} to kube_node there first")
    return names


def _bundle_manifest(arg: Optional[str]) -> Optional[Path]:
    if not arg:
        return None
    manifest = Path(arg).resolve() / "manifest.json"
    if not manifest.is_file():
        raise steps.StepError(f"--bundle {arg} has no manifest.json: point it at an unpacked bundle")
    return manifest


def _switches(args: argparse.Namespace, command: str) -> tuple[str, ...]:
    """The flags of the day-2 commands, as extra vars: part of the step's fingerprint like any other input."""
    flags = (("--force", args.force, "remove-node"), ("--yes", args.yes, "remove-cluster"),
             ("--with-bundle-server", args.with_bundle_server, "remove-cluster"))
    wrong = [flag for flag, value, owner in flags if value and command != owner]
    if wrong:
        raise steps.StepError(f"{', '.join(wrong)} do(es) not apply to {command}")
    out = []
    if args.force:
        out.append("remove_node_force=true")
    if args.with_bundle_server:
        out.append("remove_cluster_with_bundle_server=true")
    return tuple(out)


def confirm_removal(inventory: Path, yes: bool, stdin=sys.stdin, out=sys.stdout, bundle_server: bool = False) -> None:
    """remove-cluster asks on a terminal; without one it needs --yes."""
    if yes:
        return
    if not stdin.isatty():
        raise steps.StepError("remove-cluster removes the cluster from every host: pass --yes to confirm "
                              "when no terminal can ask")
    out.write(f"remove-cluster resets every node of {inventory}: Kubernetes, etcd (its data and snapshots too), "
              f"the runtime and what layer 01 installed"
              + (", and the bundle server: its bundle, registry, certificates and packages" if bundle_server else
                 "; the bundle server is kept")
              + ". Type 'yes' to go on: ")
    out.flush()
    if stdin.readline().strip() != "yes":
        raise steps.StepError("remove-cluster not confirmed: nothing was changed")


def _make_run(args: argparse.Namespace, command: str, inventory: Path) -> steps.Run:
    return steps.Run(command=command, inventory=inventory, repo=REPO,
                     targets=_targets(command, args.nodes, inventory),
                     extra_vars=tuple(args.extra_vars) + _switches(args, command),
                     bundle_manifest=_bundle_manifest(args.bundle))


def _print_kubeconfig(run: steps.Run) -> None:
    """Layer 03 leaves the admin kubeconfig next to the step file: tell the operator how to use it."""
    admin = run.state_dir / "admin.conf"
    if admin.is_file():
        print(f"\nThe cluster's admin kubeconfig (keep it private):\n  export KUBECONFIG={admin}")


def _demo(args: argparse.Namespace) -> int:
    """Starts (or reuses) the demo lab, builds its bundle, then deploys every layer that exists so far."""
    from ansible_collections.airgap.kubernetes.tools.lab import cluster  # the lab: nodes, local upstream, build-bundle
    try:
        prepared = cluster.prepare(DEMO_LAB, args.demo_nodes, args.release,
                                   control_planes=3 if args.demo_nodes >= 4 else 1)
    except (cluster.lab.LabError, cluster.upstream.UpstreamError) as exc:
        print(f"run.sh demo: error: {exc}", file=sys.stderr)
        return 2
    inventory = prepared.inventory
    run = steps.Run(command="deploy-cluster", inventory=inventory, repo=REPO, extra_vars=tuple(args.extra_vars),
                    bundle_manifest=prepared.bundle_dir / "manifest.json")
    code = steps.execute(run, args.from_step, args.only_step, _tool("ansible-playbook"), stop_at_missing=True)
    records = steps.StateFile(run.state_dir / "steps.json").load().get(run.key, {})
    done = [s for s in run.steps if records.get(s) and records[s].status == "done"]
    failed = [s for s in run.steps if records.get(s) and records[s].status != "done"]
    missing = steps.missing_playbooks(run, run.steps)
    print(f"\ndemo lab '{DEMO_LAB}': inventory {inventory}")
    print(f"  layers deployed: {', '.join(done) or 'none'}")
    if failed:
        print(f"  FAILED: {', '.join(failed)} (rerun ./run.sh demo to resume there)")
    if missing:
        print(f"  NOT DEPLOYED, not implemented yet: {', '.join(missing)}")
    _print_kubeconfig(run)
    if (run.state_dir / "admin.conf").is_file():
        print(f"  kubectl (the lab's v1.20.2 build): {cluster.upstream._kube_bin(log=lambda _: None) / 'kubectl'} get nodes")
    print(f"  log in:   python3 tools/lab/lab.py ssh {DEMO_LAB} node1")
    print(f"  tear down: python3 tools/lab/lab.py down {DEMO_LAB}")
    return 0 if code in (0, 3) else code


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["list-artifacts"]:
        # Its options belong to the resolver's CLI; forward them untouched.
        from ansible_collections.airgap.kubernetes.tools import list_artifacts
        return list_artifacts.main(argv[1:])
    if argv[:1] == ["build-bundle"]:
        try:
            from ansible_collections.airgap.kubernetes.tools import build_bundle
        except ImportError:
            print("run.sh: error: build-bundle does not exist yet in this version", file=sys.stderr)
            return 2
        return build_bundle.main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "test":
            return subprocess.call(["bash", str(REPO / "tests" / "run-all.sh")], cwd=REPO)
        inventory = options.inventory(args.inventory)
        if args.command == "steps":
            steps.describe(inventory)
            return 0
        run = _make_run(args, args.command, inventory)
        if args.command == "remove-cluster":
            confirm_removal(inventory, args.yes, bundle_server=args.with_bundle_server)
        # deploy-cluster deploys the layers this version has, then names the first missing one (exit 3);
        # the other commands refuse to start when a playbook they need is missing.
        code = steps.execute(run, args.from_step, args.only_step, _tool("ansible-playbook"),
                             stop_at_missing=args.command == "deploy-cluster")
        if args.command == "deploy-cluster":
            _print_kubeconfig(run)
        return code
    except (steps.StepError, options.OptionError) as exc:
        print(f"run.sh: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
