"""Specification of network_plugin_manifest: an operator points layer 04 at the plugin's upstream release manifest
(a catalog file component of their own overlay, sha256-pinned, in the bundle) instead of our templates. The render
fetches it from the bundle's file server (a real HTTP server on loopback here), checks its sha256, and writes it with
every image rewritten to the bundle registry; a manifest that runs an image the catalog lacks fails, naming it,
before anything is written. Rendered by a real ansible-playbook, as tests/unit/test_network_plugins.py does."""
import functools
import hashlib
import http.server
import os
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"
URL = "https://github.com/flannel-io/flannel/releases/download/v{version}/kube-flannel.yml"

UPSTREAM = """\
---
apiVersion: v1
kind: Namespace
metadata:
  name: kube-flannel
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel-ds
  namespace: kube-flannel
spec:
  selector:
    matchLabels: {app: flannel}
  template:
    metadata:
      labels: {app: flannel}
    spec:
      initContainers:
        - name: install-cni-plugin
          image: docker.io/flannel/flannel-cni-plugin:v%(cni)s
      containers:
        - name: kube-flannel
          image: flannel/flannel:v%(flannel)s
"""


def _catalog_versions() -> dict:
    defaults = cfg.load_defaults(REPO)["airgap_catalog"]
    merged = {**defaults.get("versions", {}), **defaults.get("lines", {}).get("1.36", {})}
    return {"flannel": merged["flannel_version"], "cni": merged["flannel_cni_plugin_version"]}


@pytest.fixture
def served(tmp_path):
    """A file server on loopback playing the bundle's (files/<host>/<path>); yields (base URL, root)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()


def _render(tmp_path: Path, base: str, root: Path, text: str) -> tuple[subprocess.CompletedProcess, Path]:
    version = _catalog_versions()["flannel"]
    path = root / "files" / "github.com" / f"flannel-io/flannel/releases/download/v{version}/kube-flannel.yml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    overlay = {"components": {"flannel-release-manifest": {
        "kind": "file", "version_var": "flannel_version", "url": URL, "dest": "/etc/kubernetes/kube-flannel.yml",
        "mode": "0644", "noarch": True, "groups": ["kube_control_plane"],
        "enabled_when": {"kube_network_plugin": "flannel"},
        "sha256": {"noarch": {version: hashlib.sha256(text.encode()).hexdigest()}}}}}
    host = {"kube_network_plugin": "flannel", "kube_version": "1.36", "manifests_dir": str(tmp_path / "manifests"),
            "files_repo": f"{base}/files", "catalog_overlay": overlay,
            "network_plugin_manifest": "flannel-release-manifest"}
    inventory = {"all": {"vars": {"ansible_connection": "local",
                                  "ansible_python_interpreter": str(VENV_BIN / "python")}, "hosts": {"cp": host}}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    play = [{"name": "Render", "hosts": "all", "gather_facts": False,
             "roles": [{"role": "airgap.kubernetes.cluster_defaults"}],
             "tasks": [{"name": "Render", "ansible.builtin.include_role": {
                 "name": "airgap.kubernetes.network_flannel", "tasks_from": "render"}}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(tmp_path / "inventory.yml"),
                           str(tmp_path / "play.yml")], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    return proc, tmp_path / "manifests" / "network_flannel"


def test_the_upstream_manifest_replaces_the_templates_with_its_images_on_the_bundle_registry(tmp_path, served):
    base, root = served
    proc, out = _render(tmp_path, base, root, UPSTREAM % _catalog_versions())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.yaml")) == ["upstream.yaml"], "the templates were rendered too"
    docs = list(yaml.safe_load_all((out / "upstream.yaml").read_text()))
    spec = docs[1]["spec"]["template"]["spec"]
    images = [c["image"] for c in spec["initContainers"] + spec["containers"]]
    versions = _catalog_versions()
    # The catalog's default registry_host: the bundle server's registry, upstream names kept under it.
    assert images == [f"bootstrap:5000/docker.io/flannel/flannel-cni-plugin:v{versions['cni']}",
                      f"bootstrap:5000/docker.io/flannel/flannel:v{versions['flannel']}"], images
    assert docs[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-flannel"}}


def test_an_upstream_manifest_with_an_image_the_catalog_lacks_is_refused_before_anything_is_written(tmp_path, served):
    base, root = served
    text = UPSTREAM % _catalog_versions() + "        - name: extra\n          image: quay.io/someone/sidecar:v1\n"
    proc, out = _render(tmp_path, base, root, text)
    assert proc.returncode != 0
    assert "quay.io/someone/sidecar:v1" in proc.stdout and "the bundle lacks" in proc.stdout, proc.stdout[-3000:]
    assert not list(out.glob("*.yaml"))
