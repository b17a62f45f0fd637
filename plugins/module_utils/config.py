"""Reads an inventory's cluster config (group_vars, inventory vars, extra vars) and its catalog overlays, without Ansible."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from ansible_collections.airgap.kubernetes.plugins.module_utils.resolver import CatalogError

CLUSTER_GROUP = "k8s_cluster"
_YAML_SUFFIXES = (".yml", ".yaml", ".json")
_SIMPLE_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader (libyaml's when present: the catalog is large) that reads Ansible's tags:
    a vault secret is opaque here, and !unsafe is a plain string."""


def _opaque(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return "<vault>" if node.tag == "!vault" else loader.construct_scalar(node)


_Loader.add_constructor("!vault", _opaque)
_Loader.add_constructor("!unsafe", _opaque)


def read_yaml(path: Union[str, Path], what: str = "vars file") -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.load(handle, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise CatalogError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CatalogError(f"{what} {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


def _vars_file(path: Path) -> dict:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CatalogError(f"vars file {path} must hold a mapping of variables, not {type(data).__name__}")
    return data


def _group_vars_files(directory: Path, group: str) -> list:
    """group_vars/<group>.yml or every file in group_vars/<group>/, in name order, as Ansible reads them."""
    files = [directory / f"{group}{suffix}" for suffix in ("",) + _YAML_SUFFIXES]
    files = [path for path in files if path.is_file()]
    folder = directory / group
    if folder.is_dir():
        files.extend(path for path in sorted(folder.rglob("*")) if path.is_file() and path.suffix in _YAML_SUFFIXES)
    return files


def _group_vars(directory: Path, group: str) -> dict:
    merged: dict = {}
    for path in _group_vars_files(directory, group):
        merged.update(_vars_file(path))
    return merged


def _inventory_files(inventory: Path) -> list:
    if inventory.is_file():
        return [inventory]
    return sorted(p for p in inventory.iterdir() if p.is_file() and p.suffix in (".yml", ".yaml"))


def _find_group(node: Any, name: str) -> Optional[Mapping]:
    """The group `name` anywhere under an inventory YAML's tree of children."""
    if not isinstance(node, Mapping):
        return None
    for key, child in (node.get("children") or {}).items():
        if key == name and isinstance(child, Mapping):
            return child
        found = _find_group(child, name)
        if found is not None:
            return found
    return None


def _inventory_vars(inventory: Path, group: str) -> dict:
    merged: dict = {}
    for path in _inventory_files(inventory):
        data = read_yaml(path, "inventory file")
        root = data.get("all") if isinstance(data, Mapping) else None
        if not isinstance(root, Mapping):
            continue
        node = root if group == "all" else _find_group(root, group)
        merged.update((node or {}).get("vars") or {})
    return merged


def parse_extra_vars(items: Optional[list], base: Path = Path(".")) -> dict:
    """ansible-playbook's -e forms: KEY=VALUE [KEY=VALUE ...], @file, or a JSON/YAML mapping."""
    merged: dict = {}
    for item in items or []:
        item = item.strip()
        if item.startswith("@"):
            data = _vars_file((base / item[1:]).expanduser())
        elif item.startswith(("{", "[")):
            try:
                data = yaml.load(item, Loader=_Loader)  # noqa: S506 - JSON is YAML too
            except yaml.YAMLError:
                raise CatalogError(f"extra vars {item!r} are neither JSON nor YAML") from None
        else:
            data = {}
            for pair in shlex.split(item):
                key, sep, value = pair.partition("=")
                if not sep or not key:
                    raise CatalogError(f"extra var {pair!r} is not KEY=VALUE, @file or a JSON mapping")
                data[key] = value
        if not isinstance(data, dict):
            raise CatalogError(f"extra vars {item!r} must be a mapping")
        merged.update(data)
    return merged


def template_names(value: Any) -> list:
    """The variables a string refers to as plain `{{ name }}`."""
    return _SIMPLE_TEMPLATE.findall(value) if isinstance(value, str) else []


def expand_simple_templates(config: Mapping, limit: int = 10) -> dict:
    """Fills `{{ name }}` references between top-level variables, as Ansible would for such plain ones.

    Anything richer (filters, groups[...]) is left as written; the resolver reports it if it matters.
    """
    result = dict(config)

    def substitute(match: re.Match) -> str:
        value = result.get(match.group(1))
        return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else match.group(0)

    for _ in range(limit):
        changed = False
        for key, value in result.items():
            if isinstance(value, str) and "{{" in value:
                new = _SIMPLE_TEMPLATE.sub(substitute, value)
                changed |= new != value
                result[key] = new
        if not changed:
            break
    return result


def inventory_dir(inventory_path: Union[str, Path, None]) -> Optional[Path]:
    if not inventory_path:
        return None
    path = Path(inventory_path).expanduser().resolve()
    return path if path.is_dir() else path.parent


def load_defaults(repo_root: Union[str, Path]) -> dict:
    """The collection's own group_vars/all/*.yml: the catalog and every knob's default."""
    return _group_vars(Path(repo_root) / "group_vars", "all")


_DEFAULTS_CACHE: dict = {}


def cached_defaults(repo_root: Union[str, Path]) -> Mapping:
    """load_defaults, parsed again only when a file of group_vars/all is added, removed or changed.

    The artifact lookup runs once per task and host, and parsing the catalog costs about 10 ms; a stat of each
    file costs microseconds. The result is shared between callers: read it, never change it.
    """
    files = _group_vars_files(Path(repo_root) / "group_vars", "all")
    stamp = tuple((str(path), stat.st_mtime_ns, stat.st_size) for path, stat in ((p, p.stat()) for p in files))
    key = str(Path(repo_root).resolve())
    cached = _DEFAULTS_CACHE.get(key)
    if cached is None or cached[0] != stamp:
        cached = _DEFAULTS_CACHE[key] = (stamp, load_defaults(repo_root))
    return cached[1]


def load_config(repo_root: Union[str, Path], inventory_path: Union[str, Path, None],
                extra_vars: Optional[dict] = None) -> dict:
    """The cluster-wide config, with Ansible's precedence for a k8s_cluster host.

    repo group_vars/all < inventory file `all: vars` < inventory group_vars/all
    < inventory file k8s_cluster vars < inventory group_vars/k8s_cluster < extra vars.
    """
    config = load_defaults(repo_root)
    if inventory_path:
        inventory = Path(inventory_path).expanduser().resolve()
        if not inventory.exists():
            raise CatalogError(f"inventory {inventory_path} does not exist: pass -i PATH to an inventory file or directory")
        group_vars = inventory_dir(inventory) / "group_vars"
        config.update(_inventory_vars(inventory, "all"))
        config.update(_group_vars(group_vars, "all"))
        config.update(_inventory_vars(inventory, CLUSTER_GROUP))
        config.update(_group_vars(group_vars, CLUSTER_GROUP))
    config.update(extra_vars or {})
    return expand_simple_templates(config)


def load_overlays(config: Mapping, base_dir: Union[str, Path, None] = None) -> list:
    """(source, overlay) pairs from catalog_overlay_files (relative to base_dir, the inventory directory)
    then the inline catalog_overlay; apply them with resolver.apply_overlays."""
    files = config.get("catalog_overlay_files") or []
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list):
        raise CatalogError(f"catalog_overlay_files must be a list of paths, not {type(files).__name__}")
    overlays = []
    for name in files:
        path = Path(str(name)).expanduser()
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        overlays.append((str(path), read_yaml(path, "catalog overlay file")))
    inline = config.get("catalog_overlay") or []
    for index, overlay in enumerate(inline if isinstance(inline, list) else [inline]):
        overlays.append((f"catalog_overlay[{index}]" if isinstance(inline, list) else "catalog_overlay", overlay))
    return overlays
