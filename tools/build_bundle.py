"""Engine of `./run.sh build-bundle`: fetches everything the config needs (the resolver's lists) into one bundle tarball.

Its parts: the plan (bundle_plan), downloads (bundle_downloads), images (bundle_images), the apt repository
(bundle_apt); here the collection and wheelhouse, the build's phases and the command line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt
from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle_trust, manifests
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver
from ansible_collections.airgap.kubernetes.plugins.module_utils.digests import hash_tree, sha256_file
from ansible_collections.airgap.kubernetes.tools import bundle_wheelhouse, list_artifacts
from ansible_collections.airgap.kubernetes.tools import options as cli_options
from ansible_collections.airgap.kubernetes.tools.bundle_apt import (DEBIAN_MIRROR, DEBIAN_SECURITY, apt_closure,
                                                                     write_apt_repo)
from ansible_collections.airgap.kubernetes.tools.bundle_common import CACHE, BuildError, run
from ansible_collections.airgap.kubernetes.tools.bundle_downloads import download_all, prune
from ansible_collections.airgap.kubernetes.tools.bundle_images import copy_images, prune_repositories
from ansible_collections.airgap.kubernetes.tools.bundle_plan import Plan, make_plan, suites_for
from ansible_collections.airgap.kubernetes.tools.bundle_sign import SigningKey, detach_sign, public_key, signing_key
from ansible_collections.airgap.kubernetes.tools.progress import Progress

REPO = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "airgap-bundle"
TARBALL = "bundle.tar.gz"


# ----------------------------------------------------------------------------- the collection and the wheelhouse

def _source_tree(repo: Path, exclude: Iterable[Path], dest: Path) -> None:
    """Copy the collection's source (git's view when it is a checkout) to dest, leaving out build outputs."""
    excluded = [Path(p).resolve() for p in exclude]
    if (repo / ".git").exists():
        names = run(["git", "-C", repo, "ls-files", "-co", "--exclude-standard", "-z"]).stdout.split("\0")
    else:
        names = [p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file() and not p.is_symlink()]
    for name in names:
        if not name or name.split("/", 1)[0] in (".lab", ".collections", ".airgap", ".cache", ".git"):
            continue
        src = repo / name
        target = dest / name
        # A link inside the collection stays a link (roles/cluster_defaults/defaults/main -> group_vars/all: without
        # it, the installed collection has no defaults and layer 00 fails on the first setting); one that leads out
        # of the checkout is left out.
        if src.is_symlink():
            if src.resolve().is_relative_to(repo.resolve()):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(os.readlink(src))
            continue
        if not src.is_file() or any(src.resolve().is_relative_to(e) for e in excluded):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _tree_sha256(root: Path) -> str:
    digest = hashlib.sha256()
    hash_tree(digest, root, "source")
    return digest.hexdigest()


def build_collection(bundle: Path, out: Path, state: dict) -> Path:
    """collection/airgap-kubernetes-<version>.tar.gz from this checkout (ansible-galaxy collection build).

    Rebuilt only when the source changed (state["collection"]), since each build differs in its timestamps.
    """
    galaxy = shutil.which("ansible-galaxy") or str(Path(sys.executable).parent / "ansible-galaxy")
    target = bundle / "collection"
    with tempfile.TemporaryDirectory(prefix="airgap-collection-") as tmp:
        _source_tree(REPO, [out], Path(tmp) / "src")
        source = _tree_sha256(Path(tmp) / "src")
        if state.get("collection") != source or not list(target.glob("*.tar.gz")):
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            run([galaxy, "collection", "build", Path(tmp) / "src", "--output-path", target, "--force"])
            state["collection"] = source
    built = sorted(target.glob("*.tar.gz"))
    if not built:
        raise BuildError("ansible-galaxy collection build wrote no tarball: run it by hand to see why")
    return built[0]


# ----------------------------------------------------------------------------- the build

@dataclass
class Options:
    out: Path
    arches: list
    suites: list
    jobs: int = 4
    wheelhouse: bool = True
    collection: bool = True
    tarball: bool = True
    requirements: Path = REPO / "requirements.txt"
    debian_mirror: str = DEBIAN_MIRROR
    debian_security: str = DEBIAN_SECURITY
    retries: int = 4
    # Verified downloads by sha256, shared by builds into other output dirs; None to fetch everything again.
    cache: Optional[Path] = CACHE / "downloads"
    # The site's release key (gpg): signs manifest.json and the apt repo. None: unsigned, trusted by sha256 only.
    sign_key: Optional[SigningKey] = None


@dataclass
class Result:
    bundle_dir: Path
    tarball: Optional[Path]
    manifest: dict
    timings: dict
    sizes: dict


def tarball_members(bundle: Path) -> list:
    """What make_tarball packs, in its order: manifest.json, manifest.json.asc and keys/release.asc first (those
    present), so that a bundle host checks the signature from the tarball's head before it unpacks anything; then the
    top-level directory and the rest, sorted (the same tree packs to the same order)."""
    first = [name for name in bundle_trust.TRUST_MEMBERS
             if (bundle / name).is_file() and not (bundle / name).is_symlink()]
    names = [f"{bundle.name}/{name}" for name in first]
    head = set(names)
    for here, dirs, files in os.walk(bundle):
        dirs.sort()
        rel = Path(here).relative_to(bundle.parent).as_posix()
        names.append(rel)
        # A link to a directory is listed among dirs; os.walk does not follow it, and tar packs it as the link.
        names += [f"{rel}/{name}" for name in sorted(files + [d for d in dirs if (Path(here) / d).is_symlink()])
                  if f"{rel}/{name}" not in head]
    return names


def make_tarball(bundle: Path, out: Path) -> Path:
    """out/bundle.tar.gz with the bundle as its one top-level directory, its trust members first (tarball_members),
    and bundle.tar.gz.sha256 beside it."""
    tarball = out / TARBALL
    tmp = out / (TARBALL + ".tmp")
    listing = out / (TARBALL + ".members")
    listing.write_bytes(b"".join(name.encode() + b"\0" for name in tarball_members(bundle)))
    try:
        # Exactly the listed names, in that order: without --no-recursion a directory would bring its files again.
        run(["tar", "-C", bundle.parent, "--owner=0", "--group=0", "--no-recursion", "--null", "-T", listing,
             "-czf", tmp])
    finally:
        listing.unlink(missing_ok=True)
    tmp.replace(tarball)
    (out / (TARBALL + ".sha256")).write_text(f"{sha256_file(tarball)}  {TARBALL}\n")
    return tarball


STATE = ".build-state.json"


def _load_state(out: Path) -> dict:
    """What the last build into out made (fingerprints), so a rerun redoes only what changed."""
    try:
        return json.loads((out / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _fingerprint(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0


@dataclass
class _Build:
    """What the phases of one build share."""

    catalog: Mapping
    config: Mapping
    options: Options
    progress: Progress
    out: Path
    bundle: Path
    plan: Plan
    state: dict  # fingerprints of the last build into out, updated by each phase

    @property
    def signer(self) -> Optional[str]:
        return self.options.sign_key.fingerprint if self.options.sign_key else None


def _files(b: _Build) -> None:
    with b.progress.phase("files", len(b.plan.files), "files"):
        download_all(b.plan.files, b.bundle, b.progress, b.options.jobs, b.options.retries, b.options.cache)
        prune(b.bundle / "files", {job.path for job in b.plan.files}, b.bundle)
    # An upstream manifest among the files (the Gateway API CRDs, an operator's own) may run only bundled images.
    manifests.check_bundled_files({job.path: b.bundle / job.path for job in b.plan.files},
                                  [job.canonical for job in b.plan.images])


def _images(b: _Build) -> dict:
    """{canonical reference: digest} of every image, copied into the bundle's registry storage."""
    insecure = [str(h) for h in (b.config.get("upstream_insecure_registries") or [])]
    for line in resolver.unpinned_images(b.plan.images):
        print(f"build-bundle: warning: {line}", file=sys.stderr)
    with b.progress.phase("images", len(b.plan.images), "images"):
        prune_repositories(b.bundle, [job.canonical for job in b.plan.images])
        return copy_images(b.plan.images, b.bundle, b.catalog.get("arches", []), insecure, b.progress)


def _apt(b: _Build) -> dict:
    """The .debs of the packages' closure, in a signed apt repo; {} (and no repo) when no suite or package."""
    plan, bundle, options = b.plan, b.bundle, b.options
    if not (plan.suites and plan.packages):
        shutil.rmtree(bundle / "apt", ignore_errors=True)
        shutil.rmtree(bundle / "keys", ignore_errors=True)
        return {}
    debs: dict = {}
    with b.progress.phase("apt closure", len(plan.suites) * len(plan.arches), "suites"):
        for suite in plan.suites:
            for arch in plan.arches:
                for job in apt_closure(plan.packages, suite, arch, options.debian_mirror, options.debian_security):
                    debs.setdefault(job.path, job)
                b.progress.advance(items=1)
    with b.progress.phase("apt packages", len(debs), "debs"):
        download_all(list(debs.values()), bundle, b.progress, options.jobs, options.retries, options.cache)
        prune(bundle / "apt" / "pool", set(debs), bundle)
        apt_print = _fingerprint([plan.suites, plan.arches, sorted((j.path, j.sha256) for j in debs.values()),
                                  b.signer])
        # The same debs keep the same signed indexes and key: a rerun leaves the bundle unchanged.
        if b.state.get("apt") != apt_print or not (bundle / bundlefmt.APT_KEY).is_file():
            write_apt_repo(bundle, {suite: plan.arches for suite in plan.suites}, signer=options.sign_key)
        b.state["apt"] = apt_print
    return debs


def _wheelhouse(b: _Build) -> None:
    if not b.options.wheelhouse:
        # The installer goes with the wheelhouse it installs from: an earlier build's must not stay behind.
        shutil.rmtree(b.bundle / "wheelhouse", ignore_errors=True)
        for name in (bundle_wheelhouse.INSTALLER, bundle_wheelhouse.INSTALL_CONFIG):
            (b.bundle / name).unlink(missing_ok=True)
        return
    with b.progress.phase("wheelhouse"):
        bundle_wheelhouse.build(b.bundle, b.options.requirements, b.plan.arches, b.plan.suites, b.catalog, b.config)


def _collection(b: _Build) -> None:
    if not b.options.collection:
        shutil.rmtree(b.bundle / "collection", ignore_errors=True)
        return
    with b.progress.phase("collection"):
        build_collection(b.bundle, b.out, b.state)


def _release_key(b: _Build) -> None:
    """keys/release.asc: the release key's public half, so a site that pins only its fingerprint can check it."""
    path = b.bundle / bundlefmt.RELEASE_KEY
    if b.options.sign_key is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(public_key(b.options.sign_key))


def _manifest(b: _Build, digests: dict, debs: dict) -> dict:
    """manifest.json for what the bundle holds, checked against the bundle itself."""
    bundle, plan = b.bundle, b.plan
    with b.progress.phase("manifest"):
        for leftover in list(bundle.rglob("*.part")):
            leftover.unlink()

        def write(created: Optional[str] = None) -> dict:
            return bundlefmt.write_manifest(bundle, images=digests, arches=plan.arches,
                                            apt_suites=plan.suites if debs else [], versions=plan.versions,
                                            config={**plan.config, "apt_packages": plan.packages}, created=created,
                                            signed_by=b.signer)

        manifest = write()
        content = _fingerprint({k: v for k, v in manifest.items() if k != "created"})
        if b.state.get("manifest") == content and b.state.get("created"):
            manifest = write(b.state["created"])  # unchanged content keeps its date: the same bytes, the same tarball
        b.state.update(manifest=content, created=manifest["created"])
        # A blob damaged in registry storage by an earlier run would be kept by skopeo (it skips known blobs).
        problems = bundlefmt.verify_bundle(bundle)
        if problems:
            raise BuildError(f"{bundle} does not match its own manifest: {'; '.join(map(str, problems[:5]))}: "
                             f"remove {bundle} and build again")
    return manifest


def _sign(b: _Build) -> None:
    """manifest.json.asc by the release key, then checked as a bundle host checks it (gpgv, this key pinned).

    The same manifest signed by the same key keeps its signature: the same bytes, the same tarball."""
    signature = b.bundle / bundlefmt.SIGNATURE
    if b.options.sign_key is None:
        signature.unlink(missing_ok=True)
        b.state.pop("signature", None)
        return
    with b.progress.phase("signature"):
        signed = _fingerprint([sha256_file(b.bundle / bundlefmt.MANIFEST), b.signer])
        if b.state.get("signature") != signed or not signature.is_file():
            detach_sign(b.options.sign_key, b.bundle / bundlefmt.MANIFEST, signature)
        try:
            bundle_trust.verify_signature(b.bundle, [str(b.signer)])
        except bundlefmt.BundleError as exc:
            raise BuildError(f"the signature gpg just made does not check: {exc}") from None
        b.state["signature"] = signed


def _tarball(b: _Build) -> Optional[Path]:
    if not b.options.tarball:
        return None
    with b.progress.phase("tarball"):
        tarball = b.out / TARBALL
        signature = b.bundle / bundlefmt.SIGNATURE
        # "trust-first": a tarball packed before its trust members led it is packed again.
        packed = _fingerprint(["trust-first", sha256_file(b.bundle / bundlefmt.MANIFEST),
                               sha256_file(signature) if signature.is_file() else None])
        sha_file = b.out / (TARBALL + ".sha256")
        if (b.state.get("tarball") != packed or not tarball.is_file() or not sha_file.is_file()
                or sha_file.read_text().split()[:1] != [sha256_file(tarball)]):
            make_tarball(b.bundle, b.out)
        b.state["tarball"] = packed
    return tarball


def build(catalog: Mapping, config: Mapping, options: Options, progress: Optional[Progress] = None) -> Result:
    """Build (or bring up to date) out/airgap-bundle and pack it; a rerun reuses what is already verified there."""
    out = Path(options.out).resolve()
    bundle = out / BUNDLE_NAME
    bundle.mkdir(parents=True, exist_ok=True)
    state = _load_state(out)
    (out / STATE).unlink(missing_ok=True)  # written again only when this build succeeds
    (bundle / bundlefmt.MANIFEST).unlink(missing_ok=True)
    b = _Build(catalog, config, options, progress or Progress(), out, bundle,
               make_plan(catalog, config, options.arches, options.suites), state)
    _files(b)
    digests = _images(b)
    debs = _apt(b)
    _wheelhouse(b)
    _collection(b)
    _release_key(b)
    manifest = _manifest(b, digests, debs)
    _sign(b)
    tarball = _tarball(b)
    (out / STATE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    sizes = {part: _du(bundle / part) for part in ("files", "registry", "apt", "wheelhouse", "collection")}
    sizes["bundle"] = _du(bundle)
    if tarball:
        sizes["tarball"] = tarball.stat().st_size
    return Result(bundle, tarball, manifest, dict(b.progress.timings), sizes)


# ----------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.sh build-bundle",
        description="On a connected host: download, verify and pack everything the inventory's config needs "
                    "(files, images, an apt repo for Debian, the tool's wheelhouse) into one bundle tarball.",
        epilog="Without -i, $AIRGAP_INVENTORY or inventory/local/hosts.yml: the collection's defaults.",
        parents=[cli_options.parent_parser(arch_help="node arches to carry")])
    parser.add_argument("--os", default="debian12,debian13",
                        help="apt suites to carry, comma-separated: debian12, debian13 (default: both); empty for none")
    parser.add_argument("--out", type=Path, default=Path("bundle"),
                        help="output directory: OUT/airgap-bundle (kept for fast reruns) and OUT/bundle.tar.gz "
                             "(default: ./bundle)")
    parser.add_argument("--jobs", type=int, default=4, help="parallel downloads (default: 4)")
    parser.add_argument("--no-wheelhouse", action="store_true", help="leave out the Python wheelhouse")
    parser.add_argument("--no-collection", action="store_true", help="leave out the collection tarball")
    parser.add_argument("--no-tarball", action="store_true", help="stop after OUT/airgap-bundle and its manifest")
    parser.add_argument("--requirements", type=Path, default=REPO / "requirements.txt",
                        help="pip requirements for the wheelhouse (default: the collection's requirements.txt)")
    parser.add_argument("--debian-mirror", default=DEBIAN_MIRROR, help=f"Debian mirror (default: {DEBIAN_MIRROR})")
    parser.add_argument("--debian-security", default=DEBIAN_SECURITY,
                        help=f"Debian security mirror (default: {DEBIAN_SECURITY})")
    parser.add_argument("--no-cache", action="store_true",
                        help=f"fetch everything again instead of reusing verified downloads in {CACHE / 'downloads'}")
    parser.add_argument("--sign-key", metavar="KEY",
                        help="sign manifest.json and the apt repo with this gpg secret key (the site's release key; "
                             "its fingerprint is best): bundle hosts that pin it in bundle_trusted_keys refuse "
                             "anything else. Default: unsigned (sites must then give bundle_sha256)")
    parser.add_argument("--sign-homedir", type=Path, metavar="DIR",
                        help="gpg home holding --sign-key (default: $GNUPGHOME, else ~/.gnupg)")
    parser.add_argument("--sign-passphrase-file", type=Path, metavar="FILE",
                        help="file holding the key's passphrase (default: gpg-agent asks, or the key has none)")
    parser.add_argument("--progress", choices=["auto", "live", "lines"], default="auto",
                        help="live line (terminal) or one line per phase (default: auto)")
    return parser


def main(argv: Optional[list] = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    try:
        inventory = cli_options.inventory(args.inventory, required=False)
        catalog, config = list_artifacts.load(inventory, args.extra_vars)
        arches = cli_options.arches(catalog, config, args.arch)
        if (args.sign_homedir or args.sign_passphrase_file) and not args.sign_key:
            raise cli_options.OptionError("--sign-homedir and --sign-passphrase-file need --sign-key KEY")
        # Resolved before any download: a wrong key name fails in a second, not after the build.
        sign_key = signing_key(args.sign_key, args.sign_homedir, args.sign_passphrase_file) if args.sign_key else None
        options = Options(out=args.out, arches=arches, suites=suites_for(args.os.split(",")), jobs=args.jobs,
                          wheelhouse=not args.no_wheelhouse, collection=not args.no_collection,
                          tarball=not args.no_tarball, requirements=args.requirements,
                          debian_mirror=args.debian_mirror, debian_security=args.debian_security,
                          cache=None if args.no_cache else CACHE / "downloads", sign_key=sign_key)
        live = {"auto": None, "live": True, "lines": False}[args.progress]
        result = build(catalog, config, options, Progress(live=live))
    except (resolver.CatalogError, cli_options.OptionError, BuildError, bundlefmt.BundleError,
            manifests.ManifestError) as exc:
        print(f"build-bundle: error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "bundle_dir": str(result.bundle_dir),
        "tarball": str(result.tarball) if result.tarball else None,
        "arches": result.manifest["arches"],
        "signed_by": result.manifest["signed_by"],
        "serial": result.manifest["serial"],
        "apt_suites": result.manifest["apt"]["suites"],
        "files": len(result.manifest["files"]),
        "images": result.manifest["images"],
        "sizes_mib": {k: round(v / 2**20, 1) for k, v in result.sizes.items()},
        "seconds": round(time.monotonic() - started, 1),
        "phase_seconds": result.timings,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
