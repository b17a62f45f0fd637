"""Specification: no task registers a variable under the name of a setting. A registered variable outranks role
defaults and group_vars, so `register: network_bridge_unit` in layer 04 turned the bridge role's unit name into a
stat result, and systemd was asked for a service named after a dict."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _settings() -> dict:
    """{setting name: file} for every role default, role var and group_vars/all default."""
    out = {}
    for path in sorted(REPO.glob("roles/*/defaults/main.yml")) + sorted(REPO.glob("roles/*/vars/main.yml")) \
            + sorted(REPO.glob("group_vars/all/*.yml")):
        for name in (yaml.safe_load(path.read_text()) or {}):
            out.setdefault(name, path.relative_to(REPO).as_posix())
    return out


def _registers(node, found: list, where: str) -> None:
    if isinstance(node, list):
        for item in node:
            _registers(item, found, where)
    elif isinstance(node, dict):
        if isinstance(node.get("register"), str):
            found.append((node["register"], where, node.get("name", "?")))
        for value in node.values():
            if isinstance(value, (list, dict)):
                _registers(value, found, where)


def test_no_task_registers_a_variable_named_like_a_setting():
    settings = _settings()
    found: list = []
    for path in sorted(REPO.glob("roles/*/tasks/*.yml")) + sorted(REPO.glob("roles/*/handlers/*.yml")) \
            + sorted(REPO.glob("playbooks/*.yml")):
        _registers(yaml.safe_load(path.read_text()), found, path.relative_to(REPO).as_posix())
    clashes = [f"{where} [{task}] registers {name}, a setting of {settings[name]}"
               for name, where, task in found if name in settings]
    assert clashes == [], "rename the registered variable:\n" + "\n".join(clashes)
