"""Specification: a real containerd, given the hosts.toml files roles/container_runtime renders, pulls only from the
bundle registry: an image the bundle lacks fails there with not found, and no upstream host is ever looked up."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import hosts_toml  # noqa: E402
IMAGE = "airgap-lab-node:bookworm"
HOSTS_DIR = "/etc/containerd/certs.d"
SOCKET = "/run/lab-containerd/containerd.sock"
# The bundle registry stand-in: TLS on 127.0.0.1:5000, answers every request with the registry's not-found error
# and logs each request line, so the test sees what containerd asked for.
REGISTRY = r"""
import http.server, ssl
class H(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        with open("/var/log/registry.log", "a") as log:
            log.write(f"{self.command} {self.path}\n")
        body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)
    do_GET = do_HEAD = _answer
server = http.server.HTTPServer(("127.0.0.1", 5000), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/etc/lab/registry.crt", "/etc/lab/registry.key")
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""

pytestmark = pytest.mark.lab


def _docker(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], text=True, input=stdin, capture_output=True, check=check, timeout=120)


def _hosts_tomls() -> dict:
    return hosts_toml.render(cfg.load_defaults(REPO)["airgap_catalog"],
                             {"registry_host": "bundle:5000", "airgap_mode": "offline"}, "/etc/lab/registry.crt")


@pytest.fixture(scope="module")
def node() -> str:
    """A lab node with no network (only loopback), the host's containerd and a not-found bundle registry in it."""
    containerd, ctr = shutil.which("containerd"), shutil.which("ctr")
    if not _docker("images", "-q", IMAGE).stdout.strip() or not containerd or not ctr:
        pytest.skip(f"needs {IMAGE} (python3 tools/lab/lab.py image --release bookworm) and containerd on the host")
    name = f"t{os.getpid()}-containerd-mirror"
    _docker("rm", "-f", name, check=False)
    _docker("run", "-d", "--name", name, "--network", "none", "--add-host", "bundle:127.0.0.1",
            "-v", f"{containerd}:/usr/local/bin/containerd:ro", "-v", f"{ctr}:/usr/local/bin/ctr:ro",
            "--entrypoint", "sleep", IMAGE, "infinity")
    try:
        script = "".join(f"mkdir -p {HOSTS_DIR}/{up}\ncat > {HOSTS_DIR}/{up}/hosts.toml <<'EOF'\n{text}EOF\n"
                         for up, text in _hosts_tomls().items())
        _docker("exec", "-i", name, "sh", "-euc", f"""
            mkdir -p /etc/lab /run/lab-containerd
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bundle \
                -addext subjectAltName=DNS:bundle -keyout /etc/lab/registry.key -out /etc/lab/registry.crt 2>/dev/null
            cat > /etc/lab/registry.py <<'EOF'\n{REGISTRY}EOF
            {script}
        """)
        _docker("exec", "-d", name, "python3", "/etc/lab/registry.py")
        _docker("exec", "-d", name, "containerd", "--root", "/var/lib/lab-containerd", "--state",
                "/run/lab-containerd/state", "--address", SOCKET)
        _docker("exec", name, "sh", "-c", f"for i in $(seq 100); do [ -S {SOCKET} ] && "
                                          "ss -ltn | grep -q 127.0.0.1:5000 && exit 0; sleep 0.1; done; exit 1")
        yield name
    finally:
        _docker("rm", "-f", name, check=False)


@pytest.mark.parametrize("ref, path", [
    ("registry.k8s.io/not-in-the-bundle:1.0", "/v2/registry.k8s.io/not-in-the-bundle/manifests/1.0"),
    ("docker.io/library/not-in-the-bundle:1.0", "/v2/docker.io/library/not-in-the-bundle/manifests/1.0"),
])
def test_an_image_the_bundle_lacks_fails_at_the_bundle_registry_and_never_goes_upstream(node, ref, path):
    pull = _docker("exec", node, "ctr", "--address", SOCKET, "images", "pull", "--hosts-dir", HOSTS_DIR, ref,
                   check=False)
    log = _docker("exec", node, "cat", "/var/log/registry.log").stdout
    assert pull.returncode != 0
    assert f"{ref}: not found" in pull.stderr, pull.stderr
    assert path in log, log
    assert log.count(path) == 1, log
    # Falling back upstream shows as "trying next host ... dial tcp: lookup registry.k8s.io on <resolver>".
    assert "lookup" not in pull.stderr and "dial tcp" not in pull.stderr, pull.stderr

