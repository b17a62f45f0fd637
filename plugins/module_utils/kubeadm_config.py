"""Everything that depends on the Kubernetes minor, in one place: kubeadm, kubelet and kube-proxy configs per line.

Roles pass one plain dict of cluster settings (see `Settings`) and get back the documents kubeadm reads, the
command-line flags that a line cannot express in its config API, and the node taints a line uses. No template
holds a version switch: a new line is a new entry in LINES, tested in tests/unit/test_kubeadm_config.py.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import yaml

from ansible_collections.airgap.kubernetes.plugins.module_utils.resolver import bare_version, kube_release, truthy


class KubeadmConfigError(ValueError):
    """A setting the chosen line cannot express, or a line this collection does not support."""


@dataclass(frozen=True)
class Line:
    """What differs between Kubernetes minors, as data."""
    kubeadm_api: str
    # v1beta2 takes extraArgs and kubeletExtraArgs as maps; v1beta4 as lists of {name, value}.
    args_as_list: bool
    # v1beta3+ has skipPhases in Init/JoinConfiguration; v1beta2 takes only the --skip-phases flag.
    skip_phases_in_config: bool
    # 1.27 removed kubelet's --container-runtime flags; the endpoint lives in KubeletConfiguration.
    runtime_endpoint_in_kubelet_config: bool
    # kubeadm's own control-plane taint key: "master" until 1.24, "control-plane" since 1.25.
    control_plane_taint_key: str
    # v1beta4 sets certificate validity in ClusterConfiguration; v1beta2 always signs for one year.
    certificate_validity_in_config: bool
    # The criSocket form kubeadm accepts: a plain path (1.20) or a unix:// URL (required since 1.25).
    cri_socket_url: bool


LINES: dict[str, Line] = {
    "1.20": Line("kubeadm.k8s.io/v1beta2", args_as_list=False, skip_phases_in_config=False,
                 runtime_endpoint_in_kubelet_config=False, control_plane_taint_key="node-role.kubernetes.io/master",
                 certificate_validity_in_config=False, cri_socket_url=False),
}
for _minor in ("1.34", "1.35", "1.36"):
    LINES[_minor] = Line("kubeadm.k8s.io/v1beta4", args_as_list=True, skip_phases_in_config=True,
                         runtime_endpoint_in_kubelet_config=True,
                         control_plane_taint_key="node-role.kubernetes.io/control-plane",
                         certificate_validity_in_config=True, cri_socket_url=True)

KUBELET_API = "kubelet.config.k8s.io/v1beta1"
KUBE_PROXY_API = "kubeproxy.config.k8s.io/v1alpha1"
# kubeadm's defaults when certificate validity is not set (v1beta4): one year for leaves, ten for the CA.
DEFAULT_CERT_HOURS = 8760
DEFAULT_CA_CERT_HOURS = 87600
# Top-level phases of `kubeadm join`; a skipped init-only phase (addon/coredns) does not apply to a join.
JOIN_PHASES = frozenset({"preflight", "control-plane-prepare", "kubelet-start", "control-plane-join"})


def line_of(kube_version: str) -> tuple[str, Line]:
    """The supported line of a kube_version (v1.20.2 -> "1.20"), or an error listing the supported lines."""
    release = kube_release(bare_version(kube_version))
    if release is None:
        raise KubeadmConfigError(f"kube_version {kube_version!r} is not vMAJOR.MINOR.PATCH: set e.g. v1.36.4")
    minor = release[0]
    if minor not in LINES:
        raise KubeadmConfigError(f"kube_version {kube_version} is on line {minor}, which this collection cannot "
                                 f"configure: pick one of {', '.join('v' + m for m in sorted(LINES))}")
    return minor, LINES[minor]


def _validity_hours(s: Mapping[str, Any]) -> tuple[int, int]:
    cert = s.get("certificate_validity_hours")
    ca = s.get("ca_certificate_validity_hours")
    return (_hours(DEFAULT_CERT_HOURS if cert in (None, "") else cert, "kube_cert_validity_hours"),
            _hours(DEFAULT_CA_CERT_HOURS if ca in (None, "") else ca, "kube_ca_cert_validity_hours"))


def problems(s: Mapping[str, Any]) -> list:
    """What makes the cluster-wide settings unusable on their line, one message each; empty when they fit.

    Needs only kube_version and the certificate validity settings, so layer 00 can ask before any host changes."""
    try:
        _, line = line_of(s["kube_version"])
        cert, ca = _validity_hours(s)
    except KubeadmConfigError as exc:
        return [str(exc)]
    if not line.certificate_validity_in_config and (cert, ca) != (DEFAULT_CERT_HOURS, DEFAULT_CA_CERT_HOURS):
        return [f"kube_version {s['kube_version']}: kubeadm {line.kubeadm_api} always signs certificates for "
                f"{DEFAULT_CERT_HOURS} h and its CA for {DEFAULT_CA_CERT_HOURS} h: leave kube_cert_validity_hours "
                f"and kube_ca_cert_validity_hours at their defaults on this line, or use a line with kubeadm v1beta4"]
    return []


def _version(kube_version: str) -> str:
    return "v" + bare_version(kube_version)


def _args(line: Line, args: Mapping[str, Any]) -> Any:
    """Component flags in the line's shape, sorted so the rendered file is stable."""
    items = [(str(k), _flag_value(v)) for k, v in sorted(args.items())]
    if line.args_as_list:
        return [{"name": k, "value": v} for k, v in items]
    return dict(items)


def _bool(value: Any, default: bool = False) -> bool:
    """A switch read as Ansible's `| bool` does (resolver.truthy); unset means the default."""
    return default if value is None or value == "" else truthy(value)


def _set(value: Any) -> bool:
    return value is not None and value != "" and value != {} and value != []


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _taints(taints: list) -> list:
    out = []
    for taint in taints:
        item = {"key": taint["key"], "effect": taint.get("effect", "NoSchedule")}
        if taint.get("value") not in (None, ""):
            item["value"] = str(taint["value"])
        out.append(item)
    return out


def control_plane_taints(kube_version: str, tainted: bool = True) -> list:
    """The taint kubeadm's line puts on control planes, or none when control planes also run workloads."""
    return [{"key": line_of(kube_version)[1].control_plane_taint_key, "effect": "NoSchedule"}] if tainted else []


def node_taints(settings: Mapping[str, Any]) -> list:
    """The taints a node registers with: its own node_taints, plus the control-plane taint where that applies."""
    taints = list(settings.get("node_taints") or [])
    if _bool(settings.get("control_plane")):
        keys = {t["key"] for t in taints}
        taints += [t for t in control_plane_taints(settings["kube_version"],
                                                   _bool(settings.get("control_plane_tainted"), True))
                   if t["key"] not in keys]
    return _taints(taints)


def _socket_path(socket: str) -> str:
    return socket[len("unix://"):] if socket.startswith("unix://") else socket


def _cri_socket(line: Line, socket: str) -> str:
    path = _socket_path(socket)
    return f"unix://{path}" if line.cri_socket_url else path


def _node_registration(line: Line, s: Mapping[str, Any]) -> dict:
    kubelet_args = dict(s.get("kubelet_extra_args") or {})
    if not line.runtime_endpoint_in_kubelet_config:
        kubelet_args.setdefault("container-runtime", "remote")
        kubelet_args.setdefault("container-runtime-endpoint", "unix://" + _socket_path(s["cri_socket"]))
    if s.get("node_ip"):
        kubelet_args.setdefault("node-ip", s["node_ip"])
    reg: dict[str, Any] = {"name": s["node_name"], "criSocket": _cri_socket(line, s["cri_socket"]),
                           "taints": node_taints(s)}
    if kubelet_args:
        reg["kubeletExtraArgs"] = _args(line, kubelet_args)
    if s.get("ignore_preflight_errors"):
        reg["ignorePreflightErrors"] = list(s["ignore_preflight_errors"])
    return reg


def _api_endpoint(s: Mapping[str, Any]) -> dict:
    return {"advertiseAddress": s["advertise_address"], "bindPort": int(s.get("apiserver_port", 6443))}


def _volumes(volumes: list) -> list:
    return [{"name": v["name"], "hostPath": v["host_path"], "mountPath": v.get("mount_path", v["host_path"]),
             "readOnly": bool(v.get("read_only", True)), "pathType": v.get("path_type", "DirectoryOrCreate")}
            for v in volumes]


def _component(line: Line, args: Mapping[str, Any], volumes: Optional[list] = None) -> dict:
    out: dict[str, Any] = {}
    if args:
        out["extraArgs"] = _args(line, args)
    if volumes:
        out["extraVolumes"] = _volumes(volumes)
    return out


def _hours(value: Any, what: str) -> int:
    try:
        hours = int(value)
    except (TypeError, ValueError):
        raise KubeadmConfigError(f"{what} must be a whole number of hours, not {value!r}") from None
    if hours <= 0:
        raise KubeadmConfigError(f"{what} must be positive, not {hours}")
    return hours


def init_configuration(s: Mapping[str, Any]) -> dict:
    """InitConfiguration for the first control plane."""
    _, line = line_of(s["kube_version"])
    doc: dict[str, Any] = {"apiVersion": line.kubeadm_api, "kind": "InitConfiguration",
                           "localAPIEndpoint": _api_endpoint(s),
                           "nodeRegistration": _node_registration(line, {**s, "control_plane": True}),
                           # Without one, kubeadm makes a 24-hour token; with no token value it generates one.
                           "bootstrapTokens": [{"ttl": str(s.get("bootstrap_token_ttl") or "15m0s"),
                                                "usages": ["signing", "authentication"],
                                                "groups": ["system:bootstrappers:kubeadm:default-node-token"]}]}
    if line.skip_phases_in_config and s.get("skip_phases"):
        doc["skipPhases"] = list(s["skip_phases"])
    return doc


def cluster_dns(s: Mapping[str, Any]) -> str:
    """The cluster DNS service's address: s["cluster_dns"], else the 10th address of the service subnet."""
    if s.get("cluster_dns"):
        return str(s["cluster_dns"])
    try:
        return str(ipaddress.ip_network(s["service_subnet"], strict=False)[10])
    except ValueError as exc:
        raise KubeadmConfigError(f"kube_service_addresses {s['service_subnet']!r} is not a network: {exc}") from None


def apiserver_flags(s: Mapping[str, Any]) -> tuple[dict, list]:
    """The API server's flags and host volumes: admission, profiling, encryption at rest, audit, then extra args."""
    args: dict[str, Any] = {"profiling": _bool(s.get("profiling"))}
    if _set(s.get("shutdown_delay_seconds")):
        # A stopping API server keeps serving but fails /readyz for this long, so every node's balancer takes it out
        # of rotation before it closes connections: a rolled change or a node reboot drops no request.
        args["shutdown-delay-duration"] = f"{int(s['shutdown_delay_seconds'])}s"
    volumes: list = []
    if s.get("admission_plugins"):
        args["enable-admission-plugins"] = list(s["admission_plugins"])
    if s.get("encryption_config"):
        args["encryption-provider-config"] = s["encryption_config"]
        volumes.append({"name": "airgap-encryption", "host_path": s["encryption_config"].rsplit("/", 1)[0],
                        "path_type": "DirectoryOrCreate"})
    audit = s.get("audit") or {}
    if audit.get("policy_file"):
        args.update({"audit-policy-file": audit["policy_file"], "audit-log-path": audit["log_file"],
                     "audit-log-maxage": audit.get("maxage", 30), "audit-log-maxbackup": audit.get("maxbackup", 10),
                     "audit-log-maxsize": audit.get("maxsize", 100)})
        volumes.append({"name": "airgap-audit-policy", "host_path": audit["policy_file"].rsplit("/", 1)[0],
                        "path_type": "DirectoryOrCreate"})
        volumes.append({"name": "airgap-audit-log", "host_path": audit["log_file"].rsplit("/", 1)[0],
                        "read_only": False, "path_type": "DirectoryOrCreate"})
    args.update(s.get("apiserver_extra_args") or {})
    return args, volumes


def _dns(s: Mapping[str, Any]) -> dict:
    """kubeadm's DNS addon image, pinned to the catalog's CoreDNS (repository/coredns:tag is kubeadm's shape)."""
    image = s.get("dns_image") or ""
    if not image:
        return {}
    repository, _, tag = image.rpartition(":")
    if not repository.endswith("/coredns") or "/" in tag:
        raise KubeadmConfigError(f"the CoreDNS image {image!r} must end in /coredns:<tag>, the name kubeadm pulls")
    return {"imageRepository": repository[: -len("/coredns")], "imageTag": tag}


def cluster_configuration(s: Mapping[str, Any]) -> dict:
    """ClusterConfiguration: the same on every control plane; a change here is rolled one control plane at a time."""
    _, line = line_of(s["kube_version"])
    apiserver_args, apiserver_volumes = apiserver_flags(s)
    profiling = {"profiling": _bool(s.get("profiling"))}
    controller_args = {**profiling, **({"node-cidr-mask-size": s["node_cidr_mask_size"]}
                                       if s.get("node_cidr_mask_size") else {}),
                       **(s.get("controller_manager_extra_args") or {})}
    doc: dict[str, Any] = {
        "apiVersion": line.kubeadm_api, "kind": "ClusterConfiguration",
        "clusterName": s.get("cluster_name", "kubernetes"),
        "kubernetesVersion": _version(s["kube_version"]),
        "controlPlaneEndpoint": s["control_plane_endpoint"],
        "imageRepository": s["image_repository"],
        "certificatesDir": s.get("certificates_dir", "/etc/kubernetes/pki"),
        "networking": {"podSubnet": s["pod_subnet"], "serviceSubnet": s["service_subnet"],
                       "dnsDomain": s.get("dns_domain", "cluster.local")},
        "apiServer": {**_component(line, apiserver_args, apiserver_volumes),
                      "certSANs": sorted(set(s.get("apiserver_cert_sans") or []))},
        "controllerManager": _component(line, controller_args),
        "scheduler": _component(line, {**profiling, **(s.get("scheduler_extra_args") or {})}),
    }
    if _dns(s):
        doc["dns"] = _dns(s)
    etcd = s.get("etcd") or {}
    if _bool(etcd.get("external")):
        doc["etcd"] = {"external": {"endpoints": list(etcd["endpoints"]), "caFile": etcd["ca_file"],
                                    "certFile": etcd["cert_file"], "keyFile": etcd["key_file"]}}
    else:
        doc["etcd"] = {"local": {"dataDir": etcd.get("data_dir", "/var/lib/etcd")}}
    if _set(s.get("feature_gates")):
        doc["featureGates"] = {str(k): _bool(v) for k, v in s["feature_gates"].items()}
    found = problems(s)
    if found:
        raise KubeadmConfigError(found[0])
    if line.certificate_validity_in_config:
        cert_hours, ca_hours = _validity_hours(s)
        doc["certificateValidityPeriod"] = f"{cert_hours}h0m0s"
        doc["caCertificateValidityPeriod"] = f"{ca_hours}h0m0s"
    return doc


def skip_phases(s: Mapping[str, Any], command: str) -> list:
    """The inventory's skipped phases that exist for `kubeadm <command>` (init or join)."""
    phases = list(s.get("skip_phases") or [])
    if command == "join":
        phases = [p for p in phases if p.split("/", 1)[0] in JOIN_PHASES]
    return phases


def join_configuration(s: Mapping[str, Any]) -> dict:
    """JoinConfiguration for a worker, or for a control plane when s["control_plane"] is true."""
    _, line = line_of(s["kube_version"])
    discovery = {"bootstrapToken": {"apiServerEndpoint": s["discovery_endpoint"], "token": s["token"],
                                    "caCertHashes": list(s["ca_cert_hashes"])}}
    doc: dict[str, Any] = {"apiVersion": line.kubeadm_api, "kind": "JoinConfiguration",
                           "discovery": discovery, "nodeRegistration": _node_registration(line, s)}
    if _bool(s.get("control_plane")):
        doc["controlPlane"] = {"localAPIEndpoint": _api_endpoint(s), "certificateKey": s["certificate_key"]}
    if line.skip_phases_in_config and skip_phases(s, "join"):
        doc["skipPhases"] = skip_phases(s, "join")
    return doc


def kubelet_configuration(s: Mapping[str, Any]) -> dict:
    """KubeletConfiguration: no anonymous access, webhook authorisation, no read-only port."""
    _, line = line_of(s["kube_version"])
    kubelet = s.get("kubelet") or {}
    doc: dict[str, Any] = {
        "apiVersion": KUBELET_API, "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd" if _bool(kubelet.get("systemd_cgroup"), True) else "cgroupfs",
        "authentication": {"anonymous": {"enabled": _bool(kubelet.get("anonymous_auth"))},
                           "webhook": {"enabled": True},
                           "x509": {"clientCAFile": s.get("certificates_dir", "/etc/kubernetes/pki") + "/ca.crt"}},
        "authorization": {"mode": "Webhook" if _bool(kubelet.get("webhook_authorization"), True) else "AlwaysAllow"},
        "readOnlyPort": int(kubelet.get("read_only_port") or 0),
        "clusterDomain": s.get("dns_domain", "cluster.local"),
        "clusterDNS": [cluster_dns(s)],
        "failSwapOn": _bool(kubelet.get("fail_swap_on"), True),
        "rotateCertificates": True,
        "staticPodPath": "/etc/kubernetes/manifests",
    }
    if _set(kubelet.get("eviction_hard")):
        doc["evictionHard"] = {str(k): str(v) for k, v in kubelet["eviction_hard"].items()}
    for key, field in (("image_gc_high_threshold_percent", "imageGCHighThresholdPercent"),
                       ("image_gc_low_threshold_percent", "imageGCLowThresholdPercent"),
                       ("max_pods", "maxPods")):
        if _set(kubelet.get(key)):
            doc[field] = int(kubelet[key])
    if line.runtime_endpoint_in_kubelet_config:
        doc["containerRuntimeEndpoint"] = _cri_socket(line, s["cri_socket"])
    return doc


def kube_proxy_configuration(s: Mapping[str, Any]) -> dict:
    """KubeProxyConfiguration; iptables mode unless the inventory picks another."""
    line_of(s["kube_version"])
    proxy = s.get("kube_proxy") or {}
    doc: dict[str, Any] = {"apiVersion": KUBE_PROXY_API, "kind": "KubeProxyConfiguration",
                           "mode": proxy.get("mode", "iptables"), "clusterCIDR": s["pod_subnet"],
                           "metricsBindAddress": proxy.get("metrics_bind_address", "127.0.0.1:10249")}
    if _set(proxy.get("conntrack_max_per_core")):
        doc["conntrack"] = {"maxPerCore": int(proxy["conntrack_max_per_core"])}
    return doc


def command_flags(s: Mapping[str, Any], command: str = "init") -> list:
    """Flags for `kubeadm init` or `kubeadm join` that this line cannot take in its config file."""
    _, line = line_of(s["kube_version"])
    if command not in ("init", "join"):
        raise KubeadmConfigError(f"kubeadm_flags takes 'init' or 'join', not {command!r}")
    phases = skip_phases(s, command)
    # init's output is in the step log: the join command it prints must not carry the token.
    flags = ["--skip-token-print"] if command == "init" else []
    if not line.skip_phases_in_config and phases:
        flags.append("--skip-phases=" + ",".join(phases))
    return flags


def _plain(value: Any) -> Any:
    """Plain Python types: Ansible hands over tagged str, int and container subclasses that YAML cannot represent."""
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def dump(documents: list) -> str:
    """Documents as one multi-document YAML file, keys in a stable order."""
    return "".join("---\n" + yaml.safe_dump(_plain(doc), sort_keys=True, default_flow_style=False)
                   for doc in documents)


def init_config_file(s: Mapping[str, Any]) -> str:
    """The file `kubeadm init --config` reads on the first control plane."""
    return dump([init_configuration(s), cluster_configuration(s), kubelet_configuration(s),
                 kube_proxy_configuration(s)])


def join_config_file(s: Mapping[str, Any]) -> str:
    """The file `kubeadm join --config` reads: the JoinConfiguration only (the rest comes from the cluster)."""
    return dump([join_configuration(s)])
