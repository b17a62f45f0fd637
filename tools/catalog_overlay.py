"""Writes a catalog overlay (sha256 per component, version and arch) from locally built binaries, e.g. the lab's v1.20.2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Mapping, Optional

import yaml

from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver
from ansible_collections.airgap.kubernetes.plugins.module_utils.digests import sha256_file

REPO = Path(__file__).resolve().parents[1]


def make_overlay(entries: Iterable[tuple]) -> dict:
    """(component, version, arch, path) entries -> {components: {name: {sha256: {arch: {version: hex}}}}}."""
    components: dict = {}
    for name, version, arch, path in entries:
        table = components.setdefault(name, {"sha256": {}})["sha256"].setdefault(arch, {})
        table[str(version)] = sha256_file(Path(path))
    return {"components": components}


def entries_from_dir(directory: Path, version: str, arch: str, catalog: Mapping) -> list:
    """Every file in `directory` named after a file component of the catalog (kubelet, kubeadm, ...)."""
    names = {n for n, c in catalog.get("components", {}).items() if c.get("kind") == "file"}
    if not directory.is_dir():
        raise resolver.CatalogError(f"{directory} is not a directory of built binaries")
    found = [(p.name, version, arch, p) for p in sorted(directory.iterdir()) if p.is_file() and p.name in names]
    if not found:
        raise resolver.CatalogError(f"{directory} holds no file named after a catalog component: "
                                    f"expected some of {', '.join(sorted(names))}")
    return found


def _file_entry(spec: str, arch: str) -> tuple:
    """NAME@VERSION=PATH, for a binary whose version differs from --version (e.g. etcd)."""
    left, sep, path = spec.partition("=")
    name, at, version = left.partition("@")
    if not (sep and at and name and version and path):
        raise resolver.CatalogError(f"--file {spec!r} is not NAME@VERSION=PATH")
    if not Path(path).is_file():
        raise resolver.CatalogError(f"--file {spec!r}: {path} does not exist")
    return name, version.lstrip("v"), arch, Path(path)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="catalog_overlay", description=__doc__)
    parser.add_argument("directory", nargs="?", help="directory of binaries named after catalog components")
    parser.add_argument("--version", help="version of the binaries in DIRECTORY, e.g. 1.20.2")
    parser.add_argument("--arch", required=True, help="arch the binaries were built for (amd64, arm64)")
    parser.add_argument("--file", action="append", default=[], metavar="NAME@VERSION=PATH",
                        help="one more file with its own version; repeatable")
    parser.add_argument("-o", "--output", help="overlay file to write (default: stdout)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        catalog = cfg.load_defaults(REPO)["airgap_catalog"]
        arch = resolver.normalize_arch(catalog, args.arch)
        entries = [_file_entry(spec, arch) for spec in args.file]
        if args.directory:
            if not args.version:
                raise resolver.CatalogError("a directory needs --version, the version its binaries report")
            entries += entries_from_dir(Path(args.directory), args.version.lstrip("v"), arch, catalog)
        if not entries:
            raise resolver.CatalogError("nothing to write: give a directory with --version, or --file")
        overlay = make_overlay(entries)
        resolver.apply_overlays(catalog, [("(generated)", overlay)])
    except resolver.CatalogError as exc:
        print(f"catalog_overlay: error: {exc}", file=sys.stderr)
        return 2
    text = "---\n# Catalog overlay written by tools/catalog_overlay.py from local builds.\n"
    text += yaml.safe_dump(overlay, default_flow_style=False, sort_keys=True)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
