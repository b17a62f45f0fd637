"""The node's local API balancer as roles/apiserver_lb renders it, run for real: Debian's haproxy on loopback in
front of two TLS servers that stand in for API servers (their /readyz answers as each test sets it). What is
checked is the balancer's own behaviour: slow health checks on a loaded machine keep a server in, and when every
check fails the requests still reach whichever server answers, rather than every one refused."""
from __future__ import annotations

import csv
import http.server
import io
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.airgap.kubernetes.tests.unit.local_play import REPO, render_templates

PORT = 16443
LB_PORT = 16444
SERVERS = {"cp-a": "127.0.0.1", "cp-b": "127.0.0.2"}


class StandIn(http.server.ThreadingHTTPServer):
    """An API server stand-in: every path answers its name; /readyz as `readyz` says (ok, slow, fail)."""
    daemon_threads = True
    readyz = "ok"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        status, body = 200, self.server.name
        if self.path == "/readyz":
            if self.server.readyz == "slow":
                time.sleep(3)
            status, body = (500, "not ready") if self.server.readyz == "fail" else (200, "ok")
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def balancer(tmp_path_factory):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(haproxy).exists(), "haproxy is missing on this host: run .ci/setup-host.sh"
    tmp = tmp_path_factory.mktemp("lb")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=stand-in", "-keyout", str(tmp / "key.pem"), "-out",
                    str(tmp / "cert.pem")], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    servers = {}
    for name, address in SERVERS.items():
        server = StandIn((address, PORT), Handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.name = name
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    defaults = yaml.safe_load((REPO / "roles/apiserver_lb/defaults/main.yml").read_text())
    variables = {key: defaults[key] for key in ("apiserver_lb_check_interval", "apiserver_lb_timeout_check",
                                                "apiserver_lb_timeout_connect", "apiserver_lb_timeout_tunnel")}
    variables.update(apiserver_lb_backends=SERVERS, apiserver_lb_bind_address="127.0.0.1",
                     apiserver_lb_stats_socket=str(tmp / "stats.sock"), loadbalancer_apiserver_port=LB_PORT,
                     kube_apiserver_port=PORT)
    config = tmp / "haproxy.cfg"
    render_templates(tmp, "node1", variables, {"apiserver_lb/templates/haproxy.cfg.j2": config})
    check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 10
    while not (tmp / "stats.sock").exists():
        assert proc.poll() is None and time.monotonic() < deadline, f"haproxy did not start: {proc.stderr.read()}"
        time.sleep(0.1)
    try:
        yield {"servers": servers, "stats": tmp / "stats.sock", "proc": proc, "defaults": variables}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for server in servers.values():
            server.shutdown()
            server.server_close()


def states(balancer) -> dict[str, str]:
    """haproxy's view of the checked servers: name -> UP / DOWN / ..., from its stats socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(balancer["stats"]))
        sock.sendall(b"show stat\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    rows = csv.DictReader(io.StringIO(raw.decode().lstrip("# ")))
    return {row["svname"]: row["status"].split()[0] for row in rows
            if row["pxname"] == "kube_apiserver" and row["svname"] in SERVERS}


def wait_states(balancer, wanted: str, timeout: float = 20) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = states(balancer)
        if set(seen.values()) == {wanted} and len(seen) == len(SERVERS):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"servers not all {wanted} after {timeout} s: {states(balancer)}")


def get(path: str = "/version") -> tuple[str, float]:
    """One request through the balancer, as a kubelet sends it; the answering server's name and the seconds taken."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", LB_PORT), timeout=10) as raw, \
            context.wrap_socket(raw) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer.decode().split("\r\n\r\n", 1)[-1], time.monotonic() - t0


def set_readyz(balancer, mode: str) -> None:
    for server in balancer["servers"].values():
        server.readyz = mode


def test_1_healthy_servers_share_the_requests(balancer):
    wait_states(balancer, "UP")
    assert {get()[0] for _ in range(6)} == set(SERVERS)


def test_2_a_check_slower_than_the_interval_keeps_the_server_in(balancer):
    # 3 s answers: longer than the check interval (2 s), within the check timeout (5 s). Without `timeout check`,
    # haproxy gives a check the interval only, and a loaded machine's slow answers took every server out at once.
    assert balancer["defaults"]["apiserver_lb_timeout_check"] == "5s"
    set_readyz(balancer, "slow")
    try:
        time.sleep(12)
        assert states(balancer) == {name: "UP" for name in SERVERS}
    finally:
        set_readyz(balancer, "ok")


def test_3_with_every_check_failing_requests_still_reach_the_servers(balancer):
    set_readyz(balancer, "fail")
    try:
        wait_states(balancer, "DOWN")
        assert {get()[0] for _ in range(6)} == set(SERVERS)
    finally:
        set_readyz(balancer, "ok")


def test_4_a_server_that_refuses_is_passed_over_at_once_while_every_check_fails(balancer):
    set_readyz(balancer, "fail")
    try:
        wait_states(balancer, "DOWN")
        gone = balancer["servers"]["cp-a"]
        gone.shutdown()
        gone.server_close()
        answers = [get() for _ in range(6)]
        assert {name for name, _ in answers} == {"cp-b"}
        # haproxy retries a refused connection one second later, on another server (option redispatch 1).
        assert max(seconds for _, seconds in answers) < 2.5, answers
    finally:
        set_readyz(balancer, "ok")
