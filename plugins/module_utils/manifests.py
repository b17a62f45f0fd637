"""Kubernetes manifests as data: the images they run, image rewriting for upstream manifests, the API versions
that differ between lines, and why a workload's pods are not running. Pure functions, no Ansible."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import yaml

from ansible_collections.airgap.kubernetes.plugins.module_utils.resolver import (CatalogError, bare_version,
                                                                                  kube_release, parse_image)

# Where each workload kind keeps its pod template.
POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")

# API versions that changed between the lines we support: (first line, apiVersion), newest first.
API_VERSIONS = {
    "PodDisruptionBudget": (("1.21", "policy/v1"), ("1.0", "policy/v1beta1")),
    "CronJob": (("1.21", "batch/v1"), ("1.0", "batch/v1beta1")),
    "EndpointSlice": (("1.21", "discovery.k8s.io/v1"), ("1.17", "discovery.k8s.io/v1beta1")),
}

# Container waiting reasons that name the image, and those that mean the container keeps dying.
IMAGE_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CRASH_REASONS = ("CrashLoopBackOff", "RunContainerError", "CreateContainerError", "CreateContainerConfigError")

_IMAGE_LINE = re.compile(r"""^(?P<head>\s*(?:-\s+)?image:\s*)(?P<quote>["']?)(?P<ref>[^"'\s#]+)(?P=quote)(?P<tail>\s*(?:#.*)?)$""")


class ManifestError(ValueError):
    """A manifest that cannot be used as it is, with a message naming the document and the fix."""


@dataclass(frozen=True)
class ImageUse:
    """One container's image: which object and container name it, for messages."""
    kind: str
    namespace: str
    name: str
    container: str
    image: str

    @property
    def where(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {ns}{self.name}, container {self.container}"


def load_documents(text: str, source: str = "manifest") -> list:
    """The objects of a multi-document YAML text; empty documents dropped, a `kind: List` opened into its items."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source} is not YAML: {exc}") from None
    out = []
    for index, doc in enumerate(docs):
        if not isinstance(doc, Mapping) or "kind" not in doc or "apiVersion" not in doc:
            raise ManifestError(f"{source} document {index + 1} is not a Kubernetes object (no kind and apiVersion)")
        if str(doc["kind"]).endswith("List") and isinstance(doc.get("items"), list):
            out.extend(doc["items"])
        else:
            out.append(doc)
    return out


def pod_spec(doc: Mapping) -> Optional[Mapping]:
    """The pod spec of a workload object, None for any other kind."""
    path = POD_SPEC_PATHS.get(str(doc.get("kind")))
    node: Any = doc
    for key in path or ():
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if path and isinstance(node, Mapping) else None


def _embedded_objects(doc: Mapping) -> list:
    """(key, object) of each ConfigMap value that is itself a Kubernetes object, such as local-path-provisioner's
    helperPod.yaml: its image is pulled as surely as a Deployment's, so it counts."""
    if doc.get("kind") != "ConfigMap":
        return []
    found = []
    for key, value in (doc.get("data") or {}).items():
        if not isinstance(value, str) or "kind:" not in value:
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            continue
        if isinstance(parsed, Mapping) and "kind" in parsed and "apiVersion" in parsed:
            found.append((key, parsed))
    return found


def image_uses(docs: Iterable[Mapping]) -> list:
    """Every container's image in the objects, init and ephemeral containers included, and those of pods a
    ConfigMap carries for a controller to start, in document order."""
    uses = []
    for doc in docs:
        meta = doc.get("metadata") or {}
        for key, inner in _embedded_objects(doc):
            inner_meta = inner.get("metadata") or {}
            for use in image_uses([inner]):
                uses.append(ImageUse(use.kind, str(meta.get("namespace") or ""),
                                     f"{inner_meta.get('name')} (in ConfigMap {meta.get('name')} key {key})",
                                     use.container, use.image))
        spec = pod_spec(doc)
        if spec is None:
            continue
        for field in CONTAINER_LISTS:
            for container in spec.get(field) or []:
                image = container.get("image")
                if not image:
                    raise ManifestError(f"{doc['kind']} {meta.get('name')}: {field} {container.get('name')} has no "
                                        f"image")
                uses.append(ImageUse(str(doc["kind"]), str(meta.get("namespace") or ""), str(meta.get("name")),
                                     str(container.get("name")), str(image)))
    return uses


def compare_images(uses: Iterable[ImageUse], expected: Iterable[str]) -> list:
    """What keeps the manifests' images from being exactly the bundle's list: one message per image that a manifest
    runs and the list lacks (it would be pulled from outside the bundle), and per listed image no manifest runs (the
    bundle carries it for nothing). Empty: the two sets are equal."""
    uses = list(uses)
    want = set(expected)
    have = {use.image for use in uses}
    problems = [f"{use.where} runs {use.image}, which the catalog's image list for this config lacks: name it "
                f"through the catalog (airgap.kubernetes.manifest_image), or add it to the catalog"
                for use in uses if use.image not in want]
    problems += [f"the catalog lists {ref} for this config, but no manifest runs it: render it, or disable it in "
                 f"the catalog for this config" for ref in sorted(want - have)]
    return problems


def images(docs: Iterable[Mapping]) -> list:
    """The distinct images the objects run, sorted."""
    return sorted({use.image for use in image_uses(docs)})


def _key(ref: str) -> tuple:
    """registry, repository and tag of a reference, with Docker Hub's short names made explicit."""
    try:
        registry, path, tag, _ = parse_image(ref)
    except CatalogError as exc:
        raise ManifestError(str(exc)) from None
    return registry, path, tag


def rewrite_images(doc_text: str, mapping: Mapping[str, str], source: str = "manifest") -> str:
    """An upstream manifest with each `image:` rewritten through mapping (upstream reference -> bundle reference).

    Keys match whatever spelling the manifest uses (`flannel/flannel:v1` is `docker.io/flannel/flannel:v1`); a
    digest the manifest pins is kept unless the bundle reference has its own. Everything else in the text stays as
    it was. An image the mapping lacks fails with every such image named, before anything is written."""
    table = {_key(k): str(v) for k, v in mapping.items()}
    load_documents(doc_text, source)  # a text that is no manifest fails here, not half rewritten
    missing: list = []
    lines = []
    for line in doc_text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        match = _IMAGE_LINE.match(body)
        if match:
            ref = match.group("ref")
            target = table.get(_key(ref))
            if target is None:
                missing.append(ref)
            else:
                digest = ref.partition("@")[2]
                if digest and "@" not in target:
                    target = f"{target}@{digest}"
                body = f"{match.group('head')}{match.group('quote')}{target}{match.group('quote')}{match.group('tail')}"
        lines.append(body + line[len(line.rstrip("\r\n")):])
    if missing:
        raise ManifestError(f"{source} names {len(missing)} image(s) the bundle lacks: {', '.join(sorted(set(missing)))}"
                            f": add each to the catalog (a catalog overlay), or use a manifest of the release the "
                            f"catalog pins")
    rewritten = "".join(lines)
    left = [use for use in image_uses(load_documents(rewritten, source)) if _key(use.image) not in
            {_key(v) for v in table.values()}]
    if left:
        raise ManifestError(f"{source}: {left[0].where} has image {left[0].image} on a line this rewrite cannot "
                            f"read (a flow mapping or a multi-line value): write it as `image: REF` on one line")
    return rewritten


def unbundled_images(doc_text: str, bundle_images: Iterable[str], source: str = "manifest") -> list:
    """The images a manifest runs that are not among bundle_images (references, any spelling), with where each is."""
    have = {_key(ref) for ref in bundle_images}
    return [use for use in image_uses(load_documents(doc_text, source)) if _key(use.image) not in have]


def check_bundled(doc_text: str, bundle_images: Iterable[str], source: str = "manifest") -> None:
    """Fails when the manifest runs an image the bundle does not carry; build-bundle calls this for each manifest
    it packs, so a bundle never ships a manifest that would pull from outside it."""
    lacking = unbundled_images(doc_text, bundle_images, source)
    if lacking:
        named = "; ".join(f"{u.where}: {u.image}" for u in lacking)
        raise ManifestError(f"{source} runs {len(lacking)} image(s) the bundle lacks ({named}): add each image to "
                            f"the catalog (a catalog overlay), or point the artifact at the manifest of the release "
                            f"the catalog pins")


def check_bundled_files(files: Mapping[str, Any], bundle_images: Iterable[str]) -> None:
    """check_bundled for each Kubernetes manifest among a bundle's files ({bundle path: local path}; only .yaml and
    .yml count), every problem in one error: what build-bundle calls once its files are downloaded."""
    images = list(bundle_images)
    problems = []
    for where, path in sorted(files.items()):
        if not str(where).endswith((".yaml", ".yml")):
            continue
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            check_bundled(text, images, str(where))
        except ManifestError as exc:
            problems.append(str(exc))
    if problems:
        raise ManifestError("; ".join(problems))


def api_version(kind: str, kube_version: str) -> str:
    """The apiVersion to write a kind in for a Kubernetes release, where the lines we support differ."""
    release = kube_release(bare_version(kube_version))
    if release is None:
        raise ManifestError(f"kube_version {kube_version!r} is not a Kubernetes release: use e.g. v1.36.4")
    if kind not in API_VERSIONS:
        raise ManifestError(f"{kind} has no line-dependent apiVersion here: write its apiVersion in the template, or "
                            f"add it to API_VERSIONS ({', '.join(sorted(API_VERSIONS))})")
    minor = tuple(int(p) for p in release[0].split("."))
    for since, version in API_VERSIONS[kind]:
        if minor >= tuple(int(p) for p in since.split(".")):
            return version
    raise ManifestError(f"{kind} does not exist in Kubernetes {release[0]}")


# ----------------------------------------------------------------------------- why pods do not run

def pod_problems(pods: Mapping) -> list:
    """Why the pods of `kubectl get pods -o json` are not running, one dict per container that is not ready.

    Each has pod, container, reason, image, message, text (one line for the operator) and crashing (true when its
    last log line is worth reading: a container that started and died)."""
    found = []
    for pod in pods.get("items") or []:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        statuses = list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])
        for cs in statuses:
            if cs.get("ready"):
                continue
            state = cs.get("state") or {}
            waiting = state.get("waiting") or {}
            terminated = state.get("terminated") or {}
            if terminated.get("reason") == "Completed":
                continue
            reason = waiting.get("reason") or terminated.get("reason") or ("Running, not ready" if "running" in state
                                                                           else "not started")
            message = (waiting.get("message") or terminated.get("message") or "").strip().splitlines()
            image = str(cs.get("image") or "")
            text = f"pod {name}: container {cs.get('name')} {reason}"
            if reason in IMAGE_REASONS:
                text += f" (image {image})"
            if message:
                text += f": {message[0]}"
            found.append({"pod": name, "container": cs.get("name"), "reason": reason, "image": image,
                          "message": message[0] if message else "", "text": text,
                          "crashing": reason in CRASH_REASONS or int(cs.get("restartCount") or 0) > 0})
        if not statuses:
            conditions = [c for c in status.get("conditions") or [] if c.get("status") != "True"]
            why = "; ".join(f"{c.get('reason') or c.get('type')}: {c.get('message', '')}".strip(": ")
                            for c in conditions) or status.get("phase", "Pending")
            found.append({"pod": name, "container": "", "reason": status.get("phase", "Pending"), "image": "",
                          "message": why, "text": f"pod {name}: {why}", "crashing": False})
    return found
