"""A lab ready for `run.sh deploy-cluster`: lab nodes on an internal network, and a bundle built for them.

What an operator does by hand, done for the demo and the end-to-end tests:
  1. the lab's nodes and bundle host (tools/lab/lab.py), reused when the lab exists;
  2. the lab's local upstream (tools/lab/upstream.py) plays the internet for build-bundle;
  3. `run.sh build-bundle` for the lab's inventory, on this machine (the "connected host");
  4. the inventory learns where the tarball is (bundle_server_bundle_upload): layer 01 copies it to the bundle
     host, which unpacks, verifies and serves it.
"""
from __future__ import annotations

import hashlib
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import lab  # type: ignore  # noqa: E402
    import upstream  # type: ignore  # noqa: E402
else:
    from . import lab, upstream
from ansible_collections.airgap.kubernetes.tools import progress  # noqa: E402  (importable once upstream is)

REPO = Path(__file__).resolve().parents[2]
OS_OF_RELEASE = {"bookworm": "debian12", "trixie": "debian13"}


@dataclass(frozen=True)
class Prepared:
    lab: "lab.Lab"
    inventory: Path      # the inventory file (hosts.yml)
    bundle_dir: Path     # the unpacked bundle (manifest.json): run.sh --bundle
    seconds: dict        # what each preparation stage took


def _existing(name: str) -> Optional["lab.Lab"]:
    """The lab NAME when it exists and all its containers do; started if they were stopped."""
    try:
        the_lab = lab.load(name)
    except lab.LabError:
        return None
    containers = [h.container for h in the_lab.hosts]
    running = lab.docker("ps", "-a", "--filter", f"label={lab.LABEL}={name}", "--format", "{{.Names}}",
                         check=False).stdout.split()
    if sorted(running) != sorted(containers):
        return None
    lab.docker("start", *containers)
    return the_lab


def play_recap(log: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines of an ansible-playbook log: {host: {ok: n, changed: n, ...}}."""
    hosts = {}
    for host, counts in re.findall(r"^(\S+)\s+: (ok=\d+.*)$", log, re.M):
        hosts[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return hosts


def _bundle_inputs(inventory_dir: Path, config: dict) -> str:
    """Digest of what the lab's bundle is built from: the lab inventory, the catalog overlays it names, the
    collection's catalog and the builder."""
    digest = hashlib.sha256()
    paths = [inventory_dir / "hosts.yml", *sorted((inventory_dir / "group_vars").rglob("*.yml")),
             *sorted((REPO / "group_vars").rglob("*.yml")), *map(Path, config.get("catalog_overlay_files", [])),
             *sorted((REPO / "tools").glob("bundle*.py")), REPO / "tools" / "build_bundle.py"]
    for path in paths:
        if path.name != "bundle.yml":  # written after the build, from its result
            digest.update(f"{path}\0".encode() + (path.read_bytes() if path.exists() else b"absent") + b"\0")
    return digest.hexdigest()


def build_bundle(the_lab: "lab.Lab", log: Callable[[str], None] = print) -> Path:
    """Builds the lab's bundle into <lab>/bundle with run.sh build-bundle from the local upstream; returns OUT."""
    inventory_dir = the_lab.dir / "inventory"
    workdir = the_lab.dir / "upstream"
    vars_path = upstream.up(workdir, log=log)
    try:
        # The inventory carries the upstream's versions and catalog overlay, so the deploy resolves what was built.
        # Where the builder fetches from (upstream_bases: loopback) is the builder's alone, given with -e.
        config = yaml.safe_load(vars_path.read_text())
        builder_only = {k: config.pop(k) for k in ("upstream_bases", "upstream_insecure_registries")}
        (inventory_dir / "group_vars" / "all" / "upstream.yml").write_text(
            "---\n# Written by tools/lab/cluster.py from tools/lab/upstream.py's vars: what the lab can build.\n"
            + yaml.safe_dump(config, sort_keys=True))
        builder_vars = the_lab.dir / "build-bundle-vars.yml"
        builder_vars.write_text("---\n" + yaml.safe_dump(builder_only, sort_keys=True))
        out = the_lab.dir / "bundle"
        # Rebuilding signs the apt repo with a new key, a real change on every node: only when an input changed.
        stamp = _bundle_inputs(inventory_dir, config) + lab.release_key()[1]
        stamp_file = out / ".built-from"
        if (stamp_file.exists() and stamp_file.read_text() == stamp and (out / "bundle.tar.gz").exists()
                and (out / "airgap-bundle" / "manifest.json").exists()):
            log(f"bundle in {out} was built from the same inputs: reusing it")
            return out
        stamp_file.unlink(missing_ok=True)
        key_home, key = lab.release_key()
        cmd = [str(REPO / "run.sh"), "build-bundle", "-i", str(inventory_dir), "-e", f"@{builder_vars}", "--arch", "amd64",
               "--os", OS_OF_RELEASE[the_lab.release], "--out", str(out), "--no-wheelhouse", "--progress", "lines",
               "--sign-key", key, "--sign-homedir", str(key_home)]
        log("$ " + " ".join(cmd))
        # Its progress lines (stderr) as they come; its summary (stdout) only on failure.
        proc = progress.run_streaming(cmd, log, cwd=REPO)
        if proc.returncode != 0:
            raise lab.LabError(f"build-bundle failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        stamp_file.write_text(stamp)
    finally:
        upstream.down(workdir)
    return out


def prepare(name: str, nodes: int, release: str = lab.DEFAULT_RELEASE, etcd: Optional[int] = None,
            log: Callable[[str], None] = print, control_planes: int = 1) -> Prepared:
    """The lab NAME (made or reused) with its bundle built and its inventory pointing at it.

    Each stage logs when it starts and ends, with its time, and a heartbeat while it is silent: a cold machine
    spends minutes building the lab's image, its Kubernetes and its local upstream."""
    seconds = {}
    t0 = time.monotonic()
    with progress.heartbeat(f"lab {name}", log) as say:
        the_lab = _existing(name)
        if the_lab is None:
            lab.down(name)
            say(f"lab {name}: {nodes} nodes + bundle host, Debian {release}, internal network")
            the_lab = lab.up(name, nodes=nodes, release=release, internal=True, etcd=etcd,
                             control_planes=control_planes)
        else:
            say(f"lab {name} exists: reusing it (tear it down with python3 tools/lab/lab.py down {name})")
    seconds["lab"] = time.monotonic() - t0
    t0 = time.monotonic()
    with progress.heartbeat("local upstream and bundle", log) as say:
        out = build_bundle(the_lab, say)
    seconds["build-bundle"] = time.monotonic() - t0
    bundle_vars = {
        "bundle_server_bundle_upload": str(out / "bundle.tar.gz"),
        "bundle_trusted_keys": [lab.release_key()[1]],
    }
    (the_lab.dir / "inventory" / "group_vars" / "all" / "bundle.yml").write_text(
        "---\n# Written by tools/lab/cluster.py: layer 01 copies this controller's bundle to the bundle host; the bundle\n"
        "# is signed by the labs' release key (tools/lab/lab.py release_key), pinned here by its fingerprint.\n"
        + yaml.safe_dump(bundle_vars))
    return Prepared(the_lab, the_lab.dir / "inventory" / "hosts.yml", out / "airgap-bundle", seconds)


def main(argv: Optional[list] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--release", default=lab.DEFAULT_RELEASE, choices=sorted(OS_OF_RELEASE))
    args = parser.parse_args(argv)
    try:
        prepared = prepare(args.name, args.nodes, args.release)
    except (lab.LabError, upstream.UpstreamError) as exc:
        print(f"cluster: error: {exc}", file=sys.stderr)
        return 2
    print(f"inventory: {prepared.inventory}\nbundle: {prepared.bundle_dir}")
    print("  ".join(f"{k} {v:.1f} s" for k, v in prepared.seconds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
