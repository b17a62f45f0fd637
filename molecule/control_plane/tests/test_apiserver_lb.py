"""Specification of the local API load balancer (role apiserver_lb) on every Kubernetes node: haproxy from the
bundle on loopback only, health-checking every control plane's API server (down before kubeadm init, up after), and
answering for the real API server, on the worker too."""
from __future__ import annotations

import json
import re

from cluster import CONTROL, IPS, KUBE_NODES, KUBE_VERSION, LB_PORT, WORKER, node

testinfra_hosts = [f"docker://{name}" for name in KUBE_NODES]

HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"


def _config_section(config: str, header: str) -> list[str]:
    """The stripped lines of one haproxy section (`backend kube_apiserver`), up to the next section."""
    lines = config.splitlines()
    start = lines.index(header) + 1
    section = []
    for line in lines[start:]:
        if line and not line[0].isspace():
            break
        if line.strip() and not line.strip().startswith("#"):
            section.append(line.strip())
    return section


def test_haproxy_runs_under_systemd_from_the_bundle_repo(host):
    haproxy = host.service("haproxy")
    assert haproxy.is_running and haproxy.is_enabled
    policy = host.check_output("apt-cache policy haproxy")
    assert "bundle.airgap.internal" in policy, policy


def test_haproxy_listens_on_loopback_only(host):
    listening = host.check_output("ss -Hltnp")
    haproxy = sorted(line.split()[3] for line in listening.splitlines() if '"haproxy"' in line)
    assert haproxy == [f"127.0.0.1:{LB_PORT}"], listening


def test_haproxy_health_checks_every_control_plane_api_server(host):
    config = host.file(HAPROXY_CFG).content_string
    backend = _config_section(config, "backend kube_apiserver")
    assert "option httpchk GET /readyz" in backend
    default_server = next(line.split() for line in backend if line.startswith("default-server "))
    assert "check" in default_server and "check-ssl" in default_server
    # The one control plane (the worker runs no API server), checked, and its unchecked twin, used only while every
    # check fails.
    assert "option allbackups" in backend
    assert [line for line in backend if line.startswith("server ")] == [
        f"server {CONTROL} {IPS[CONTROL]}:6443", f"server {CONTROL}-unchecked {IPS[CONTROL]}:6443 backup no-check"]
    assert any(line.startswith("timeout check ") for line in _config_section(config, "defaults"))
    assert host.run(f"haproxy -c -f {HAPROXY_CFG}").rc == 0


def test_haproxy_took_the_api_server_in_once_it_was_ready(host):
    # haproxy started before kubeadm init: its active check had the server DOWN, then UP once /readyz answered.
    log = host.check_output("journalctl --no-pager -o cat -u haproxy")
    down = re.search(rf"Server kube_apiserver/{CONTROL} is DOWN", log)
    up = re.search(rf"Server kube_apiserver/{CONTROL} is UP", log)
    assert down and up and down.start() < up.start(), log
    assert log.rfind("is UP") > log.rfind("is DOWN"), log


def test_the_worker_reaches_the_api_server_through_its_balancer():
    worker = node(WORKER)
    ready = worker.run(f"curl -sk --max-time 10 https://127.0.0.1:{LB_PORT}/readyz")
    assert ready.rc == 0 and ready.stdout == "ok", ready
    version = json.loads(worker.check_output(f"curl -sk --max-time 10 https://127.0.0.1:{LB_PORT}/version"))
    assert version["gitVersion"] == KUBE_VERSION
