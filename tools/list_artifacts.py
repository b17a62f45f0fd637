"""Engine of `./run.sh list-artifacts`: prints every file, image and package an inventory's config needs."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Mapping, Optional, Union

from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver
from ansible_collections.airgap.kubernetes.tools import options

REPO = Path(__file__).resolve().parents[1]
KIND_ARGS = {"files": "file", "images": "image", "packages": "package"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.sh list-artifacts",
        description="List what the inventory's config needs, from the artifact catalog (group_vars/all/catalog.yml).",
        epilog="Without -i, $AIRGAP_INVENTORY or inventory/local/hosts.yml: the collection's defaults.",
        parents=[options.parent_parser(arch_help="node arch")])
    parser.add_argument("--kind", choices=list(KIND_ARGS) + ["all"], default="all")
    parser.add_argument("--format", choices=["text", "json", "markdown"], default="text",
                        help="markdown: the catalog's reference table, whatever the config enables")
    parser.add_argument("--mode", choices=list(resolver.MODES), default="upstream",
                        help="upstream: where to download from (after upstream_bases); offline: the bundle server")
    parser.add_argument("--os-family", choices=["debian", "redhat", "all"], default="all")
    parser.add_argument("--group", help="only what hosts of this inventory group need (e.g. etcd)")
    return parser


def load(inventory: Union[str, Path, None], extra_vars: Optional[list] = None) -> tuple[dict, dict]:
    """(catalog with overlays applied, config) for an inventory, as the deploy would see them.

    An -e @file is read from the caller's directory, as the step engine and ansible-playbook read it; only the
    catalog overlay files the config names are relative to the inventory."""
    inv_dir = cfg.inventory_dir(inventory)
    config = cfg.load_config(REPO, inventory, cfg.parse_extra_vars(extra_vars, Path.cwd()))
    catalog = config.get("airgap_catalog")
    if not isinstance(catalog, Mapping):
        raise resolver.CatalogError("airgap_catalog is missing or not a mapping: it comes from group_vars/all/catalog.yml")
    return resolver.apply_overlays(catalog, cfg.load_overlays(config, inv_dir)), config


def collect(catalog: Mapping, config: Mapping, arches: list, kind: Optional[str], mode: str,
            families: list, group: Optional[str] = None) -> list:
    """Resolved entries as dicts, one per distinct location, with every arch (or OS family) that needs it."""
    entries: dict = {}
    for family in families:
        for arch in arches:
            for art in resolver.resolve(catalog, config, arch, mode, kind, family):
                if group and group not in art.groups:
                    continue
                data = art.to_dict()
                location = {"file": "url", "image": "ref", "package": "package"}[art.kind]
                key = (art.kind, art.name, data[location], data.get("os_family"))
                entry = entries.setdefault(key, {**data, "arches": []})
                if art.kind != "package" and arch not in entry["arches"]:
                    entry["arches"].append(arch)
    order = {name: index for index, name in enumerate(catalog.get("components", {}))}
    # Stable sort: within a component, arches and OS families keep the order they were asked in.
    return sorted(entries.values(), key=lambda e: (resolver.KINDS.index(e["kind"]), order[e["name"]]))


def _text(entries: list) -> str:
    rows = []
    for e in entries:
        if e["kind"] == "file":
            rows.append(("file", e["name"], e["version"], ",".join(e["arches"]), e["url"], "sha256:" + e["sha256"]))
        elif e["kind"] == "image":
            arches = "multi-arch" if e["multiarch"] else ",".join(e["arches"])
            # The digest in its own column, the reference by tag beside it: a reader sees at once what is pinned.
            rows.append(("image", e["name"], e["version"], arches, e["ref"].partition("@")[0],
                         e["digest"] or "unpinned (tag only)"))
        else:
            rows.append(("package", e["name"], "", e["os_family"], e["package"], ""))
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths + [0])).rstrip() for r in rows) + "\n"


def markdown(catalog: Mapping) -> str:
    """The catalog as a reference table: every component, its default version per line, and when it is enabled."""
    lines = sorted(catalog.get("lines", {}), key=resolver.version_key, reverse=True)
    head = ["component", "kind", "groups", "enabled when"] + [f"k8s {ln}" for ln in lines] + ["upstream"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, comp in catalog.get("components", {}).items():
        conditions = [f"{k} = {'/'.join(v) if isinstance(v, list) else v}"
                      for k, v in (comp.get("enabled_when") or {}).items()]
        by = comp.get("enabled_by") or []
        conditions += [f"{v}" for v in ([by] if isinstance(by, str) else by)]
        versions = []
        for line in lines:
            try:
                versions.append(resolver.component_version(catalog, {}, name, line) if comp.get("version_var") else "")
            except resolver.CatalogError:
                versions.append("")
        if comp.get("kind") == "package":
            where = ", ".join(f"{f}: `{p}`" for f, p in comp.get("packages", {}).items())
        elif comp.get("kind") == "image":
            where = f"`{comp['image']}:{comp.get('tag', '{version}')}`"
        else:
            where = f"`{comp['url']}`"
        row = [f"`{name}`", comp.get("kind", ""), ", ".join(comp.get("groups", [])),
               "; ".join(conditions) or "always"] + versions + [where]
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def main(argv: Optional[list] = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        catalog, config = load(options.inventory(args.inventory, required=False), args.extra_vars)
        if args.format == "markdown":
            sys.stdout.write(markdown(catalog))
            return 0
        arches = options.arches(catalog, config, args.arch)
        families = list(catalog.get("os_families", [])) if args.os_family == "all" else [args.os_family]
        entries = collect(catalog, config, arches, KIND_ARGS.get(args.kind), args.mode, families, args.group)
    except (resolver.CatalogError, options.OptionError) as exc:
        print(f"list-artifacts: error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        json.dump(entries, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_text(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
