"""build-bundle's images: skopeo copies each into a local docker-registry whose storage is the bundle's registry."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver
from ansible_collections.airgap.kubernetes.tools.bundle_common import BuildError, free_port, run
from ansible_collections.airgap.kubernetes.tools.bundle_downloads import parallel
from ansible_collections.airgap.kubernetes.tools.bundle_plan import ImageJob
from ansible_collections.airgap.kubernetes.tools.progress import Progress


@contextlib.contextmanager
def local_registry(storage: Path, port: Optional[int] = None, timeout: float = 20) -> Iterator[str]:
    """A docker-registry on 127.0.0.1 whose storage root is storage (registry/docker/registry/v2 below it).

    Yields its address (127.0.0.1:PORT). What is pushed there is the registry storage the bundle server serves as it is.
    """
    storage = Path(storage)
    storage.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="airgap-registry-") as tmp:
        config = Path(tmp) / "config.yml"
        config.write_text("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                          f"    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
                          f"http:\n  addr: 127.0.0.1:{port}\n")
        log_path = Path(tmp) / "registry.log"
        with open(log_path, "w") as log:
            try:
                proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
            except FileNotFoundError:
                raise BuildError("docker-registry is not installed: apt-get install docker-registry") from None
            try:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                        break
                    except OSError:
                        if time.monotonic() > deadline or proc.poll() is not None:
                            raise BuildError(f"docker-registry on 127.0.0.1:{port} did not start: "
                                             f"{log_path.read_text()[-1500:]}") from None
                        time.sleep(0.1)
                yield f"127.0.0.1:{port}"
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _registry_host(ref: str) -> str:
    return ref.split("/", 1)[0]


def skopeo_copy_args(job: ImageJob, registry: str, all_arches: Iterable[str], insecure: Iterable[str]) -> list:
    """The skopeo command that copies one image into the local registry, keeping only the asked arches where it can."""
    cmd = ["skopeo", "copy", "--quiet", "--retry-times", "3", "--dest-tls-verify=false"]
    host = _registry_host(job.source)
    if host in set(insecure) or host.split(":")[0] in ("127.0.0.1", "localhost"):
        cmd.append("--src-tls-verify=false")
    if job.digest or not job.multiarch or set(job.arches) >= set(all_arches):
        # Every platform (or an arch-specific image): the index and its digest stay as upstream has them. A pinned
        # image is always copied whole, so the bundle holds the very index the catalog pins and a pull by digest works.
        cmd += ["--all", "--preserve-digests"]
    else:
        # One arch of a multi-arch image: the tag points at that platform's manifest.
        cmd += ["--override-os", "linux", "--override-arch", job.arches[0]]
    return cmd + [f"docker://{copy_source(job)}", f"docker://{registry}/{job.canonical}"]


def copy_source(job: ImageJob) -> str:
    """Where skopeo copies from: the source by the catalog's digest when it pins one (skopeo then checks that the
    manifest it gets has that digest), else by tag. skopeo takes a tag or a digest, not both."""
    if not job.digest:
        return job.source
    host, path, _, digest = resolver.parse_image(job.source)
    if digest and digest != job.digest:
        raise BuildError(f"image {job.name}: its source {job.source} names digest {digest}, the catalog pins "
                         f"{job.digest}: fix the catalog overlay that sets one of them")
    return f"{host}/{path}@{job.digest}"


def check_pinned(job: ImageJob, stored: str) -> str:
    """The digest the bundle holds for job, refused when the catalog pins another one."""
    if job.digest and stored != job.digest:
        raise BuildError(f"image {job.name}: the bundle's registry holds {job.canonical} as {stored}, but the catalog "
                         f"pins {job.digest}: remove the bundle's registry/ and build again; if it persists, the "
                         f"source ({job.source}) serves other content than the publisher stated")
    return stored


def copy_images(jobs: list, bundle: Path, all_arches: Iterable[str], insecure: Iterable[str], progress: Progress,
                workers: int = 2) -> dict:
    """Copy every image into bundle/registry through a local docker-registry; returns {canonical ref: digest}."""
    with local_registry(bundle / bundlefmt.REGISTRY_DIR) as registry:
        def one(job: ImageJob) -> str:
            args = skopeo_copy_args(job, registry, all_arches, insecure)
            try:
                run(args)
            except BuildError as exc:
                pin = (f", and that it still serves the digest the catalog pins ({job.digest})" if job.digest else "")
                raise BuildError(f"image {job.name} ({job.source}): {exc}: check the image exists there{pin}, "
                                 "or upstream_bases / upstream_insecure_registries") from None
            return check_pinned(job, bundlefmt.read_tag_digest(bundle, job.canonical))

        digests = parallel(one, jobs, progress, workers)
    return dict(zip((job.canonical for job in jobs), digests))


def prune_repositories(bundle: Path, keep: Iterable[str]) -> None:
    """Drop repositories of images no longer in the plan (their blobs stay until a registry garbage-collect)."""
    repos_dir = bundle / bundlefmt.REGISTRY_V2 / "repositories"
    wanted = {bundlefmt.split_reference(ref)[0] for ref in keep}
    if not repos_dir.is_dir():
        return
    for manifests in sorted(repos_dir.rglob("_manifests")):
        repo = manifests.parent.relative_to(repos_dir).as_posix()
        if repo not in wanted:
            shutil.rmtree(manifests.parent)
