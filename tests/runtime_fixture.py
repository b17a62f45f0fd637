"""Test fixture for layer 01: the bundle fixture plus containerd, runc and CNI plugin release files, the OS packages.

Builds on tests/bundle_fixture.py (apt repo, files, registry with a tiny image under an upstream name) and adds:
- containerd, runc and the CNI plugins, repacked from Debian's packages into the upstream release layouts
  (containerd-<v>-linux-amd64.tar.gz with bin/, runc.amd64, cni-plugins-linux-amd64-v<v>.tgz) at their mirror paths;
- an apt repo with every OS package of the catalog (and what Ansible's modules need) for each Debian suite the
  nodes run (bookworm and trixie), signed with a new key;
- kubeadm, kubelet and kubectl of the lab's Kubernetes v1.20.2 build (tools/lab/build-kubernetes.sh, through
  tools/lab/upstream.py) at their mirror paths, when that build is available; with it, from the lab's local upstream
  (tools/lab/upstream.py's cache), the control-plane images kubeadm and the kubelet pull (kube-apiserver,
  kube-controller-manager, kube-scheduler, kube-proxy, pause) under their upstream names in the registry, and the
  etcd release tarball layer 02 installs;
- a catalog overlay declaring the repacked versions (and v1.20.2's binaries and etcd) with their sha256, as a site
  brings its own builds.

CLI: python3 tests/runtime_fixture.py [--reuse] OUT_DIR
  -> OUT_DIR/bundle.tar.gz(.sha256), OUT_DIR/runtime-overlay.yml, OUT_DIR/fixture.json (also on stdout)
"""
from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bundle_fixture as fixture  # noqa: E402
from ansible_collections.airgap.kubernetes.tools.lab import upstream  # noqa: E402

from ansible_collections.airgap.kubernetes.tools import bundle_apt, bundle_downloads, bundle_images  # noqa: E402
from ansible_collections.airgap.kubernetes.tools.bundle_plan import ImageJob  # noqa: E402
from ansible_collections.airgap.kubernetes.tools.progress import Progress  # noqa: E402
from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt  # noqa: E402
from ansible_collections.airgap.kubernetes.tools import catalog_overlay  # noqa: E402
from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg  # noqa: E402
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver  # noqa: E402
from ansible_collections.airgap.kubernetes.plugins.module_utils.digests import sha256_file  # noqa: E402

SUITES = ("bookworm", "trixie")
# Packages Ansible's own modules need on the nodes (apt, community.crypto), beside the catalog's.
TOOL_PACKAGES = ("python3-apt", "python3-cryptography")
# Debian package -> the catalog component whose upstream release file it plays.
RUNTIME_DEBS = {"containerd": "containerd", "runc": "runc", "containernetworking-plugins": "cni-plugins"}
CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")
# The lab build's binaries the nodes download (roles/kubernetes_node), each a catalog component of that name.
KUBE_BINARIES = ("kubeadm", "kubelet", "kubectl")
# The local upstream's images a kubeadm node pulls (by repository name); its etcd and busybox images stay out.
KUBE_IMAGES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "pause")


def catalog_packages() -> list[str]:
    """Every Debian package name the catalog lists, whatever group or switch enables it."""
    catalog = cfg.load_defaults(fixture.REPO)["airgap_catalog"]
    return sorted({c["packages"]["debian"] for c in catalog["components"].values()
                   if c.get("kind") == "package" and c.get("packages", {}).get("debian")})


def add_apt_suites(bundle: Path, packages: tuple[str, ...]) -> None:
    """apt/pool/<suite> with packages and their closure for every suite, through the bundle builder's own apt code
    (tools/bundle_apt.py), then apt/dists signed with a new key."""
    shutil.rmtree(bundle / "apt", ignore_errors=True)
    progress = Progress(live=False)
    for suite in SUITES:
        jobs = bundle_apt.apt_closure(list(packages), suite, fixture.ARCH)
        progress.start(f"apt {suite}", len(jobs))
        bundle_downloads.download_all(jobs, bundle, progress, cache=fixture.CACHE / "deb-cache")
        progress.finish()
    bundle_apt.write_apt_repo(bundle, {suite: [fixture.ARCH] for suite in SUITES})


def mirror_dest(bundle: Path, catalog: dict, component: str, version: str) -> Path:
    """Where the bundle's file server holds a file component's release file: its catalog url's mirror path."""
    url = resolver._render(catalog["components"][component]["url"],
                           {"version": version, "arch": fixture.ARCH, "arch_suffix": ""}, component)
    return bundle / "files" / resolver.mirror_path(url)


def add_runtime_files(bundle: Path, catalog: dict) -> dict[str, tuple[str, Path]]:
    """containerd, runc and CNI plugins at their mirror paths, repacked the way the lab's upstream does
    (tools/lab/upstream.py); returns component -> (version, path)."""
    debs = upstream._debs(RUNTIME_DEBS)
    versions = {component: upstream._deb_version(debs[deb]) for deb, component in RUNTIME_DEBS.items()}

    def dest(component: str) -> Path:
        return mirror_dest(bundle, catalog, component, versions[component])

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        upstream._extract(list(debs.values()), root)
        upstream._tar_gz(dest("containerd"), [("bin", None)] + [(f"bin/{name}", root / "usr/bin" / name)
                                                                for name in CONTAINERD_BINARIES])
        upstream._copy(root / "usr/sbin/runc", dest("runc")).chmod(0o644)
        plugins = sorted(p for p in (root / "usr/lib/cni").iterdir() if p.is_file())
        upstream._tar_gz(dest("cni-plugins"), [(f"./{p.name}", p) for p in plugins])
    return {component: (versions[component], dest(component)) for component in versions}


@functools.lru_cache(maxsize=None)
def kube_build() -> tuple[tuple[str, Path, str], ...]:
    """(name, path, sha256) of the lab build's kubeadm, kubelet and kubectl, or () when the build cannot be had.

    Built or reused by tools/lab/build-kubernetes.sh (cached: seconds; CI's lab tests phase builds it first). Without
    it the fixture still serves layer 01's scenarios, only kube_version v1.20.2 does not resolve."""
    try:
        kube = upstream._kube_bin()
    except upstream.UpstreamError as exc:
        print(f"runtime_fixture: no Kubernetes v{upstream.KUBE_VERSION} build, the bundle carries no kubeadm, kubelet "
              f"or kubectl ({exc}); build it with bash tools/lab/build-kubernetes.sh", file=sys.stderr)
        return ()
    return tuple((name, kube / name, sha256_file(kube / name)) for name in KUBE_BINARIES)


def add_kube_files(bundle: Path, catalog: dict) -> dict[str, tuple[str, Path]]:
    """The lab build's kubeadm, kubelet and kubectl at their mirror paths (mode 0644: get_url sets the node's mode);
    returns component -> (version, path), empty without the build."""
    placed = {}
    for name, path, _ in kube_build():
        dest = upstream._copy(path, mirror_dest(bundle, catalog, name, upstream.KUBE_VERSION))
        dest.chmod(0o644)
        placed[name] = (upstream.KUBE_VERSION, dest)
    return placed


def add_upstream_content(bundle: Path, catalog: dict) -> tuple[dict[str, tuple[str, Path]], dict[str, str]]:
    """With the lab build: the etcd release tarball at its mirror path and the KUBE_IMAGES in the registry storage,
    taken from the lab's local upstream (tools/lab/upstream.build(), cached under ~/.cache/airgap-kubernetes/upstream)
    through the bundle builder's own image copy; returns ({"etcd": (version, path)}, {image ref: digest}), both
    empty without the build."""
    if not kube_build():
        return {}, {}
    content = upstream.build()
    etcd_version, etcd_tarball = next((version, Path(path)) for name, version, path in content.files if name == "etcd")
    dest = mirror_dest(bundle, catalog, "etcd", etcd_version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(etcd_tarball, dest)
    refs = sorted(ref for ref in content.images
                  if bundlefmt.split_reference(ref)[0].rsplit("/", 1)[-1] in KUBE_IMAGES)
    with bundle_images.local_registry(content.root / "registry") as source:
        jobs = [ImageJob(name=ref, version=bundlefmt.split_reference(ref)[1], canonical=ref, source=f"{source}/{ref}",
                         digest=None, multiarch=False) for ref in refs]
        images = bundle_images.copy_images(jobs, bundle, [fixture.ARCH], [], Progress(live=False))
    return {"etcd": (etcd_version, dest)}, images


def build(out: Path) -> dict:
    """The bundle fixture extended for layer 01, as bundle.tar.gz, and the catalog overlay for its versions."""
    out = Path(out)
    base = fixture.build_bundle(out, tarball=False)
    catalog = cfg.load_defaults(fixture.REPO)["airgap_catalog"]
    runtime = add_runtime_files(base.dir, catalog)
    kube = add_kube_files(base.dir, catalog)
    etcd, kube_images = add_upstream_content(base.dir, catalog)
    packages = tuple(sorted(set(catalog_packages()) | set(fixture.APT_PACKAGES) | set(TOOL_PACKAGES)))
    add_apt_suites(base.dir, packages)
    overlay = catalog_overlay.make_overlay((name, version, fixture.ARCH, path)
                                           for name, (version, path) in {**runtime, **kube, **etcd}.items())
    overlay_file = out / "runtime-overlay.yml"
    overlay_file.write_text("---\n# Catalog overlay for the repacked Debian runtime and the lab's Kubernetes build "
                            "(tests/runtime_fixture.py).\n"
                            + yaml.safe_dump(overlay, default_flow_style=False, sort_keys=True))
    versions = dict(base.manifest.get("versions") or {})
    versions.update({f"{name.replace('-plugins', '')}": version for name, (version, _) in runtime.items()})
    versions.update({name: version for name, (version, _) in kube.items()})
    images = {**{ref: entry["digest"] for ref, entry in base.manifest["images"].items()}, **kube_images}
    bundlefmt.write_manifest(base.dir, images=images, arches=[fixture.ARCH], apt_suites=list(SUITES),
                             versions=versions, config={"source": "tests/runtime_fixture.py"})
    tarball = fixture.make_tarball(base.dir, out)
    return {
        "bundle_dir": str(base.dir),
        "tarball": str(tarball),
        "overlay": str(overlay_file),
        "versions": {**{f"{name.replace('-plugins', '')}_version": version for name, (version, _) in runtime.items()},
                     **({"kube_version": f"v{upstream.KUBE_VERSION}"} if kube else {}),
                     **{f"{name}_version": version for name, (version, _) in etcd.items()}},
        "images": sorted(images),
        "apt_suites": list(SUITES),
    }


def recipe_hash() -> str:
    """Hash of the code that builds the fixture and of the Kubernetes build it carries (version and sha256 of each
    binary, so a rebuilt or newly available build is noticed): a reused fixture is one this very code built."""
    digest = hashlib.sha256()
    for path in (Path(__file__), Path(fixture.__file__), Path(upstream.__file__),
                 Path(bundle_apt.__file__), Path(bundle_downloads.__file__)):
        digest.update(path.read_bytes())
    for name, _, sha256 in kube_build():
        digest.update(f"{name} {upstream.KUBE_VERSION} {sha256}\n".encode())
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for airgap-bundle/, bundle.tar.gz and runtime-overlay.yml")
    parser.add_argument("--reuse", action="store_true", help="keep a fixture in OUT built by the same code")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # Scenarios may run side by side: one builds, the others wait and reuse.
    lock = open(args.out / ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    record = args.out / "fixture.json"
    if args.reuse and record.exists():
        result = json.loads(record.read_text())
        if result.get("recipe") == recipe_hash() and Path(result["tarball"]).exists():
            print(json.dumps(result, indent=2))
            return 0
    started = time.monotonic()
    result = build(args.out)
    result["recipe"] = recipe_hash()
    result["seconds"] = round(time.monotonic() - started, 1)
    record.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
