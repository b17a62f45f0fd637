"""kubeadm, kubelet and kube-proxy configuration for every supported Kubernetes line (plugins/module_utils/kubeadm_config.py).

The lab runs the v1.20 line for real (tests/e2e). No 1.34+ kubeadm can be built on these machines, so the v1beta4
documents are checked here against the field names of the upstream Go types, recorded below from
kubernetes/kubernetes cmd/kubeadm/app/apis/kubeadm/v1beta4/types.go (v1.31 onwards, unchanged through 1.36),
cmd/kubeadm/app/apis/kubeadm/v1beta2/types.go (v1.20), staging/src/k8s.io/kubelet/config/v1beta1/types.go and
staging/src/k8s.io/kube-proxy/config/v1alpha1/types.go. They are NOT run by a 1.34+ kubeadm here.
"""
from __future__ import annotations

import pytest
import yaml

from ansible_collections.airgap.kubernetes.plugins.module_utils import kubeadm_config as kc

NOT_RUN = ("kubeadm v1beta4 (Kubernetes 1.34-1.36) documents are checked against the upstream type definitions "
           "only: no 1.34+ kubeadm can run on this machine")

# JSON field names per type (only the types the renderer emits).
V1BETA4 = {
    "InitConfiguration": {"apiVersion", "kind", "bootstrapTokens", "dryRun", "nodeRegistration", "localAPIEndpoint",
                          "certificateKey", "skipPhases", "patches", "timeouts"},
    "ClusterConfiguration": {"apiVersion", "kind", "etcd", "networking", "kubernetesVersion", "controlPlaneEndpoint",
                             "apiServer", "controllerManager", "scheduler", "dns", "proxy", "certificatesDir",
                             "imageRepository", "featureGates", "clusterName", "encryptionAlgorithm",
                             "certificateValidityPeriod", "caCertificateValidityPeriod"},
    "JoinConfiguration": {"apiVersion", "kind", "dryRun", "nodeRegistration", "caCertPath", "discovery",
                          "controlPlane", "skipPhases", "patches", "timeouts"},
    "nodeRegistration": {"name", "criSocket", "taints", "kubeletExtraArgs", "ignorePreflightErrors",
                         "imagePullPolicy", "imagePullSerial"},
    "apiServer": {"extraArgs", "extraVolumes", "extraEnvs", "certSANs"},
    "component": {"extraArgs", "extraVolumes", "extraEnvs"},
    "extraVolume": {"name", "hostPath", "mountPath", "readOnly", "pathType"},
    "arg": {"name", "value"},
    "etcd.external": {"endpoints", "caFile", "certFile", "keyFile"},
    "discovery": {"bootstrapToken", "file", "tlsBootstrapToken", "timeout"},
    "bootstrapToken": {"token", "apiServerEndpoint", "caCertHashes", "unsafeSkipCAVerification"},
    "controlPlane": {"localAPIEndpoint", "certificateKey"},
    "dns": {"imageRepository", "imageTag", "disabled"},
}
V1BETA2 = {
    "InitConfiguration": {"apiVersion", "kind", "bootstrapTokens", "nodeRegistration", "localAPIEndpoint",
                          "certificateKey"},
    "ClusterConfiguration": {"apiVersion", "kind", "etcd", "networking", "kubernetesVersion", "controlPlaneEndpoint",
                             "apiServer", "controllerManager", "scheduler", "dns", "certificatesDir",
                             "imageRepository", "useHyperKubeImage", "featureGates", "clusterName"},
    "JoinConfiguration": {"apiVersion", "kind", "nodeRegistration", "caCertPath", "discovery", "controlPlane"},
    "nodeRegistration": {"name", "criSocket", "taints", "kubeletExtraArgs", "ignorePreflightErrors"},
    "apiServer": {"extraArgs", "extraVolumes", "certSANs", "timeoutForControlPlane"},
    "component": {"extraArgs", "extraVolumes"},
    "extraVolume": {"name", "hostPath", "mountPath", "readOnly", "pathType"},
    "etcd.external": {"endpoints", "caFile", "certFile", "keyFile"},
    "discovery": {"bootstrapToken", "file", "tlsBootstrapToken", "timeout"},
    "bootstrapToken": {"token", "apiServerEndpoint", "caCertHashes", "unsafeSkipCAVerification"},
    "controlPlane": {"localAPIEndpoint", "certificateKey"},
    "dns": {"type", "imageRepository", "imageTag"},
}
KUBELET_FIELDS = {"apiVersion", "kind", "cgroupDriver", "authentication", "authorization", "readOnlyPort",
                  "clusterDomain", "clusterDNS", "failSwapOn", "rotateCertificates", "staticPodPath", "evictionHard",
                  "imageGCHighThresholdPercent", "imageGCLowThresholdPercent", "maxPods", "containerRuntimeEndpoint"}
KUBE_PROXY_FIELDS = {"apiVersion", "kind", "mode", "clusterCIDR", "metricsBindAddress", "conntrack"}

UPSTREAM_LINES = ("1.34", "1.35", "1.36")
LINES = ("1.20",) + UPSTREAM_LINES
VERSION_OF = {"1.20": "v1.20.2", "1.34": "v1.34.11", "1.35": "v1.35.8", "1.36": "v1.36.4"}


def settings(line: str = "1.20", **overrides) -> dict:
    base = {
        "kube_version": VERSION_OF[line], "node_name": "node1", "node_ip": "172.30.1.11",
        "advertise_address": "172.30.1.11", "apiserver_port": 6443, "control_plane_endpoint": "localhost:6444",
        "discovery_endpoint": "localhost:6444", "image_repository": "registry.k8s.io",
        "dns_image": "registry.k8s.io/coredns/coredns:v1.14.2", "pod_subnet": "10.233.64.0/18",
        "service_subnet": "10.233.0.0/18", "dns_domain": "cluster.local", "node_cidr_mask_size": 24,
        "cri_socket": "unix:///run/containerd/containerd.sock", "profiling": False,
        "admission_plugins": ["NodeRestriction", "AlwaysPullImages"],
        "encryption_config": "/etc/kubernetes/encryption/config-0123456789ab.yaml",
        "audit": {"policy_file": "/etc/kubernetes/audit/policy-0123.yaml",
                  "log_file": "/var/log/kubernetes/audit/audit.log", "maxage": 30, "maxbackup": 10, "maxsize": 100},
        "etcd": {"external": True, "endpoints": ["https://172.30.1.11:2379"], "ca_file": "/etc/e/ca.crt",
                 "cert_file": "/etc/e/c.crt", "key_file": "/etc/e/c.key"},
        "apiserver_cert_sans": ["localhost", "127.0.0.1", "172.30.1.11"],
        "kubelet": {"fail_swap_on": False, "eviction_hard": {"memory.available": "1Mi"}},
        "kube_proxy": {"mode": "iptables", "conntrack_max_per_core": 0},
        "skip_phases": ["preflight", "addon/coredns"], "node_taints": [], "control_plane_tainted": True,
        "control_plane": True, "token": "abcdef.0123456789abcdef", "ca_cert_hashes": ["sha256:" + "0" * 64],
        "certificate_key": "f" * 64,
    }
    base.update(overrides)
    return base


def docs(text: str) -> dict:
    return {d["kind"]: d for d in yaml.safe_load_all(text)}


def unknown_fields(doc: dict, types: dict) -> list:
    """Every field the rendered document uses that the upstream type does not define, as dotted paths."""
    bad = [k for k in doc if k not in types[doc["kind"]]]
    reg = doc.get("nodeRegistration", {})
    bad += [f"nodeRegistration.{k}" for k in reg if k not in types["nodeRegistration"]]
    if isinstance(reg.get("kubeletExtraArgs"), list):
        bad += [f"kubeletExtraArgs.{k}" for a in reg["kubeletExtraArgs"] for k in a if k not in types["arg"]]
    for name in ("apiServer", "controllerManager", "scheduler"):
        part = doc.get(name, {})
        allowed = types["apiServer" if name == "apiServer" else "component"]
        bad += [f"{name}.{k}" for k in part if k not in allowed]
        bad += [f"{name}.extraVolumes.{k}" for v in part.get("extraVolumes", []) for k in v
                if k not in types["extraVolume"]]
        if isinstance(part.get("extraArgs"), list):
            bad += [f"{name}.extraArgs.{k}" for a in part["extraArgs"] for k in a if k not in types["arg"]]
    bad += [f"etcd.external.{k}" for k in doc.get("etcd", {}).get("external", {}) if k not in types["etcd.external"]]
    bad += [f"dns.{k}" for k in doc.get("dns", {}) if k not in types["dns"]]
    discovery = doc.get("discovery", {})
    bad += [f"discovery.{k}" for k in discovery if k not in types["discovery"]]
    bad += [f"discovery.bootstrapToken.{k}" for k in discovery.get("bootstrapToken", {})
            if k not in types["bootstrapToken"]]
    bad += [f"controlPlane.{k}" for k in doc.get("controlPlane", {}) if k not in types["controlPlane"]]
    return bad


@pytest.mark.parametrize("line, api", [("1.20", "kubeadm.k8s.io/v1beta2")] + [(m, "kubeadm.k8s.io/v1beta4")
                                                                               for m in UPSTREAM_LINES])
def test_each_supported_line_renders_its_kubeadm_api(line, api):
    rendered = docs(kc.init_config_file(settings(line)))
    assert {d["apiVersion"] for k, d in rendered.items() if k.endswith("Configuration") and "kubeadm" in
            d["apiVersion"]} == {api}
    assert set(rendered) == {"InitConfiguration", "ClusterConfiguration", "KubeletConfiguration",
                             "KubeProxyConfiguration"}


@pytest.mark.parametrize("line", UPSTREAM_LINES)
def test_v1beta4_documents_use_only_upstream_field_names(line):
    print(NOT_RUN)
    init = docs(kc.init_config_file(settings(line)))
    join = docs(kc.join_config_file(settings(line)))
    for doc in (init["InitConfiguration"], init["ClusterConfiguration"], join["JoinConfiguration"]):
        assert unknown_fields(doc, V1BETA4) == []


def test_v1beta2_documents_use_only_upstream_field_names():
    init = docs(kc.init_config_file(settings("1.20")))
    join = docs(kc.join_config_file(settings("1.20")))
    for doc in (init["InitConfiguration"], init["ClusterConfiguration"], join["JoinConfiguration"]):
        assert unknown_fields(doc, V1BETA2) == []


@pytest.mark.parametrize("line", LINES)
def test_kubelet_and_kube_proxy_documents_use_only_upstream_field_names(line):
    rendered = docs(kc.init_config_file(settings(line, kubelet={"image_gc_high_threshold_percent": 100,
                                                                 "image_gc_low_threshold_percent": 99,
                                                                 "max_pods": 50})))
    assert set(rendered["KubeletConfiguration"]) <= KUBELET_FIELDS
    assert set(rendered["KubeProxyConfiguration"]) <= KUBE_PROXY_FIELDS


def test_v1beta2_takes_maps_and_v1beta4_lists_of_name_value_pairs():
    old = docs(kc.init_config_file(settings("1.20")))["ClusterConfiguration"]["apiServer"]["extraArgs"]
    new = docs(kc.init_config_file(settings("1.36")))["ClusterConfiguration"]["apiServer"]["extraArgs"]
    assert old["enable-admission-plugins"] == "NodeRestriction,AlwaysPullImages"
    assert {"name": "enable-admission-plugins", "value": "NodeRestriction,AlwaysPullImages"} in new


@pytest.mark.parametrize("line", LINES)
def test_security_defaults_are_on_for_every_line(line):
    rendered = docs(kc.init_config_file(settings(line)))
    cluster = rendered["ClusterConfiguration"]

    def args(component):
        raw = cluster[component]["extraArgs"]
        return {a["name"]: a["value"] for a in raw} if isinstance(raw, list) else raw

    apiserver = args("apiServer")
    assert apiserver["profiling"] == "false" and args("controllerManager")["profiling"] == "false"
    assert args("scheduler")["profiling"] == "false"
    assert apiserver["encryption-provider-config"].startswith("/etc/kubernetes/encryption/")
    assert apiserver["audit-policy-file"] and apiserver["audit-log-maxbackup"] == "10"
    kubelet = rendered["KubeletConfiguration"]
    assert kubelet["authentication"]["anonymous"]["enabled"] is False
    assert kubelet["authentication"]["webhook"]["enabled"] is True
    assert kubelet["authorization"]["mode"] == "Webhook" and kubelet["readOnlyPort"] == 0
    mounts = {v["mountPath"] for v in cluster["apiServer"]["extraVolumes"]}
    assert {"/etc/kubernetes/encryption", "/etc/kubernetes/audit", "/var/log/kubernetes/audit"} <= mounts


def test_extra_apiserver_args_override_the_defaults():
    cluster = kc.cluster_configuration(settings("1.20", apiserver_extra_args={"profiling": True, "v": 2}))
    assert cluster["apiServer"]["extraArgs"]["profiling"] == "true" and cluster["apiServer"]["extraArgs"]["v"] == "2"


def test_v1_20_takes_skipped_phases_as_a_flag_and_v1beta4_in_the_file():
    assert kc.command_flags(settings("1.20"), "init")[1:] == ["--skip-phases=preflight,addon/coredns"]
    assert "skipPhases" not in kc.init_configuration(settings("1.20"))
    assert kc.command_flags(settings("1.36"), "init")[1:] == []
    assert kc.init_configuration(settings("1.36"))["skipPhases"] == ["preflight", "addon/coredns"]


@pytest.mark.parametrize("line", LINES)
def test_kubeadm_init_makes_a_join_token_of_the_configured_lifetime_and_does_not_print_it(line):
    tokens = kc.init_configuration(settings(line, bootstrap_token_ttl="10m0s"))["bootstrapTokens"]
    assert tokens == [{"ttl": "10m0s", "usages": ["signing", "authentication"],
                       "groups": ["system:bootstrappers:kubeadm:default-node-token"]}]
    assert kc.init_configuration(settings(line))["bootstrapTokens"][0]["ttl"] == "15m0s"
    assert kc.command_flags(settings(line), "init")[0] == "--skip-token-print"
    assert "--skip-token-print" not in kc.command_flags(settings(line), "join")


def test_a_join_skips_only_phases_that_join_has():
    assert kc.command_flags(settings("1.20"), "join") == ["--skip-phases=preflight"]
    assert kc.join_configuration(settings("1.36"))["skipPhases"] == ["preflight"]
    assert kc.command_flags(settings("1.20", skip_phases=["addon/coredns"]), "join") == []


def test_container_runtime_endpoint_moves_from_kubelet_flags_to_the_kubelet_config():
    old = kc.init_configuration(settings("1.20"))["nodeRegistration"]
    assert old["criSocket"] == "/run/containerd/containerd.sock"
    assert old["kubeletExtraArgs"]["container-runtime"] == "remote"
    assert "containerRuntimeEndpoint" not in kc.kubelet_configuration(settings("1.20"))
    new = kc.init_configuration(settings("1.36"))["nodeRegistration"]
    assert new["criSocket"] == "unix:///run/containerd/containerd.sock"
    assert not any(a["name"].startswith("container-runtime") for a in new["kubeletExtraArgs"])
    assert kc.kubelet_configuration(settings("1.36"))["containerRuntimeEndpoint"] == \
        "unix:///run/containerd/containerd.sock"


@pytest.mark.parametrize("line, key", [("1.20", "node-role.kubernetes.io/master"),
                                       ("1.36", "node-role.kubernetes.io/control-plane")])
def test_control_planes_are_tainted_with_the_lines_key_unless_switched_off(line, key):
    assert kc.node_taints(settings(line)) == [{"key": key, "effect": "NoSchedule"}]
    assert kc.node_taints(settings(line, control_plane_tainted=False)) == []
    assert kc.node_taints(settings(line, control_plane=False)) == []


def test_a_nodes_own_taints_come_first_and_are_not_doubled():
    taints = [{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]
    assert kc.node_taints(settings("1.36", control_plane=False, node_taints=taints)) == taints
    mine = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    assert kc.node_taints(settings("1.36", node_taints=mine)) == mine


def test_certificate_validity_is_set_on_v1beta4_lines():
    cluster = kc.cluster_configuration(settings("1.36", certificate_validity_hours=720))
    assert cluster["certificateValidityPeriod"] == "720h0m0s"
    assert cluster["caCertificateValidityPeriod"] == "87600h0m0s"


def test_certificate_validity_on_v1_20_is_refused_by_name():
    with pytest.raises(kc.KubeadmConfigError, match="kube_cert_validity_hours"):
        kc.cluster_configuration(settings("1.20", certificate_validity_hours=720))


@pytest.mark.parametrize("version", ["v1.29.3", "v1.37.0", "1.2", "latest"])
def test_an_unsupported_line_is_refused_with_the_supported_ones(version):
    with pytest.raises(kc.KubeadmConfigError) as info:
        kc.init_config_file(settings(kube_version=version))
    assert "kube_version" in str(info.value)


def test_an_unsupported_line_names_the_lines_to_pick():
    with pytest.raises(kc.KubeadmConfigError, match="v1.20, v1.34, v1.35, v1.36"):
        kc.line_of("v1.30.1")


def test_external_etcd_uses_layer_02s_files_and_stacked_etcd_a_data_dir():
    assert kc.cluster_configuration(settings())["etcd"]["external"]["caFile"] == "/etc/e/ca.crt"
    assert kc.cluster_configuration(settings(etcd={"external": False}))["etcd"] == \
        {"local": {"dataDir": "/var/lib/etcd"}}


def test_cluster_dns_is_the_tenth_service_address():
    assert kc.kubelet_configuration(settings())["clusterDNS"] == ["10.233.0.10"]
    assert kc.kubelet_configuration(settings(cluster_dns="10.0.0.53"))["clusterDNS"] == ["10.0.0.53"]


def test_kubeadms_dns_addon_is_pinned_to_the_catalogs_coredns():
    assert kc.cluster_configuration(settings())["dns"] == {"imageRepository": "registry.k8s.io/coredns",
                                                            "imageTag": "v1.14.2"}
    with pytest.raises(kc.KubeadmConfigError, match="coredns"):
        kc.cluster_configuration(settings(dns_image="registry.k8s.io/dns:1.0"))


def test_a_control_plane_join_carries_its_endpoint_and_certificate_key_and_a_worker_join_does_not():
    cp = kc.join_configuration(settings("1.36"))
    assert cp["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": "172.30.1.11", "bindPort": 6443},
                                  "certificateKey": "f" * 64}
    worker = kc.join_configuration(settings("1.36", control_plane=False))
    assert "controlPlane" not in worker
    assert worker["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "localhost:6444"


def test_switches_given_as_strings_read_as_ansible_does():
    cluster = kc.cluster_configuration(settings(profiling="False", etcd={"external": "true", "endpoints": ["e"],
                                                                         "ca_file": "a", "cert_file": "b",
                                                                         "key_file": "c"}))
    assert cluster["apiServer"]["extraArgs"]["profiling"] == "false" and "external" in cluster["etcd"]


def test_the_rendered_file_is_stable():
    assert kc.init_config_file(settings()) == kc.init_config_file(settings())


def test_subclassed_values_from_ansible_render_as_plain_yaml():
    class Tagged(str):
        pass

    text = kc.init_config_file(settings(node_name=Tagged("node1"), advertise_address=Tagged("172.30.1.11")))
    assert "name: node1" in text and "advertiseAddress: 172.30.1.11" in text


def test_problems_are_empty_for_settings_that_fit_their_line():
    assert kc.problems({"kube_version": "v1.36.4", "certificate_validity_hours": 720}) == []
    assert kc.problems({"kube_version": "v1.20.2"}) == []


@pytest.mark.parametrize("given, expected", [
    ({"kube_version": "v1.30.0"}, "pick one of v1.20, v1.34, v1.35, v1.36"),
    ({"kube_version": "v1.20.2", "certificate_validity_hours": 720}, "always signs certificates for 8760 h"),
    ({"kube_version": "v1.36.4", "ca_certificate_validity_hours": "ten"}, "kube_ca_cert_validity_hours must be a whole"),
    ({"kube_version": "v1.36.4", "certificate_validity_hours": 0}, "kube_cert_validity_hours must be positive"),
])
def test_problems_name_the_setting_and_the_fix(given, expected):
    found = kc.problems(given)
    assert len(found) == 1 and expected in found[0]


def test_a_stopping_apiserver_fails_readiness_first_when_a_shutdown_delay_is_set():
    assert kc.cluster_configuration(settings(shutdown_delay_seconds=10))["apiServer"]["extraArgs"][
        "shutdown-delay-duration"] == "10s"
    assert "shutdown-delay-duration" not in kc.cluster_configuration(settings())["apiServer"]["extraArgs"]
