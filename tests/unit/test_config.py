"""Specification of the config loader: an inventory's vars with Ansible's precedence, extra vars and catalog overlays."""
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg
from ansible_collections.airgap.kubernetes.plugins.module_utils.resolver import CatalogError

REPO = Path(__file__).resolve().parents[2]
LAB_INVENTORY = Path(__file__).parent / "fixtures" / "resolver" / "inventory"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def inventory(tmp_path: Path, layers: list) -> Path:
    """An inventory where each of `layers` sets `knob` to the layer's name."""
    children = "\n  children:\n    k8s_cluster:\n      vars: {knob: inventory_k8s_cluster}" \
        if "inventory_k8s_cluster" in layers else ""
    all_vars = "\n  vars: {knob: inventory_all}" if "inventory_all" in layers else ""
    if "group_vars_all" in layers:
        write(tmp_path / "group_vars" / "all.yml", "knob: group_vars_all\n")
    if "group_vars_k8s_cluster" in layers:
        write(tmp_path / "group_vars" / "k8s_cluster" / "main.yml", "knob: group_vars_k8s_cluster\n")
    return write(tmp_path / "hosts.yml", f"all:{all_vars}{children}\n")


@pytest.mark.parametrize("layers, winner", [
    (["inventory_all"], "inventory_all"),
    (["inventory_all", "group_vars_all"], "group_vars_all"),
    (["group_vars_all", "inventory_k8s_cluster"], "inventory_k8s_cluster"),
    (["inventory_k8s_cluster", "group_vars_k8s_cluster"], "group_vars_k8s_cluster"),
], ids=["inventory all:vars over repo defaults", "group_vars/all over all:vars",
        "k8s_cluster vars in the inventory file over group_vars/all",
        "group_vars/k8s_cluster over k8s_cluster vars in the inventory file"])
def test_layers_override_each_other_as_in_ansible(tmp_path, layers, winner):
    assert cfg.load_config(REPO, inventory(tmp_path, layers))["knob"] == winner


def test_extra_vars_override_every_layer(tmp_path):
    layers = ["inventory_all", "group_vars_all", "inventory_k8s_cluster", "group_vars_k8s_cluster"]
    assert cfg.load_config(REPO, inventory(tmp_path, layers), {"knob": "extra"})["knob"] == "extra"


def test_inventory_vars_override_repo_defaults(tmp_path):
    write(tmp_path / "group_vars" / "all.yml", "kube_network_plugin: cilium\n")
    assert cfg.load_config(REPO, inventory(tmp_path, []))["kube_network_plugin"] == "cilium"


def test_files_of_a_group_vars_directory_merge_in_name_order(tmp_path):
    write(tmp_path / "group_vars" / "all" / "10-first.yml", "knob: first\nonly_first: 1\n")
    write(tmp_path / "group_vars" / "all" / "20-second.yaml", "knob: second\n")
    config = cfg.load_config(REPO, write(tmp_path / "hosts.yml", "all: {}\n"))
    assert (config["knob"], config["only_first"]) == ("second", 1)


def test_an_inventory_directory_reads_every_yaml_inventory_in_it(tmp_path):
    write(tmp_path / "hosts.yml", "all:\n  vars: {knob: from_directory}\n")
    assert cfg.load_config(REPO, tmp_path)["knob"] == "from_directory"


def test_a_child_group_nested_deeper_still_counts_as_k8s_cluster(tmp_path):
    inv = write(tmp_path / "hosts.yml", "all:\n  children:\n    site:\n      children:\n"
                "        k8s_cluster:\n          vars: {knob: nested}\n")
    assert cfg.load_config(REPO, inv)["knob"] == "nested"


def test_vault_values_do_not_stop_the_loader(tmp_path):
    write(tmp_path / "group_vars" / "all.yml", "secret: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\nknob: read\n")
    config = cfg.load_config(REPO, write(tmp_path / "hosts.yml", "all: {}\n"))
    assert (config["secret"], config["knob"]) == ("<vault>", "read")


def test_plain_variable_references_are_filled_in(tmp_path):
    write(tmp_path / "group_vars" / "all.yml", "bundle_server_host: lab-bundle\n")
    config = cfg.load_config(REPO, write(tmp_path / "hosts.yml", "all: {}\n"))
    assert (config["files_repo"], config["registry_host"]) == ("https://lab-bundle:8443/files", "lab-bundle:5000")


def test_richer_templates_are_left_as_written():
    config = cfg.expand_simple_templates({"a": "{{ groups['x'][0] }}", "b": "{{ missing }}", "c": "{{ flag }}",
                                          "flag": True})
    assert config == {"a": "{{ groups['x'][0] }}", "b": "{{ missing }}", "c": "{{ flag }}", "flag": True}


def test_a_missing_inventory_is_reported():
    assert "does not exist: pass -i PATH" in str(pytest.raises(CatalogError, cfg.load_config, REPO, "/nonexistent").value)


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    bad = write(tmp_path / "group_vars" / "all.yml", "a: 1\nb: [unclosed\n")
    with pytest.raises(CatalogError, match=rf"vars file {bad} is not valid YAML at line 3"):
        cfg.load_config(REPO, write(tmp_path / "hosts.yml", "all: {}\n"))


def test_a_vars_file_that_is_not_a_mapping_is_reported(tmp_path):
    write(tmp_path / "group_vars" / "all.yml", "- a\n")
    with pytest.raises(CatalogError, match="must hold a mapping of variables, not list"):
        cfg.load_config(REPO, write(tmp_path / "hosts.yml", "all: {}\n"))


def test_an_empty_vars_file_is_no_vars(tmp_path):
    write(tmp_path / "group_vars" / "all.yml", "---\n")
    assert cfg.load_config(REPO, write(tmp_path / "hosts.yml", "")) == cfg.load_config(REPO, None)


# ----------------------------------------------------------------------------- extra vars

@pytest.mark.parametrize("items, expected", [
    (["a=1 b='two words'"], {"a": "1", "b": "two words"}),
    (['{"a": true}'], {"a": True}),
    (["{a: [1, 2]}"], {"a": [1, 2]}),
    (["a=1", "a=2"], {"a": "2"}),
])
def test_extra_vars_take_ansible_playbooks_forms(items, expected):
    assert cfg.parse_extra_vars(items) == expected


def test_extra_vars_from_a_file_are_relative_to_the_base(tmp_path):
    write(tmp_path / "vars.yml", "kube_version: v1.35.0\n")
    assert cfg.parse_extra_vars(["@vars.yml"], tmp_path) == {"kube_version": "v1.35.0"}


@pytest.mark.parametrize("item, problem", [
    ("novalue", "is not KEY=VALUE"), ("[1]", "must be a mapping"), ("{a: [}", "neither JSON nor YAML")])
def test_malformed_extra_vars_are_reported(item, problem):
    with pytest.raises(CatalogError, match=problem):
        cfg.parse_extra_vars([item])


# ----------------------------------------------------------------------------- overlays

def test_overlay_files_are_read_relative_to_the_inventory_directory():
    config = cfg.load_config(REPO, LAB_INVENTORY / "hosts.yml")
    [(source, overlay)] = cfg.load_overlays(config, cfg.inventory_dir(LAB_INVENTORY / "hosts.yml"))
    assert source.endswith("overlays/lab-overlay-v1.20.2.yml") and "kubelet" in overlay["components"]


def test_an_absolute_overlay_path_is_used_as_is(tmp_path):
    path = write(tmp_path / "o.yml", "versions: {runc_version: '1.4.2'}\n")
    assert cfg.load_overlays({"catalog_overlay_files": str(path)}, "/elsewhere") == [(str(path), {"versions": {"runc_version": "1.4.2"}})]


def test_inline_overlays_follow_the_files():
    overlays = cfg.load_overlays({"catalog_overlay": [{"a": 1}, {"b": 2}]})
    assert overlays == [("catalog_overlay[0]", {"a": 1}), ("catalog_overlay[1]", {"b": 2})]


def test_a_single_inline_overlay_is_named_after_the_variable():
    assert cfg.load_overlays({"catalog_overlay": {"a": 1}}) == [("catalog_overlay", {"a": 1})]


def test_a_missing_overlay_file_is_reported(tmp_path):
    with pytest.raises(CatalogError, match=r"catalog overlay file .*missing.yml does not exist"):
        cfg.load_overlays({"catalog_overlay_files": ["missing.yml"]}, tmp_path)


def test_overlay_files_must_be_a_list():
    with pytest.raises(CatalogError, match="catalog_overlay_files must be a list of paths, not dict"):
        cfg.load_overlays({"catalog_overlay_files": {"a": 1}})


def test_an_overlay_file_that_is_not_yaml_is_reported(tmp_path):
    write(tmp_path / "bad.yml", "components: [unclosed\n")
    with pytest.raises(CatalogError, match="catalog overlay file .*bad.yml is not valid YAML"):
        cfg.load_overlays({"catalog_overlay_files": ["bad.yml"]}, tmp_path)


def test_cached_defaults_are_the_collections_defaults():
    assert cfg.cached_defaults(REPO) == cfg.load_defaults(REPO)


def test_cached_defaults_are_read_from_disk_once_while_the_files_are_unchanged(tmp_path, monkeypatch):
    write(tmp_path / "group_vars" / "all" / "main.yml", "knob: one\n")
    first = cfg.cached_defaults(tmp_path)
    monkeypatch.setattr(cfg, "load_defaults", lambda root: pytest.fail("read again although nothing changed"))
    assert cfg.cached_defaults(tmp_path) is first


def test_cached_defaults_are_read_again_when_a_file_changes_or_is_added(tmp_path):
    write(tmp_path / "group_vars" / "all" / "main.yml", "knob: one\n")
    assert cfg.cached_defaults(tmp_path)["knob"] == "one"
    write(tmp_path / "group_vars" / "all" / "main.yml", "knob: three\n")
    assert cfg.cached_defaults(tmp_path)["knob"] == "three"
    write(tmp_path / "group_vars" / "all" / "zz.yml", "knob: last\n")
    assert cfg.cached_defaults(tmp_path)["knob"] == "last"


def test_kube_version_has_one_default_the_catalogs_default_line():
    defaults = cfg.load_defaults(REPO)
    assert defaults["kube_version"] == ""
    catalog = defaults["airgap_catalog"]
    assert catalog["lines"][catalog["default_line"]]["kube_version"]
