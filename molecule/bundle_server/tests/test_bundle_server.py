"""Specification of a served bundle, checked from inside the bundle host as a node would see it over the network."""
from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

BUNDLE = "/srv/airgap/bundle"
PKI = "/etc/airgap-kubernetes/pki"
ADDRESS = "10.213.53.10"
DOMAIN = "bundle.airgap.internal"
# curl as a node would call it: the bundle CA as the only trust anchor, the domain resolved to the server's address.
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


def test_the_bundle_ca_vouches_only_for_the_servers_names_and_addresses_and_signs_no_intermediate(host):
    text = host.check_output(f"openssl x509 -in {PKI}/ca.crt -noout -text")
    assert "Subject: CN = airgap.kubernetes bundle CA" in text
    assert re.search(r"X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0\s", text)
    constraints = text.split("X509v3 Name Constraints: critical", 1)[1].split("X509v3", 1)[0]
    assert "Permitted:" in constraints and "Excluded" not in constraints
    assert f"DNS:{DOMAIN}" in constraints and f"IP:{ADDRESS}/255.255.255.255" in constraints
    # A certificate the bundle CA signs for any other name is refused, as a node's TLS client refuses it.
    host.run_expect([0], f"openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /tmp/other.key "
                         f"-subj /CN=registry.k8s.io -addext subjectAltName=DNS:registry.k8s.io -out /tmp/other.csr")
    host.run_expect([0], f"openssl x509 -req -in /tmp/other.csr -CA {PKI}/ca.crt -CAkey {PKI}/ca.key -days 1 "
                         f"-copy_extensions copy -out /tmp/other.crt")
    refused = host.run(f"openssl verify -CAfile {PKI}/ca.crt /tmp/other.crt")
    assert refused.rc != 0 and "permitted subtree violation" in refused.stdout + refused.stderr


def _not_after(host, path: str) -> datetime:
    """The certificate's notAfter, naive UTC."""
    out = host.check_output(f"openssl x509 -in {path} -noout -enddate")  # notAfter=Dec  2 19:08:14 2026 GMT
    return datetime.strptime(out.split("=", 1)[1].strip(), "%b %d %H:%M:%S %Y %Z")


def _served_not_after(host) -> str:
    return host.check_output(f"openssl s_client -connect {ADDRESS}:8443 -servername {DOMAIN} </dev/null 2>/dev/null "
                             "| openssl x509 -noout -enddate")


def _converge_again() -> subprocess.CompletedProcess:
    """The scenario's converge playbook again, with molecule's own inventory and settings."""
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    env = dict(os.environ, ANSIBLE_CONFIG=str(ephemeral / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(project / ".collections"), ANSIBLE_ROLES_PATH=str(project / "roles"))
    return subprocess.run(["ansible-playbook", "-i", str(ephemeral / "inventory"),
                           str(Path(__file__).resolve().parents[1] / "converge.yml")],
                          env=env, capture_output=True, text=True, timeout=900)


def test_a_server_certificate_near_its_expiry_is_renewed_on_a_rerun_and_served(host):
    """The server certificate re-signed by hand with the bundle CA for one day, as one near its end: a rerun signs it
    again (community.crypto alone keeps a certificate that matches its request, whatever its dates), names it with
    its old and new expiry, and nginx serves the new one."""
    cert = f"{PKI}/bundle-server.crt"
    host.run_expect([0], f"openssl x509 -x509toreq -in {cert} -signkey {PKI}/bundle-server.key -copy_extensions copy "
                         f"| openssl x509 -req -CA {PKI}/ca.crt -CAkey {PKI}/ca.key -days 1 -copy_extensions copy "
                         f"-out {cert}.short && mv {cert}.short {cert} && systemctl reload nginx")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert _not_after(host, cert) < now + timedelta(days=2)
    result = _converge_again()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"Renewed airgap-molecule-bundle-server's {cert} (old expiry" in result.stdout
    assert "Re-issued the bundle CA" not in result.stdout
    assert _not_after(host, cert) > now + timedelta(days=800)  # bundle_server_cert_valid_days: 825
    host.run_expect([0], f"openssl verify -CAfile {PKI}/ca.crt {cert}")
    assert _served_not_after(host) == host.check_output(f"openssl x509 -in {cert} -noout -enddate")
