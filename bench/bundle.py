"""Benchmark: bundle build time (cold, warm) and size for the lab config; images from registry storage vs docker save/load."""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / ".collections"))
from ansible_collections.airgap.kubernetes.tools.lab import upstream  # noqa: E402

from ansible_collections.airgap.kubernetes.tools import build_bundle as bb  # noqa: E402
from ansible_collections.airgap.kubernetes.tools.bundle_images import local_registry  # noqa: E402
from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt  # noqa: E402


def _build(vars_path: Path, out: Path, extra: list) -> float:
    started = time.monotonic()
    subprocess.run([str(REPO / "run.sh"), "build-bundle", "-e", f"@{vars_path}", "--out", str(out),
                    "--progress", "lines", *extra], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def registry_availability(bundle: Path, images: list) -> float:
    """Seconds from starting docker-registry on the unpacked storage until every image's manifest answers."""
    accept = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json",
                        "application/vnd.docker.distribution.manifest.v2+json"])
    started = time.monotonic()
    with local_registry(bundle / bundlefmt.REGISTRY_DIR) as registry:
        for ref in images:
            repo, tag, _ = bundlefmt.split_reference(ref)
            req = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
            urllib.request.urlopen(req, timeout=10).close()
        return time.monotonic() - started


def docker_save_load(local_tags: list, workdir: Path) -> tuple:
    """(save seconds, load seconds, tar size) for the same images through docker save and docker load."""
    tar = workdir / "images.tar"
    started = time.monotonic()
    subprocess.run(["docker", "save", "-o", str(tar), *local_tags], check=True)
    save = time.monotonic() - started
    # Loading images the daemon already holds skips their layers; remove them first so load does the real work.
    subprocess.run(["docker", "rmi", *local_tags], check=True, capture_output=True)
    started = time.monotonic()
    subprocess.run(["docker", "load", "-q", "-i", str(tar)], check=True, capture_output=True)
    return save, time.monotonic() - started, tar.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--os", default="debian12,debian13", help="apt suites to build (default: both)")
    parser.add_argument("--no-wheelhouse", action="store_true")
    args = parser.parse_args()
    content = upstream.build()
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        work = Path(tmp)
        with upstream.serve(content, work / "upstream") as vars_path:
            extra = ["--arch", "amd64", "--os", args.os] + (["--no-wheelhouse"] if args.no_wheelhouse else [])
            shutil.rmtree(bb.CACHE / "apt-state", ignore_errors=True)  # cold: apt indexes fetched again too
            cold = _build(vars_path, work / "out", extra + ["--no-cache"])
            warm = _build(vars_path, work / "out", extra)
        bundle = work / "out" / bb.BUNDLE_NAME
        manifest = bundlefmt.load_manifest(bundle)
        tarball = (work / "out" / bb.TARBALL).stat().st_size
        print(f"bundle for the lab config (v1.20.2, amd64, {args.os}"
              f"{', no wheelhouse' if args.no_wheelhouse else ', with wheelhouse'}):")
        print(f"  build, cold : {cold:6.1f} s  (empty output dir, apt state and download cache: loopback upstream, Debian mirror, PyPI)")
        print(f"  build, warm : {warm:6.1f} s  (rerun into the same output dir: everything verified, nothing fetched)")
        print(f"  tarball     : {_mib(tarball)}  ({len(manifest['files'])} files, {len(manifest['images'])} images)")
        for part in ("files", "registry", "apt", "wheelhouse", "collection"):
            print(f"    {part:<10}: {_mib(bb._du(bundle / part))} unpacked")

        images = sorted(manifest["images"])
        local = [content.images[ref] for ref in images if ref in content.images]
        reg = registry_availability(bundle, images)
        save, load, size = docker_save_load(local, work)
        print(f"\nmaking the {len(local)} lab images available on the serving side (same images):")
        print(f"  registry storage dir : {reg:6.2f} s  (start docker-registry on the unpacked dir; every manifest answers)"
              f"  {_mib(bb._du(bundle / bundlefmt.REGISTRY_DIR))}")
        print(f"  docker load          : {load:6.2f} s  (of the docker save tar, {_mib(size)}; save took {save:.2f} s)")
        print(f"  ratio                : load / registry = {load / reg:.0f}x;"
              f" (save + load) / registry = {(save + load) / reg:.0f}x  (the seed article claims 5-10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
