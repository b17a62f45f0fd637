"""Specification of layer 04's calico, cilium and flannel manifests: each plugin's roles/network_<plugin>/tasks/render.yml
run by a real ansible-playbook on this host (connection local, one run for every config), for the lines 1.34, 1.35
and 1.36 with the default knobs and with others; every document validated strictly against its line's schemas
(kubernetes-validate), every image checked against the resolver's list for that config; and the refusal to switch
the plugin of a running cluster. None of these plugins' images can run here: their manifests are rendered and
validated, not run (the summary at the end of the run says so)."""
import ipaddress
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg
from ansible_collections.airgap.kubernetes.plugins.module_utils import network_plugins as netp
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed: pip install kubernetes-validate==1.37.0")

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"
DEFAULTS = cfg.load_defaults(REPO)
CATALOG = DEFAULTS["airgap_catalog"]
LINES = ["1.34", "1.35", "1.36"]
NOT_RUN = ("calico, cilium and flannel manifests: rendered and validated (kubernetes-validate, strict) for the lines "
           "1.34, 1.35 and 1.36, not run: their images cannot be pulled or built here, so no pod of these plugins "
           "ran and no packet crossed their networks.")

# The knobs other than the defaults, one set per plugin.
OTHER_KNOBS = {
    "calico": {"calico_encapsulation": "VXLAN", "calico_cross_subnet": True, "network_mtu": 1450,
               "calico_typha_enabled": True, "calico_apiserver_enabled": True, "kube_pods_subnet": "10.48.0.0/16",
               "kube_network_node_prefix": 26},
    "cilium": {"cilium_tunnel": "geneve", "cilium_ipam_mode": "cluster-pool", "network_mtu": 1450,
               "loadbalancer_apiserver_localhost": False, "kube_pods_subnet": "10.48.0.0/16"},
    "flannel": {"flannel_backend": "host-gw", "network_mtu": 1450, "kube_pods_subnet": "10.48.0.0/16",
                "kube_network_node_prefix": 25},
}
CONFIGS = {f"{plugin}-{knobs}-{line.replace('.', '')}": {"kube_network_plugin": plugin, "kube_version": line,
                                                          **(OTHER_KNOBS[plugin] if knobs == "other" else {})}
           for plugin in OTHER_KNOBS for knobs in ("default", "other") for line in LINES}
# Settings a plugin cannot deploy: the render fails before writing anything, naming the knob.
AGAIN, AGAIN_OF = "calico-again", "calico-other-136"
BAD = {"calico-bad": {"kube_network_plugin": "calico", "kube_version": "1.36", "calico_encapsulation": "GRE"},
       "cilium-bad": {"kube_network_plugin": "cilium", "kube_version": "1.36", "cilium_tunnel": "ipip"},
       "flannel-bad": {"kube_network_plugin": "flannel", "kube_version": "1.36", "flannel_backend": "udp"}}


@pytest.fixture(scope="module")
def render(tmp_path_factory, request):
    """One ansible-playbook run renders every config (one inventory host each); {host: {"dir", "docs"}}, output."""
    work = tmp_path_factory.mktemp("network-plugins")
    hosts = {name: {**knobs, "manifests_dir": str(work / name)} for name, knobs in {**CONFIGS, **BAD}.items()}
    # Renders calico-other-136's config again into its directory, in a second play: layer 04's rerun.
    hosts[AGAIN] = {**CONFIGS[AGAIN_OF], "manifests_dir": str(work / AGAIN_OF)}
    inventory = {"all": {"vars": {"ansible_connection": "local",
                                  "ansible_python_interpreter": str(VENV_BIN / "python")}, "hosts": hosts}}
    (work / "inventory.yml").write_text(yaml.safe_dump(inventory))
    play = [{"name": "Render the network plugin's manifests", "hosts": hosts_of_play, "gather_facts": False,
             "roles": [{"role": "airgap.kubernetes.cluster_defaults"}],
             "tasks": [{"name": "Render", "ansible.builtin.include_role": {
                 "name": "airgap.kubernetes.network_{{ kube_network_plugin }}", "tasks_from": "render"}}]}
            for hosts_of_play in (f"all:!{AGAIN}", AGAIN)]
    (work / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.timer", "ANSIBLE_FORKS": str(len(hosts))}
    started = time.monotonic()
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(work / "inventory.yml"), str(work / "play.yml")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    elapsed = time.monotonic() - started
    rendered = {}
    for name in CONFIGS:
        plugin_dir = work / name / f"network_{CONFIGS[name]['kube_network_plugin']}"
        files = sorted(plugin_dir.glob("*.yaml"))
        rendered[name] = {"dir": plugin_dir, "files": files,
                          "docs": [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]}
    documents = sum(len(r["docs"]) for r in rendered.values())
    request.config.pluginmanager.register(_NotRunSummary(
        f"{len(CONFIGS)} configs rendered in one ansible-playbook run ({elapsed:.1f} s), {documents} documents "
        f"validated against their line's schemas."), "network-plugins-not-run")
    return {"configs": rendered, "output": proc.stdout + proc.stderr, "rc": proc.returncode, "seconds": elapsed,
            "work": work}


class _NotRunSummary:
    """Says at the end of the run, plainly, what these tests checked and what they could not run."""

    def __init__(self, measured: str):
        self.measured = measured

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_sep("-", "network plugins: not run here")
        terminalreporter.write_line(self.measured)
        terminalreporter.write_line(NOT_RUN)


def resolver_images(knobs: dict) -> dict:
    """The images the resolver lists for a config (as the bundle gets them), plugin images by catalog name."""
    config = cfg.expand_simple_templates({**DEFAULTS, **knobs})
    images = resolver.resolve(CATALOG, config, "amd64", kind="image")
    return {i.name: i.ref for i in images
            if "kube_network_plugin" in (CATALOG["components"][i.name].get("enabled_when") or {})}


def pod_images(doc: dict) -> list:
    spec = (doc.get("spec", {}).get("template") or {}).get("spec") or {}
    return [c["image"] for key in ("initContainers", "containers") for c in spec.get(key, [])]


def find(docs: list, kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def container(doc: dict, name: str, key: str = "containers") -> dict:
    return next(c for c in doc["spec"]["template"]["spec"][key] if c["name"] == name)


# --- rendering -----------------------------------------------------------------------------------------------------

def test_every_config_renders_in_one_run(render):
    for name in CONFIGS:
        assert re.search(rf"^{re.escape(name)}\s+: ok=\d+ .* failed=0 ", render["output"], re.M), render["output"][-3000:]
        assert render["configs"][name]["docs"], f"{name} rendered nothing"


@pytest.mark.parametrize("name, knob", [("calico-bad", "calico_encapsulation"), ("cilium-bad", "cilium_tunnel"),
                                        ("flannel-bad", "flannel_backend")])
def test_settings_a_plugin_cannot_deploy_fail_before_anything_is_written_naming_the_knob(render, name, knob):
    assert re.search(rf"fatal: \[{name}\]: FAILED!.*{knob}", render["output"]), render["output"][-3000:]
    assert not (render["work"] / name).exists()


def test_each_template_names_the_upstream_release_it_follows():
    expected = {"network_calico": "projectcalico/calico v" + CATALOG["versions"]["calico_version"].rsplit(".", 1)[0],
                "network_cilium": "cilium/cilium v" + CATALOG["versions"]["cilium_version"].rsplit(".", 1)[0],
                "network_flannel": "flannel-io/flannel v" + CATALOG["versions"]["flannel_version"]}
    for role, release in expected.items():
        templates = sorted((REPO / "roles" / role / "templates" / "manifests").glob("*.yaml.j2"))
        assert templates, role
        for template in templates:
            first = template.read_text().splitlines()[0]
            assert first.startswith(f"# Follows {release} "), f"{template}: {first}"


def test_no_template_names_an_image_of_its_own():
    for template in (REPO / "roles").glob("network_*/templates/manifests/*.j2"):
        for line in template.read_text().splitlines():
            if re.match(r"\s*image:", line):
                assert re.search(r"image: \{\{ network_\w+_images\[", line), f"{template}: {line.strip()}"


@pytest.mark.parametrize("name", CONFIGS)
def test_every_document_validates_strictly_for_its_line(render, name):
    line = CONFIGS[name]["kube_version"]
    for doc in render["configs"][name]["docs"]:
        kubernetes_validate.validate(doc, line, strict=True)


# --- images --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
def test_the_manifests_use_exactly_the_plugin_images_the_resolver_lists(render, name):
    listed = resolver_images(CONFIGS[name])
    used = {image for doc in render["configs"][name]["docs"] for image in pod_images(doc)}
    registry = cfg.expand_simple_templates(DEFAULTS)["registry_host"]
    assert all(image.startswith(f"{registry}/") for image in used), used
    assert used == set(listed.values()), f"in the manifests only: {used - set(listed.values())}; " \
                                         f"listed only: {set(listed.values()) - used}"
    assert all(CONFIGS[name]["kube_network_plugin"] in image_name for image_name in listed)


# --- where each plugin reads the inventory's network -------------------------------------------------------------

def config_of(render, name):
    return {**cfg.expand_simple_templates(DEFAULTS), **CONFIGS[name]}, render["configs"][name]["docs"]


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("calico-")])
def test_calico_reads_the_pod_network_mtu_and_encapsulation(render, name):
    config, docs = config_of(render, name)
    node = container(find(docs, "DaemonSet", "calico-node"), "calico-node")
    env = env_of(node)
    assert env["CALICO_IPV4POOL_CIDR"] == config["kube_pods_subnet"]
    assert env["CALICO_IPV4POOL_BLOCK_SIZE"] == str(config["kube_network_node_prefix"])
    mode = "CrossSubnet" if config["calico_cross_subnet"] else "Always"
    assert (env["CALICO_IPV4POOL_IPIP"], env["CALICO_IPV4POOL_VXLAN"]) == {
        "IPIP": (mode, "Never"), "VXLAN": ("Never", mode), "None": ("Never", "Never")}[config["calico_encapsulation"]]
    calico_config = find(docs, "ConfigMap", "calico-config")["data"]
    assert calico_config["veth_mtu"] == str(config["network_mtu"])
    for var in ("FELIX_IPINIPMTU", "FELIX_VXLANMTU", "FELIX_WIREGUARDMTU"):
        assert env[var] == {"configMapKeyRef": {"name": "calico-config", "key": "veth_mtu"}}
    bird = config["calico_encapsulation"] != "VXLAN"
    assert calico_config["calico_backend"] == ("bird" if bird else "vxlan")
    assert ("-bird-ready" in node["readinessProbe"]["exec"]["command"]) == bird
    json.loads(calico_config["cni_network_config"].replace("__CNI_MTU__", "1500"))


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("calico-")])
def test_calico_renders_typha_and_its_api_server_only_when_enabled(render, name):
    config, docs = config_of(render, name)
    names = {(d["kind"], d["metadata"]["name"]) for d in render["configs"][name]["docs"]}
    assert (("Deployment", "calico-typha") in names) == config["calico_typha_enabled"]
    assert (("APIService", "v3.projectcalico.org") in names) == config["calico_apiserver_enabled"]
    typha = env_of(container(find(docs, "DaemonSet", "calico-node"), "calico-node")).get("FELIX_TYPHAK8SSERVICENAME")
    assert bool(typha) == config["calico_typha_enabled"]
    if config["calico_apiserver_enabled"]:
        # The APIService trusts exactly the certificate in the API server's Secret.
        secret = find(docs, "Secret", "calico-apiserver-certs")
        assert find(docs, "APIService", "v3.projectcalico.org")["spec"]["caBundle"] == secret["data"]["tls.crt"]


def test_calico_has_the_crds_its_components_read(render):
    docs = render["configs"]["calico-default-136"]["docs"]
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    read = {r for role in ("calico-node", "calico-cni-plugin", "calico-kube-controllers")
            for rule in find(docs, "ClusterRole", role)["rules"] if "crd.projectcalico.org" in rule["apiGroups"]
            for r in rule["resources"] if "/" not in r}
    # globalfelixconfigs and globalbgpconfigs are pre-v3 names the upstream role still grants; no CRD has them.
    assert {f"{r}.crd.projectcalico.org" for r in read - {"globalfelixconfigs", "globalbgpconfigs"}} <= crds
    assert {"adminnetworkpolicies.policy.networking.k8s.io", "baselineadminnetworkpolicies.policy.networking.k8s.io"} <= crds


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("cilium-")])
def test_cilium_reads_the_pod_network_mtu_and_tunnel(render, name):
    config, docs = config_of(render, name)
    data = find(docs, "ConfigMap", "cilium-config")["data"]
    assert data["ipv4-native-routing-cidr"] == config["kube_pods_subnet"]
    assert data["mtu"] == str(config["network_mtu"])
    assert data["ipam"] == config["cilium_ipam_mode"]
    if config["cilium_ipam_mode"] == "cluster-pool":
        assert data["cluster-pool-ipv4-cidr"] == config["kube_pods_subnet"]
        assert data["cluster-pool-ipv4-mask-size"] == str(config["kube_network_node_prefix"])
    if config["cilium_tunnel"] == "disabled":
        assert (data["routing-mode"], data.get("tunnel-protocol")) == ("native", None)
    else:
        assert (data["routing-mode"], data["tunnel-protocol"]) == ("tunnel", config["cilium_tunnel"])
    # No CRD: the operator makes them, and may update exactly its own.
    assert not [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    agent_env = env_of(container(find(docs, "DaemonSet", "cilium"), "cilium-agent"))
    assert agent_env.get("KUBERNETES_SERVICE_HOST") == ("127.0.0.1" if config["loadbalancer_apiserver_localhost"]
                                                        else None)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("flannel-")])
def test_flannel_reads_the_pod_network_mtu_and_backend(render, name):
    config, docs = config_of(render, name)
    data = find(docs, "ConfigMap", "kube-flannel-cfg")["data"]
    net = json.loads(data["net-conf.json"])
    assert ipaddress.ip_network(net["Network"]) == ipaddress.ip_network(config["kube_pods_subnet"])
    assert net["SubnetLen"] == config["kube_network_node_prefix"]
    assert net["Backend"]["Type"] == config["flannel_backend"]
    delegate = json.loads(data["cni-conf.json"])["plugins"][0]["delegate"]
    assert delegate.get("mtu") == (config["network_mtu"] or None)
    assert not [d for d in docs if d["kind"] == "CustomResourceDefinition"]


def test_a_second_render_changes_nothing(render):
    # The same config rendered again into the same directory (layer 04's rerun) writes nothing: changed=0.
    assert re.search(rf"^{AGAIN}\s+: ok=\d+\s+changed=0 ", render["output"], re.M), render["output"][-3000:]


# --- switching the plugin of a running cluster ------------------------------------------------------------------

def daemonsets(*keys):
    return {"kind": "List", "items": [{"metadata": {"namespace": ns, "name": name}} for ns, name in keys]}


RECORD_FLANNEL = {"kind": "ConfigMap", "metadata": {"name": "airgap-network", "namespace": "kube-system"},
                  "data": {"plugin": "flannel"}}


def test_a_new_cluster_runs_no_plugin_and_any_plugin_may_deploy():
    in_use = netp.plugin_in_use({}, daemonsets(("kube-system", "kube-proxy")), False)
    assert in_use["plugins"] == []
    assert netp.switch_problem(in_use, "calico") == ""


def test_the_plugin_in_use_is_found_by_the_record_and_by_the_daemonsets():
    assert netp.plugin_in_use(RECORD_FLANNEL, daemonsets(), False)["plugins"] == ["flannel"]
    assert netp.plugin_in_use({}, daemonsets(("kube-system", "calico-node")), False)["plugins"] == ["calico"]
    assert netp.plugin_in_use({}, daemonsets(("kube-system", "cilium")), False)["plugins"] == ["cilium"]
    assert netp.plugin_in_use({}, daemonsets(("kube-flannel", "kube-flannel-ds")), False)["plugins"] == ["flannel"]
    assert netp.plugin_in_use({}, daemonsets(), True)["plugins"] == ["bridge"]


def test_the_same_plugin_again_is_no_switch():
    in_use = netp.plugin_in_use(RECORD_FLANNEL, daemonsets(("kube-flannel", "kube-flannel-ds")), False)
    assert netp.switch_problem(in_use, "flannel") == ""


def test_a_switch_is_refused_saying_why_and_what_to_do():
    in_use = netp.plugin_in_use(RECORD_FLANNEL, daemonsets(("kube-flannel", "kube-flannel-ds")), False)
    message = netp.switch_problem(in_use, "calico")
    assert message.startswith("kube_network_plugin is calico, but this cluster runs flannel (the ConfigMap "
                              "kube-system/airgap-network records flannel; the DaemonSet kube-flannel/kube-flannel-ds "
                              "exists).")
    for words in ("does not switch the network plugin of a live cluster", "flannel.1 and cni0",
                  "FLANNEL- iptables chains", "Set kube_network_plugin: flannel again", "remove-cluster",
                  "network_plugin_switch_force: true"):
        assert words in message


def test_a_switch_is_allowed_when_forced():
    in_use = netp.plugin_in_use({}, daemonsets(("kube-system", "cilium")), False)
    assert netp.switch_problem(in_use, "calico", force=True) == ""


def test_layer_04_checks_the_switch_before_the_deploy_play():
    plays = yaml.safe_load((REPO / "playbooks" / "04-network.yml").read_text())
    check, deploy = plays[0], plays[1]
    assert [t["name"] for t in check["tasks"]][-1] == "Refuse to switch the plugin of a running cluster"
    assert "network_switch_problem" in check["tasks"][-1]["vars"]["network_switch_problem"]
    assert {r["role"] for r in deploy["roles"]} >= {f"airgap.kubernetes.network_{p}" for p in OTHER_KNOBS}
