"""Specification of the lookup and filter plugins: documented for ansible-doc, and thin shells over the resolver."""
import json
import os
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path

import pytest
import yaml
from ansible import constants as C
from ansible.errors import AnsibleFilterError, AnsibleLookupError
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

from ansible_collections.airgap.kubernetes.plugins.filter.mirror import FilterModule
from ansible_collections.airgap.kubernetes.plugins.filter.registry import FilterModule as RegistryFilters
from ansible_collections.airgap.kubernetes.plugins.lookup import artifact
from ansible_collections.airgap.kubernetes.plugins.lookup.artifact import LookupModule
from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import hosts_toml  # noqa: E402
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"
FILTERS = FilterModule().filters()
REGISTRY_FILTERS = RegistryFilters().filters()


def ansible(tool, *args):
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    exe = VENV_BIN / tool if (VENV_BIN / tool).exists() else tool
    return subprocess.run([str(exe), *args], cwd=REPO, env=env, capture_output=True, text=True, check=False)


def lookup_plugin() -> LookupModule:
    loader = DataLoader()
    plugin = LookupModule(loader=loader, templar=Templar(loader=loader))
    # What the plugin loader does on load, so set_options knows the documented options.
    plugin._load_name = "airgap.kubernetes.artifact"
    C.config.initialize_plugin_configuration_definitions("lookup", plugin._load_name,
                                                         yaml.safe_load(artifact.DOCUMENTATION)["options"])
    return plugin


def lookup(terms=(), variables=None, **kwargs):
    return lookup_plugin().run(list(terms), variables={"ansible_architecture": "x86_64", **(variables or {})},
                               **kwargs)


def test_ansible_doc_shows_the_artifact_lookup():
    proc = ansible("ansible-doc", "-t", "lookup", "airgap.kubernetes.artifact")
    assert proc.returncode == 0, proc.stderr
    assert "Resolves catalog entries" in proc.stdout and "EXAMPLES" in proc.stdout and "RETURN" in proc.stdout


def test_ansible_doc_lists_the_four_mirror_filters():
    proc = ansible("ansible-doc", "-t", "filter", "-l", "airgap.kubernetes")
    names = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("airgap.")}
    assert {f"airgap.kubernetes.{n}" for n in ("mirror_image", "upstream_image", "mirror_url", "upstream_url")} <= names


def test_ansible_doc_shows_a_filters_options_examples_and_return():
    proc = ansible("ansible-doc", "-t", "filter", "--json", "airgap.kubernetes.mirror_image")
    doc = json.loads(proc.stdout)["airgap.kubernetes.mirror_image"]
    assert set(doc["doc"]["options"]) == {"_input", "registry_host", "flatten_project"}
    assert doc["examples"] and doc["return"]["_value"]["type"] == "str"


def test_the_lookup_runs_in_a_real_ansible_task():
    proc = ansible("ansible", "localhost", "-i", "localhost,", "-c", "local", "-m", "ansible.builtin.debug",
                   "-a", "msg={{ lookup('airgap.kubernetes.artifact', 'pause', arch='arm64').ref }}"
                         "|{{ 'quay.io/a/b:1' | airgap.kubernetes.mirror_image(registry_host) }}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"msg": "bootstrap:5000/registry.k8s.io/pause:3.10.2|bootstrap:5000/quay.io/a/b:1"' in proc.stdout


def test_the_lookup_resolves_a_term_for_the_hosts_arch():
    [etcd] = lookup(["etcd"], mode="upstream")
    assert etcd["url"].endswith("etcd-v3.6.14-linux-amd64.tar.gz") and etcd["sha256"]


def test_the_lookup_reads_the_hosts_vars():
    [etcd] = lookup(["etcd"], {"etcd_version": "3.6.10", "bundle_server_host": "bundle"})
    assert etcd["url"] == "https://bundle:8443/files/github.com/etcd-io/etcd/releases/download/v3.6.10/etcd-v3.6.10-linux-amd64.tar.gz"


def test_the_lookup_without_terms_lists_enabled_artifacts_of_a_kind_and_group():
    names = {a["name"] for a in lookup(kind="image", group="kube_control_plane")}
    assert names == {"kube-apiserver", "kube-controller-manager", "kube-scheduler"}


def test_the_lookup_names_packages_for_the_hosts_os_family():
    [nfs] = lookup(["nfs-client"], {"ansible_os_family": "RedHat"})
    assert nfs["package"] == "nfs-utils"


def test_the_lookup_applies_overlays_relative_to_the_inventory():
    inventory = Path(__file__).parent / "fixtures" / "resolver" / "inventory"
    variables = {"kube_version": "v1.20.2", "inventory_dir": str(inventory),
                 "catalog_overlay_files": ["overlays/lab-overlay-v1.20.2.yml"]}
    assert lookup(["kubelet"], variables)[0]["version"] == "1.20.2"


def test_a_catalog_error_fails_the_lookup_with_its_message():
    with pytest.raises(AnsibleLookupError, match="kube_network_plugin 'weave' is not supported"):
        lookup(["etcd"], {"kube_network_plugin": "weave"})


def test_the_lookup_asks_for_facts_when_the_arch_is_unknown():
    with pytest.raises(AnsibleLookupError, match="gather facts first, or pass arch=amd64"):
        lookup(["etcd"], {"ansible_architecture": ""})


def test_filters_map_an_image_to_the_mirror_and_back():
    mirrored = FILTERS["mirror_image"]("registry.k8s.io/pause:3.10.2", "bundle:5000", "airgap")
    assert FILTERS["upstream_image"](mirrored, "bundle:5000", "airgap") == "registry.k8s.io/pause:3.10.2"


def test_filters_map_a_url_to_the_mirror_and_back():
    mirrored = FILTERS["mirror_url"]("https://get.helm.sh/helm-v3.18.4-linux-amd64.tar.gz", "https://b/files")
    assert FILTERS["upstream_url"](mirrored, "https://b/files") == "https://get.helm.sh/helm-v3.18.4-linux-amd64.tar.gz"


def test_a_filter_reports_input_outside_the_layout_as_a_filter_error():
    with pytest.raises(AnsibleFilterError, match="is not under files_repo"):
        FILTERS["upstream_url"]("https://elsewhere/x", "https://b/files")


def test_the_lookup_refuses_an_unknown_option():
    with pytest.raises(AnsibleLookupError, match="has no option 'flavour': use kind, group, arch, mode, os_family"):
        lookup(["etcd"], flavour="x")


def test_the_lookup_checks_an_options_choices_against_its_documentation():
    with pytest.raises(AnsibleLookupError, match="Invalid value 'binary' for config 'kind'") as info:
        lookup(kind="binary")
    assert str(info.value).endswith("Valid values are: file, image, package")


def test_the_lookup_mode_defaults_to_the_hosts_airgap_mode():
    [etcd] = lookup(["etcd"], {"airgap_mode": "upstream"})
    assert etcd["url"].startswith("https://github.com/etcd-io/etcd/releases/download/")


def test_the_lookup_narrows_to_the_artifacts_any_of_several_groups_need():
    names = {a["name"] for a in lookup(kind="package", group=["etcd", "bundle_server"])}
    assert {"chrony", "python3", "bundle-nginx", "bundle-registry"} <= names and "conntrack" not in names


def test_the_lookup_gives_a_host_in_no_group_no_artifacts():
    assert lookup(kind="package", group=[]) == []


def test_bootstrap_os_installs_the_catalog_packages_of_the_hosts_own_groups(tmp_path):
    (tmp_path / "hosts.yml").write_text("all:\n  children:\n    etcd:\n      hosts:\n        localhost:\n"
                                        "          ansible_connection: local\n          ansible_architecture: x86_64\n")
    (tmp_path / "play.yml").write_text(f"""\
- name: Show the packages
  hosts: etcd
  gather_facts: false
  vars_files: [{REPO}/roles/bootstrap_os/defaults/main.yml]
  roles: [airgap.kubernetes.cluster_defaults]
  tasks:
    - name: Show the packages
      ansible.builtin.debug:
        msg: "{{{{ bootstrap_os_catalog_packages | join(' ') }}}}"
""")
    proc = ansible("ansible-playbook", "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml"))
    assert '"msg": "chrony python3 python3-apt python3-cryptography"' in proc.stdout, proc.stdout + proc.stderr


REGISTRY_CONFIG = {"registry_host": "bundle:5000", "registry_flatten_project": "", "upstream_bases": {},
                   "airgap_mode": "offline"}


def test_ansible_doc_shows_the_registry_filters_options_and_return():
    for name, options in (("registry_mirrors", {"_input", "config", "extra", "mode"}),
                          ("mirror_repository", {"_input", "config", "mode"})):
        proc = ansible("ansible-doc", "-t", "filter", "--json", f"airgap.kubernetes.{name}")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)[f"airgap.kubernetes.{name}"]
        assert set(doc["doc"]["options"]) == options and doc["examples"] and doc["return"]["_value"]


def test_the_registry_mirrors_filter_gives_plain_dicts_per_upstream_registry():
    catalog = {"components": {"a": {"kind": "image", "image": "quay.io/a"}}}
    assert REGISTRY_FILTERS["registry_mirrors"](catalog, REGISTRY_CONFIG, extra=["ghcr.io"]) == [
        {"upstream": "ghcr.io", "server": "https://bundle:5000/v2/ghcr.io", "mirror": "https://bundle:5000",
         "prefix": "ghcr.io", "repository": "bundle:5000/ghcr.io"},
        {"upstream": "quay.io", "server": "https://bundle:5000/v2/quay.io", "mirror": "https://bundle:5000",
         "prefix": "quay.io", "repository": "bundle:5000/quay.io"}]


def _hosts_toml_endpoints(catalog, config):
    """Every URL containerd may pull from, per upstream registry, in hosts.toml as the role renders it."""
    found = {}
    for upstream, text in hosts_toml.render(catalog, config).items():
        parsed = tomllib.loads(text)
        found[upstream] = [parsed["server"], *parsed.get("host", {})]
    return found


def test_offline_hosts_toml_names_no_upstream_host_so_containerd_never_falls_back_to_the_internet():
    # containerd tries `server` when every host fails (an image missing from the bundle): it must be the mirror.
    found = _hosts_toml_endpoints(cfg.load_defaults(REPO)["airgap_catalog"], REGISTRY_CONFIG)
    assert set(found) == {"docker.io", "quay.io", "registry.k8s.io"}
    for upstream, urls in found.items():
        assert [urllib.parse.urlsplit(url).netloc for url in urls] == ["bundle:5000"], (upstream, urls)
        assert urls[0] == f"https://bundle:5000/v2/{upstream}"


def test_upstream_mode_hosts_toml_serves_a_registry_from_its_base_else_from_itself():
    config = {**REGISTRY_CONFIG, "airgap_mode": "upstream", "upstream_bases": {"quay.io": "proxy.example.com/quay"}}
    found = _hosts_toml_endpoints({"components": {"a": {"kind": "image", "image": "quay.io/a"},
                                                  "b": {"kind": "image", "image": "docker.io/library/b"}}}, config)
    assert found == {"quay.io": ["https://proxy.example.com/v2/quay"], "docker.io": ["https://registry-1.docker.io"]}


def test_the_registry_filters_report_a_catalog_error_as_a_filter_error():
    flattened = {**REGISTRY_CONFIG, "registry_flatten_project": "airgap"}
    with pytest.raises(AnsibleFilterError, match="registry_flatten_project 'airgap'"):
        REGISTRY_FILTERS["registry_mirrors"]({}, flattened, extra=["quay.io"])
    with pytest.raises(AnsibleFilterError, match="registry_flatten_project 'airgap'"):
        REGISTRY_FILTERS["mirror_repository"]("registry.k8s.io", flattened)


def test_the_registry_filters_run_in_a_real_ansible_task_with_the_collections_defaults():
    proc = ansible("ansible", "localhost", "-i", "localhost,", "-c", "local", "-m", "ansible.builtin.debug",
                   "-a", "msg={{ airgap_catalog | airgap.kubernetes.registry_mirrors(registry_mirror_config)"
                         " | map(attribute='repository') | join(',') }}"
                         "|{{ 'registry.k8s.io' | airgap.kubernetes.mirror_repository(registry_mirror_config) }}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ('"msg": "bootstrap:5000/docker.io,bootstrap:5000/quay.io,bootstrap:5000/registry.k8s.io'
            '|bootstrap:5000/registry.k8s.io"') in proc.stdout


def test_packages_resolve_without_facts_since_their_names_do_not_depend_on_the_arch():
    plugin = lookup_plugin()
    packages = plugin.run([], variables={}, kind="package", group=["bundle_server"])
    assert {p["package"] for p in packages} >= {"nginx", "docker-registry", "chrony"}
    with pytest.raises(Exception, match="arch is unknown"):
        plugin.run(["kubeadm"], variables={})
