"""Specification of the manifests the deploy applies: for every network plugin, addon set and line, the images the
rendered manifests run are exactly the catalog's image list for that config (so the bundle is complete, and carries
nothing unused), and every manifest validates strictly against its line's schemas.

Every config renders in ONE run of playbooks/render_manifests.yml (module fixture). v1.20 has no schemas in
kubernetes-validate; its manifests go to a real v1.20.2 API server in tests/lab/test_manifests_apiserver.py."""
import functools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import kubernetes_validate
import pytest

from ansible_collections.airgap.kubernetes.plugins.filter.manifests import FilterModule
from ansible_collections.airgap.kubernetes.plugins.module_utils import kubeadm_config as kc
from ansible_collections.airgap.kubernetes.plugins.module_utils import manifests as m
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver
from ansible_collections.airgap.kubernetes.tools import list_artifacts

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"
PLAYBOOK = "playbooks/render_manifests.yml"
LINES = {"1.34": "v1.34.11", "1.35": "v1.35.8", "1.36": "v1.36.4", "1.20": "v1.20.2"}
PLUGINS = ("bridge", "calico", "cilium", "flannel")
ADDONS = ("dns_enabled", "nodelocaldns_enabled", "metrics_server_enabled", "local_path_provisioner_enabled")
# Images kubeadm and containerd pull themselves (static pods, kube-proxy, the sandbox): in no manifest of ours.
NOT_IN_MANIFESTS = {"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "pause", "etcd-image"}
CNI_ROLES = {"calico": "network_calico", "cilium": "network_cilium", "flannel": "network_flannel"}
FILTERS = FilterModule().filters()

COMBINATIONS = [(line, plugin, on) for line in LINES for plugin in PLUGINS for on in (True, False)]


def combo_id(line: str, plugin: str, on: bool) -> str:
    return f"{line}-{plugin}-addons_{'on' if on else 'off'}"


def config_of(line: str, plugin: str, on: bool) -> dict:
    return {"kube_version": LINES[line], "kube_network_plugin": plugin, **{k: on for k in ADDONS}}


def render(configs: list, out: Path, collection_root: Path = REPO / ".collections") -> tuple[dict, float, str]:
    """({manifest path: text}, seconds, output) of one render_manifests.yml run over configs."""
    extra = out / "configs.json"
    extra.write_text(json.dumps({"manifests_configs": configs, "manifests_output": str(out / "rendered.json")}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_COLLECTIONS_PATH": str(collection_root)}
    exe = VENV_BIN / "ansible-playbook" if (VENV_BIN / "ansible-playbook").exists() else "ansible-playbook"
    playbook = collection_root / "ansible_collections" / "airgap" / "kubernetes" / PLAYBOOK
    t0 = time.monotonic()
    proc = subprocess.run([str(exe), "-i", "localhost,", str(playbook), "-e", f"@{extra}"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, f"render_manifests.yml failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    rendered = json.loads((out / "rendered.json").read_text())
    # A network plugin role whose render tasks write files themselves (ansible.builtin.template) counts the same.
    for cfg in configs:
        for path in sorted(Path(cfg["manifests_dir"]).rglob("*.yaml")):
            rendered.setdefault(str(path), path.read_text())
    return rendered, seconds, proc.stdout


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """{combination id: {manifest path: text}}, every combination rendered in one playbook run."""
    out = tmp_path_factory.mktemp("manifests")
    configs = [{"manifests_dir": str(out / combo_id(*c)), **config_of(*c)} for c in COMBINATIONS]
    texts, seconds, _ = render(configs, out)
    print(f"\nrender_manifests.yml: {len(configs)} configs, {len(texts)} manifests rendered in one run, {seconds:.1f} s")
    return {combo_id(*c): {p: t for p, t in texts.items() if p.startswith(str(out / combo_id(*c)) + "/")}
            for c in COMBINATIONS}


@functools.lru_cache(maxsize=1)
def collection_config() -> tuple:
    """(catalog, config) of the collection's defaults, as list-artifacts reads them without an inventory."""
    return list_artifacts.load(None)


def expected_images(config: dict) -> set:
    """The catalog's image list for the config (what list-artifacts, and so build-bundle, carries), less the
    images kubeadm and containerd pull on their own."""
    catalog, defaults = collection_config()
    entries = list_artifacts.collect(catalog, {**defaults, **config}, ["amd64"], "image", "offline", ["debian"])
    return {e["ref"] for e in entries if e["name"] not in NOT_IN_MANIFESTS}


def uses_of(texts: dict) -> list:
    return [use for path, text in sorted(texts.items()) for use in m.image_uses(m.load_documents(text, path))]


# ----------------------------------------------------------------------------- completeness

@pytest.mark.parametrize("line,plugin,on", COMBINATIONS, ids=[combo_id(*c) for c in COMBINATIONS])
def test_the_rendered_manifests_run_exactly_the_catalogs_images_for_the_config(rendered, line, plugin, on):
    uses = uses_of(rendered[combo_id(line, plugin, on)])
    problems = m.compare_images(uses, expected_images(config_of(line, plugin, on)))
    print(f"\n{combo_id(line, plugin, on)}: {len(uses)} containers, images {sorted({u.image for u in uses})}")
    assert problems == []


def test_every_addon_and_no_network_plugin_is_rendered_for_bridge_with_the_addons_on(rendered):
    names = sorted(Path(p).parent.name for p in rendered[combo_id("1.36", "bridge", True)])
    assert names == ["coredns", "local_path_provisioner", "metrics_server", "nodelocaldns"]


def test_each_network_plugin_is_rendered_by_its_own_role_alone_with_the_addons_off(rendered):
    for plugin, role in CNI_ROLES.items():
        assert {Path(p).parent.name for p in rendered[combo_id("1.36", plugin, False)]} == {role}, plugin


def test_nothing_is_rendered_for_bridge_with_the_addons_off(rendered):
    assert rendered[combo_id("1.36", "bridge", False)] == {}


def _tampered_collection(root: Path) -> Path:
    """A copy of the collection whose CoreDNS template gained a sidecar with a literal image."""
    coll = root / "ansible_collections" / "airgap" / "kubernetes"
    (coll / "roles").mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name not in ("roles", ".collections", ".git", ".lab") and not entry.name.startswith(".airgap"):
            (coll / entry.name).symlink_to(entry)
    for role in (REPO / "roles").iterdir():
        if role.name != "coredns":
            (coll / "roles" / role.name).symlink_to(role)
    shutil.copytree(REPO / "roles" / "coredns", coll / "roles" / "coredns")
    template = coll / "roles" / "coredns" / "templates" / "manifests" / "coredns.yaml.j2"
    text = template.read_text()
    anchor = "      containers:\n"
    assert anchor in text
    template.write_text(text.replace(anchor, anchor + "        - name: sidecar\n"
                                     "          image: docker.io/library/nginx:1.27\n", 1))
    return root


def test_a_manifest_that_gains_an_image_the_catalog_lacks_fails_the_completeness_check(tmp_path):
    root = _tampered_collection(tmp_path / "collections")
    config = {"manifests_dir": str(tmp_path / "out"), **config_of("1.36", "bridge", True)}
    texts, _, _ = render([config], tmp_path, collection_root=root)
    problems = m.compare_images(uses_of(texts), expected_images(config_of("1.36", "bridge", True)))
    assert problems == [
        "Deployment kube-system/coredns, container sidecar runs docker.io/library/nginx:1.27, which the catalog's "
        "image list for this config lacks: name it through the catalog (airgap.kubernetes.manifest_image), "
        "or add it to the catalog"]


# ----------------------------------------------------------------------------- validation

VALIDATED = [c for c in COMBINATIONS if c[0] != "1.20" and c[2]]


@pytest.mark.parametrize("line,plugin,on", VALIDATED, ids=[combo_id(*c) for c in VALIDATED])
def test_every_rendered_manifest_validates_strictly_for_its_line(rendered, line, plugin, on):
    texts = rendered[combo_id(line, plugin, on)]
    report, errors = [], []
    for path, text in sorted(texts.items()):
        for doc in m.load_documents(text, path):
            what = f"{Path(path).parent.name}: {doc['kind']} {doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}"
            try:
                kubernetes_validate.validate(doc, f"{line}.0", strict=True)
                report.append(f"  valid for {line} (strict): {what}")
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{what}: {exc.message} at {list(exc.path)}")
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{what}: no {line} schema for {doc['apiVersion']} {doc['kind']}")
    print(f"\n{combo_id(line, plugin, on)}: {len(report)} objects validated\n" + "\n".join(report))
    assert texts and errors == []


def test_the_1_20_manifests_use_the_api_versions_1_20_serves(rendered):
    kinds = {(d["kind"], d["apiVersion"]) for p, t in rendered[combo_id("1.20", "bridge", True)].items()
             for d in m.load_documents(t, p)}
    assert ("PodDisruptionBudget", "policy/v1beta1") in kinds
    assert ("PodDisruptionBudget", "policy/v1") not in kinds
    newer = {(d["kind"], d["apiVersion"]) for p, t in rendered[combo_id("1.36", "bridge", True)].items()
             for d in m.load_documents(t, p)}
    assert ("PodDisruptionBudget", "policy/v1") in newer


def test_the_dns_service_takes_the_address_the_kubelets_use_as_cluster_dns(rendered):
    texts = rendered[combo_id("1.36", "bridge", True)]
    docs = [d for p, t in texts.items() if "/coredns/" in p for d in m.load_documents(t, p)]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "kube-dns")
    kubelet = kc.kubelet_configuration({"kube_version": "v1.36.4", "service_subnet": "10.233.0.0/18",
                                        "cri_socket": "unix:///run/containerd/containerd.sock"})
    assert service["spec"]["clusterIP"] == kubelet["clusterDNS"][0] == "10.233.0.10"


def test_the_local_path_helper_pod_runs_the_provisioners_own_image_so_the_bundle_has_it(rendered):
    texts = rendered[combo_id("1.36", "bridge", True)]
    uses = [u for u in uses_of(texts) if "local-path-config" in u.name]
    assert [u.container for u in uses] == ["helper-pod"]
    assert uses[0].image.startswith("bootstrap:5000/docker.io/rancher/local-path-provisioner:v0.0.32")


# ----------------------------------------------------------------------------- pure functions

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: busybox:1.36
      containers:
        - name: app
          image: "quay.io/calico/node:v3.31.7"   # pinned by the release
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: job}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
            - name: run
              image: flannel/flannel:v0.28.4@sha256:{digest}
""".replace("{digest}", "a" * 64)


def test_images_are_collected_from_init_containers_and_cronjobs_too():
    assert m.images(m.load_documents(DEPLOYMENT)) == [
        "busybox:1.36", "flannel/flannel:v0.28.4@sha256:" + "a" * 64, "quay.io/calico/node:v3.31.7"]


def test_rewrite_images_maps_every_spelling_to_the_bundle_and_keeps_the_rest_of_the_text():
    mapping = {"docker.io/library/busybox:1.36": "bootstrap:5000/docker.io/library/busybox:1.36",
               "quay.io/calico/node:v3.31.7": "bootstrap:5000/quay.io/calico/node:v3.31.7",
               "docker.io/flannel/flannel:v0.28.4": "bootstrap:5000/docker.io/flannel/flannel:v0.28.4"}
    out = m.rewrite_images(DEPLOYMENT, mapping)
    assert '          image: "bootstrap:5000/quay.io/calico/node:v3.31.7"   # pinned by the release\n' in out
    assert "image: bootstrap:5000/docker.io/flannel/flannel:v0.28.4@sha256:" + "a" * 64 in out
    assert out.replace("bootstrap:5000/docker.io/library/busybox", "busybox").count("\n") == DEPLOYMENT.count("\n")
    assert m.unbundled_images(out, mapping.values()) == []


def test_rewrite_images_names_every_image_the_bundle_lacks_and_writes_nothing():
    with pytest.raises(m.ManifestError, match=r"names 2 image\(s\) the bundle lacks: busybox:1.36, "
                                              r"flannel/flannel:v0.28.4@sha256:a+: add each to the catalog"):
        m.rewrite_images(DEPLOYMENT, {"quay.io/calico/node:v3.31.7": "bootstrap:5000/quay.io/calico/node:v3.31.7"})


def test_check_bundled_refuses_a_manifest_naming_an_image_the_bundle_lacks():
    with pytest.raises(m.ManifestError, match=r"upstream.yaml runs 1 image\(s\) the bundle lacks \(Deployment "
                                              r"default/web, container init: busybox:1.36\)"):
        m.check_bundled(DEPLOYMENT, ["quay.io/calico/node:v3.31.7", "docker.io/flannel/flannel:v0.28.4"],
                        "upstream.yaml")
    m.check_bundled(DEPLOYMENT, ["docker.io/library/busybox:1.36", "quay.io/calico/node:v3.31.7",
                                 "docker.io/flannel/flannel:v0.28.4"])


def test_check_bundled_files_reads_each_yaml_file_of_the_bundle_and_names_every_problem(tmp_path):
    (tmp_path / "good.yaml").write_text(DEPLOYMENT.split("---")[0])
    (tmp_path / "bad.yml").write_text(DEPLOYMENT)
    (tmp_path / "kubelet").write_bytes(b"\x7fELF not yaml")
    files = {"files/x/good.yaml": tmp_path / "good.yaml", "files/x/bad.yml": tmp_path / "bad.yml",
             "files/x/kubelet": tmp_path / "kubelet"}
    with pytest.raises(m.ManifestError, match=r"^files/x/bad.yml runs 1 image\(s\) the bundle lacks \(CronJob job, "
                                              r"container run: flannel/flannel:v0.28.4@sha256:a+\)"):
        m.check_bundled_files(files, ["docker.io/library/busybox:1.36", "quay.io/calico/node:v3.31.7"])
    m.check_bundled_files(files, ["docker.io/library/busybox:1.36", "quay.io/calico/node:v3.31.7",
                                  "docker.io/flannel/flannel:v0.28.4"])


def test_a_text_that_is_no_manifest_is_refused_with_its_document_number():
    with pytest.raises(m.ManifestError, match="x.yaml document 2 is not a Kubernetes object"):
        m.load_documents("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n- a list\n", "x.yaml")


@pytest.mark.parametrize("kind,version,expected", [
    ("PodDisruptionBudget", "v1.20.2", "policy/v1beta1"), ("PodDisruptionBudget", "1.21.0", "policy/v1"),
    ("PodDisruptionBudget", "1.36.4", "policy/v1"), ("CronJob", "v1.20.2", "batch/v1beta1"),
    ("CronJob", "1.34.11", "batch/v1")])
def test_the_api_version_of_a_kind_follows_the_line(kind, version, expected):
    assert FILTERS["kube_api_version"](kind, version) == expected


def test_an_unknown_kind_has_no_line_dependent_api_version():
    with pytest.raises(Exception, match="Deployment has no line-dependent apiVersion here"):
        FILTERS["kube_api_version"]("Deployment", "1.36.4")


def test_manifest_image_pins_the_digest_once():
    image = {"kind": "image", "ref": "bootstrap:5000/registry.k8s.io/coredns/coredns:v1.14.2", "digest": None}
    assert FILTERS["manifest_image"](image) == image["ref"]
    pinned = {**image, "digest": "sha256:" + "b" * 64}
    assert FILTERS["manifest_image"](pinned) == image["ref"] + "@sha256:" + "b" * 64
    assert FILTERS["manifest_image"]({**pinned, "ref": pinned["ref"] + "@sha256:" + "b" * 64}).count("@") == 1


def test_manifest_image_refuses_anything_but_a_resolved_image():
    with pytest.raises(Exception, match="manifest_image takes a resolved image"):
        FILTERS["manifest_image"]("registry.k8s.io/coredns/coredns:v1.14.2")


def test_cluster_dns_is_the_tenth_address_of_the_service_network():
    assert FILTERS["cluster_dns"]("10.96.0.0/12") == "10.96.0.10"
    with pytest.raises(Exception, match="kube_service_addresses 'ten' is not a network"):
        FILTERS["cluster_dns"]("ten")


PODS = {"items": [
    {"metadata": {"name": "coredns-1"}, "status": {"containerStatuses": [
        {"name": "coredns", "ready": False, "image": "bootstrap:5000/registry.k8s.io/coredns/coredns:v1.14.2",
         "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff",
                                                  "message": "Back-off pulling image \"x\""}}}]}},
    {"metadata": {"name": "coredns-2"}, "status": {"containerStatuses": [
        {"name": "coredns", "ready": False, "image": "i", "restartCount": 4,
         "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}}}]}},
    {"metadata": {"name": "coredns-3"}, "status": {"containerStatuses": [
        {"name": "coredns", "ready": True, "state": {"running": {}}}]}},
    {"metadata": {"name": "coredns-4"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}},
]}


def test_pod_problems_names_the_image_of_a_pull_failure_and_marks_a_crash_loop_for_its_log():
    found = FILTERS["pod_problems"](PODS)
    assert [p["text"] for p in found] == [
        "pod coredns-1: container coredns ImagePullBackOff (image bootstrap:5000/registry.k8s.io/coredns/coredns:"
        "v1.14.2): Back-off pulling image \"x\"",
        "pod coredns-2: container coredns CrashLoopBackOff: back-off 40s restarting",
        "pod coredns-4: Unschedulable: 0/3 nodes are available"]
    assert [p["crashing"] for p in found] == [False, True, False]


def test_the_catalog_images_of_the_addons_resolve_on_every_line():
    catalog, defaults = collection_config()
    for line, version in LINES.items():
        for name in ("coredns", "nodelocaldns", "metrics-server", "local-path-provisioner"):
            art = resolver.resolve_one(catalog, {**defaults, "kube_version": version}, name, "amd64")
            assert art.ref.startswith("bootstrap:5000/"), (line, name, art.ref)


def test_layer_05_refuses_addon_settings_that_cannot_work_before_any_host_changes(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    k8s_cluster:\n      children:\n        kube_control_plane:\n"
                         "          hosts:\n            localhost: {ansible_connection: local}\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    exe = VENV_BIN / "ansible-playbook" if (VENV_BIN / "ansible-playbook").exists() else "ansible-playbook"
    proc = subprocess.run([str(exe), "-i", str(inventory), "playbooks/05-apps.yml", "-e", "kube_version=v1.20.2",
                           "-e", "gateway_api_enabled=true", "-e", "kube_proxy_mode=ipvs", "-e", "coredns_replicas=0",
                           "-e", f"manifests_dir={tmp_path / 'never'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "The addon settings have 3 problem(s)" in out
    assert "nodelocaldns_enabled needs kube_proxy_mode iptables" in out
    assert "the Gateway API CRDs validate with CEL rules, which Kubernetes 1.20 drops" in out
    assert "coredns_replicas must be at least 1, not 0" in out
    assert "Deploy the addons" not in out and not (tmp_path / "never").exists()
