"""The options every run.sh command shares (-i, -e, --arch), each read by one rule whatever the command."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Mapping, Optional

from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INVENTORY = REPO / "inventory" / "local" / "hosts.yml"
ARCHES = ("amd64", "arm64", "all")


class OptionError(Exception):
    """An option names something that is not there; the message says which and how to fix it."""


def extra_var(item: str) -> str:
    """argparse type of -e: an @file is read from the caller's directory, as ansible-playbook reads it.

    Checked when the command line is parsed, so every command fails the same way, before any work."""
    if item.startswith("@") and not (Path.cwd() / item[1:]).is_file():
        raise argparse.ArgumentTypeError(f"extra vars file {item[1:]} does not exist in {Path.cwd()}: "
                                         "fix the path after -e @ (a relative path is read from the current "
                                         "directory, not from the inventory's)")
    return item


def parent_parser(arch_help: Optional[str] = None) -> argparse.ArgumentParser:
    """-i and -e (and --arch when arch_help says what it selects), for argparse's parents=[...]."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i", "--inventory", help="inventory file or directory (default: $AIRGAP_INVENTORY, "
                        "else inventory/local/hosts.yml)")
    parser.add_argument("-e", "--extra-vars", action="append", default=[], metavar="VARS", type=extra_var,
                        help="KEY=VALUE, @file (relative to the current directory) or a JSON mapping, "
                             "as for ansible-playbook")
    if arch_help:
        parser.add_argument("--arch", choices=ARCHES, help=f"{arch_help} (default: the inventory's cluster_arches)")
    return parser


def inventory(arg: Optional[str], required: bool = True) -> Optional[Path]:
    """The inventory: -i, else $AIRGAP_INVENTORY, else inventory/local/hosts.yml.

    Without a required inventory (list-artifacts, build-bundle), a missing inventory/local means the
    collection's defaults (None); one named by -i or the environment must exist either way."""
    raw = arg or os.environ.get("AIRGAP_INVENTORY")
    if not raw:
        if not required and not DEFAULT_INVENTORY.exists():
            return None
        raw = str(DEFAULT_INVENTORY)
    path = Path(raw).expanduser().resolve()
    if not path.exists():
        raise OptionError(f"inventory {raw} does not exist: pass -i PATH, or copy inventory/sample "
                          f"to inventory/local and fill it in")
    return path


def arches(catalog: Mapping, config: Mapping, arch: Optional[str]) -> list:
    """--arch: all the catalog's arches, the one named, else the inventory's cluster_arches (amd64 when unset)."""
    if arch == "all":
        return list(catalog.get("arches", []))
    if arch:
        return [arch]
    return [resolver.normalize_arch(catalog, a) for a in (config.get("cluster_arches") or ["amd64"])]
