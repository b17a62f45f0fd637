"""run.sh's choice of Ansible strategy (tools/steps.py strategy_env): ansible-core's linear by default, Mitogen's
linear strategy from the pinned mitogen when asked for, and a clear error for anything else."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.tools import steps

REPO = Path(__file__).resolve().parents[2]


def test_linear_is_the_default():
    assert steps.strategy_env({}) == {}


def test_mitogen_when_asked_for_and_its_strategy_plugins_exist():
    env = steps.strategy_env({"AIRGAP_ANSIBLE_STRATEGY": "mitogen"})
    assert env["ANSIBLE_STRATEGY"] == "mitogen_linear"
    assert (Path(env["ANSIBLE_STRATEGY_PLUGINS"]) / "mitogen_linear.py").is_file()


def test_linear_and_an_explicit_ansible_strategy_are_left_alone():
    assert steps.strategy_env({"AIRGAP_ANSIBLE_STRATEGY": "linear"}) == {}
    assert steps.strategy_env({"AIRGAP_ANSIBLE_STRATEGY": "mitogen", "ANSIBLE_STRATEGY": "free"}) == {}


def test_a_known_plugin_path_is_kept():
    env = steps.strategy_env({"AIRGAP_ANSIBLE_STRATEGY": "mitogen", "ANSIBLE_STRATEGY_PLUGINS": "/site/strategy"})
    assert env["ANSIBLE_STRATEGY_PLUGINS"].endswith(":/site/strategy")


def test_an_unknown_strategy_is_refused_with_the_choices():
    with pytest.raises(steps.StepError, match="AIRGAP_ANSIBLE_STRATEGY=.fast.: use one of linear, mitogen"):
        steps.strategy_env({"AIRGAP_ANSIBLE_STRATEGY": "fast"})


def test_ansible_playbook_runs_a_play_under_the_chosen_strategy(tmp_path):
    """A real ansible-playbook run on localhost with the variables run.sh sets: Mitogen's strategy loads and runs a
    module, and a play that pins ansible.builtin.linear (as 00-ssh's raw probe does) still runs raw."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent("""\
        - hosts: localhost
          connection: local
          gather_facts: false
          tasks:
            - ansible.builtin.command: "{{ ansible_playbook_python }} -c 'import sys; print(sys.version_info[0])'"
              register: out
              changed_when: false
            - ansible.builtin.assert:
                that: out.stdout == '3'
        - hosts: localhost
          connection: local
          gather_facts: false
          strategy: ansible.builtin.linear
          tasks:
            - ansible.builtin.raw: echo raw-ok
              register: raw
              changed_when: false
            - ansible.builtin.assert:
                that: "'raw-ok' in raw.stdout"
        """))
    env = {**os.environ, **steps.strategy_env({"AIRGAP_ANSIBLE_STRATEGY": "mitogen"}),
           "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    tool = Path(sys.executable).parent / "ansible-playbook"
    # The interpreter as the implicit localhost of run.sh's playbooks gets it (ansible_playbook_python).
    run = subprocess.run([str(tool), "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
                          str(playbook)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "failed=0" in run.stdout
