"""Filter plugins for the manifests roles render and apply: manifest_image, manifest_rewrite_images, cluster_dns,
kube_api_version and pod_problems, thin shells over plugins/module_utils/manifests.py and kubeadm_config.cluster_dns.

Their documentation lives beside this file, one YAML file per filter, where ansible-doc finds it.
"""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.airgap.kubernetes.plugins.module_utils import kubeadm_config as kc
from ansible_collections.airgap.kubernetes.plugins.module_utils import manifests


def manifest_image(artifact):
    """A resolved image (the artifact lookup's dict) as a manifest writes it: its ref, pinned by digest when the
    catalog has one (the resolver's ref carries the pin already; an older ref without it gets it here)."""
    if not isinstance(artifact, dict) or artifact.get("kind") != "image" or not artifact.get("ref"):
        raise AnsibleFilterError(f"manifest_image takes a resolved image, e.g. lookup('airgap.kubernetes.artifact', "
                                 f"'coredns'), not {artifact!r:.80}")
    ref = str(artifact["ref"])
    return ref + (f"@{artifact['digest']}" if artifact.get("digest") and "@" not in ref else "")


def cluster_dns(service_subnet):
    """The cluster DNS service's address, the same one the kubelets' clusterDNS names."""
    try:
        return kc.cluster_dns({"service_subnet": str(service_subnet)})
    except kc.KubeadmConfigError as exc:
        raise AnsibleFilterError(str(exc)) from None


def kube_api_version(kind, kube_version):
    try:
        return manifests.api_version(str(kind), str(kube_version))
    except manifests.ManifestError as exc:
        raise AnsibleFilterError(str(exc)) from None


def manifest_rewrite_images(text, images, source="manifest"):
    """An upstream manifest's text with every image rewritten to the bundle registry: images are the catalog's
    resolved images for the config (the artifact lookup's dicts); an image none of them is fails, naming it."""
    mapping = {}
    for image in images or []:
        if isinstance(image, dict) and image.get("kind") == "image":
            for spelling in (image.get("canonical"), image.get("upstream")):
                if spelling:
                    mapping[str(spelling).partition("@")[0]] = manifest_image(image)
    try:
        return manifests.rewrite_images(str(text), mapping, str(source))
    except manifests.ManifestError as exc:
        raise AnsibleFilterError(str(exc)) from None


def pod_problems(pods):
    return manifests.pod_problems(pods if isinstance(pods, dict) else {})


class FilterModule:
    def filters(self):
        return {"manifest_image": manifest_image, "cluster_dns": cluster_dns, "kube_api_version": kube_api_version,
                "manifest_rewrite_images": manifest_rewrite_images,
                "pod_problems": pod_problems}
