"""Specification: an inventory value (a path, a name, a URL, an image) that goes into a shell string is quoted.

Checked in the shell strings of the roles' and playbooks' shell, command and raw tasks (a command string is split
like a shell's, so a path with a space breaks it too; argv lists need no quoting), and in the templates that sh runs
or sources (*.sh.j2, *.env.j2). Comment lines are prose and are left alone."""
import re
from pathlib import Path
from typing import Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHELL_MODULES = ("ansible.builtin.shell", "ansible.builtin.command", "ansible.builtin.raw")
# Names of inventory values that are paths, names, URLs or images: what an operator sets and may give a space,
# a quote or a $ to.
INVENTORY_VALUE = re.compile(r"\b(inventory_hostname|\w+_(dir|path|file|socket|url|repo|image|host|user|name))\b")
# The filters that make a value a safe shell word (a number is one too).
SAFE_END = re.compile(r"\|\s*(quote|int|b64encode)\s*\)?\s*$")
EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.S)
def unquoted(text: str) -> list:
    """The {{ expressions }} in a shell text that carry an inventory value without making it one safe word."""
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for match in EXPRESSION.finditer(line):
            expr = match.group(1).strip()
            if INVENTORY_VALUE.search(expr) and not SAFE_END.search(expr):
                found.append(expr)
    return found


def _tasks(node) -> Iterator[dict]:
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
            yield from _tasks(node.get(key))


def shell_strings() -> Iterator[tuple]:
    """(file, task name, shell string) of every shell, command and raw task given as a string."""
    files = sorted(REPO.glob("roles/*/tasks/*.yml")) + sorted(REPO.glob("roles/*/handlers/*.yml")) \
        + sorted(REPO.glob("playbooks/*.yml"))
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        for task in _tasks(yaml.safe_load(path.read_text())):
            for module in SHELL_MODULES:
                args = task.get(module)
                text = args.get("cmd") if isinstance(args, dict) else args
                if isinstance(text, str):
                    yield rel, task.get("name", "?"), text


def shell_templates() -> Iterator[Path]:
    yield from sorted(REPO.glob("roles/*/templates/*.sh.j2"))
    yield from sorted(REPO.glob("roles/*/templates/*.env.j2"))


def test_the_check_flags_an_unquoted_path_and_accepts_a_quoted_one():
    assert unquoted("{{ etcd_bin_dir }}/etcdctl endpoint health") == ["etcd_bin_dir"]
    assert unquoted("ctr --address {{ container_runtime_socket }} version") == ["container_runtime_socket"]
    assert unquoted("sysctl -w {{ item.key }}={{ item.value }}") == []  # not a name it knows: see the kernel task
    assert unquoted("{{ (etcd_bin_dir ~ '/etcdctl') | quote }} endpoint health") == []
    assert unquoted("chronyc waitsync {{ bootstrap_os_chrony_sync_timeout | int }}") == []
    assert unquoted("# saves into {{ etcd_backup_dir }}") == []


def test_shell_tasks_quote_every_inventory_value():
    problems = [f"{rel}: [{name}] {{{{ {expr} }}}}" for rel, name, text in shell_strings() for expr in unquoted(text)]
    assert problems == [], "quote these with `| quote` (a shell word), or pass argv:\n" + "\n".join(problems)


@pytest.mark.parametrize("template", [p.relative_to(REPO).as_posix() for p in shell_templates()])
def test_shell_templates_quote_every_inventory_value(template):
    assert unquoted((REPO / template).read_text()) == []

