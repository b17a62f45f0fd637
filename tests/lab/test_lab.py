"""Specification of the test lab: node images, a named lab's nodes, its inventory and its teardown."""
from __future__ import annotations

import ipaddress
import os
import subprocess
import time

import pytest
import yaml

from ansible_collections.airgap.kubernetes.tools.lab import lab

RELEASE = os.environ.get("AIRGAP_LAB_RELEASE", lab.DEFAULT_RELEASE)


def _ssh(the_lab: lab.Lab, host: str, cmd: str) -> str:
    proc = subprocess.run(the_lab.ssh_args(host) + [cmd], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{host}: {cmd}: {proc.stderr}"
    return proc.stdout.strip()


def _unique_name(tag: str) -> str:
    # Several sessions share this machine; a pid keeps their labs apart.
    return f"t{os.getpid()}-{tag}"


@pytest.fixture(scope="module")
def five() -> lab.Lab:
    name = _unique_name("five")
    try:
        the_lab = lab.up(name, nodes=5, release=RELEASE)
        print(f"\nlab {name}: {the_lab.timings}")
        yield the_lab
    finally:
        lab.down(name)


# --------------------------------------------------------------------------- plan (no docker)

def test_plan_defaults_to_one_control_plane_and_three_etcd_members() -> None:
    p = lab.plan("plan5", nodes=5)
    assert p.control_planes == ["node1"]
    assert p.etcd == ["node1", "node2", "node3"]
    assert p.kube_node == ["node2", "node3", "node4", "node5"]


def test_plan_of_one_node_puts_it_in_every_group() -> None:
    p = lab.plan("plan1", nodes=1)
    assert p.control_planes == p.etcd == p.kube_node == ["node1"]


def test_plan_of_two_nodes_has_one_etcd_member() -> None:
    assert lab.plan("plan2", nodes=2).etcd == ["node1"]


def test_plan_rejects_an_even_etcd_count() -> None:
    with pytest.raises(lab.LabError, match="must be odd"):
        lab.plan("plan4", nodes=4, etcd=2)


def test_plan_rejects_more_control_planes_than_nodes() -> None:
    with pytest.raises(lab.LabError, match="--control-planes"):
        lab.plan("plan2", nodes=2, control_planes=3)


def test_plan_rejects_a_name_that_is_not_plain() -> None:
    with pytest.raises(lab.LabError, match="not allowed"):
        lab.plan("../etc", nodes=1)


def test_subnet_is_a_fixed_24_in_172_30_derived_from_the_name() -> None:
    a = lab.subnet_for("alpha")
    assert a == lab.subnet_for("alpha")
    assert a.prefixlen == 24 and a.subnet_of(ipaddress.ip_network("172.30.0.0/16"))


def test_plan_gives_the_bundle_10_and_nodes_11_onwards() -> None:
    p = lab.plan("alpha", nodes=3)
    base = lab.subnet_for("alpha").network_address
    assert p.host("bundle").ip == str(base + 10)
    assert [h.ip for h in p.nodes] == [str(base + 11), str(base + 12), str(base + 13)]
    assert [h.container for h in p.nodes] == ["alpha-node1", "alpha-node2", "alpha-node3"]
    assert p.host("node2").volume == "alpha-node2-containerd"


def test_inventory_has_kubespray_groups() -> None:
    p = lab.plan("alpha", nodes=5, control_planes=1)
    inv = yaml.safe_load(lab.render_hosts_yml(p))["all"]
    assert set(inv["hosts"]) == {"node1", "node2", "node3", "node4", "node5", "bundle"}
    assert inv["hosts"]["node1"] == {"ansible_host": p.host("node1").ip, "ip": p.host("node1").ip}
    ch = inv["children"]
    assert list(ch["bundle_server"]["hosts"]) == ["bundle"]
    assert ch["bastion"] == {"hosts": {}}
    assert list(ch["kube_control_plane"]["hosts"]) == ["node1"]
    assert list(ch["etcd"]["hosts"]) == ["node1", "node2", "node3"]
    assert list(ch["kube_node"]["hosts"]) == ["node2", "node3", "node4", "node5"]
    assert ch["k8s_cluster"] == {"children": {"kube_control_plane": {}, "kube_node": {}}}


def test_lab_vars_carry_the_lab_only_settings() -> None:
    p = lab.plan("alpha", nodes=1)
    v = yaml.safe_load(lab.render_lab_vars(p))
    assert v["ansible_user"] == "root"
    assert os.path.isabs(v["ansible_ssh_private_key_file"])
    assert v["airgap_lab"] is True
    assert v["kube_version"] == "v1.20.2"
    assert v["kubeadm_skip_phases"] == ["preflight", "addon/coredns"]
    assert v["kubeadm_ignore_preflight_errors"] == ["FileExisting-crictl"]
    assert v["lab_unmount_cgroups"] == ["perf_event", "hugetlb", "net_cls,net_prio"]
    assert v["containerd_restrict_oom_score_adj"] is True
    assert v["kube_proxy_conntrack_max_per_core"] == 0
    assert v["kube_proxy_mode"] == "iptables"
    assert v["kubelet_fail_swap_on"] is False
    assert v["kube_network_plugin"] == "bridge"


def test_recipe_hash_changes_with_the_recipe(tmp_path, monkeypatch) -> None:
    before = lab.recipe_hash("bookworm")
    copy = tmp_path / "image"
    copy.mkdir()
    for f in lab.IMAGE_DIR.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
        (copy / f.name).chmod(f.stat().st_mode)
    monkeypatch.setattr(lab, "IMAGE_DIR", copy)
    assert lab.recipe_hash("bookworm") == before
    (copy / "Dockerfile").write_text((copy / "Dockerfile").read_text() + "\n# changed\n")
    assert lab.recipe_hash("bookworm") != before
    assert lab.recipe_hash("trixie") != lab.recipe_hash("bookworm")


# --------------------------------------------------------------------------- image

@pytest.mark.lab
def test_unmount_list_matches_the_cgroups_this_host_leaves_unmounted() -> None:
    assert lab.check_unmount_list() is None


@pytest.mark.lab
def test_image_is_cached_by_its_recipe_hash() -> None:
    first = lab.ensure_image(RELEASE)
    t0 = time.monotonic()
    second = lab.ensure_image(RELEASE)
    warm = time.monotonic() - t0
    print(f"\nwarm image ensure: {warm:.2f} s")
    assert first == second == lab.image_tag(RELEASE)
    assert warm < 10
    ids = {lab.docker("image", "inspect", "--format", "{{.Id}}", t).stdout.strip()
           for t in (first, lab.alias_tag(RELEASE))}
    assert len(ids) == 1, "the stable alias must point at the recipe's image"


# --------------------------------------------------------------------------- a 5-node lab

@pytest.mark.lab
def test_every_host_runs_systemd_without_failed_units(five: lab.Lab) -> None:
    for h in five.hosts:
        assert _ssh(five, h.name, "systemctl is-system-running") == "running", h.name


@pytest.mark.lab
def test_every_host_answers_ssh_with_the_lab_key_as_its_inventory_name(five: lab.Lab) -> None:
    for h in five.hosts:
        assert _ssh(five, h.name, "hostname") == h.name


@pytest.mark.lab
def test_every_node_has_its_own_machine_id(five: lab.Lab) -> None:
    ids = [_ssh(five, h.name, "cat /etc/machine-id") for h in five.hosts]
    assert all(len(i) == 32 for i in ids), ids
    assert len(set(ids)) == len(ids), ids
    assert _ssh(five, "node1", "readlink /var/lib/dbus/machine-id") == "/etc/machine-id"


@pytest.mark.lab
def test_every_node_has_its_own_ssh_host_keys(five: lab.Lab) -> None:
    keys = [_ssh(five, h.name, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
            for h in five.hosts]
    assert len(set(keys)) == len(keys)


@pytest.mark.lab
def test_cgroups_are_writable_inside_a_node(five: lab.Lab) -> None:
    out = _ssh(five, "node1", "for d in memory cpu pids systemd; do "
                              "mkdir /sys/fs/cgroup/$d/labtest && rmdir /sys/fs/cgroup/$d/labtest "
                              "&& echo $d; done")
    assert out.split() == ["memory", "cpu", "pids", "systemd"]


@pytest.mark.lab
def test_hierarchies_the_host_does_not_mount_are_unmounted_in_nodes(five: lab.Lab) -> None:
    mounts = _ssh(five, "node2", "awk '$3 == \"cgroup\" {print $2}' /proc/mounts")
    names = {m.rsplit("/", 1)[1] for m in mounts.split()}
    assert names.isdisjoint(lab.unmount_cgroups()), names
    assert {"memory", "cpu", "pids", "systemd"} <= names


@pytest.mark.lab
def test_nodes_resolve_each_other_by_inventory_name(five: lab.Lab) -> None:
    assert _ssh(five, "node1", "getent hosts node5").split()[0] == five.host("node5").ip


@pytest.mark.lab
def test_inventory_files_are_written_for_ansible(five: lab.Lab) -> None:
    inv = five.dir / "inventory"
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())
    assert hosts["all"]["hosts"]["node5"]["ansible_host"] == five.host("node5").ip
    v = yaml.safe_load((inv / "group_vars" / "all" / "lab.yml").read_text())
    assert v["ansible_ssh_private_key_file"] == str(five.key)
    assert (five.key.stat().st_mode & 0o077) == 0


# --------------------------------------------------------------------------- internal and down

@pytest.mark.lab
def test_an_internal_lab_answers_ssh_from_the_host_but_forwards_nothing_out() -> None:
    name = _unique_name("int")
    try:
        the_lab = lab.up(name, nodes=1, release=RELEASE, internal=True)
        # Docker 20.10 keeps the host's gateway address on an internal bridge, so the host
        # reaches nodes directly; only forwarding beyond the subnet is dropped.
        assert _ssh(the_lab, "node1", "hostname") == "node1"
        assert _ssh(the_lab, "bundle", "getent hosts node1").split()[0] == the_lab.host("node1").ip
        assert lab.isolation_problems(the_lab) == []
    finally:
        lab.down(name)


def _sentinels(name: str) -> dict[str, str]:
    """Objects named like a lab's but not labelled as it; `down` must not touch them."""
    other = f"{name}x"
    net = f"airgap-lab-{other}"
    subnet = str(lab.subnet_for(other))
    lab.check_subnet_free(other, lab.subnet_for(other))
    lab.docker("network", "create", "--internal", "--subnet", subnet, net)
    lab.docker("volume", "create", f"{name}-node1-containerd-x")
    # An unlabelled volume with the exact name the lab would use for a host it never created.
    lab.docker("volume", "create", f"{name}-node9-containerd")
    image = lab.ensure_image(RELEASE)
    lab.docker("create", "--name", f"{name}-node10", "--label", f"{lab.LABEL}={other}",
               "--network", net, image)
    return {"network": net, "volume1": f"{name}-node1-containerd-x",
            "volume2": f"{name}-node9-containerd", "container": f"{name}-node10"}


def _remove_sentinels(s: dict[str, str]) -> None:
    lab.docker("rm", "-f", s["container"], check=False)
    lab.docker("volume", "rm", "-f", s["volume1"], s["volume2"], check=False)
    lab.docker("network", "rm", s["network"], check=False)


@pytest.mark.lab
def test_down_removes_everything_of_the_lab_and_nothing_else() -> None:
    name = _unique_name("down")
    sentinels = _sentinels(name)
    try:
        the_lab = lab.up(name, nodes=2, release=RELEASE)
        assert the_lab.dir.exists()
        report = lab.down(name)
        print(f"\nteardown of 2 nodes + bundle: {report.seconds} s")
        for kind, args in (("container", ("ps", "-a")), ("volume", ("volume", "ls")),
                           ("network", ("network", "ls"))):
            labelled = lab.docker(*args, "--filter", f"label={lab.LABEL}={name}", "-q").stdout
            assert labelled.strip() == "", f"{kind}s labelled {name} are left"
        names = lab.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert not [n for n in names if n in {h.container for h in the_lab.hosts}]
        assert lab.docker("network", "inspect", the_lab.network, check=False).returncode != 0
        assert not the_lab.dir.exists()
        for s in sentinels.values():
            kind = "network" if s.startswith("airgap-lab-") else (
                "volume" if "containerd" in s else "container")
            assert lab.docker(kind, "inspect", s, check=False).returncode == 0, f"{kind} {s} removed"
    finally:
        lab.down(name)
        _remove_sentinels(sentinels)


@pytest.mark.lab
def test_down_cleans_up_after_a_partial_up(monkeypatch) -> None:
    name = _unique_name("partial")

    def broken_wait(host, deadline):
        raise lab.LabError(f"{host.container}: injected failure")

    monkeypatch.setattr(lab, "_wait_systemd", broken_wait)
    try:
        with pytest.raises(lab.LabError, match="injected failure"):
            lab.up(name, nodes=1, release=RELEASE)
        assert lab.docker("ps", "-a", "--filter", f"label={lab.LABEL}={name}", "-q").stdout.strip()
    finally:
        lab.down(name)
    assert not lab.docker("ps", "-a", "--filter", f"label={lab.LABEL}={name}", "-q").stdout.strip()
    assert not lab.docker("volume", "ls", "--filter", f"label={lab.LABEL}={name}", "-q").stdout.strip()
    assert not lab.lab_dir(name).exists()


@pytest.mark.lab
def test_up_takes_the_next_free_subnet_when_another_network_holds_its_own() -> None:
    name = _unique_name("clash")
    blocker = f"{name}-blocker"
    wanted = lab.subnet_for(name)
    lab.check_subnet_free(name, wanted)
    lab.docker("network", "create", "--internal", "--subnet", str(wanted), blocker)
    try:
        with pytest.raises(lab.LabError, match=blocker):
            lab.check_subnet_free(name, wanted)
        the_lab = lab.up(name, nodes=1, release=RELEASE)
        got = ipaddress.ip_network(the_lab.subnet)
        assert got != wanted and got.subnet_of(lab.LAB_SUPERNET)
        assert the_lab.host("node1").ip in {str(a) for a in got.hosts()}
        assert _ssh(the_lab, "node1", "hostname") == "node1"
    finally:
        lab.down(name)
        lab.docker("network", "rm", blocker)
