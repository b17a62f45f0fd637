"""Specification of the playbooks' names: every step run.sh knows is also a collection playbook, airgap.kubernetes.<name>."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.airgap.kubernetes.tools import steps

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
STEPS = list(dict.fromkeys(step for names in steps.COMMAND_STEPS.values() for step in names))
# A step whose playbook this version does not have yet is not a playbook name either.
EXISTING = [step for step in STEPS if (PLAYBOOKS / f"{step}.yml").is_file()]
LAYERS = [step for step in steps.DEPLOY_STEPS if step in EXISTING]
# Ansible's own lookup of a collection playbook, in a fresh interpreter: this one imported the collection as a
# plain package already, which the collection loader refuses to take over.
RESOLVE = """
import json, sys
from ansible.plugins.loader import init_plugin_loader
init_plugin_loader([sys.argv[1]])
from ansible.utils.collection_loader._collection_finder import _get_collection_playbook_path
print(json.dumps({name: (_get_collection_playbook_path(name) or (None, None))[1] for name in sys.argv[2:]}))
"""


def collection_name(step: str) -> str:
    """The README's rule: drop the layer number, dashes become underscores (02-etcd -> etcd)."""
    return "airgap.kubernetes." + re.sub(r"^\d+-", "", step).replace("-", "_")


def resolve(names: list) -> dict:
    proc = subprocess.run([sys.executable, "-c", RESOLVE, str(REPO / ".collections"), *names],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def imports(path: Path) -> list:
    return [play.get("ansible.builtin.import_playbook") for play in yaml.safe_load(path.read_text())]


def test_the_layers_that_exist_are_00_to_02_at_least():
    assert LAYERS[:3] == ["00-ssh", "01-bootstrap-os", "02-etcd"]


@pytest.mark.parametrize("step", EXISTING)
def test_every_step_run_sh_knows_has_a_collection_name_that_resolves_to_a_file(step):
    name = collection_name(step)
    short = name.rsplit(".", 1)[1]
    assert resolve([name])[name] == str(REPO / ".collections" / "ansible_collections" / "airgap" / "kubernetes"
                                        / "playbooks" / f"{short}.yml"), \
        f"{name} does not resolve: add playbooks/{short}.yml importing {step}.yml"


@pytest.mark.parametrize("step", EXISTING)
def test_a_steps_collection_playbook_imports_the_steps_playbook_and_nothing_else(step):
    assert imports(PLAYBOOKS / f"{collection_name(step).rsplit('.', 1)[1]}.yml") == [f"{step}.yml"]


def test_a_numbered_step_name_is_not_a_collection_name():
    assert resolve(["airgap.kubernetes.02-etcd"]) == {"airgap.kubernetes.02-etcd": None}


def test_every_other_playbook_file_is_reachable_by_its_collection_name():
    others = sorted(p.stem for p in PLAYBOOKS.glob("*.yml") if p.stem not in EXISTING)
    found = resolve([f"airgap.kubernetes.{name}" for name in others])
    assert others and all(found.values()), found


def test_deploy_imports_every_layer_that_exists_in_order():
    assert imports(PLAYBOOKS / "deploy.yml") == [f"{step}.yml" for step in LAYERS]


def test_ansible_playbook_takes_the_deploy_playbook_by_collection_name():
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    exe = Path(sys.executable).with_name("ansible-playbook")
    proc = subprocess.run([str(exe), "-i", "localhost,", "airgap.kubernetes.deploy", "--syntax-check"],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
