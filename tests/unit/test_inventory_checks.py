"""Specification of the inventory shape checks that run before any host is touched, and of a node's address."""
import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils.inventory_checks import inventory_problems, node_address


def good_groups(**overrides):
    groups = {
        "all": ["bundle", "node1", "node2", "node3", "node4"],
        "bundle_server": ["bundle"],
        "kube_control_plane": ["node1"],
        "etcd": ["node1", "node2", "node3"],
        "kube_node": ["node2", "node3", "node4"],
        "k8s_cluster": ["node1", "node2", "node3", "node4"],
    }
    groups.update(overrides)
    return groups


def hostvars_for(groups):
    return {h: {"ip": f"10.0.0.{i}"} for i, h in enumerate(groups["all"], start=10)}


def test_a_well_formed_inventory_has_no_problems():
    groups = good_groups()
    assert inventory_problems(groups, hostvars_for(groups)) == []


def test_an_even_etcd_count_is_refused_with_the_odd_alternatives():
    groups = good_groups(etcd=["node1", "node2", "node3", "node4"])
    [problem] = inventory_problems(groups, hostvars_for(groups))
    assert problem.startswith("etcd has 4 members (node1, node2, node3, node4)")
    assert "use 3 or 5, or set etcd_allow_even_members: true" in problem


def test_an_even_etcd_count_passes_when_explicitly_allowed():
    groups = good_groups(etcd=["node1", "node2"])
    assert inventory_problems(groups, hostvars_for(groups), allow_even_etcd=True) == []


def test_a_host_in_no_group_is_named():
    groups = good_groups(all=good_groups()["all"] + ["stray"])
    [problem] = inventory_problems(groups, hostvars_for(groups))
    assert problem.startswith("host stray is in no group")


def test_duplicate_addresses_name_both_hosts_and_the_address():
    groups = good_groups()
    hostvars = hostvars_for(groups)
    hostvars["node4"] = {"ansible_host": hostvars["node2"]["ip"]}
    [problem] = inventory_problems(groups, hostvars)
    assert problem == ("hosts node2, node4 share the address 10.0.0.12: give each host its own ip and ansible_host")


def test_the_same_ssh_endpoint_is_a_duplicate_even_with_distinct_ips():
    groups = good_groups()
    hostvars = hostvars_for(groups)
    hostvars["node2"]["ansible_host"] = hostvars["node4"]["ansible_host"] = "192.0.2.7"
    [problem] = inventory_problems(groups, hostvars)
    assert problem.startswith("hosts node2, node4 share the address 192.0.2.7:")


def test_one_address_on_distinct_ssh_ports_is_not_a_duplicate():
    groups = good_groups()
    hostvars = hostvars_for(groups)
    hostvars["node2"].update(ansible_host="192.0.2.7", ansible_port=2202)
    hostvars["node4"].update(ansible_host="192.0.2.7", ansible_port=2204)
    assert inventory_problems(groups, hostvars) == []


def test_a_host_whose_ip_is_its_ansible_host_is_not_its_own_duplicate():
    groups = good_groups()
    hostvars = {h: {"ip": v["ip"], "ansible_host": v["ip"]} for h, v in hostvars_for(groups).items()}
    assert inventory_problems(groups, hostvars) == []


def test_missing_required_groups_are_each_named():
    groups = good_groups(etcd=[], bundle_server=[])
    problems = inventory_problems(groups, hostvars_for(groups))
    assert "group etcd is empty or missing: put at least one host in it" in problems
    assert "group bundle_server is empty or missing: put at least one host in it" in problems


def test_a_control_plane_outside_k8s_cluster_is_refused():
    groups = good_groups(k8s_cluster=["node2", "node3", "node4"])
    [problem] = inventory_problems(groups, hostvars_for(groups))
    assert problem.startswith("node1 in kube_control_plane but not in k8s_cluster")


def test_more_than_one_bundle_server_is_refused():
    groups = good_groups(bundle_server=["bundle", "node4"])
    assert "bundle_server has 2 hosts: it takes exactly one" in inventory_problems(groups, hostvars_for(groups))


def test_strict_host_key_checking_in_airgap_ssh_args_is_refused_with_the_policy_setting_as_fix():
    groups = good_groups()
    hostvars = hostvars_for(groups)
    hostvars["node2"]["airgap_ssh_args"] = "-o UserKnownHostsFile=/k -o StrictHostKeyChecking=yes"
    assert inventory_problems(groups, hostvars) == [
        "host node2: airgap_ssh_args sets StrictHostKeyChecking, which ssh ignores after airgap_host_key_policy: "
        "remove it and set airgap_host_key_policy: strict (or accept-new)"]


@pytest.mark.parametrize("policy", ["no", "yes", True, "off"])
def test_a_host_key_policy_other_than_accept_new_or_strict_is_refused(policy):
    groups = good_groups()
    hostvars = hostvars_for(groups)
    hostvars["node3"]["airgap_host_key_policy"] = policy
    assert inventory_problems(groups, hostvars) == [
        f"host node3: airgap_host_key_policy {policy!r} is not a host-key policy: use accept-new or strict"]


def test_every_problem_is_reported_at_once():
    groups = good_groups(etcd=["node1", "node2"], all=good_groups()["all"] + ["stray"])
    assert len(inventory_problems(groups, hostvars_for(groups))) == 2


def test_the_filter_is_documented_and_found_by_ansible():
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), "-t", "filter",
                           "airgap.kubernetes.inventory_problems"], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "even etcd" in proc.stdout


def test_a_nodes_address_is_its_inventory_ip_before_its_default_route():
    facts = {"ansible_facts": {"default_ipv4": {"address": "192.168.0.5"}}}
    hostvars = {"a": {"ip": "10.0.0.1", **facts}, "b": facts}
    assert [node_address(h, hostvars) for h in ("a", "b")] == ["10.0.0.1", "192.168.0.5"]


def test_a_node_without_ip_or_facts_is_named_with_the_fix():
    with pytest.raises(ValueError, match="node9 has no ip in the inventory and no default_ipv4 fact: set ip"):
        node_address("node9", {"node9": {"ansible_facts": {}}})


@pytest.mark.parametrize("name, fix", [("Node_1", "node-1"), ("-node", "node"), ("node1.", "node1"),
                                       ("n" * 254, "n" * 254)])
def test_a_node_name_that_is_not_rfc_1123_is_refused_with_a_valid_suggestion(name, fix):
    groups = good_groups(all=["bundle", name, "node2", "node3", "node4"], kube_control_plane=[name],
                         etcd=[name, "node2", "node3"], k8s_cluster=[name, "node2", "node3", "node4"])
    problems = inventory_problems(groups, hostvars_for(groups))
    assert problems == [f"host {name} is not a valid node name (RFC 1123: lower-case letters, digits, '-' and '.', "
                        f"starting and ending with a letter or digit): rename it in the inventory, e.g. {fix}"]


def test_a_dotted_lower_case_node_name_is_valid():
    groups = good_groups(all=["bundle", "cp1.site.example", "node2", "node3", "node4"],
                         kube_control_plane=["cp1.site.example"], etcd=["cp1.site.example", "node2", "node3"],
                         k8s_cluster=["cp1.site.example", "node2", "node3", "node4"])
    assert inventory_problems(groups, hostvars_for(groups)) == []
