"""Specification of a bootstrapped node (Debian 12 and 13): the bundle as the only package source, swap off, kernel
parameters, time from the bundle server, its name resolvable, and the bundle CA in a file of its own that apt names
for the bundle server only, never in the system trust store."""
from __future__ import annotations

import re

testinfra_hosts = ["ansible://mol-bos-bookworm", "ansible://mol-bos-trixie"]

BUNDLE = "bundle.airgap.internal"
BUNDLE_IP = "10.213.61.10"
CA_FILE = "/etc/airgap-kubernetes/bundle-ca.crt"
LEGACY_CA_FILE = "/usr/local/share/ca-certificates/airgap-kubernetes-ca.crt"


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


def _pem_body(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_bundle_ca_is_in_a_file_of_its_own_and_not_in_the_system_trust_store(host):
    ca = host.file(CA_FILE)
    assert ca.is_file and ca.user == "root" and ca.group == "root" and ca.mode == 0o644
    body = _pem_body(ca.content_string)
    store = set(host.file("/etc/ssl/certs/ca-certificates.crt").content_string.splitlines())
    # The PEM's first line holds the certificate's random serial: a store holding the CA has it as a line of its own.
    assert body[0] not in store
    # mol-bos-trixie had it there, as an earlier deploy left it (prepare.yml): the copy and its links are gone too.
    assert not host.file(LEGACY_CA_FILE).exists
    assert not host.file("/etc/ssl/certs/airgap-kubernetes-ca.pem").exists
    assert host.run("find /etc/ssl/certs -xtype l | grep -q .").rc == 1, "dangling links in /etc/ssl/certs"
    assert host.run("grep -rlF -e 'airgap' /usr/local/share/ca-certificates").rc != 0


def test_nothing_but_the_bundle_server_clients_trust_the_bundle_ca(host):
    # The system trust store alone refuses the bundle server's certificate, for the file server and the registry.
    for url in (f"https://{BUNDLE}:8443/keys/bundle-apt.asc", f"https://{BUNDLE}:5000/v2/"):
        plain = host.run(f"curl -sS --fail -o /dev/null {url}")
        assert plain.rc == 60 and "certificate" in plain.stderr, (url, plain.rc, plain.stderr)
        named = host.run(f"curl -sS --fail -o /dev/null --cacert {CA_FILE} {url}")
        assert named.rc == 0, (url, named.stderr)


def test_apt_names_the_bundle_ca_for_the_bundle_server_only(host):
    config = host.check_output("apt-config dump Acquire::https")
    assert f'Acquire::https::{BUNDLE}::CaInfo "{CA_FILE}";' in config, config
    # No CA for every https host: apt checks other hosts against the system store.
    assert 'Acquire::https::CaInfo' not in config, config


def test_apt_update_reads_the_bundle_repo_through_the_bundle_ca(host):
    # Into throwaway lists, so the node's own stay as the role left them.
    lists = host.check_output("mktemp -d")
    try:
        update = host.run(f"mkdir -p {lists}/partial && apt-get -q update -o Dir::State::Lists={lists} "
                          "-o Dir::Etc::SourceParts=- -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= "
                          "-o Dir::Etc::SourceList=/etc/apt/sources.list.d/airgap-bundle.sources")
        assert update.rc == 0, update.stdout + update.stderr
        assert f"https://{BUNDLE}:8443/apt" in update.stdout and "Err:" not in update.stdout, update.stdout
    finally:
        host.run(f"rm -rf {lists}")


def test_apt_by_address_with_the_ca_named_for_that_address(host):
    """The form the python3 install (tasks/python.yml) uses before /etc/hosts knows the name: the CA named for the
    server's address on the command line works, and without it the system store refuses the certificate."""
    work = host.check_output("mktemp -d")
    try:
        codename = host.system_info.codename
        host.check_output(f"mkdir -p {work}/lists/partial && echo 'deb [signed-by=/etc/apt/keyrings/airgap-bundle.asc] "
                          f"https://{BUNDLE_IP}:8443/apt {codename} main' > {work}/sources.list")
        base = (f"apt-get -q update -o Dir::Etc::SourceList={work}/sources.list -o Dir::Etc::SourceParts=- "
                f"-o Dir::State::Lists={work}/lists -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=")
        named = host.run(f"{base} -o Acquire::https::{BUNDLE_IP}::CaInfo={CA_FILE}")
        assert named.rc == 0 and "Err:" not in named.stdout, named.stdout + named.stderr
        plain = host.run(base)
        assert plain.rc != 0 or "Err:" in plain.stdout or "W:" in plain.stderr, plain.stdout + plain.stderr
        assert "certificate" in (plain.stdout + plain.stderr).lower(), plain.stdout + plain.stderr
    finally:
        host.run(f"rm -rf {work}")
