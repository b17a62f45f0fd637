"""build-bundle's plan: what the bundle holds for the config, arches and apt suites, straight from the resolver."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver
from ansible_collections.airgap.kubernetes.tools.bundle_common import BuildError

# --os names, and the apt suite (Debian codename) each one gets in the bundle.
OS_SUITES = {"debian12": "bookworm", "debian13": "trixie"}


@dataclass(frozen=True)
class FileJob:
    name: str
    version: str
    url: str  # where to fetch it: the upstream URL after upstream_bases
    path: str  # bundle-relative: files/<upstream-host>/<upstream-path> (or apt/pool/... for packages)
    sha256: str


@dataclass
class ImageJob:
    name: str
    version: str
    canonical: str  # registry.k8s.io/pause:3.2: its name in the bundle's registry storage and in manifest.json
    source: str  # where to copy it from: the upstream reference after upstream_bases
    digest: Optional[str]  # the catalog's digest, when it pins one
    multiarch: bool
    arches: list = field(default_factory=list)


@dataclass
class Plan:
    files: list
    images: list
    packages: list  # Debian package names
    arches: list
    suites: list
    versions: dict
    config: dict


def make_plan(catalog: Mapping, config: Mapping, arches: Iterable[str], suites: Iterable[str]) -> Plan:
    """What the bundle holds for these arches and apt suites, straight from the resolver's lists."""
    arches = [resolver.normalize_arch(catalog, a) for a in arches]
    files: dict = {}
    images: dict = {}
    packages: list = []
    versions: dict = {}
    for arch in arches:
        for art in resolver.resolve(catalog, config, arch, mode="upstream", os_family="debian"):
            if art.kind == "file":
                path = "files/" + art.mirror_path
                files.setdefault(path, FileJob(art.name, art.version, art.upstream_url, path, art.sha256))
                versions[art.name] = art.version
            elif art.kind == "image":
                job = images.setdefault(art.canonical, ImageJob(art.name, art.version, art.canonical, art.upstream,
                                                                art.digest, art.multiarch))
                job.arches.append(arch)
                versions[art.name] = art.version
            elif art.package not in packages:
                packages.append(art.package)
    keys = resolver.config_keys(catalog) | {"cluster_arches", "upstream_insecure_registries"}
    recorded = {k: config[k] for k in sorted(keys) if k in config}
    return Plan(list(files.values()), list(images.values()), packages, arches, list(suites), versions, recorded)


def suites_for(os_names: Iterable[str]) -> list:
    """--os debian12,debian13 (or codenames) -> apt suites, in the order given."""
    suites = []
    for name in os_names:
        name = name.strip().lower()
        if not name:
            continue
        suite = OS_SUITES.get(name, name if name in OS_SUITES.values() else None)
        if suite is None:
            raise BuildError(f"--os {name!r} is not supported: pick from {', '.join(OS_SUITES)}")
        if suite not in suites:
            suites.append(suite)
    return suites
