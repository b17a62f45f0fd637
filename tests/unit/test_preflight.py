"""Network, bundle and certificate checks that run before any host changes (plugins/module_utils/preflight.py), and
the CA expiry part of layer 00's host probe (plugins/module_utils/host_checks.py)."""
from __future__ import annotations

import os
import re
import subprocess
import time

from ansible_collections.airgap.kubernetes.plugins.module_utils import host_checks as hc
from ansible_collections.airgap.kubernetes.plugins.module_utils import preflight as pf

NODES = {"node1": "172.30.1.11", "node2": "172.30.1.12"}


def test_disjoint_networks_outside_the_node_network_pass():
    assert pf.network_problems("10.233.64.0/18", "10.233.0.0/18", NODES, 24) == []


def test_pod_and_service_networks_that_overlap_are_named():
    problems = pf.network_problems("10.233.0.0/16", "10.233.0.0/18", NODES, 24)
    assert problems == ["kube_pods_subnet 10.233.0.0/16 overlaps kube_service_addresses 10.233.0.0/18: "
                        "give them disjoint ranges"]


def test_a_pod_network_holding_a_node_address_is_named_with_the_node():
    problems = pf.network_problems("172.30.0.0/16", "10.233.0.0/18", NODES, 24)
    assert "kube_pods_subnet 172.30.0.0/16 holds node1's address 172.30.1.11" in problems[0]
    assert len(problems) == 2


def test_an_invalid_cidr_is_named():
    assert "kube_service_addresses '10.0.0.300/24' is not a network" in \
        pf.network_problems("10.233.64.0/18", "10.0.0.300/24", {}, 24)[0]


def test_a_node_prefix_outside_the_pod_network_is_named():
    assert "kube_network_node_prefix 16" in pf.network_problems("10.233.64.0/18", "10.233.0.0/18", {}, 16)[0]


def test_a_hostname_address_is_left_to_the_inventory_checks():
    assert pf.network_problems("10.233.64.0/18", "10.233.0.0/18", {"n": "node1.example"}, 24) == []


def test_files_and_images_the_bundle_lacks_are_named_with_the_version_it_carries():
    manifest = {"files": {"files/dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubeadm": {}},
                "images": {"registry.k8s.io/pause:3.2": {}}, "versions": {"kubeadm": "1.20.2"}}
    files = [{"name": "kubeadm", "version": "1.20.3", "mirror_path": "dl.k8s.io/release/v1.20.3/bin/linux/amd64/kubeadm"}]
    images = [{"canonical": "registry.k8s.io/pause:3.2"}, {"canonical": "registry.k8s.io/kube-proxy:v1.20.3"}]
    problems = pf.bundle_lacks(manifest, files, images)
    assert problems[0].startswith("kubeadm 1.20.3 is not in the bundle (it carries 1.20.2): set kube_version")
    assert problems[1].startswith("image registry.k8s.io/kube-proxy:v1.20.3 is not in the bundle")
    assert len(problems) == 2


def test_leaves_shorter_than_their_ca_with_a_shorter_renewal_window_pass():
    assert pf.certificate_lifetime_problems(3650, 365, 30) == []


def test_a_leaf_that_lives_as_long_as_its_ca_is_refused_by_name():
    assert pf.certificate_lifetime_problems(3650, 3650, 30) == [
        "etcd_cert_validity_days 3650 is not shorter than etcd_ca_validity_days 3650: a certificate must expire "
        "before the CA that signed it; set etcd_cert_validity_days to e.g. 365"]


def test_a_renewal_window_as_long_as_the_leafs_life_is_refused_with_the_given_names():
    knobs = ["bundle_server_ca_valid_days", "bundle_server_cert_valid_days", "bundle_server_cert_renew_days"]
    problems = pf.certificate_lifetime_problems(3650, 825, 825, knobs)
    assert problems == ["bundle_server_cert_renew_days 825 is not shorter than bundle_server_cert_valid_days 825: "
                        "every run would renew every certificate; set bundle_server_cert_renew_days to e.g. 30"]


def test_lifetimes_that_are_not_whole_days_are_named():
    assert pf.certificate_lifetime_problems("ten years", 0, 30) == [
        "etcd_ca_validity_days 'ten years' is not a whole number of days: set it to one",
        "etcd_cert_validity_days 0 must be at least 1: set it to a positive number of days"]


DAY = 86400


def _ca(tmp_path, name: str, days: int) -> str:
    """A real self-signed CA certificate that expires in `days` days."""
    path = tmp_path / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / f"{name}.key"), "-subj", f"/CN={name}", "-days", str(days),
                    "-out", str(path)], check=True, capture_output=True)
    return str(path)


def _probe(tmp_path, ca_files: dict, controller_time: float | None = None) -> str:
    """Runs the real probe script under /bin/sh, as `raw` runs it on a host."""
    script = hc.probe_script(int(time.time() if controller_time is None else controller_time), "", 0,
                             str(tmp_path), ca_files)
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout


def test_the_probe_reports_each_cas_expiry_and_changes_nothing(tmp_path):
    etcd = _ca(tmp_path, "etcd", 30)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    facts = hc.parse_probe(_probe(tmp_path, {"etcd": etcd, "bundle": str(tmp_path / "absent.crt")}))
    assert facts["ca_bundle"] == "none"
    expiry = hc._not_after(facts["ca_etcd"])
    assert abs(expiry - (time.time() + 30 * DAY)) < 120
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_a_ca_within_the_warning_window_is_a_warning_not_a_problem(tmp_path):
    probes = {"node1": _probe(tmp_path, {"etcd": _ca(tmp_path, "etcd", 30)})}
    warnings = hc.ca_warnings(probes, 180)
    assert len(warnings) == 1
    assert warnings[0].startswith("node1: the etcd CA expires on ")
    assert re.search(r", in (29|30) days \(airgap_ca_warn_days is 180\): before then, rotate it as docs/etcd.md says "
                     r'\("Rotating the etcd CA"\)$', warnings[0]), warnings[0]
    assert hc.host_problems(probes, {}, {}) == []


def test_a_ca_beyond_the_warning_window_is_not_named(tmp_path):
    probes = {"node1": _probe(tmp_path, {"bundle": _ca(tmp_path, "bundle", 400)})}
    assert hc.ca_warnings(probes, 180) == []
    assert hc.host_problems(probes, {}, {}) == []


def test_a_ca_expired_by_the_controllers_clock_is_a_problem_with_its_fix(tmp_path):
    # The controller's clock decides, as for the skew check: 40 days on, a CA valid for 30 has expired.
    probes = {"bootstrap": _probe(tmp_path, {"bundle": _ca(tmp_path, "bundle", 30)}, time.time() + 40 * DAY)}
    problems = hc.host_problems(probes, {}, {})
    assert len(problems) == 1
    assert problems[0].startswith("bootstrap: the bundle CA expired on ")
    assert "(10 days ago)" in problems[0] or "(9 days ago)" in problems[0]
    assert "move ca.crt and ca.key out of bundle_server_pki_dir" in problems[0]
    assert hc.ca_warnings(probes, 180) == []


def test_the_copies_of_one_ca_on_several_members_are_named_once(tmp_path):
    probe = _probe(tmp_path, {"etcd": _ca(tmp_path, "etcd", 10)})
    warnings = hc.ca_warnings({"etcd1": probe, "etcd2": probe, "etcd3": probe}, 180)
    assert len(warnings) == 1 and warnings[0].startswith("etcd1, etcd2, etcd3: the etcd CA expires on ")


def test_a_ca_file_openssl_cannot_read_is_named(tmp_path):
    broken = tmp_path / "ca.crt"
    broken.write_text("not a certificate\n")
    warnings = hc.ca_warnings({"node1": _probe(tmp_path, {"etcd": str(broken)})}, 180)
    assert warnings == ["node1: the etcd CA is there but openssl could not read its expiry (openssl missing, or not "
                        "a PEM certificate): check it by hand"]


def test_a_path_with_spaces_and_quotes_stays_one_argument(tmp_path):
    odd = tmp_path / "it's a dir"
    odd.mkdir()
    os.rename(_ca(tmp_path, "etcd", 5), odd / "ca.crt")
    facts = hc.parse_probe(_probe(tmp_path, {"etcd": str(odd / "ca.crt")}))
    assert hc._not_after(facts["ca_etcd"]) is not None
