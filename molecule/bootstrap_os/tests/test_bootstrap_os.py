"""Specification of a bootstrapped node (Debian 12 and 13): the bundle as the only package source, swap off, kernel
parameters, time from the bundle server, its name resolvable and the cluster CA trusted."""
from __future__ import annotations

import re

testinfra_hosts = ["ansible://mol-bos-bookworm", "ansible://mol-bos-trixie"]

BUNDLE = "bundle.airgap.internal"
BUNDLE_IP = "10.213.61.10"


def test_apt_reads_only_the_bundle_repo_over_https(host):
    release = host.system_info.codename
    policy = host.check_output("apt-cache policy")
    sources = set(re.findall(r"^\s+\d+ (\S+) ", policy, re.MULTILINE)) - {"/var/lib/dpkg/status"}
    assert sources == {f"https://{BUNDLE}:8443/apt"}, policy
    assert f"https://{BUNDLE}:8443/apt {release}/main" in policy
    assert not host.file("/etc/apt/sources.list").exists
    assert host.file("/etc/apt/sources.list.airgap-disabled").exists
    assert host.file("/etc/apt/sources.list.d/airgap-bundle.sources").contains("Signed-By: /etc/apt/keyrings/airgap-bundle.asc")


def test_catalog_packages_are_installed_from_the_bundle(host):
    for name in ("conntrack", "socat", "ipset", "ethtool", "chrony", "python3-cryptography"):
        assert host.package(name).is_installed, name
    policy = host.check_output("apt-cache policy socat")
    installed = re.search(r"Installed: (\S+)", policy).group(1)
    # The installed version is offered by the bundle repo (and nothing else but dpkg's status).
    assert re.search(rf"\*\*\* {re.escape(installed)} \d+\n\s+\d+ https://{BUNDLE}:8443/apt ", policy), policy


def test_swap_is_off_and_stays_off(host):
    assert host.file("/proc/swaps").content_string.strip().count("\n") == 0
    assert host.run("systemctl is-enabled swap.target").stdout.strip() == "masked"


def test_kernel_modules_and_parameters(host):
    assert host.file("/etc/modules-load.d/airgap-kubernetes.conf").content_string.split() == ["overlay", "br_netfilter"]
    conf = host.file("/etc/sysctl.d/99-airgap-kubernetes.conf")
    for key in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
        assert conf.contains(f"^{key} = 1$"), key
        assert host.sysctl(key) == 1, key


def test_chrony_tracks_the_bundle_server(host):
    assert host.service("chrony").is_running and host.service("chrony").is_enabled
    tracking = host.check_output("chronyc -n tracking")
    assert f"({BUNDLE_IP})" in tracking, tracking
    assert re.search(r"Leap status\s+: Normal", tracking), tracking
    sources = host.check_output("chronyc -n sources")
    assert f"^* {BUNDLE_IP}" in sources, sources


def test_bundle_server_name_resolves_through_etc_hosts(host):
    assert host.check_output(f"getent hosts {BUNDLE}").split()[0] == BUNDLE_IP


def test_cluster_ca_is_trusted_by_the_system(host):
    assert host.file("/usr/local/share/ca-certificates/airgap-kubernetes-ca.crt").exists
    # No --cacert: the system trust store alone must accept the bundle server's certificate.
    assert host.run(f"curl -sS --fail -o /dev/null https://{BUNDLE}:8443/keys/bundle-apt.asc").rc == 0
    assert host.run(f"curl -sS --fail -o /dev/null https://{BUNDLE}:5000/v2/").rc == 0
