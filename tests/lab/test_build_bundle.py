"""End to end: build-bundle fetches from the lab's local upstream; a lab node with no route out uses what the bundle server serves."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt

from ansible_collections.airgap.kubernetes.tools.lab import lab, upstream

REPO = Path(__file__).resolve().parents[2]
RELEASE = os.environ.get("AIRGAP_LAB_RELEASE", lab.DEFAULT_RELEASE)
SUITE = RELEASE
PKI = "/etc/airgap-kubernetes/pki"
# The collection's defaults: files_repo https://<bundle_server_host>:8443/files, registry_host <bundle_server_host>:5000.
HTTPS, REGISTRY = 8443, 5000
# The package the node installs from the bundle's apt repo: in the catalog, not in the node image.
APT_PACKAGE = "socat"

pytestmark = [pytest.mark.lab, pytest.mark.e2e]


def _run(cmd: list, timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], text=True, capture_output=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _ssh(the_lab: lab.Lab, host: str, script: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(the_lab.ssh_args(host) + ["bash -euo pipefail -c " + shlex.quote(script)],
                          text=True, capture_output=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{host}: {script}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def upstream_vars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    content = upstream.build()
    with upstream.serve(content, tmp_path_factory.mktemp("upstream")) as vars_path:
        yield vars_path


@pytest.fixture(scope="module")
def the_lab() -> lab.Lab:
    name = f"t{os.getpid()}-bundle"
    try:
        yield lab.up(name, nodes=1, release=RELEASE, internal=True)
    finally:
        lab.down(name)


@pytest.fixture(scope="module")
def built(upstream_vars: Path, the_lab: lab.Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    inventory = the_lab.dir / "inventory"
    started = time.monotonic()
    proc = _run([REPO / "run.sh", "build-bundle", "-i", inventory, "-e", f"@{upstream_vars}", "--arch", "amd64",
                 "--os", {"bookworm": "debian12", "trixie": "debian13"}[SUITE], "--out", out, "--no-wheelhouse",
                 "--progress", "lines"], cwd=REPO)
    print(f"\nbuild-bundle: {time.monotonic() - started:.1f} s\n{proc.stderr}")
    return out


@pytest.fixture(scope="module")
def manifest(built: Path) -> dict:
    return bundlefmt.load_manifest(built / "airgap-bundle")


@pytest.fixture(scope="module")
def served(built: Path, the_lab: lab.Lab, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bundle on the lab's bundle host, served by the bundle_server role; returns the server's address."""
    bundle_host = the_lab.host("bundle")
    # As on an air-gapped host: no Debian source, no package lists from one (the node image has both).
    lab.docker("exec", bundle_host.container, "sh", "-c",
               "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources /var/lib/apt/lists/deb.debian.org_*"
               " && mkdir -p /srv/airgap")
    for name in ("bundle.tar.gz", "bundle.tar.gz.sha256"):
        lab.docker("cp", str(built / name), f"{bundle_host.container}:/srv/airgap/{name}")
    playbook = tmp_path_factory.mktemp("play") / "serve.yml"
    playbook.write_text(
        "- name: Serve the bundle\n  hosts: bundle_server\n  gather_facts: true\n  roles:\n"
        # As layer 01's play: the cluster defaults carry the connection's host-key policy (the lab's is strict).
        "    - role: airgap.kubernetes.cluster_defaults\n"
        "    - role: airgap.kubernetes.bundle_server\n      vars:\n"
        "        bundle_server_bundle_archive: /srv/airgap/bundle.tar.gz\n"
        # Built unsigned: the operator gives the tarball's sha256 out of band, as a site without a release key must.
        f"        bundle_sha256: {(built / 'bundle.tar.gz.sha256').read_text().split()[0]}\n"
        "        # The lab's hosts share the machine's kernel clock: chrony must not set it.\n"
        "        bundle_server_chrony_daemon_opts: \"-F 1 -x\"\n"
        "        # The nodes' subnet: the lab's network.\n"
        f"        bundle_server_ntp_allow: [\"{the_lab.subnet}\"]\n")
    # Facts are cached per inventory host name; another lab's `bundle` must not lend this one its addresses.
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(the_lab.dir / "facts"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["ansible-playbook", "-i", str(the_lab.dir / "inventory"), str(playbook)], cwd=REPO,
                          env=env, text=True, capture_output=True, timeout=1800)
    if proc.returncode != 0:
        failed = [line for line in proc.stdout.splitlines() if line.startswith(("fatal:", "TASK ["))][-4:]
        units = lab.docker("exec", bundle_host.container, "sh", "-c",
                           "systemctl --failed --no-legend; for u in chrony nginx docker-registry; do "
                           "journalctl -u $u --no-pager -n 8; done", check=False).stdout
        pytest.fail("the bundle_server role failed on the lab's bundle host:\n" + "\n".join(failed)
                    + f"\n--- bundle host units ---\n{units}", pytrace=False)
    print(proc.stdout[-1500:])
    return bundle_host.ip


@pytest.fixture(scope="module")
def node_trusts_ca(served: str, the_lab: lab.Lab) -> str:
    ca = lab.docker("exec", the_lab.host("bundle").container, "cat", f"{PKI}/ca.crt").stdout
    subprocess.run(the_lab.ssh_args("node1") + ["cat > /usr/local/share/ca-certificates/airgap-bundle.crt && "
                                                  "update-ca-certificates >/dev/null"],
                   input=ca, text=True, check=True, timeout=60)
    return served


# --------------------------------------------------------------------------- the bundle itself

def test_the_bundle_is_what_the_resolver_lists_and_verifies(built: Path, manifest: dict) -> None:
    assert bundlefmt.verify_bundle(built / "airgap-bundle") == []
    sha = (built / "bundle.tar.gz.sha256").read_text().split()
    assert sha == [bundlefmt.sha256_file(built / "bundle.tar.gz"), "bundle.tar.gz"]
    assert set(manifest["images"]) >= {"registry.k8s.io/kube-apiserver:v1.20.2", "registry.k8s.io/pause:3.2",
                                       "registry.k8s.io/kube-proxy:v1.20.2", "docker.io/library/busybox:1.35.0"}
    files = manifest["files"]
    assert "files/dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubeadm" in files
    assert "files/github.com/etcd-io/etcd/releases/download/v3.4.23/etcd-v3.4.23-linux-amd64.tar.gz" in files
    # Disabled in the lab's config, so not in the bundle.
    assert not any("crictl" in p or "cni-plugins" in p for p in files)
    assert manifest["apt"] == {"key": bundlefmt.APT_KEY, "suites": [SUITE]}
    assert manifest["arches"] == ["amd64"]
    assert manifest["versions"]["kubeadm"] == "1.20.2"


def test_the_tarball_has_one_top_level_directory(built: Path) -> None:
    with tarfile.open(built / "bundle.tar.gz") as tar:
        assert {m.name.split("/", 1)[0] for m in tar.getmembers()} == {"airgap-bundle"}


def test_the_apt_repo_holds_the_dependency_closure(built: Path) -> None:
    pool = {p.name.split("_", 1)[0] for p in (built / "airgap-bundle" / "apt" / "pool" / SUITE).rglob("*.deb")}
    # Asked for (catalog), and pulled in as dependencies, down to libc.
    assert {"socat", "conntrack", "nginx", "docker-registry", "chrony", "libc6", "libssl3"} <= pool


# --------------------------------------------------------------------------- a node with no route out

def test_the_node_has_no_route_out(the_lab: lab.Lab) -> None:
    # Checked by inspection: the tests send no traffic to addresses they did not create.
    assert lab.isolation_problems(the_lab) == []


def test_node_installs_a_package_from_the_bundles_signed_apt_repo(node_trusts_ca: str, the_lab: lab.Lab) -> None:
    server = node_trusts_ca
    opts = "-o Dir::Etc::SourceList=/etc/apt/sources.list.d/airgap.list -o Dir::Etc::SourceParts=-"
    _ssh(the_lab, "node1", f"""
        mkdir -p /etc/apt/keyrings
        curl -fsS https://{server}:{HTTPS}/keys/bundle-apt.asc -o /etc/apt/keyrings/airgap-bundle.asc
        echo 'deb [signed-by=/etc/apt/keyrings/airgap-bundle.asc] https://{server}:{HTTPS}/apt {SUITE} main' \
            > /etc/apt/sources.list.d/airgap.list
        apt-get {opts} update -q
        DEBIAN_FRONTEND=noninteractive apt-get {opts} install -y -q {APT_PACKAGE}
        dpkg -s {APT_PACKAGE} | grep -q '^Status: install ok installed'
    """)


def test_apt_refuses_the_repo_under_another_key(node_trusts_ca: str, the_lab: lab.Lab) -> None:
    server = node_trusts_ca
    proc = _ssh(the_lab, "node1", f"""
        mkdir -p /tmp/wrong-key-lists/partial
        echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] https://{server}:{HTTPS}/apt {SUITE} main' \
            > /tmp/wrong-key.list
        apt-get -o Dir::Etc::SourceList=/tmp/wrong-key.list -o Dir::Etc::SourceParts=- \
            -o Dir::State::Lists=/tmp/wrong-key-lists update 2>&1
    """, check=False)
    assert "NO_PUBKEY" in proc.stdout or "not signed" in proc.stdout, proc.stdout


def test_node_downloads_a_file_and_verifies_its_sha256(node_trusts_ca: str, the_lab: lab.Lab, manifest: dict) -> None:
    path = next(p for p in manifest["files"] if p.endswith("/runc.amd64"))
    out = _ssh(the_lab, "node1", f"curl -fsS https://{node_trusts_ca}:{HTTPS}/{path} -o /usr/local/sbin/runc && "
                                  "chmod 0755 /usr/local/sbin/runc && sha256sum /usr/local/sbin/runc").stdout
    assert out.split()[0] == manifest["files"][path]["sha256"]


def _hosts_toml(server: str, upstream_host: str) -> str:
    # As roles/container_runtime renders it: the bundle registry is the server, so nothing falls back upstream.
    return (f'server = "https://{server}:{REGISTRY}/v2/{upstream_host}"\n'
            'capabilities = ["pull", "resolve"]\noverride_path = true\n[host]\n')


@pytest.fixture(scope="module")
def containerd_on_node(node_trusts_ca: str, the_lab: lab.Lab, manifest: dict) -> str:
    """containerd from the bundle's (repacked) release tarball, checked against the manifest, mirroring to the bundle."""
    server = node_trusts_ca
    tarball = next(p for p in manifest["files"] if p.endswith("-linux-amd64.tar.gz") and "/containerd/" in p)
    runc = next(p for p in manifest["files"] if p.endswith("/runc.amd64"))
    hosts = "".join(f"mkdir -p /etc/containerd/certs.d/{h}\ncat > /etc/containerd/certs.d/{h}/hosts.toml <<'EOF'\n"
                    f"{_hosts_toml(server, h)}EOF\n" for h in ("registry.k8s.io", "docker.io"))
    _ssh(the_lab, "node1", f"""
        curl -fsS https://{server}:{HTTPS}/{tarball} -o /root/containerd.tar.gz
        echo '{manifest["files"][tarball]["sha256"]}  /root/containerd.tar.gz' | sha256sum -c --quiet
        curl -fsS https://{server}:{HTTPS}/{runc} -o /usr/local/sbin/runc && chmod 0755 /usr/local/sbin/runc
        echo '{manifest["files"][runc]["sha256"]}  /usr/local/sbin/runc' | sha256sum -c --quiet
        tar -C /usr/local -xzf /root/containerd.tar.gz
        {hosts}
        systemctl is-active -q airgap-containerd || systemd-run --unit airgap-containerd /usr/local/bin/containerd
        for i in $(seq 100); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.1; done
        ctr version >/dev/null
    """)
    return server


def test_node_pulls_an_image_with_containerd_over_https(containerd_on_node: str, the_lab: lab.Lab,
                                                         manifest: dict) -> None:
    ref = "registry.k8s.io/pause:3.2"
    out = _ssh(the_lab, "node1", f"ctr images pull --hosts-dir /etc/containerd/certs.d {ref} >/dev/null && "
                                 f"ctr images ls name=={ref}").stdout
    assert manifest["images"][ref]["digest"] in out


def test_a_pulled_image_runs_on_the_node(containerd_on_node: str, the_lab: lab.Lab) -> None:
    ref = "docker.io/library/busybox:1.35.0"
    out = _ssh(the_lab, "node1", f"ctr images pull --hosts-dir /etc/containerd/certs.d {ref} >/dev/null && "
                                 f"ctr run --rm {ref} bundle-check /bin/echo hello-from-the-bundle").stdout
    assert "hello-from-the-bundle" in out


def test_containerd_refuses_the_registry_without_the_ca(containerd_on_node: str, the_lab: lab.Lab) -> None:
    # ctr fetches in its own process; with no trusted roots at all, the same pull fails on the certificate.
    proc = _ssh(the_lab, "node1", "SSL_CERT_FILE=/dev/null SSL_CERT_DIR=/nonexistent "
                                  "ctr images pull --hosts-dir /etc/containerd/certs.d "
                                  "registry.k8s.io/kube-scheduler:v1.20.2 2>&1", check=False)
    assert proc.returncode != 0 and "certificate" in proc.stdout, proc.stdout
