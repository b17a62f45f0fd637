"""Bundle format: writes manifest.json and verifies every file and image blob of an unpacked bundle against it."""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from ansible_collections.airgap.kubernetes.plugins.module_utils.digests import sha256_file

FORMAT = "airgap.kubernetes/bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The release key's detached, armored signature of manifest.json (build-bundle --sign-key); not listed in the manifest.
SIGNATURE = "manifest.json.asc"
# The release key's public half, shipped so that a pinned fingerprint can be checked; trusted only through the pin.
RELEASE_KEY = "keys/release.asc"
# Registry storage is content-addressed and verified image by image; everything else is listed file by file.
REGISTRY_DIR = "registry"
REGISTRY_V2 = "registry/docker/registry/v2"
APT_KEY = "keys/bundle-apt.asc"
FIX = "re-copy the bundle, compare with bundle.tar.gz.sha256"

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

PathLike = Union[str, os.PathLike]


class BundleError(Exception):
    """The bundle cannot be verified at all (no or unreadable manifest); the message says why and how to fix it."""


@dataclass(frozen=True)
class Problem:
    """One file or image that does not match the manifest."""

    kind: str  # modified | missing | unexpected | image
    name: str  # bundle-relative path, or image reference
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


def split_reference(ref: str) -> tuple[str, Optional[str], Optional[str]]:
    """Split `host/path[:tag][@sha256:...]` into (repository, tag, digest)."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    tag = None
    name_start = ref.rfind("/") + 1
    if ":" in ref[name_start:]:
        ref, tag = ref.rsplit(":", 1)
    if not ref or (tag is None and digest is None):
        raise BundleError(f"image reference {ref!r} needs a tag or a digest, e.g. registry.k8s.io/pause:3.10")
    return ref, tag, digest


def _blob_path(root: Path, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return root / REGISTRY_V2 / "blobs" / "sha256" / hexd[:2] / hexd / "data"


def read_tag_digest(bundle_dir: PathLike, ref: str) -> str:
    """The digest that registry storage holds for a tagged image reference (what build-bundle records)."""
    repository, tag, digest = split_reference(ref)
    if tag is None:
        return str(digest)
    link = Path(bundle_dir) / REGISTRY_V2 / "repositories" / repository / "_manifests" / "tags" / tag / "current" / "link"
    try:
        return link.read_text().strip()
    except OSError as e:
        raise BundleError(f"image {ref} is not in the registry storage ({link}): copy it in before writing the manifest") from e


def _walk_files(root: Path) -> Iterable[tuple[str, Path]]:
    """Every entry below root outside registry storage, as (bundle-relative posix path, path); directories excluded."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d != REGISTRY_DIR]
        # Symlinked directories are not followed; they show up as entries and are refused.
        for d in list(dirnames):
            if (Path(dirpath) / d).is_symlink():
                dirnames.remove(d)
                filenames.append(d)
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if rel in (MANIFEST, SIGNATURE):
                continue
            yield rel, Path(dirpath) / name


def _irregular(path: Path) -> Optional[str]:
    """What an entry is when it is neither a regular file nor a directory (not followed), else None."""
    mode = path.lstat().st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISLNK(mode):
        return f"a symlink to {os.readlink(path)}"
    return "a fifo" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"


def _irregular_registry_entries(root: Path) -> Iterable[tuple[str, str]]:
    """(bundle-relative path, what it is) for every entry of registry storage that is not a regular file or a
    directory. A link there would make the registry serve, and the role's chown reach, whatever it points at."""
    top = root / REGISTRY_DIR
    if not os.path.lexists(top):
        return
    what = _irregular(top)
    if what:
        yield REGISTRY_DIR, what
        return
    for dirpath, dirnames, filenames in os.walk(top):  # os.walk lists a linked directory but does not enter it
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            what = _irregular(path)
            if what:
                yield path.relative_to(root).as_posix(), what


def write_manifest(
    bundle_dir: PathLike,
    images: Mapping[str, str],
    arches: Iterable[str],
    apt_suites: Iterable[str] = (),
    versions: Optional[Mapping[str, str]] = None,
    config: Optional[Mapping] = None,
    created: Optional[str] = None,
    signed_by: Optional[str] = None,
    serial: Optional[int] = None,
) -> dict:
    """Hash every file of the bundle, record the images' digests and write manifest.json; returns the manifest.

    images maps each upstream reference (`registry.k8s.io/pause:3.10`) to its digest in the registry storage;
    use read_tag_digest() to get it after copying the image in. signed_by is the fingerprint of the release key
    that will sign the manifest (recorded for people; the signature itself is what is checked). serial orders
    bundles for the downgrade check; by default the seconds since 1970 of `created`.
    """
    root = Path(bundle_dir)
    files: dict[str, dict] = {}
    for rel, path in sorted(_walk_files(root)):
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"{rel} is not a regular file: bundles hold only regular files, replace it with a copy")
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    suites = sorted(apt_suites)
    if suites and APT_KEY not in files:
        raise BundleError(f"the bundle has apt suites {suites} but no signing key at {APT_KEY}: export the public key there")
    image_entries = {}
    for ref, digest in sorted(images.items()):
        split_reference(ref)
        if not _DIGEST.match(digest):
            raise BundleError(f"image {ref} has digest {digest!r}, expected sha256:<64 hex digits>")
        image_entries[ref] = {"digest": digest}
    created = created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": created,
        "serial": serial if serial is not None else _created_seconds(created),
        "signed_by": signed_by,
        "arches": sorted(arches),
        "versions": dict(versions or {}),
        "config": dict(config or {}),
        "apt": {"key": APT_KEY if suites else None, "suites": suites},
        "files": files,
        "images": image_entries,
    }
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(root / MANIFEST)
    return manifest


def _created_seconds(created: str) -> int:
    """Seconds since 1970 of a manifest's `created` (UTC, ISO 8601 with Z)."""
    try:
        when = _dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    except (TypeError, ValueError) as e:
        raise BundleError(f"created {created!r} is not a UTC time like 2026-01-31T12:00:00Z") from e
    return int(when.timestamp())


def serial(manifest: Mapping) -> int:
    """The order of a bundle among its site's builds: its "serial", else (older manifests) its creation time."""
    value = manifest.get("serial")
    return value if isinstance(value, int) else _created_seconds(str(manifest.get("created")))


def downgrade_problem(manifest: Mapping, deployed: Mapping) -> Optional[str]:
    """Why serving manifest's bundle in place of deployed's is a downgrade, or None when it is not older."""
    new, old = serial(manifest), serial(deployed)
    if new >= old:
        return None
    return (f"this bundle (built {manifest.get('created')}, serial {new}) is older than the one being served "
            f"(built {deployed.get('created')}, serial {old}): serving it would bring back whatever the newer bundle "
            "fixed. Carry the newer bundle, or set bundle_allow_downgrade: true to serve the older one on purpose")


def downgrade_from(bundle_dir: PathLike, deployed_dir: Optional[PathLike]) -> Optional[str]:
    """Why bundle_dir's bundle is older than the one served from deployed_dir; None when it is not older, or when
    nothing (or no readable manifest) is served there."""
    if not deployed_dir or not (Path(deployed_dir) / MANIFEST).is_file():
        return None
    try:
        served = load_manifest(deployed_dir)
    except BundleError:
        return None  # a served tree without a readable manifest gives no order to keep
    return downgrade_problem(load_manifest(bundle_dir), served)


def load_manifest(bundle_dir: PathLike) -> dict:
    """Read and check manifest.json's shape; raises BundleError naming what is wrong."""
    path = Path(bundle_dir) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise BundleError(f"{path} does not exist: this is not an unpacked bundle; {FIX}") from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}): {FIX}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{path} is not a bundle manifest (no \"format\": \"{FORMAT}\"): {FIX}")
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path} has format_version {data.get('format_version')!r}; this collection reads {FORMAT_VERSION}: "
            "use the airgap.kubernetes release that built the bundle"
        )
    files, images = data.get("files"), data.get("images")
    bad_files = not isinstance(files, dict) or any(
        not isinstance(v, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(v.get("sha256", ""))) for v in files.values()
    )
    if bad_files:
        raise BundleError(f"{path}: \"files\" must map paths to {{\"sha256\": <64 hex>, \"size\": n}}: {FIX}")
    if not isinstance(images, dict) or any(
        not isinstance(v, dict) or not _DIGEST.match(str(v.get("digest", ""))) for v in images.values()
    ):
        raise BundleError(f"{path}: \"images\" must map references to {{\"digest\": \"sha256:<64 hex>\"}}: {FIX}")
    apt = data.get("apt", {"key": None, "suites": []})
    if not isinstance(apt, dict) or not isinstance(apt.get("suites", []), list):
        raise BundleError(f"{path}: \"apt\" must be {{\"key\": ..., \"suites\": [...]}}: {FIX}")
    # The role copies apt.key to a world-readable place: it may only ever name the bundle's own key file.
    key = apt.get("key")
    if key is not None and (key != APT_KEY or APT_KEY not in files):
        raise BundleError(f"{path}: apt.key is {key!r}; a bundle's apt key is always {APT_KEY}, listed in \"files\": "
                          f"the manifest is not one build-bundle wrote; {FIX}")
    if apt.get("suites") and key is None:
        raise BundleError(f"{path}: apt suites {apt['suites']} but no apt.key: {FIX}")
    if "serial" in data and (not isinstance(data["serial"], int) or isinstance(data["serial"], bool)):
        raise BundleError(f"{path}: \"serial\" is {data['serial']!r}, expected an integer: {FIX}")
    return data


class _ImageChecker:
    """Checks images in registry storage; blobs shared between images are hashed once."""

    def __init__(self, root: Path, arches: Iterable[str]) -> None:
        self.root = root
        self.arches = set(arches)
        self.blob_ok: dict[str, Optional[str]] = {}  # digest -> None if good, else what is wrong

    def blob(self, digest: str) -> Optional[str]:
        if digest not in self.blob_ok:
            path = _blob_path(self.root, digest)
            rel = path.relative_to(self.root).as_posix()
            if not path.is_file():
                self.blob_ok[digest] = f"is missing ({rel})"
            elif "sha256:" + sha256_file(path) != digest:
                self.blob_ok[digest] = f"is modified ({rel} does not hash to its digest)"
            else:
                self.blob_ok[digest] = None
        return self.blob_ok[digest]

    def image(self, ref: str, digest: str) -> list[Problem]:
        repository, tag, _ = split_reference(ref)
        repo_dir = self.root / REGISTRY_V2 / "repositories" / repository
        if not repo_dir.is_dir():
            return [Problem("image", ref, f"repository {repository} is missing from the registry storage")]
        problems = []
        if tag is not None:
            link = repo_dir / "_manifests" / "tags" / tag / "current" / "link"
            current = link.read_text().strip() if link.is_file() else None
            if current != digest:
                problems.append(Problem("image", ref, f"tag {tag} points to {current}, the manifest says {digest}"))
        problems += self._manifest(ref, repo_dir, digest, depth=0)
        return problems

    def _manifest(self, ref: str, repo_dir: Path, digest: str, depth: int) -> list[Problem]:
        if not (repo_dir / "_manifests" / "revisions" / "sha256" / digest[7:] / "link").is_file():
            return [Problem("image", ref, f"manifest {digest} is not linked in its repository")]
        wrong = self.blob(digest)
        if wrong:
            return [Problem("image", ref, f"manifest blob {digest} {wrong}")]
        try:
            doc = json.loads(_blob_path(self.root, digest).read_bytes())
        except ValueError:
            return [Problem("image", ref, f"manifest blob {digest} is not JSON")]
        problems: list[Problem] = []
        if doc.get("mediaType") in INDEX_TYPES or ("manifests" in doc and "layers" not in doc):
            if depth > 1:
                return [Problem("image", ref, f"manifest {digest} nests indexes too deep")]
            for child in doc.get("manifests", []):
                child_digest = str(child.get("digest", ""))
                arch = (child.get("platform") or {}).get("architecture")
                linked = (repo_dir / "_manifests" / "revisions" / "sha256" / child_digest[7:] / "link").is_file()
                # A bundle built for some arches holds a sparse index: other platforms may be absent.
                if linked or not self.arches or arch is None or arch in self.arches:
                    problems += self._manifest(ref, repo_dir, child_digest, depth + 1)
            return problems
        descriptors = [("config", doc.get("config") or {})] + [("layer", d) for d in doc.get("layers", [])]
        for role, desc in descriptors:
            blob_digest = str(desc.get("digest", ""))
            if not _DIGEST.match(blob_digest):
                problems.append(Problem("image", ref, f"{role} descriptor in {digest} has no sha256 digest"))
                continue
            wrong = self.blob(blob_digest)
            if wrong:
                problems.append(Problem("image", ref, f"{role} blob {blob_digest} {wrong}"))
            elif role == "layer" and not (repo_dir / "_layers" / "sha256" / blob_digest[7:] / "link").is_file():
                problems.append(Problem("image", ref, f"layer blob {blob_digest} is not linked in its repository"))
        return problems


def verify_bundle(bundle_dir: PathLike) -> list[Problem]:
    """Every difference between an unpacked bundle and its manifest; empty when the bundle is intact.

    Checked: the sha256 of every listed file, every blob of every listed image (manifests, configs, layers,
    and for indexes the manifest of each platform in the manifest's arches, or present), and files outside registry storage that the manifest does not
    list (refused: nginx would serve them). Extra content in registry storage is ignored: it is
    content-addressed, so it cannot change a listed image, and local pushes may add to it. Anywhere in the
    bundle, registry storage included, an entry that is not a regular file or a directory is refused.
    Raises BundleError when manifest.json is missing or unreadable.
    """
    root = Path(bundle_dir)
    manifest = load_manifest(root)
    problems: list[Problem] = []
    listed: dict[str, dict] = manifest["files"]
    present = {}
    for rel, path in _walk_files(root):
        present[rel] = path
    for rel in sorted(listed):
        path = present.get(rel)
        if path is None:
            problems.append(Problem("missing", rel, "is listed in the manifest but missing"))
        elif path.is_symlink() or not path.is_file():
            problems.append(Problem("modified", rel, "is not a regular file"))
        elif sha256_file(path) != listed[rel]["sha256"]:
            problems.append(Problem("modified", rel, f"is modified (sha256 differs from the manifest's {listed[rel]['sha256'][:12]}…)"))
    for rel in sorted(set(present) - set(listed)):
        problems.append(Problem("unexpected", rel, "is not in the manifest"))
    for rel, what in sorted(_irregular_registry_entries(root)):
        problems.append(Problem("unexpected", rel, f"is {what}: a bundle holds only regular files and directories"))
    checker = _ImageChecker(root, manifest.get("arches") or [])
    for ref, entry in sorted(manifest["images"].items()):
        problems += checker.image(ref, entry["digest"])
    return problems


def summary(bundle_dir: PathLike) -> dict:
    """What a consumer of a verified bundle needs: apt suites and key, images, and the smallest file under files/."""
    manifest = load_manifest(bundle_dir)
    mirrored = {p: e for p, e in manifest["files"].items() if p.startswith("files/")}
    sample = min(mirrored.items(), key=lambda kv: (kv[1].get("size", 0), kv[0]), default=None)
    return {
        "created": manifest.get("created"),
        "serial": serial(manifest),
        "signed_by": manifest.get("signed_by"),
        "arches": manifest.get("arches", []),
        "apt": manifest.get("apt", {"key": None, "suites": []}),
        "files_count": len(manifest["files"]),
        "images": {ref: e["digest"] for ref, e in manifest["images"].items()},
        "repositories": sorted({split_reference(ref)[0] for ref in manifest["images"]}),
        "sample_file": {"path": sample[0], "sha256": sample[1]["sha256"]} if sample else None,
    }
