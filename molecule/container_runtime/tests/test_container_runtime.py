"""Specification of the container runtime: containerd, runc and the CNI plugins from the bundle at the catalog's
versions, the systemd cgroup driver, and images pulled by their upstream names from the bundle registry over HTTPS."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import testinfra
import yaml

testinfra_hosts = ["ansible://mol-rt-node"]

BUNDLE_IP = "10.213.62.10"
NODE_IP = "10.213.62.11"
PAUSE = "registry.k8s.io/pause:3.10.2"
BUSYBOX = "docker.io/library/busybox:1.35.0"
CTR = "ctr --address /run/containerd/containerd.sock"
HOSTS_DIR = "/etc/containerd/certs.d"
FIXTURE = Path(os.environ.get("RUNTIME_FIXTURE_DIR", Path.home() / ".cache/airgap-kubernetes/runtime-fixture"))


def _overlay_sha256(component: str, version: str) -> str:
    overlay = yaml.safe_load((FIXTURE / "runtime-overlay.yml").read_text())
    return overlay["components"][component]["sha256"]["amd64"][version]


def _bundle_log(since: str) -> str:
    bundle = testinfra.get_host("docker://mol-rt-bundle")
    return bundle.check_output(f"awk 'NR > {since}' /var/log/nginx/access.log")


def test_binaries_are_the_catalog_versions(host):
    assert "1.6.20" in host.check_output("/usr/local/bin/containerd --version")
    assert "1.1.5" in host.check_output("/usr/local/sbin/runc --version")
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        assert host.file(f"/opt/cni/bin/{plugin}").mode == 0o755, plugin


def test_downloads_match_the_catalog_sha256(host):
    for name, component, version in (("containerd-1.6.20-linux-amd64.tar.gz", "containerd", "1.6.20"),
                                     ("cni-plugins-linux-amd64-v1.1.1.tgz", "cni-plugins", "1.1.1")):
        assert host.file(f"/var/cache/airgap-kubernetes/downloads/{name}").sha256sum == _overlay_sha256(component, version)
    assert host.file("/usr/local/sbin/runc").sha256sum == _overlay_sha256("runc", "1.1.5")


def test_containerd_runs_with_the_systemd_cgroup_driver(host):
    service = host.service("containerd")
    assert service.is_running and service.is_enabled
    config = host.check_output("/usr/local/bin/containerd config dump")
    assert "SystemdCgroup = true" in config
    assert f'config_path = "{HOSTS_DIR}"' in config
    assert f'sandbox_image = "{PAUSE}"' in config


def test_every_catalog_registry_maps_to_the_bundle_registry(host):
    for registry in ("registry.k8s.io", "docker.io", "quay.io"):
        hosts_toml = host.file(f"{HOSTS_DIR}/{registry}/hosts.toml")
        # The server is the mirror itself: containerd falls back to the server, so no upstream host is named.
        assert hosts_toml.contains(f'^server = "https://bundle.airgap.internal:5000/v2/{registry}"$'), registry
        assert not re.search(r"https://(registry\.k8s\.io|registry-1\.docker\.io|docker\.io|quay\.io)",
                             hosts_toml.content_string), registry
        assert hosts_toml.contains('ca = "/etc/airgap-kubernetes/bundle-ca.crt"'), registry


def test_upstream_name_is_pulled_from_the_bundle_registry_over_https(host):
    bundle = testinfra.get_host("docker://mol-rt-bundle")
    before = bundle.check_output("wc -l < /var/log/nginx/access.log").strip()
    host.run(f"{CTR} -n airgap-verify images rm {PAUSE}")
    pull = host.run(f"{CTR} -n airgap-verify images pull --hosts-dir {HOSTS_DIR} {PAUSE}")
    assert pull.rc == 0, pull.stderr
    log = _bundle_log(before)
    # containerd resolves the tag with HEAD, then fetches the manifest and blobs with GET.
    assert re.search(rf'^{NODE_IP} .*"(HEAD|GET) /v2/registry.k8s.io/pause/manifests/3.10.2', log, re.MULTILINE), log
    digest = host.check_output(f"{CTR} -n airgap-verify images ls name=={PAUSE}").split()
    assert any(word.startswith("sha256:") for word in digest)


def test_runs_a_container_from_an_image_pulled_by_its_upstream_name(host):
    pull = host.run(f"{CTR} -n airgap-verify images pull --hosts-dir {HOSTS_DIR} {BUSYBOX}")
    assert pull.rc == 0, pull.stderr
    run = host.run(f"{CTR} -n airgap-verify run --rm {BUSYBOX} airgap-verify-run /bin/sh -c 'echo hello from the bundle'")
    assert run.rc == 0, run.stderr
    assert run.stdout.strip() == "hello from the bundle"


def test_sandbox_image_was_pulled_for_the_kubelet(host):
    assert PAUSE in host.check_output(f"{CTR} -n k8s.io images ls -q")


def test_pulled_image_is_the_bundle_manifest_digest(host):
    manifest = json.loads((FIXTURE / "airgap-bundle" / "manifest.json").read_text())
    digest = manifest["images"][PAUSE]["digest"]
    assert digest in host.check_output(f"{CTR} -n k8s.io images ls name=={PAUSE}")
