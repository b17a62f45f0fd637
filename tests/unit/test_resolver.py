"""Specification of the artifact resolver: catalog + config + arch + mode -> files, images and packages."""
from pathlib import Path

import pytest
import yaml

from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver as r
from ansible_collections.airgap.kubernetes.plugins.module_utils.resolver import CatalogError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures" / "resolver"
DEFAULTS = cfg.load_defaults(REPO)
CATALOG = DEFAULTS["airgap_catalog"]
LAB_OVERLAY = yaml.safe_load((FIXTURES / "lab-overlay-v1.20.2.yml").read_text())
WITH_LAB = r.apply_overlays(CATALOG, [LAB_OVERLAY])
ARCH_RULES = yaml.safe_load((FIXTURES / "arch-rules.yml").read_text())
MIRROR = {"files_repo": "https://bundle:8443/files", "registry_host": "bundle:5000"}
UPSTREAM_LINES = ["1.36", "1.35", "1.34"]
ARCHES = ["amd64", "arm64"]
# Every switch on, so no component is skipped for being disabled.
ALL_ON = {k: True for k in ("metrics_server_enabled", "local_path_provisioner_enabled", "gateway_api_enabled",
                            "helm_enabled", "calico_typha_enabled", "calico_apiserver_enabled")}


def config(**overrides):
    return {**DEFAULTS, **MIRROR, **overrides}


def names(catalog=CATALOG, arch="amd64", **overrides):
    return {a.name for a in r.resolve(catalog, config(**overrides), arch)}


def error(func, *args, **kwargs):
    with pytest.raises(CatalogError) as info:
        func(*args, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------- every line x arch

@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("line", UPSTREAM_LINES)
def test_every_catalog_entry_resolves_on_each_upstream_line_and_arch(line, arch):
    conf = config(kube_version=line, **ALL_ON)
    for name in CATALOG["components"]:
        art = r.resolve_one(CATALOG, conf, name, arch)
        assert art.name == name


@pytest.mark.parametrize("arch", ARCHES)
def test_every_catalog_entry_but_crictl_resolves_on_the_lab_line_with_the_lab_overlay(arch):
    conf = config(kube_version="v1.20.2", **ALL_ON)
    for name in CATALOG["components"]:
        if name != "crictl":
            assert r.resolve_one(WITH_LAB, conf, name, arch).name == name


def test_crictl_on_the_lab_line_fails_clearly_since_the_lab_cannot_obtain_it():
    message = error(r.resolve_one, WITH_LAB, config(kube_version="v1.20.2"), "crictl", "amd64")
    assert message.startswith("crictl_version v1.20.0 has no sha256 for crictl/amd64")


def test_lab_line_without_its_overlay_fails_on_the_first_kubernetes_binary():
    message = error(r.resolve, CATALOG, config(kube_version="v1.20.2"), "amd64")
    assert message.startswith("kube_version v1.20.2 has no sha256 for kubeadm/amd64 in the catalog")


def test_every_file_checksum_in_the_catalog_is_a_sha256():
    for name, comp in CATALOG["components"].items():
        for arch, table in (comp.get("sha256") or {}).items():
            for version, sha in table.items():
                assert r.normalize_sha256(sha, f"{name}/{arch}/{version}")


# ----------------------------------------------------------------------------- versions

def test_default_kube_version_is_1_36_4_with_pause_3_10_2_and_coredns_1_14_2():
    conf = config()
    assert r.resolve_one(CATALOG, conf, "kubelet", "amd64").version == "1.36.4"
    assert r.resolve_one(CATALOG, conf, "pause", "amd64").canonical == "registry.k8s.io/pause:3.10.2"
    assert r.resolve_one(CATALOG, conf, "coredns", "amd64").canonical == "registry.k8s.io/coredns/coredns:v1.14.2"


@pytest.mark.parametrize("line, etcd, pause, coredns", [
    ("1.36", "3.6.14", "3.10.2", "1.14.2"),
    ("1.35", "3.6.14", "3.10.1", "1.12.4"),
    ("1.34", "3.5.33", "3.10.1", "1.12.1"),
    ("1.20", "3.4.13", "3.2", "1.7.0"),
])
def test_each_line_brings_its_own_etcd_pause_and_coredns(line, etcd, pause, coredns):
    conf = config(kube_version=line)
    versions = {n: r.resolve_one(WITH_LAB, conf, n, "amd64").version for n in ("etcd", "pause", "coredns")}
    assert versions == {"etcd": etcd, "pause": pause, "coredns": coredns}


def test_kube_version_major_minor_means_the_line_default_patch_release():
    assert r.kube_line(CATALOG, {"kube_version": "v1.35"}) == ("1.35", "1.35.8")


def test_empty_kube_version_means_the_default_line():
    assert r.kube_line(CATALOG, {"kube_version": ""}) == ("1.36", "1.36.4")


@pytest.mark.parametrize("given, expected", [
    ("v1.36.4", ("1.36", "4")), ("V1.20.2", ("1.20", "2")), (" 1.35 ", ("1.35", None)), ("latest", None), ("v1", None),
])
def test_kube_release_reads_the_line_and_patch_for_catalog_and_kubeadm(given, expected):
    assert r.kube_release(r.bare_version(given)) == expected


def test_a_version_set_in_the_inventory_wins_over_the_line_default():
    assert r.resolve_one(CATALOG, config(etcd_version="3.6.10"), "etcd", "amd64").version == "3.6.10"


def test_a_line_independent_version_comes_from_catalog_versions():
    assert r.resolve_one(CATALOG, config(), "runc", "amd64").version == CATALOG["versions"]["runc_version"]


def test_versions_for_other_components_follow_kube_version():
    conf = config(kube_version="v1.35.2")
    assert {r.resolve_one(CATALOG, conf, n, "arm64").version for n in ("kubeadm", "kube-apiserver")} == {"1.35.2"}


# ----------------------------------------------------------------------------- mirror <-> upstream

def _all_artifacts(flatten=""):
    for line in UPSTREAM_LINES + ["1.20"]:
        for arch in ARCHES:
            conf = config(kube_version=line, registry_flatten_project=flatten, **ALL_ON)
            for name in CATALOG["components"]:
                if not (line == "1.20" and name == "crictl"):
                    yield r.resolve_one(WITH_LAB, conf, name, arch)


@pytest.mark.parametrize("flatten", ["", "airgap"])
def test_mirror_and_upstream_are_a_bijection_over_the_whole_catalog(flatten):
    mirror = r.Mirror(MIRROR["files_repo"], MIRROR["registry_host"], flatten)
    pairs = set()
    for art in _all_artifacts(flatten):
        if art.kind == "package":
            continue
        pinned = f"{art.canonical}@{art.digest}" if art.kind == "image" and art.digest else getattr(art, "canonical", "")
        upstream, mirrored = (art.canonical_url, art.mirror_url) if art.kind == "file" else (pinned, art.mirror)
        assert r.upstream_to_mirror(upstream, mirror) == mirrored
        assert r.mirror_to_upstream(mirrored, mirror) == upstream
        pairs.add((upstream, mirrored))
    assert len({u for u, _ in pairs}) == len({m for _, m in pairs}) == len(pairs)


def test_files_mirror_under_files_repo_keeping_the_upstream_host_and_path():
    art = r.resolve_one(CATALOG, config(), "runc", "amd64")
    assert art.mirror_url == ("https://bundle:8443/files/github.com/opencontainers/runc/releases/download/"
                              "v1.4.3/runc.amd64")
    assert art.mirror_path == "github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64"


def test_images_mirror_under_registry_host_with_the_upstream_registry_first():
    assert r.mirror_image("registry.k8s.io/pause:3.10.2", "bundle:5000") == "bundle:5000/registry.k8s.io/pause:3.10.2"


def test_flattened_images_live_in_one_project_with_host_and_path_joined():
    mirrored = r.mirror_image("registry.k8s.io/coredns/coredns:v1.14.2", "harbor.example.com", "airgap")
    assert mirrored == "harbor.example.com/airgap/registry.k8s.io__coredns__coredns:v1.14.2"


def test_docker_hub_short_names_are_made_explicit_before_mirroring():
    assert r.mirror_image("nginx:1.30.1-alpine", "bundle:5000") == "bundle:5000/docker.io/library/nginx:1.30.1-alpine"
    assert r.mirror_image("rancher/local-path-provisioner", "b") == "b/docker.io/rancher/local-path-provisioner"


def test_a_digest_survives_the_round_trip():
    ref = "quay.io/cilium/cilium:v1.20.1@sha256:" + "a" * 64
    assert r.upstream_image(r.mirror_image(ref, "bundle:5000"), "bundle:5000") == ref


def test_flattening_refuses_names_that_already_contain_the_separator():
    assert "cannot be flattened" in error(r.mirror_image, "quay.io/a__b/c:1", "h", "p")


def test_an_upstream_registry_with_a_port_has_no_mirror_name():
    assert "with a port" in error(r.mirror_image, "upstream:5000/a/b:1", "h")


@pytest.mark.parametrize("ref, flatten, problem", [
    ("other:5000/quay.io/a:1", "", "is not under registry_host"),
    ("bundle:5000/quay.io/a:1", "airgap", "is not a flattened name"),
    ("bundle:5000/airgap/quayio:1", "airgap", "is not a flattened name"),
    ("bundle:5000/nohost/a:1", "", "does not start with an upstream registry host"),
])
def test_a_reference_outside_the_mirror_layout_has_no_upstream(ref, flatten, problem):
    assert problem in error(r.upstream_image, ref, "bundle:5000", flatten)


def test_upstream_image_maps_localhost_back():
    assert r.upstream_image("b/localhost/x:1", "b") == "localhost/x:1"


@pytest.mark.parametrize("url, problem", [
    ("https://other/files/github.com/x", "is not under files_repo"),
    ("https://bundle:8443/files/github.com", "has no <upstream-host>/<path>"),
])
def test_a_url_outside_the_files_repo_has_no_upstream(url, problem):
    assert problem in error(r.upstream_url, url, MIRROR["files_repo"])


def test_plain_http_upstream_urls_are_refused_since_the_mirror_cannot_record_the_scheme():
    assert "must be https" in error(r.mirror_url, "http://example.com/a", "https://b")


def test_a_url_with_a_query_is_refused():
    assert "without query" in error(r.mirror_url, "https://example.com/a?b=c", "https://b")


@pytest.mark.parametrize("func, arg, problem", [
    (r.mirror_url, "https://example.com/a", "files_repo is empty"),
    (r.mirror_image, "quay.io/a/b:1", "registry_host is empty"),
])
def test_mirroring_needs_its_endpoint(func, arg, problem):
    assert problem in error(func, arg, "")


@pytest.mark.parametrize("ref", ["quay.io/Bad/Name:1", "quay.io/a:tag with space", ""])
def test_malformed_image_references_are_refused(ref):
    assert "is not an image reference" in error(r.parse_image, ref)


# ----------------------------------------------------------------------------- upstream bases

def test_a_file_upstream_base_moves_the_download_but_not_the_mirror_path():
    bases = {"github.com": "https://artifactory.example.com/github/"}
    art = r.resolve_one(CATALOG, config(upstream_bases=bases), "runc", "amd64", mode="upstream")
    assert art.url == art.upstream_url == "https://artifactory.example.com/github/opencontainers/runc/releases/download/v1.4.3/runc.amd64"
    assert art.canonical_url.startswith("https://github.com/")
    assert art.mirror_path.startswith("github.com/opencontainers/")


def test_an_image_upstream_base_moves_the_pull_but_not_the_mirror_name():
    bases = {"registry.k8s.io": "nexus.example.com:8082/k8s"}
    art = r.resolve_one(CATALOG, config(upstream_bases=bases), "pause", "amd64", mode="upstream")
    assert art.ref == art.upstream == "nexus.example.com:8082/k8s/pause:3.10.2"
    assert art.mirror == "bundle:5000/registry.k8s.io/pause:3.10.2"


def test_a_file_upstream_base_needs_a_url():
    assert "needs a URL" in error(r.override_url, "https://github.com/a", {"github.com": "proxy/github"})


def test_an_image_upstream_base_takes_no_scheme():
    assert "without a scheme" in error(r.override_image, "quay.io/a:1", {"quay.io": "https://proxy"})


def test_upstream_bases_must_be_a_mapping():
    assert "upstream_bases must be a mapping" in error(r.resolve, CATALOG, config(upstream_bases=["x"]), "amd64")


@pytest.mark.parametrize("mode, field", [("offline", "mirror_url"), ("upstream", "upstream_url")])
def test_the_mode_picks_which_location_a_file_is_fetched_from(mode, field):
    art = r.resolve_one(CATALOG, config(), "kubelet", "amd64", mode=mode)
    assert art.url == getattr(art, field)


@pytest.mark.parametrize("mode, field", [("offline", "mirror"), ("upstream", "upstream")])
def test_the_mode_picks_which_reference_an_image_is_pulled_from(mode, field):
    art = r.resolve_one(CATALOG, config(), "pause", "amd64", mode=mode)
    assert art.ref == getattr(art, field)


def test_upstream_mode_works_without_bundle_endpoints():
    art = r.resolve_one(CATALOG, {**DEFAULTS, "files_repo": "", "registry_host": ""}, "pause", "amd64", "upstream")
    assert (art.ref, art.mirror) == ("registry.k8s.io/pause:3.10.2", "")


@pytest.mark.parametrize("key", ["files_repo", "registry_host"])
def test_offline_mode_needs_the_bundle_endpoints(key):
    assert f"{key} is empty" in error(r.resolve, CATALOG, config(**{key: ""}), "amd64")


def test_an_endpoint_left_as_a_template_is_reported():
    assert "still a template" in error(r.resolve, CATALOG, config(files_repo="{{ groups['x'] }}"), "amd64")


# ----------------------------------------------------------------------------- enabling and disabling

CNI_ARTIFACTS = {
    "calico": {"calicoctl", "cni-plugins", "calico-node", "calico-cni", "calico-kube-controllers"},
    "cilium": {"cilium-cli", "cni-plugins", "cilium", "cilium-operator"},
    "flannel": {"cni-plugins", "flannel", "flannel-cni-plugin"},
    "bridge": {"containernetworking-plugins"},
}


@pytest.mark.parametrize("cni", sorted(CNI_ARTIFACTS))
def test_choosing_a_cni_adds_exactly_its_artifacts(cni):
    common = set.intersection(*(names(kube_network_plugin=c) for c in CNI_ARTIFACTS))
    assert names(kube_network_plugin=cni) - common == CNI_ARTIFACTS[cni]


@pytest.mark.parametrize("knob, artifacts", [
    ("metrics_server_enabled", {"metrics-server"}),
    ("local_path_provisioner_enabled", {"local-path-provisioner"}),
    ("gateway_api_enabled", {"gateway-api-crds"}),
    ("helm_enabled", {"helm"}),
    ("calico_typha_enabled", {"calico-typha"}),
    ("calico_apiserver_enabled", {"calico-apiserver"}),
])
def test_enabling_an_addon_adds_exactly_its_artifacts(knob, artifacts):
    assert names(**{knob: True}) - names(**{knob: False}) == artifacts
    assert names(**{knob: False}) <= names(**{knob: True})


@pytest.mark.parametrize("knob, artifacts", [
    ("dns_enabled", {"coredns", "nodelocaldns"}),
    ("nodelocaldns_enabled", {"nodelocaldns"}),
    ("crictl_enabled", {"crictl"}),
    ("nerdctl_enabled", {"nerdctl"}),
    ("loadbalancer_apiserver_localhost", {"apiserver-lb-haproxy"}),
])
def test_disabling_a_default_removes_exactly_its_artifacts(knob, artifacts):
    assert names() - names(**{knob: "false"}) == artifacts


@pytest.mark.parametrize("knob, first, second, swapped", [
    ("etcd_deployment_type", "host", "kubeadm", ({"etcd"}, {"etcd-image"})),
])
def test_a_choice_swaps_one_artifact_for_another(knob, first, second, swapped):
    a, b = names(**{knob: first}), names(**{knob: second})
    assert (a - b, b - a) == swapped


def test_a_disabled_artifact_still_resolves_by_name_and_says_it_is_disabled():
    assert r.resolve_one(CATALOG, config(kube_network_plugin="flannel"), "calico-node", "amd64").enabled is False


@pytest.mark.parametrize("kind", r.KINDS)
def test_kind_narrows_the_list(kind):
    assert {a.kind for a in r.resolve(CATALOG, config(), "amd64", kind=kind)} == {kind}


@pytest.mark.parametrize("value, expected", [("yes", True), ("False", False), ("", False), (None, False), (1, True)])
def test_switches_read_strings_as_ansible_bool_does(value, expected):
    assert r.truthy(value) is expected


# ----------------------------------------------------------------------------- arch naming rules

def _rules(name, arch):
    return r.resolve_one(ARCH_RULES, {}, name, arch, mode="upstream")


@pytest.mark.parametrize("arch", ARCHES)
def test_arch_in_the_file_name(arch):
    assert _rules("arch-in-file-name", arch).canonical_url == f"https://example.com/tool/v1.0.0/tool.{arch}"


@pytest.mark.parametrize("arch, machine", [("amd64", "x86_64"), ("arm64", "aarch64")])
def test_arch_mapped_to_the_upstream_name_in_url_and_unpack_members(arch, machine):
    art = _rules("arch-mapped-name", arch)
    assert art.canonical_url.endswith(f"tool-linux-{machine}.tar.gz")
    assert art.unpack["members"] == [f"tool-{machine}/tool"]


@pytest.mark.parametrize("arch", ARCHES)
def test_multi_arch_image_names_no_arch(arch):
    art = _rules("multi-arch-image", arch)
    assert (art.canonical, art.multiarch) == ("registry.example.com/tool:v1.0.0", True)


@pytest.mark.parametrize("arch", ARCHES)
def test_arch_in_the_image_name(arch):
    art = _rules("arch-in-image-name", arch)
    assert (art.canonical, art.multiarch) == (f"registry.example.com/tool-{arch}:v1.0.0", False)


@pytest.mark.parametrize("arch", ARCHES)
def test_arch_in_the_tag(arch):
    assert _rules("arch-in-tag", arch).canonical == f"registry.example.com/tool:v1.0.0-{arch}"


@pytest.mark.parametrize("arch, ref", [("amd64", "registry.example.com/tool:v1.0.0"),
                                       ("arm64", "registry.example.com/tool-arm64:v1.0.0")])
def test_arch_suffix_on_arm64_only(arch, ref):
    assert _rules("suffix-on-arm64-only", arch).canonical == ref


def test_a_sha256_prefix_in_the_catalog_is_dropped():
    assert _rules("arch-in-file-name", "arm64").sha256 == "2" * 64


def test_a_pinned_digest_is_reported_with_the_image():
    assert _rules("pinned-image", "amd64").digest == "sha256:" + "6" * 64


def test_an_artifact_built_for_some_arches_only_says_which():
    assert error(_rules, "amd64-only", "arm64") == "amd64-only is not built for arm64: the catalog has it for amd64 only"


def test_ansible_machine_names_are_accepted_as_arches():
    assert r.resolve_one(CATALOG, config(), "runc", "aarch64").canonical_url.endswith("runc.arm64")


# ----------------------------------------------------------------------------- errors

def test_unknown_arch_lists_the_valid_ones():
    assert error(r.resolve, CATALOG, config(), "s390x") == "arch 's390x' is not supported: pick one of amd64, arm64"


def test_unknown_cni_lists_the_valid_ones():
    message = error(r.resolve, CATALOG, config(kube_network_plugin="weave"), "amd64")
    assert message == "kube_network_plugin 'weave' is not supported: pick one of calico, cilium, flannel, bridge"


def test_a_misspelled_choice_gets_a_suggestion():
    assert error(r.resolve, CATALOG, config(kube_network_plugin="cilum"), "amd64").endswith("(did you mean cilium?)")


def test_missing_sha256_names_component_version_arch_and_the_versions_of_that_line():
    message = error(r.resolve, CATALOG, config(kube_version="v1.36.9"), "arm64")
    assert message == ("kube_version v1.36.9 has no sha256 for kubeadm/arm64 in the catalog: "
                       "add it (catalog_overlay_files), or pick one of v1.36.0..v1.36.4")


def test_missing_sha256_lists_every_version_when_none_share_the_line():
    message = error(r.resolve_one, CATALOG, config(cni_version="2.0.0"), "cni-plugins", "amd64")
    assert message.endswith("pick one of v1.6.0, v1.6.2, v1.7.1, v1.8.0, v1.9.1")


def test_missing_sha256_for_an_arch_with_none_says_so():
    catalog = r.apply_overlays(ARCH_RULES, [{"components": {"amd64-only": {"arches": None}}}])
    message = error(r.resolve_one, catalog, {}, "amd64-only", "arm64", "upstream")
    assert message.endswith("the catalog has none for arm64")


def test_an_unsupported_kubernetes_line_lists_the_supported_ones():
    message = error(r.resolve, CATALOG, config(kube_version="v1.37.0"), "amd64")
    assert message.startswith("kube_version v1.37.0 is on line 1.37, which the catalog does not support: "
                              "pick one of 1.20, 1.34, 1.35, 1.36")


@pytest.mark.parametrize("value", ["latest", "v1", "1.36.x"])
def test_a_kube_version_that_is_not_a_release_is_refused(value):
    assert "is not a Kubernetes release" in error(r.kube_line, CATALOG, {"kube_version": value})


def test_a_version_yaml_read_as_a_number_asks_for_quotes():
    assert "quote it" in error(r.resolve_one, CATALOG, config(pause_version=3.1), "pause", "amd64")


def test_a_version_that_is_not_a_version_is_refused():
    assert "is not a version" in error(r.resolve_one, CATALOG, config(calico_version="latest"), "calico-node", "amd64")


def test_a_version_knob_without_any_default_asks_to_set_it():
    catalog = r.apply_overlays(CATALOG, [{"versions": {"runc_version": ""}}])
    assert error(r.resolve_one, catalog, config(), "runc", "amd64") == \
        "runc_version (for runc) has no default on line 1.36: set runc_version in the inventory"


def test_unknown_artifact_names_the_closest_one():
    assert "unknown artifact 'etc' (did you mean etcd?)" in error(r.resolve_one, CATALOG, config(), "etc", "amd64")


@pytest.mark.parametrize("kwargs, problem", [
    ({"mode": "online"}, "mode 'online' is not supported: pick one of offline, upstream"),
    ({"os_family": "suse"}, "OS family 'suse' is not supported: pick one of debian, redhat"),
    ({"kind": "chart"}, "kind 'chart' is not supported: pick one of file, image, package"),
])
def test_unsupported_arguments_list_the_valid_ones(kwargs, problem):
    assert error(r.resolve, CATALOG, config(), "amd64", **kwargs) == problem


def test_a_package_without_a_name_for_the_os_family_says_which_families_it_has():
    catalog = r.apply_overlays(CATALOG, [{"components": {"site-tool": {"kind": "package", "packages": {"debian": "tool"}}}}])
    assert error(r.resolve_one, catalog, config(), "site-tool", "amd64", os_family="redhat") == \
        "site-tool has no package name for OS family redhat: the catalog has debian"


def test_packages_resolve_to_the_os_familys_name():
    art = r.resolve_one(CATALOG, config(), "nfs-client", "amd64", os_family="redhat")
    assert (art.package, art.packages) == ("nfs-utils", {"debian": "nfs-common", "redhat": "nfs-utils"})


def test_a_template_with_an_unknown_placeholder_is_a_catalog_error():
    catalog = r.apply_overlays(CATALOG, [{"components": {"runc": {"url": "https://x.io/{release}/runc"}}}])
    assert "unknown placeholder" in error(r.resolve_one, catalog, config(), "runc", "amd64")


def test_a_component_of_unknown_kind_is_a_catalog_error():
    catalog = r.apply_overlays(CATALOG, [{"components": {"runc": {"kind": "chart"}}}])
    assert "has kind 'chart'" in error(r.resolve_one, catalog, config(), "runc", "amd64")


# ----------------------------------------------------------------------------- overlays

def test_an_overlay_adds_versions_and_keeps_the_existing_ones():
    assert "1.20.2" in WITH_LAB["components"]["kubelet"]["sha256"]["amd64"]
    assert "1.36.4" in WITH_LAB["components"]["kubelet"]["sha256"]["amd64"]


def test_an_overlay_replaces_an_upstream_location():
    catalog = r.apply_overlays(CATALOG, [{"components": {"runc": {"url": "https://builds.example.com/runc-{version}.{arch}"}}}])
    assert r.resolve_one(catalog, config(), "runc", "amd64").canonical_url == "https://builds.example.com/runc-1.4.3.amd64"


def test_an_overlay_may_add_a_new_component():
    extra = {"components": {"site-tool": {"kind": "package", "packages": {"debian": "tool", "redhat": "tool"},
                                          "groups": ["k8s_cluster"]}}}
    assert "site-tool" in names(catalog=r.apply_overlays(CATALOG, [extra]))


def test_an_overlay_wrapped_in_airgap_catalog_is_unwrapped():
    catalog = r.apply_overlays(CATALOG, [{"airgap_catalog": LAB_OVERLAY}])
    assert "1.20.2" in catalog["components"]["kubeadm"]["sha256"]["arm64"]


def test_applying_an_overlay_leaves_the_base_catalog_untouched():
    assert "1.20.2" not in CATALOG["components"]["kubelet"]["sha256"]["amd64"]


@pytest.mark.parametrize("overlay, problem", [
    (["kubelet"], "must be a mapping shaped like airgap_catalog, not list"),
    ({"componets": {}}, "unknown key 'componets' (did you mean components?)"),
    ({"components": ["kubelet"]}, "components must be a mapping"),
    ({"components": {"kubelet": "1.20.2"}}, "components.kubelet must be a mapping"),
    ({"components": {"kubelett": {"url": "x"}}}, "new component 'kubelett' needs kind: file | image | package (did you mean kubelet?)"),
    ({"components": {"kubelet": {"sha256": {"x86": {}}}}}, "components.kubelet.sha256 has arch 'x86'"),
    ({"components": {"kubelet": {"sha256": {"amd64": {1.2: "a" * 64}}}}}, "has version 1.2 as a number"),
    ({"components": {"kubelet": {"sha256": {"amd64": {"1.20.2": "abc"}}}}}, "is not a sha256"),
])
def test_a_bad_overlay_names_its_source_and_problem(overlay, problem):
    message = error(r.apply_overlays, CATALOG, [("site.yml", overlay)])
    assert message.startswith("catalog overlay site.yml: ") and problem in message


def test_an_unnamed_overlay_is_named_by_its_position():
    assert error(r.apply_overlays, CATALOG, [{}, []]).startswith("catalog overlay #2:")


# ----------------------------------------------------------------------------- helpers

def test_version_lists_collapse_runs_of_patch_releases():
    assert r.compress_versions(["1.36.1", "1.36.0", "1.36.3", "1.35.0", "2.0"]) == "v1.35.0, v1.36.0..v1.36.1, v1.36.3, v2.0"


def test_config_keys_name_every_knob_the_catalog_reads():
    keys = r.config_keys(CATALOG)
    assert {"kube_version", "etcd_version", "kube_network_plugin", "metrics_server_enabled", "files_repo"} <= keys


def test_resolved_artifacts_turn_into_plain_dicts():
    data = r.resolve_one(CATALOG, config(), "etcd", "amd64").to_dict()
    assert data["groups"] == ["etcd"] and data["unpack"]["members"][0] == "etcd-v3.6.14-linux-amd64/etcd"


# ----------------------------------------------------------------------------- registry mirrors

def mirrors(catalog=CATALOG, mode=None, extra=(), **overrides):
    return {m.upstream: m for m in r.registry_mirrors(catalog, config(**overrides), mode, extra)}


def test_offline_every_catalog_registry_is_served_by_the_bundle_registry_under_its_own_name():
    found = mirrors()
    assert set(found) == {"docker.io", "quay.io", "registry.k8s.io"}
    for upstream, entry in found.items():
        assert (entry.mirror, entry.prefix, entry.repository) == ("https://bundle:5000", upstream, f"bundle:5000/{upstream}")


def test_registries_of_disabled_images_are_mirrored_too():
    # flannel and local-path-provisioner, the catalog's Docker Hub images, are off by default.
    assert "docker.io" in mirrors(kube_network_plugin="calico", local_path_provisioner_enabled=False)


@pytest.mark.parametrize("mode", ["offline", "upstream"])
def test_a_registry_mirror_names_every_image_as_mirror_image_and_override_image_do(mode):
    bases = {"registry.k8s.io": "nexus.example.com:8082/k8s/", "docker.io": "hub-proxy.example.com"}
    found = mirrors(WITH_LAB, mode, upstream_bases=bases)
    for art in _all_artifacts():
        if art.kind == "image":
            host, path, tag, _ = r.parse_image(art.canonical)
            # The pulled reference adds the pin (if any) to the name the registry mirror gives.
            expected = (art.mirror if mode == "offline" else r.override_image(art.canonical, bases)).partition("@")[0]
            assert f"{found[host].repository}/{path}:{tag}" == expected


def test_upstream_mode_mirrors_follow_upstream_bases_and_leave_other_registries_to_themselves():
    found = mirrors(mode="upstream", upstream_bases={"registry.k8s.io": "nexus.example.com:8082/k8s/"})
    k8s, quay = found["registry.k8s.io"], found["quay.io"]
    assert (k8s.mirror, k8s.prefix, k8s.repository) == ("https://nexus.example.com:8082", "k8s", "nexus.example.com:8082/k8s")
    assert (quay.mirror, quay.prefix, quay.repository) == ("", "", "quay.io")


def test_a_registry_host_with_a_path_puts_the_path_before_the_upstream_registry():
    entry = mirrors(registry_host="harbor.example.com/airgap/")["quay.io"]
    assert (entry.mirror, entry.prefix) == ("https://harbor.example.com", "airgap/quay.io")


def test_offline_the_server_containerd_falls_back_to_is_the_bundle_registry_not_the_upstream():
    assert {m.server for m in mirrors().values()} == {f"https://bundle:5000/v2/{u}" for u in mirrors()}


def test_unmirrored_docker_hub_is_reached_at_its_api_host_and_others_at_their_own_name():
    found = mirrors(mode="upstream")
    assert (found["docker.io"].server, found["quay.io"].server) == ("https://registry-1.docker.io", "https://quay.io")


def test_extra_registries_and_image_references_add_their_registries_once():
    found = r.registry_mirrors(CATALOG, config(), extra=["ghcr.io", "ghcr.io/app/web:1", " quay.io ", "library/nginx:1"])
    assert [m.upstream for m in found] == ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"]


def test_registries_of_an_overlays_images_are_mirrored():
    overlay = {"components": {"app": {"kind": "image", "image": "ghcr.io/site/app-{arch}", "tag": "{version}",
                                      "version": "1.0", "arches": ["arm64"]}}}
    assert "ghcr.io" in mirrors(r.apply_overlays(CATALOG, [overlay]))


def test_the_mirror_mode_defaults_to_the_configs_airgap_mode():
    assert mirrors(airgap_mode="upstream")["quay.io"].mirror == ""
    assert mirrors()["quay.io"].mirror == "https://bundle:5000"


def test_a_flattened_bundle_registry_cannot_be_a_mirror_but_upstream_mode_ignores_it():
    message = error(r.registry_mirrors, CATALOG, config(registry_flatten_project="airgap"))
    assert message.startswith("registry_flatten_project 'airgap' joins image names") and "leave it empty" in message
    assert mirrors(mode="upstream", registry_flatten_project="airgap")["quay.io"].repository == "quay.io"


@pytest.mark.parametrize("extra, overrides, mode, problem", [
    (["https://ghcr.io"], {}, None, "upstream registry 'https://ghcr.io' is not a registry host: use host[:port]"),
    (["Bad_Host"], {}, None, "is not a registry host"),
    (["localhost:5000"], {}, None, "an upstream registry with a port has no mirror name"),
    ([], {"registry_host": ""}, None, "registry_host is empty"),
    ([], {"registry_host": "{{ groups['bundle_server'][0] }}:5000"}, None, "still a template"),
    ([], {}, "proxy", "mode 'proxy' is not supported: pick one of offline, upstream"),
    ([], {"upstream_bases": {"quay.io": "https://proxy/quay"}}, "upstream", "without a scheme"),
])
def test_a_registry_that_cannot_be_mirrored_is_named_with_the_fix(extra, overrides, mode, problem):
    assert problem in error(r.registry_mirrors, CATALOG, config(**overrides), mode, extra)


@pytest.mark.parametrize("repository, mode, expected", [
    ("registry.k8s.io", None, "bundle:5000/registry.k8s.io"),
    ("registry.k8s.io/coredns/", None, "bundle:5000/registry.k8s.io/coredns"),
    ("registry.k8s.io", "upstream", "registry.k8s.io"),
])
def test_mirror_repository_is_where_kubeadm_pulls_an_upstream_registrys_images(repository, mode, expected):
    assert r.mirror_repository(repository, config(), mode) == expected


def test_mirror_repository_follows_an_upstream_base():
    conf = config(airgap_mode="upstream", upstream_bases={"registry.k8s.io": "nexus.example.com:8082/k8s"})
    assert r.mirror_repository("registry.k8s.io", conf) == "nexus.example.com:8082/k8s"


def test_registry_mirrors_turn_into_plain_dicts():
    assert r.registry_mirror("quay.io", r.Mirror(registry_host="b:5000")).to_dict() == {
        "upstream": "quay.io", "server": "https://b:5000/v2/quay.io", "mirror": "https://b:5000", "prefix": "quay.io",
        "repository": "b:5000/quay.io"}


# ----------------------------------------------------------------------------- unpack members

def etcd_members(etcd_version):
    return r.resolve_one(WITH_LAB, config(etcd_version=etcd_version), "etcd", "amd64").unpack["members"]


def test_a_member_with_since_is_extracted_from_that_release_on():
    assert [m.rsplit("/", 1)[1] for m in etcd_members("3.5.33")] == ["etcd", "etcdctl", "etcdutl"]
    assert etcd_members("3.6.14")[2] == "etcd-v3.6.14-linux-amd64/etcdutl"


def test_a_member_with_since_is_left_out_of_older_releases():
    assert etcd_members("3.4.13") == ["etcd-v3.4.13-linux-amd64/etcd", "etcd-v3.4.13-linux-amd64/etcdctl"]


@pytest.mark.parametrize("member, problem", [
    ({"path": "x"}, "entry {'path': 'x'}: use a path, or {path: ..., since: X.Y}"),
    ({"path": "x", "since": "1.0", "until": "2.0"}, "use a path, or {path: ..., since: X.Y}"),
    ({"path": "x", "since": 3.5}, "since 3.5 is a number, not a version: quote it"),
])
def test_a_malformed_unpack_member_is_named_with_the_fix(member, problem):
    overlay = {"components": {"etcd": {"unpack": {"members": [member]}}}}
    message = error(r.resolve_one, r.apply_overlays(CATALOG, [overlay]), config(), "etcd", "amd64")
    assert message.startswith("etcd.unpack.members") and problem in message


# ----------------------------------------------------------------------------- every problem at once (layer 00)

def test_catalog_problems_is_empty_for_the_default_config_on_every_arch():
    assert r.catalog_problems(CATALOG, config(), ARCHES) == []


def test_catalog_problems_names_an_unknown_choice_once():
    assert r.catalog_problems(CATALOG, config(kube_network_plugin="weave"), ARCHES) == [
        "kube_network_plugin 'weave' is not supported: pick one of calico, cilium, flannel, bridge"]


def test_catalog_problems_lists_every_artifact_without_a_checksum():
    problems = r.catalog_problems(WITH_LAB, config(kube_version="v1.20.9"), ["amd64"])
    assert {p.split(" for ")[1].split(" ")[0] for p in problems} >= {"kubeadm/amd64", "kubelet/amd64", "kubectl/amd64"}
    assert all(" has no sha256 for " in p for p in problems), problems


def test_catalog_problems_names_an_unknown_arch_and_still_checks_the_others():
    problems = r.catalog_problems(CATALOG, config(), ["amd64", "mips"])
    assert len(problems) == 1 and "mips" in problems[0]


# ----------------------------------------------------------------------------- image digests

def _image_catalog(**component):
    """ARCH_RULES with one more image component, for digest rules."""
    comp = {"kind": "image", "version_var": "tool_version", "image": "registry.example.com/tool", "tag": "v{version}",
            **component}
    return {**ARCH_RULES, "components": {**ARCH_RULES["components"], "probe": comp}}


def test_a_pinned_image_is_pulled_by_tag_and_digest_and_stored_under_its_tag():
    art = r.resolve_one(CATALOG, config(kube_version="1.35"), "pause", "amd64")
    pin = "sha256:278fb9dbcca9518083ad1e11276933a2e96f23de604a3a08cc3c80002767d24c"
    assert art.digest == pin
    assert art.ref == art.mirror == f"bundle:5000/registry.k8s.io/pause:3.10.1@{pin}"
    assert art.canonical == "registry.k8s.io/pause:3.10.1"  # its name in the bundle's registry and manifest
    upstream = r.resolve_one(CATALOG, config(kube_version="1.35"), "pause", "amd64", mode="upstream")
    assert upstream.ref == upstream.upstream == f"registry.k8s.io/pause:3.10.1@{pin}"


def test_an_image_version_without_a_digest_is_pinned_by_tag_only():
    art = r.resolve_one(CATALOG, config(), "calico-node", "amd64")
    assert art.digest is None and "@" not in art.ref


def test_the_lab_line_images_stay_unpinned_since_the_lab_builds_its_own():
    for name in ("kube-apiserver", "kube-proxy", "pause"):
        assert r.resolve_one(WITH_LAB, config(kube_version="v1.20.2"), name, "amd64").digest is None


def test_every_digest_in_the_catalog_is_a_sha256_of_a_version_the_image_can_have():
    for name, comp in CATALOG["components"].items():
        for version, digest in (comp.get("digests") or {}).items():
            assert isinstance(version, str) and r.normalize_sha256(digest, name)
            var = comp["version_var"]
            art = r.resolve_one(CATALOG, config(**{var: version}), name, "amd64")
            assert art.digest == "sha256:" + r.normalize_sha256(digest, name) and art.ref.endswith(art.digest)


def test_an_image_naming_the_arch_has_a_digest_per_arch():
    catalog = _image_catalog(image="registry.example.com/tool-{arch}",
                             digests={"amd64": {"1.0.0": "a" * 64}, "arm64": {"1.0.0": "sha256:" + "b" * 64}})
    assert r.resolve_one(catalog, {}, "probe", "amd64", mode="upstream").digest == "sha256:" + "a" * 64
    arm = r.resolve_one(catalog, {}, "probe", "arm64", mode="upstream")
    assert arm.ref == "registry.example.com/tool-arm64:v1.0.0@sha256:" + "b" * 64


def test_an_image_naming_the_arch_refuses_one_digest_for_all_arches():
    catalog = _image_catalog(tag="v{version}-{arch}", digests={"1.0.0": "a" * 64})
    assert "probe names the arch in its reference, so each arch has its own digest: write digests: " \
           "{amd64: {\"1.0.0\": sha256:...}}" in error(r.resolve_one, catalog, {}, "probe", "amd64", mode="upstream")


def test_a_multi_arch_image_refuses_digests_per_arch():
    catalog = _image_catalog(digests={"amd64": {"1.0.0": "a" * 64}})
    assert error(r.resolve_one, catalog, {}, "probe", "amd64", mode="upstream") == (
        "probe.digests.amd64: probe is one multi-arch image, so each version has one index digest: "
        "write digests: {\"1.0.0\": sha256:...}")


@pytest.mark.parametrize("digests, message", [
    ({"1.0.0": "sha256:123"}, "probe.digests.1.0.0: 'sha256:123' is not a sha256"),
    (["sha256:" + "a" * 64], "probe.digests must map versions to sha256:<hex> digests, not list"),
])
def test_a_malformed_digest_is_named(digests, message):
    assert message in error(r.resolve_one, _image_catalog(digests=digests), {}, "probe", "amd64", mode="upstream")


@pytest.mark.parametrize("digests, message", [
    ({3.1: "a" * 64}, "components.pause.digests has version 3.1 as a number: quote it, e.g. \"3.1\""),
    ({"amd64": {"3.10": "nope"}}, "components.pause.digests.3.10: 'nope' is not a sha256"),
])
def test_an_overlay_with_a_bad_digest_is_refused_before_resolving(digests, message):
    assert message in error(r.apply_overlays, CATALOG, [("site.yml", {"components": {"pause": {"digests": digests}}})])


def test_an_overlay_can_pin_another_version():
    pinned = r.apply_overlays(CATALOG, [{"components": {"calico-node": {"digests": {"3.31.7": "c" * 64}}}}])
    assert r.resolve_one(pinned, config(), "calico-node", "amd64").digest == "sha256:" + "c" * 64


def test_unpinned_images_names_each_image_pinned_by_tag_only_and_how_to_pin_it():
    images = r.resolve(CATALOG, config(kube_version="1.35"), "amd64", kind="image")
    lines = r.unpinned_images(images)
    assert not any("registry.k8s.io/pause:" in line for line in lines)
    assert ("quay.io/calico/node:v3.31.7 (calico-node) is pinned by tag only: the bundle holds whatever the tag names "
            "when it is built; pin it with airgap_catalog.components.calico-node.digests (catalog_overlay_files) "
            "to the digest its publisher states") in lines
    assert len(lines) == sum(1 for image in images if image.digest is None)


def test_unpinned_images_is_empty_when_every_image_is_pinned():
    assert r.unpinned_images([r.resolve_one(ARCH_RULES, {}, "pinned-image", "amd64", mode="upstream")]) == []
