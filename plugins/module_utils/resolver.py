"""Resolves the artifact catalog into concrete files, images and packages: upstream, override and mirror locations."""
from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional, Union

KINDS = ("file", "image", "package")
MODES = ("offline", "upstream")
NOARCH = "noarch"
# The placeholders catalog templates may use; anything else is a catalog mistake, reported as such.
PLACEHOLDERS = ("version", "arch", "arch_suffix")
# Flattened image names join path components with this; it is legal inside one repository component.
FLAT_SEP = "__"

_SHA256 = re.compile(r"^(sha256:)?([0-9a-f]{64})$")
_VERSION = re.compile(r"^\d+(\.\d+)+([-+~.][0-9A-Za-z.+~-]+)?$")
_KUBE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")
_FALSE = ("", "false", "no", "off", "0", "n", "none", "null")


class CatalogError(ValueError):
    """A catalog, overlay or config problem, with a message naming the input and the fix."""


@dataclass(frozen=True)
class Mirror:
    """Where the bundle server serves files and images, and which upstream hosts are replaced."""

    files_repo: str = ""
    registry_host: str = ""
    flatten_project: str = ""
    upstream_bases: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedFile:
    name: str
    version: str
    arch: str
    url: str  # what to fetch in the chosen mode: mirror_url offline, upstream_url upstream
    upstream_url: str  # canonical_url after upstream_bases
    canonical_url: str
    mirror_url: str
    mirror_path: str  # <upstream-host>/<upstream-path>, the file's place in the bundle
    dest: str
    sha256: str
    mode: str
    unpack: Optional[dict]
    groups: tuple
    enabled: bool = True
    kind: str = "file"

    def to_dict(self) -> dict:
        return _as_dict(self)


@dataclass(frozen=True)
class ResolvedImage:
    name: str
    version: str
    arch: str
    ref: str  # what to pull in the chosen mode: mirror offline, upstream upstream
    upstream: str  # canonical after upstream_bases
    canonical: str
    mirror: str
    digest: Optional[str]
    multiarch: bool
    groups: tuple
    enabled: bool = True
    kind: str = "image"

    def to_dict(self) -> dict:
        return _as_dict(self)


@dataclass(frozen=True)
class ResolvedPackage:
    name: str
    package: str  # the name for os_family
    os_family: str
    packages: dict  # every OS family's name, for bundles that carry several
    groups: tuple
    enabled: bool = True
    kind: str = "package"

    def to_dict(self) -> dict:
        return _as_dict(self)


ResolvedArtifact = Union[ResolvedFile, ResolvedImage, ResolvedPackage]


def _as_dict(obj: Any) -> dict:
    data = asdict(obj)
    data["groups"] = list(data["groups"])
    return data


# ----------------------------------------------------------------------------- small helpers

def truthy(value: Any) -> bool:
    """Ansible's `| bool` reading: -e flag=false arrives as the string 'false'."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return bool(value)


def _one_of(values: Iterable[str]) -> str:
    return ", ".join(str(v) for v in values)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.-]", version))


def _sorted_versions(versions: Iterable[str]) -> list:
    return sorted(versions, key=version_key)


def compress_versions(versions: Iterable[str], prefix: str = "v") -> str:
    """v1.36.0..v1.36.4, v1.35.0 — runs of consecutive patch releases collapse into ranges."""
    runs: list[list[str]] = []
    for ver in _sorted_versions(versions):
        parts = ver.split(".")
        if runs and len(parts) == 3 and parts[2].isdigit():
            last = runs[-1][-1].split(".")
            if last[:2] == parts[:2] and last[2].isdigit() and int(last[2]) + 1 == int(parts[2]):
                runs[-1].append(ver)
                continue
        runs.append([ver])
    return ", ".join(f"{prefix}{r[0]}" if len(r) == 1 else f"{prefix}{r[0]}..{prefix}{r[-1]}" for r in runs)


def normalize_sha256(value: Any, where: str) -> str:
    match = _SHA256.match(str(value).strip().lower())
    if not match:
        raise CatalogError(f"{where}: {value!r} is not a sha256 (64 hex digits, optionally prefixed sha256:)")
    return match.group(2)


def normalize_arch(catalog: Mapping, arch: str) -> str:
    """amd64/arm64, or Ansible's x86_64/aarch64, to the catalog's arch names."""
    arches = catalog.get("arches", [])
    name = catalog.get("arch_aliases", {}).get(arch, arch)
    if name not in arches:
        raise CatalogError(f"arch {arch!r} is not supported: pick one of {_one_of(arches)}")
    return name


def _render(template: str, values: Mapping[str, str], what: str) -> str:
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError) as exc:
        raise CatalogError(f"{what} template {template!r} is malformed or uses an unknown placeholder ({exc}): "
                           f"use {_one_of('{' + p + '}' for p in PLACEHOLDERS)}") from None


def bare_version(value: Any) -> str:
    """A version as the catalog writes it: v1.36.4 -> 1.36.4."""
    text = str(value).strip()
    return text[1:] if text[:1] in ("v", "V") else text


def _str_version(var: str, value: Any) -> str:
    if isinstance(value, float):
        # YAML reads 3.10 as the float 3.1; the digits are already lost.
        raise CatalogError(f"{var} {value!r} is a number, not a version: quote it, e.g. {var}: \"{value}\"")
    return bare_version(value)


def kube_release(version: str) -> Optional[tuple[str, Optional[str]]]:
    """The Kubernetes line and patch of a bare version (see bare_version): 1.36.4 -> ("1.36", "4"),
    1.36 -> ("1.36", None); None when it is no Kubernetes release. The catalog (kube_line) and
    kubeadm_config both read kube_version through it."""
    match = _KUBE.match(version)
    return (f"{match.group(1)}.{match.group(2)}", match.group(3)) if match else None


# ----------------------------------------------------------------------------- mirror layout

def _split_url(url: str) -> tuple[str, str, str]:
    match = re.match(r"^(https?)://([^/?#]+)(/[^?#]*)?$", url)
    if not match:
        raise CatalogError(f"{url!r} is not an http(s) URL without query or fragment")
    return match.group(1), match.group(2), match.group(3) or "/"


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def mirror_path(url: str) -> str:
    """https://<host>/<path> -> <host>/<path>: the file's place in the bundle, whatever serves it."""
    scheme, host, path = _split_url(url)
    if scheme != "https":
        # Only https upstreams map back unambiguously (the mirror path does not record the scheme).
        raise CatalogError(f"{url!r}: upstream file URLs must be https to map back from the mirror")
    return host + path


def mirror_url(url: str, files_repo: str) -> str:
    """https://<host>/<path> -> <files_repo>/<host>/<path>."""
    path = mirror_path(url)
    if not files_repo:
        raise CatalogError("files_repo is empty: set it to the bundle server's file URL, e.g. https://bootstrap:8443/files")
    return _join(files_repo, path)


def upstream_url(url: str, files_repo: str) -> str:
    """<files_repo>/<host>/<path> -> https://<host>/<path>; the inverse of mirror_url."""
    prefix = files_repo.rstrip("/") + "/"
    if not files_repo or not url.startswith(prefix):
        raise CatalogError(f"{url!r} is not under files_repo {files_repo!r}")
    host, _, path = url[len(prefix):].partition("/")
    if not host or not path:
        raise CatalogError(f"{url!r} has no <upstream-host>/<path> under files_repo {files_repo!r}")
    return f"https://{host}/{path}"


def parse_image(ref: str) -> tuple[str, str, str, Optional[str]]:
    """(registry, repository, tag, digest), with Docker Hub's implicit host and library/ made explicit."""
    rest, _, digest = ref.strip().partition("@")
    name, tag = rest, ""
    if ":" in rest.rsplit("/", 1)[-1]:
        name, tag = rest.rsplit(":", 1)
    first, sep, path = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        first, path = "docker.io", name
    if first == "docker.io" and "/" not in path:
        path = "library/" + path
    if not path or not re.match(r"^[a-z0-9]+([._/-]+[a-z0-9]+)*$", path) or (tag and not re.match(r"^[\w][\w.-]*$", tag)):
        raise CatalogError(f"{ref!r} is not an image reference (registry/repository[:tag][@digest])")
    return first, path, tag, digest or None


def _image_ref(host: str, path: str, tag: str, digest: Optional[str]) -> str:
    return f"{host}/{path}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _check_registry_host(registry_host: str) -> None:
    if not registry_host:
        raise CatalogError("registry_host is empty: set it to the bundle registry, e.g. bootstrap:5000")


def _check_mirrorable(registry: str, what: str) -> None:
    if ":" in registry:
        raise CatalogError(f"{what!r}: an upstream registry with a port has no mirror name; use its plain host")


def mirror_image(ref: str, registry_host: str, flatten_project: str = "") -> str:
    """registry.k8s.io/pause:3.10.2 -> <registry_host>/registry.k8s.io/pause:3.10.2 (or flattened into one project)."""
    host, path, tag, digest = parse_image(ref)
    _check_registry_host(registry_host)
    _check_mirrorable(host, ref)
    if not flatten_project:
        return _image_ref(registry_host.rstrip("/"), f"{host}/{path}", tag, digest)
    if FLAT_SEP in host + path:
        raise CatalogError(f"{ref!r} contains {FLAT_SEP!r}, so it cannot be flattened into one project and back")
    flat = FLAT_SEP.join([host] + path.split("/"))
    return _image_ref(registry_host.rstrip("/"), f"{flatten_project}/{flat}", tag, digest)


def upstream_image(ref: str, registry_host: str, flatten_project: str = "") -> str:
    """The inverse of mirror_image."""
    prefix = registry_host.rstrip("/") + "/"
    if not registry_host or not ref.startswith(prefix):
        raise CatalogError(f"{ref!r} is not under registry_host {registry_host!r}")
    _, path, tag, digest = parse_image(ref)
    rest = ref[len(prefix):].partition("@")[0]
    rest = rest[:len(rest) - len(tag) - 1] if tag else rest
    if flatten_project:
        project, _, flat = rest.partition("/")
        if project != flatten_project or "/" in flat or FLAT_SEP not in flat:
            raise CatalogError(f"{ref!r} is not a flattened name in project {flatten_project!r}")
        rest = flat.replace(FLAT_SEP, "/")
    host, _, path = rest.partition("/")
    if ("." not in host and host != "localhost") or not path:
        raise CatalogError(f"{ref!r} does not start with an upstream registry host under {registry_host!r}")
    return _image_ref(host, path, tag, digest)


def override_url(url: str, bases: Mapping[str, str]) -> str:
    """https://github.com/x -> <bases[github.com]>/x; hosts without an entry stay as they are."""
    _, host, path = _split_url(url)
    base = bases.get(host)
    if not base:
        return url
    if not re.match(r"^https?://[^/]+", base):
        raise CatalogError(f"upstream_bases[{host!r}] = {base!r}: a file host needs a URL, e.g. https://proxy.example.com/{host}")
    return base.rstrip("/") + path


def override_image(ref: str, bases: Mapping[str, str]) -> str:
    """quay.io/calico/node:v1 -> <bases[quay.io]>/calico/node:v1; registries without an entry stay as they are."""
    host, path, tag, digest = parse_image(ref)
    base = bases.get(host)
    if not base:
        return ref
    _check_registry_base(host, base)
    return _image_ref(base.rstrip("/"), path, tag, digest)


def _check_registry_base(host: str, base: str) -> None:
    if "://" in base:
        raise CatalogError(f"upstream_bases[{host!r}] = {base!r}: a registry needs host[:port][/prefix], without a scheme")


def upstream_to_mirror(value: str, mirror: Mirror) -> str:
    """A file URL or an image reference, to its place on the bundle server."""
    if "://" in value:
        return mirror_url(value, mirror.files_repo)
    return mirror_image(value, mirror.registry_host, mirror.flatten_project)


def mirror_to_upstream(value: str, mirror: Mirror) -> str:
    """The inverse of upstream_to_mirror."""
    if "://" in value:
        return upstream_url(value, mirror.files_repo)
    return upstream_image(value, mirror.registry_host, mirror.flatten_project)


def mirror_from_config(config: Mapping) -> Mirror:
    bases = config.get("upstream_bases") or {}
    if not isinstance(bases, Mapping):
        raise CatalogError(f"upstream_bases must be a mapping of upstream host to base, not {type(bases).__name__}")
    values = {k: str(config.get(k) or "").strip() for k in ("files_repo", "registry_host", "registry_flatten_project")}
    for key, value in values.items():
        if "{{" in value:
            raise CatalogError(f"{key} {value!r} is still a template: set it to a plain value in the inventory")
    return Mirror(values["files_repo"], values["registry_host"], values["registry_flatten_project"],
                  {str(k): str(v) for k, v in bases.items()})


# ----------------------------------------------------------------------------- registry mirrors

# Where an upstream registry's API is served when that is not its own name (Docker Hub's is registry-1).
REGISTRY_SERVERS = {"docker.io": "https://registry-1.docker.io"}
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d+)?$")


@dataclass(frozen=True)
class RegistryMirror:
    """An upstream registry and the endpoint that serves its images in one mode: what containerd's hosts.toml
    and kubeadm's imageRepository are made of."""

    upstream: str  # registry.k8s.io
    # hosts.toml's server, the one endpoint containerd tries: the mirror's /v2 path (https://bootstrap:5000/v2/
    # registry.k8s.io, override_path), else the upstream's own API (Docker Hub's: https://registry-1.docker.io).
    # Never the upstream when there is a mirror: containerd falls back to the server when the mirror fails.
    server: str
    mirror: str  # scheme://host[:port] that serves it: https://bootstrap:5000; "" when pulled from upstream itself
    prefix: str  # path under the mirror's /v2/: registry.k8s.io for the bundle registry, a base's /prefix, or ""
    repository: str  # what stands for <upstream> in an image name: bootstrap:5000/registry.k8s.io

    def to_dict(self) -> dict:
        return asdict(self)


def registry_mirror(registry: str, mirror: Mirror, mode: str = "offline") -> RegistryMirror:
    """The endpoint that serves an upstream registry's images: the bundle registry (offline), else its
    upstream_bases entry or the registry itself (upstream). The same rules as mirror_image and override_image."""
    upstream = str(registry).strip()
    if not _REGISTRY.match(upstream):
        raise CatalogError(f"upstream registry {registry!r} is not a registry host: use host[:port], e.g. ghcr.io")
    if mode == "offline":
        _check_registry_host(mirror.registry_host)
        _check_mirrorable(upstream, upstream)
        if mirror.flatten_project:
            raise CatalogError(f"registry_flatten_project {mirror.flatten_project!r} joins image names with "
                               f"{FLAT_SEP!r} into one project, which a registry mirror (containerd's hosts.toml, "
                               f"kubeadm's imageRepository) cannot express: leave it empty")
        base = f"{mirror.registry_host.rstrip('/')}/{upstream}"
    elif mode == "upstream":
        base = mirror.upstream_bases.get(upstream, "").rstrip("/")
        _check_registry_base(upstream, base)
        if not base:
            return RegistryMirror(upstream, REGISTRY_SERVERS.get(upstream, f"https://{upstream}"), "", "", upstream)
    else:
        raise CatalogError(f"mode {mode!r} is not supported: pick one of {_one_of(MODES)}")
    host, _, prefix = base.partition("/")
    return RegistryMirror(upstream, f"https://{host}/v2" + (f"/{prefix}" if prefix else ""), f"https://{host}", prefix,
                          base)


def catalog_registries(catalog: Mapping) -> list:
    """Every upstream registry the catalog's images come from, enabled or not, sorted."""
    found = set()
    for name, comp in catalog.get("components", {}).items():
        if comp.get("kind") == "image":
            for arch in comp.get("arches") or catalog.get("arches") or [NOARCH]:
                image = _render(comp["image"], _template_values(comp, "0", arch), f"{name}.image")
                found.add(parse_image(image)[0])
    return sorted(found)


def _mode(config: Mapping, mode: Optional[str]) -> str:
    return str(mode or config.get("airgap_mode") or "offline")


def registry_mirrors(catalog: Mapping, config: Mapping, mode: Optional[str] = None,
                     extra: Iterable[str] = ()) -> list:
    """Every upstream registry of the catalog's images and of `extra` (registry hosts, or image references),
    each with its RegistryMirror in `mode` (default: the config's airgap_mode, else offline), sorted."""
    mirror = mirror_from_config(config)
    registries = set(catalog_registries(catalog))
    for item in extra or ():
        text = str(item).strip()
        # A URL is a registry given the wrong way: registry_mirror names it with the fix.
        registries.add(parse_image(text)[0] if "/" in text and "://" not in text else text)
    return [registry_mirror(reg, mirror, _mode(config, mode)) for reg in sorted(registries)]


def mirror_repository(repository: str, config: Mapping, mode: Optional[str] = None) -> str:
    """registry.k8s.io[/path] -> where its images are pulled from in `mode`, e.g. bootstrap:5000/registry.k8s.io:
    kubeadm's imageRepository."""
    registry, sep, path = str(repository).strip().rstrip("/").partition("/")
    found = registry_mirror(registry, mirror_from_config(config), _mode(config, mode))
    return found.repository + (f"/{path}" if sep else "")


# ----------------------------------------------------------------------------- overlays

def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return over


def _check_overlay(catalog: Mapping, overlay: Any, source: str) -> None:
    if not isinstance(overlay, Mapping):
        raise CatalogError(f"catalog overlay {source}: must be a mapping shaped like airgap_catalog, "
                           f"not {type(overlay).__name__}")
    unknown = sorted(set(overlay) - set(catalog))
    if unknown:
        raise CatalogError(f"catalog overlay {source}: unknown key {unknown[0]!r}{_suggest(unknown[0], catalog)}: "
                           f"use {_one_of(sorted(catalog))}")
    components = overlay.get("components", {})
    if not isinstance(components, Mapping):
        raise CatalogError(f"catalog overlay {source}: components must be a mapping of name to fields")
    for name, comp in components.items():
        if not isinstance(comp, Mapping):
            raise CatalogError(f"catalog overlay {source}: components.{name} must be a mapping")
        if name not in catalog.get("components", {}) and comp.get("kind") not in KINDS:
            raise CatalogError(f"catalog overlay {source}: new component {name!r} needs kind: {' | '.join(KINDS)}"
                               f"{_suggest(name, catalog.get('components', {}))}")
        for arch, table in (comp.get("sha256") or {}).items():
            if arch not in catalog.get("arches", []) and arch != NOARCH:
                raise CatalogError(f"catalog overlay {source}: components.{name}.sha256 has arch {arch!r}: "
                                   f"use {_one_of(list(catalog.get('arches', [])) + [NOARCH])}")
            for version, sha in (table or {}).items():
                if not isinstance(version, str):
                    raise CatalogError(f"catalog overlay {source}: components.{name}.sha256.{arch} has version "
                                       f"{version!r} as a number: quote it, e.g. \"{version}\"")
                normalize_sha256(sha, f"catalog overlay {source}: components.{name}.sha256.{arch}.{version}")
        for key, value in _digest_entries(comp.get("digests") or {}):
            if not isinstance(key, str):
                raise CatalogError(f"catalog overlay {source}: components.{name}.digests has version {key!r} as a "
                                   f"number: quote it, e.g. \"{key}\"")
            normalize_sha256(value, f"catalog overlay {source}: components.{name}.digests.{key}")


def _digest_entries(table: Any) -> list:
    """(version, digest) pairs of a digests table, flat or by arch; a table that is no mapping is left to resolve."""
    if not isinstance(table, Mapping):
        return []
    pairs = []
    for key, value in table.items():
        pairs.extend(value.items() if isinstance(value, Mapping) else [(key, value)])
    return pairs


def apply_overlays(catalog: Mapping, overlays: Iterable[Any]) -> dict:
    """Deep-merges overlays (dicts, or (source, dict) pairs) over the catalog; lists and scalars replace."""
    merged = dict(catalog)
    for index, item in enumerate(overlays):
        source, overlay = item if isinstance(item, tuple) else (f"#{index + 1}", item)
        if isinstance(overlay, Mapping) and set(overlay) == {"airgap_catalog"}:
            overlay = overlay["airgap_catalog"]
        _check_overlay(merged, overlay, source)
        merged = _merge(merged, overlay)
    return merged


# ----------------------------------------------------------------------------- resolution

@dataclass(frozen=True)
class _Context:
    catalog: Mapping
    config: Mapping
    line: str
    kube_version: str
    mirror: Mirror
    mode: str
    os_family: str


def kube_line(catalog: Mapping, config: Mapping) -> tuple[str, str]:
    """(line, full kube_version) from kube_version; MAJOR.MINOR means the line's default release."""
    lines = catalog.get("lines", {})
    raw = config.get("kube_version") or lines.get(catalog.get("default_line"), {}).get("kube_version", "")
    version = _str_version("kube_version", raw)
    release = kube_release(version)
    if release is None:
        raise CatalogError(f"kube_version {raw!r} is not a Kubernetes release: use vMAJOR.MINOR.PATCH, e.g. v1.36.4")
    line, patch = release
    if line not in lines:
        raise CatalogError(f"kube_version v{version} is on line {line}, which the catalog does not support: "
                           f"pick one of {_one_of(_sorted_versions(lines))}, or add the line with a catalog overlay")
    if patch is None:
        version = _str_version("kube_version", lines[line].get("kube_version", ""))
    return line, version


def component_version(catalog: Mapping, config: Mapping, name: str, line: str) -> str:
    comp = catalog["components"][name]
    var = comp.get("version_var")
    if not var:
        return _str_version(f"{name}.version", comp.get("version", ""))
    for source in (config, catalog.get("lines", {}).get(line, {}), catalog.get("versions", {})):
        value = source.get(var)
        if value not in (None, ""):
            version = _str_version(var, value)
            if not _VERSION.match(version):
                raise CatalogError(f"{var} {value!r} (for {name}) is not a version: use e.g. "
                                   f"{var}: \"1.2.3\"")
            return version
    raise CatalogError(f"{var} (for {name}) has no default on line {line}: set {var} in the inventory")


def is_enabled(component: Mapping, config: Mapping) -> bool:
    """enabled_when: every knob has (one of) the value(s); enabled_by: every knob named is true."""
    for var, want in (component.get("enabled_when") or {}).items():
        wants = want if isinstance(want, list) else [want]
        if config.get(var) not in wants:
            return False
    by = component.get("enabled_by") or []
    return all(truthy(config.get(var)) for var in ([by] if isinstance(by, str) else by))


def validate_config(catalog: Mapping, config: Mapping) -> None:
    for var, valid in (catalog.get("choices") or {}).items():
        value = config.get(var)
        if value not in valid:
            raise CatalogError(f"{var} {value!r} is not supported: pick one of {_one_of(valid)}"
                               f"{_suggest(str(value), valid)}")


def _template_values(comp: Mapping, version: str, arch: str) -> dict:
    return {"version": version, "arch": (comp.get("arch_map") or {}).get(arch, arch),
            "arch_suffix": (comp.get("arch_suffix") or {}).get(arch, "")}


def _release(version: str) -> tuple:
    """3.5.0-rc.1 -> (3, 5, 0): the leading numeric components, for `since` comparisons."""
    numbers = []
    for part in re.split(r"[.-]", version):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def _unpack_members(members: Iterable, values: Mapping[str, str], name: str) -> list:
    """Rendered member paths; a {path, since} member counts only from release `since` on (etcdutl: 3.5)."""
    what = f"{name}.unpack.members"
    rendered = []
    for member in members:
        if isinstance(member, Mapping):
            if set(member) - {"path", "since"} or not member.get("path") or not member.get("since"):
                raise CatalogError(f"{what} entry {dict(member)!r}: use a path, or {{path: ..., since: X.Y}}")
            if _release(values["version"]) < _release(_str_version(f"{what} since", member["since"])):
                continue
            member = member["path"]
        rendered.append(_render(str(member), values, what))
    return rendered


def _check_arch(comp: Mapping, name: str, arch: str) -> None:
    only = comp.get("arches")
    if only and arch not in only:
        raise CatalogError(f"{name} is not built for {arch}: the catalog has it for {_one_of(only)} only")


def _resolve_file(ctx: _Context, name: str, comp: Mapping, arch: str, enabled: bool) -> ResolvedFile:
    var = comp.get("version_var") or f"{name}.version"
    version = component_version(ctx.catalog, ctx.config, name, ctx.line)
    sha_arch = NOARCH if comp.get("noarch") else arch
    table = (comp.get("sha256") or {}).get(sha_arch) or {}
    sha = table.get(version)
    if sha is None:
        known = [str(v) for v in table]
        same_line = [v for v in known if v.split(".")[:2] == version.split(".")[:2]]
        pick = f"pick one of {compress_versions(same_line or known)}" if known else f"the catalog has none for {sha_arch}"
        raise CatalogError(f"{var} v{version} has no sha256 for {name}/{arch} in the catalog: "
                           f"add it (catalog_overlay_files), or {pick}")
    values = _template_values(comp, version, arch)
    canonical = _render(comp["url"], values, f"{name}.url")
    mirrored = mirror_url(canonical, ctx.mirror.files_repo) if ctx.mirror.files_repo else ""
    upstream = override_url(canonical, ctx.mirror.upstream_bases)
    unpack = None
    if comp.get("unpack"):
        unpack = dict(comp["unpack"])
        unpack["members"] = _unpack_members(unpack.get("members") or [], values, name)
    return ResolvedFile(
        name=name, version=version, arch=arch, url=mirrored if ctx.mode == "offline" else upstream,
        upstream_url=upstream, canonical_url=canonical, mirror_url=mirrored, mirror_path=mirror_path(canonical),
        dest=_render(comp.get("dest", ""), values, f"{name}.dest"),
        sha256=normalize_sha256(sha, f"{name}.sha256.{sha_arch}.{version}"),
        mode=str(comp.get("mode", "0755")), unpack=unpack, groups=tuple(comp.get("groups", ())), enabled=enabled)


def image_digest(comp: Mapping, name: str, version: str, arch: str, multiarch: bool = True) -> Optional[str]:
    """The digest the catalog pins an image's version to (sha256:<hex>), or None when it is pinned by tag only.

    A multi-arch image has one index digest per version (digests.<version>); an image whose name or tag names the
    arch has one per arch (digests.<arch>.<version>), like a file's sha256.
    """
    table = comp.get("digests") or {}
    if not isinstance(table, Mapping):
        raise CatalogError(f"{name}.digests must map versions to sha256:<hex> digests, not {type(table).__name__}")
    nested = [k for k, v in table.items() if isinstance(v, Mapping)]
    if multiarch and nested:
        raise CatalogError(f"{name}.digests.{nested[0]}: {name} is one multi-arch image, so each version has one "
                           f"index digest: write digests: {{\"{version}\": sha256:...}}")
    if not multiarch and len(nested) != len(table):
        raise CatalogError(f"{name}.digests: {name} names the arch in its reference, so each arch has its own "
                           f"digest: write digests: {{{arch}: {{\"{version}\": sha256:...}}}}")
    where = f"{name}.digests.{arch}.{version}" if not multiarch else f"{name}.digests.{version}"
    value = (table.get(arch) or {}).get(version) if not multiarch else table.get(version)
    return f"sha256:{normalize_sha256(value, where)}" if value else None


def unpinned_images(images: Iterable[Any]) -> list:
    """One line for each image pinned by tag only, for build-bundle to report; empty when every image is pinned.

    Takes resolved images or bundle image jobs: anything with name, canonical and digest, in the order given.
    """
    lines = []
    for image in images:
        if not image.digest:
            lines.append(f"{image.canonical} ({image.name}) is pinned by tag only: the bundle holds whatever the tag "
                         f"names when it is built; pin it with airgap_catalog.components.{image.name}.digests "
                         f"(catalog_overlay_files) to the digest its publisher states")
    return lines


def _resolve_image(ctx: _Context, name: str, comp: Mapping, arch: str, enabled: bool) -> ResolvedImage:
    version = component_version(ctx.catalog, ctx.config, name, ctx.line)
    values = _template_values(comp, version, arch)
    image = _render(comp["image"], values, f"{name}.image")
    tag = _render(comp.get("tag", "{version}"), values, f"{name}.tag")
    # A reference that names no arch is a manifest list: one tag serves every arch.
    multiarch = "{arch" not in comp["image"] + comp.get("tag", "")
    digest = image_digest(comp, name, version, arch, multiarch)
    # canonical names the image in the bundle's registry storage and manifest, so it keeps the tag only; the
    # references to pull from carry the pin, so what is pulled is what the catalog names or nothing.
    canonical = _image_ref(*parse_image(f"{image}:{tag}")[:3], None)
    pinned = f"{canonical}@{digest}" if digest else canonical
    mirrored = (mirror_image(pinned, ctx.mirror.registry_host, ctx.mirror.flatten_project)
                if ctx.mirror.registry_host else "")
    upstream = override_image(pinned, ctx.mirror.upstream_bases)
    return ResolvedImage(
        name=name, version=version, arch=arch, ref=mirrored if ctx.mode == "offline" else upstream,
        upstream=upstream, canonical=canonical, mirror=mirrored, digest=digest, multiarch=multiarch,
        groups=tuple(comp.get("groups", ())), enabled=enabled)


def _resolve_package(ctx: _Context, name: str, comp: Mapping, enabled: bool) -> ResolvedPackage:
    packages = dict(comp.get("packages") or {})
    if ctx.os_family not in packages:
        raise CatalogError(f"{name} has no package name for OS family {ctx.os_family}: "
                           f"the catalog has {_one_of(packages) or 'none'}")
    return ResolvedPackage(name=name, package=str(packages[ctx.os_family]), os_family=ctx.os_family,
                           packages=packages, groups=tuple(comp.get("groups", ())), enabled=enabled)


def _context(catalog: Mapping, config: Mapping, mode: str, os_family: str) -> _Context:
    if mode not in MODES:
        raise CatalogError(f"mode {mode!r} is not supported: pick one of {_one_of(MODES)}")
    families = catalog.get("os_families", [])
    if os_family not in families:
        raise CatalogError(f"OS family {os_family!r} is not supported: pick one of {_one_of(families)}")
    validate_config(catalog, config)
    mirror = mirror_from_config(config)
    if mode == "offline":
        for key, value in (("files_repo", mirror.files_repo), ("registry_host", mirror.registry_host)):
            if not value:
                raise CatalogError(f"{key} is empty: offline mode fetches from the bundle server, so set {key} "
                                   f"(or use mode upstream)")
    line, kube_version = kube_line(catalog, config)
    return _Context(catalog, {**config, "kube_version": kube_version}, line, kube_version, mirror, mode, os_family)


def _resolve_component(ctx: _Context, name: str, arch: str, enabled: bool) -> ResolvedArtifact:
    comp = ctx.catalog["components"][name]
    kind = comp.get("kind")
    if kind == "package":
        return _resolve_package(ctx, name, comp, enabled)
    _check_arch(comp, name, arch)
    if kind == "file":
        return _resolve_file(ctx, name, comp, arch, enabled)
    if kind == "image":
        return _resolve_image(ctx, name, comp, arch, enabled)
    raise CatalogError(f"component {name} has kind {kind!r}: use {' | '.join(KINDS)}")


def resolve(catalog: Mapping, config: Mapping, arch: str, mode: str = "offline", kind: Optional[str] = None,
            os_family: str = "debian") -> list[ResolvedArtifact]:
    """Every artifact the config enables, for one arch, in catalog order; kind narrows to file, image or package."""
    if kind is not None and kind not in KINDS:
        raise CatalogError(f"kind {kind!r} is not supported: pick one of {_one_of(KINDS)}")
    arch = normalize_arch(catalog, arch)
    ctx = _context(catalog, config, mode, os_family)
    return [_resolve_component(ctx, name, arch, True)
            for name, comp in catalog.get("components", {}).items()
            if (kind is None or comp.get("kind") == kind) and is_enabled(comp, ctx.config)]


def resolve_one(catalog: Mapping, config: Mapping, name: str, arch: str, mode: str = "offline",
                os_family: str = "debian") -> ResolvedArtifact:
    """One artifact by name, enabled or not (its `enabled` field says which)."""
    components = catalog.get("components", {})
    if name not in components:
        raise CatalogError(f"unknown artifact {name!r}{_suggest(name, components)}: "
                           f"the catalog has {_one_of(components)}")
    arch = normalize_arch(catalog, arch)
    ctx = _context(catalog, config, mode, os_family)
    return _resolve_component(ctx, name, arch, is_enabled(components[name], ctx.config))


def config_keys(catalog: Mapping) -> set:
    """The knobs resolution reads, so a caller can template just those."""
    keys = {"kube_version", "files_repo", "registry_host", "registry_flatten_project", "upstream_bases"}
    keys.update(catalog.get("choices", {}))
    for comp in catalog.get("components", {}).values():
        if comp.get("version_var"):
            keys.add(comp["version_var"])
        keys.update(comp.get("enabled_when") or {})
        by = comp.get("enabled_by") or []
        keys.update([by] if isinstance(by, str) else by)
    return keys


def catalog_problems(catalog: Mapping, config: Mapping, arches: Iterable[str], mode: str = "offline",
                     os_family: str = "debian") -> list[str]:
    """Every reason the catalog cannot serve the config, for every arch: each enabled artifact is resolved, and each
    failure is one line (an unknown choice or version, a missing checksum, an unsupported arch). Empty: all good."""
    problems: list[str] = []
    try:
        ctx = _context(catalog, config, mode, os_family)
    except CatalogError as exc:
        return [str(exc)]
    for arch in arches:
        try:
            arch = normalize_arch(catalog, arch)
        except CatalogError as exc:
            problems.append(str(exc))
            continue
        for name, comp in catalog.get("components", {}).items():
            if not is_enabled(comp, ctx.config):
                continue
            try:
                _resolve_component(ctx, name, arch, True)
            except CatalogError as exc:
                if str(exc) not in problems:
                    problems.append(str(exc))
    return problems
