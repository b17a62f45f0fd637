"""Day-2 commands before any host changes: the nodes they name, etcd's quorum, run.sh's flags and confirmation."""
from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils.etcd_members import etcd_removal
from ansible_collections.airgap.kubernetes.plugins.module_utils.inventory_checks import target_problems
from ansible_collections.airgap.kubernetes.tools import cli, steps

REPO = Path(__file__).resolve().parents[2]
GROUPS = {
    "all": ["node1", "node2", "node3", "node4", "node5", "bundle"],
    "kube_control_plane": ["node1", "node2", "node3"],
    "etcd": ["node1", "node2", "node3"],
    "kube_node": ["node4", "node5"],
    "k8s_cluster": ["node1", "node2", "node3", "node4", "node5"],
    "bundle_server": ["bundle"],
}


def test_a_new_worker_or_control_plane_in_the_inventory_has_no_problem():
    assert target_problems("add-node", ["node5", "localhost"], GROUPS) == []
    groups = {**GROUPS, "kube_control_plane": GROUPS["kube_control_plane"] + ["node5"]}
    assert target_problems("add-node", ["node5"], groups) == []
    etcd_only = {**GROUPS, "all": GROUPS["all"] + ["e4"], "etcd": GROUPS["etcd"] + ["e4"]}
    assert target_problems("add-node", ["e4"], etcd_only) == []


@pytest.mark.parametrize("command, targets, expected", [
    ("add-node", [], "add-node needs the nodes it acts on"),
    ("add-node", ["node9"], "node9 not in the inventory: add it to kube_node there first"),
    ("add-node", ["bundle"], "bundle not in k8s_cluster"),
    ("remove-node", ["bundle"], "bundle in bundle_server: the bundle server is not a Kubernetes node"),
    ("add-node", ["node1"], "node1 is new and first in the etcd group, which makes it the etcd CA's host"),
    ("add-node", ["node2", "node3"], "node2, node3 are all new etcd members: etcd takes one new member at a time"),
    ("add-node", ["node1", "node2", "node3"], "no existing control plane outside the new nodes"),
    ("add-node", ["node4", "node5"], None),
])
def test_the_nodes_a_command_names_are_checked_and_each_problem_has_its_fix(command, targets, expected):
    problems = target_problems(command, targets, GROUPS)
    assert problems == [] if expected is None else any(expected in p for p in problems), problems


def _etcdctl(healthy: set[str], names=("node1", "node2", "node3")) -> str:
    members = [{"ID": 1000 + i, "name": n, "clientURLs": [f"https://{n}:2379"]} for i, n in enumerate(names)]
    health = [{"endpoint": f"https://{n}:2379", "health": n in healthy} for n in names]
    return json.dumps({"members": members}) + "\n---\n" + json.dumps(health)


def test_removing_one_of_three_healthy_members_keeps_the_quorum_and_names_its_hex_id():
    result = etcd_removal(_etcdctl({"node1", "node2", "node3"}), ["node3"])
    assert result == {"remove": [{"id": format(1002, "x"), "name": "node3"}], "problems": []}


def test_a_dead_member_can_be_removed_when_the_others_are_healthy():
    assert etcd_removal(_etcdctl({"node1", "node2"}), ["node3"])["problems"] == []


def test_removing_a_healthy_member_while_another_is_down_is_refused_naming_the_sick_one():
    problems = etcd_removal(_etcdctl({"node1", "node3"}), ["node3"])["problems"]
    assert len(problems) == 1 and "1 of them healthy, and etcd needs 2" in problems[0] and "bring node2" in problems[0]


def test_a_member_already_gone_is_nothing_to_remove():
    assert etcd_removal(_etcdctl({"node1", "node2"}, ("node1", "node2")), ["node3"]) == {"remove": [], "problems": []}


def test_no_health_output_counts_every_member_as_unhealthy():
    text = json.dumps({"members": [{"ID": 1, "name": "a", "clientURLs": ["u"]}, {"ID": 2, "name": "b"}]}) + "\n---\n"
    assert etcd_removal(text, ["b"])["problems"]


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  hosts:\n    node1: {}\n    node5: {}\n  children:\n    k8s_cluster:\n      hosts:\n"
                    "        node1: {}\n        node5: {}\n")
    return path


def test_add_node_limits_every_play_to_the_new_nodes_and_localhost(inventory, monkeypatch):
    seen = {}
    monkeypatch.setattr(steps, "execute", lambda run, *a, **k: seen.setdefault("run", run) and 0)
    assert cli.main(["add-node", "node5", "-i", str(inventory)]) == 0
    argv = steps.playbook_argv(seen["run"], "scale-nodes", "ansible-playbook")
    assert argv[argv.index("--limit") + 1] == "node5,localhost"
    assert "airgap_target_nodes=node5" in argv


def test_remove_node_force_reaches_ansible_and_the_fingerprint(inventory, monkeypatch):
    seen = {}
    monkeypatch.setattr(steps, "execute", lambda run, *a, **k: seen.setdefault("run", run) and 0)
    assert cli.main(["remove-node", "node5", "--force", "-i", str(inventory)]) == 0
    run = seen["run"]
    assert "remove_node_force=true" in run.extra_vars and "--limit" not in steps.playbook_argv(run, "remove-node", "x")


def test_a_flag_of_another_command_is_refused(inventory, capsys):
    assert cli.main(["deploy-cluster", "--force", "-i", str(inventory)]) == 2
    assert "--force do(es) not apply to deploy-cluster" in capsys.readouterr().err


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_remove_cluster_without_a_terminal_needs_yes(inventory):
    with pytest.raises(steps.StepError, match="pass --yes"):
        cli.confirm_removal(inventory, False, stdin=io.StringIO(""))
    cli.confirm_removal(inventory, True, stdin=io.StringIO(""))


def test_remove_cluster_on_a_terminal_goes_on_only_after_yes(inventory):
    out = io.StringIO()
    with pytest.raises(steps.StepError, match="not confirmed: nothing was changed"):
        cli.confirm_removal(inventory, False, stdin=_Tty("no\n"), out=out)
    assert "Type 'yes'" in out.getvalue() and "the bundle server is kept" in out.getvalue()
    cli.confirm_removal(inventory, False, stdin=_Tty("yes\n"), out=io.StringIO())
    out = io.StringIO()
    cli.confirm_removal(inventory, False, stdin=_Tty("yes\n"), out=out, bundle_server=True)
    assert "and the bundle server: its bundle" in out.getvalue()


@pytest.mark.parametrize("name", ["scale-nodes", "remove-node", "remove-cluster"])
def test_every_day2_command_has_its_playbook(name):
    assert (REPO / "playbooks" / f"{name}.yml").is_file()


# --------------------------------------------------------------------------- layer 00's host probe
from ansible_collections.airgap.kubernetes.plugins.module_utils.host_checks import (  # noqa: E402
    host_problems, parse_probe, probe_script)

LIMITS = {"max_clock_skew": 30, "min_memory_mb": {"kube_control_plane": 1700, "kube_node": 1024},
          "min_free_disk_mb": 2048}


def _probe(**kw) -> str:
    facts = {"controller": 1000, "time": 1000, "mem_kb": 4 << 20, "disk_kb": 10 << 20, "bundle": "refused", **kw}
    return "/usr/bin/python3\nairgap-probe " + " ".join(f"{k}={v}" for k, v in facts.items())


def test_a_healthy_host_and_a_bundle_server_not_serving_yet_have_no_problem():
    assert host_problems({"node1": _probe()}, {"node1": ["kube_control_plane"]}, LIMITS) == []


@pytest.mark.parametrize("facts, groups, expected", [
    ({"time": 1100}, ["kube_node"], "node1: its clock is 100 s ahead of the controller's (at most 30 s)"),
    ({"time": 900}, ["kube_node"], "node1: its clock is 100 s behind"),
    ({"mem_kb": 1 << 20}, ["kube_node", "kube_control_plane"], "node1: 1024 MiB of memory, its role needs 1700 MiB"),
    ({"disk_kb": 1 << 20}, ["kube_node"], "node1: 1024 MiB free on /var, it needs 2048 MiB"),
    ({"bundle": "timeout"}, ["kube_node"], "node1: its connection to the bundle server b:8443 timed out"),
])
def test_each_host_problem_is_named_with_its_fix(facts, groups, expected):
    problems = host_problems({"node1": _probe(**facts)}, {"node1": groups}, LIMITS, "b:8443")
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_probe_needs_no_python_and_its_output_parses(tmp_path):
    script = probe_script(1234, "127.0.0.1", 9)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    facts = parse_probe(out)
    assert facts["controller"] == "1234" and int(facts["mem_kb"]) > 0 and int(facts["disk_kb"]) > 0
    assert facts["bundle"] == "refused"  # nothing listens on port 9 here: the route is there
