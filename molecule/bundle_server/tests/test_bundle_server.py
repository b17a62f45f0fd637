"""Specification of a served bundle, checked from inside the bundle host as a node would see it over the network."""
from __future__ import annotations

import json

BUNDLE = "/srv/airgap/bundle"
PKI = "/etc/airgap-kubernetes/pki"
ADDRESS = "10.213.53.10"
DOMAIN = "bundle.airgap.internal"
# curl as a node would call it: the cluster CA as the only trust anchor, the domain resolved to the server's address.
CURL = f"curl -sS --fail --cacert {PKI}/ca.crt --resolve {DOMAIN}:8443:{ADDRESS} --resolve {DOMAIN}:5000:{ADDRESS}"


def _manifest(host) -> dict:
    return json.loads(host.file(f"{BUNDLE}/manifest.json").content_string)


def test_services_run_and_start_at_boot(host):
    for name in ("nginx", "docker-registry", "chrony"):
        service = host.service(name)
        assert service.is_running and service.is_enabled, name


def test_packages_come_from_the_bundle_apt_repo(host):
    policy = host.check_output("apt-cache policy nginx docker-registry chrony")
    assert f"file:{BUNDLE}/apt bookworm/main" in policy
    assert "deb.debian.org" not in policy
    assert host.file("/etc/apt/sources.list.d/airgap-bundle.sources").contains("Signed-By: /etc/apt/keyrings/airgap-bundle.asc")


def test_registry_push_port_listens_on_loopback_only(host):
    assert host.socket("tcp://127.0.0.1:5001").is_listening
    assert not host.socket("tcp://0.0.0.0:5001").is_listening
    assert host.socket("tcp://0.0.0.0:8443").is_listening
    assert host.socket("tcp://0.0.0.0:5000").is_listening


def test_server_key_is_private_and_certificate_names_domain_and_address(host):
    key = host.file(f"{PKI}/bundle-server.key")
    assert key.mode == 0o600 and key.user == "root"
    assert host.file(f"{PKI}/ca.key").mode == 0o600
    sans = host.check_output(f"openssl x509 -in {PKI}/bundle-server.crt -noout -ext subjectAltName")
    assert f"DNS:{DOMAIN}" in sans and f"IP Address:{ADDRESS}" in sans
    host.run_expect([0], f"openssl verify -CAfile {PKI}/ca.crt {PKI}/bundle-server.crt")


def test_files_download_over_https_with_manifest_checksums(host):
    manifest = _manifest(host)
    for path in [p for p in manifest["files"] if p.startswith("files/")]:
        digest = host.check_output(f"{CURL} https://{DOMAIN}:8443/{path} | sha256sum").split()[0]
        assert digest == manifest["files"][path]["sha256"], path


def test_apt_repo_and_its_key_are_served(host):
    release = host.check_output(f"{CURL} https://{DOMAIN}:8443/apt/dists/bookworm/InRelease")
    assert "BEGIN PGP SIGNED MESSAGE" in release
    assert "BEGIN PGP PUBLIC KEY BLOCK" in host.check_output(f"{CURL} https://{DOMAIN}:8443/keys/bundle-apt.asc")


def test_registry_serves_every_bundle_image_by_digest(host):
    manifest = _manifest(host)
    catalog = json.loads(host.check_output(f"{CURL} https://{DOMAIN}:5000/v2/_catalog"))
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    for ref, entry in manifest["images"].items():
        repository, tag = ref.rsplit(":", 1)
        assert repository in catalog["repositories"]
        headers = host.check_output(f"{CURL} -I -H 'Accept: {accept}' https://{DOMAIN}:5000/v2/{repository}/manifests/{tag}")
        assert f"docker-content-digest: {entry['digest']}" in headers.lower(), ref


def test_registry_refuses_writes_from_the_network(host):
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        code = host.check_output(
            f"{CURL.replace('--fail', '')} -o /dev/null -w '%{{http_code}}' -X {method} "
            f"https://{DOMAIN}:5000/v2/registry.k8s.io/pause/blobs/uploads/"
        )
        assert code == "403", method


def test_other_paths_of_the_bundle_are_not_served(host):
    code = host.check_output(f"{CURL.replace('--fail', '')} -o /dev/null -w '%{{http_code}}' https://{DOMAIN}:8443/registry/")
    assert code == "404"


def test_chrony_serves_time_to_the_nodes_subnet(host):
    assert host.file("/etc/chrony/chrony.conf").contains("^allow 10.213.53.0/24$")
    assert host.socket("udp://0.0.0.0:123").is_listening
    host.run_expect([0], "chronyc -n tracking")


def test_the_catalogs_bundle_server_packages_are_installed(host):
    for name in ("nginx", "docker-registry", "chrony", "python3-apt", "python3-cryptography"):
        assert host.package(name).is_installed, name


def test_chrony_serves_its_own_clock_when_no_server_is_reachable(host):
    assert host.file("/etc/chrony/chrony.conf").contains("^local stratum 10$")
