"""build-bundle's image copy with real skopeo and docker-registry on loopback: a pinned image is copied by digest."""
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt
from ansible_collections.airgap.kubernetes.tools import bundle_images
from ansible_collections.airgap.kubernetes.tools.bundle_common import BuildError
from ansible_collections.airgap.kubernetes.tools.bundle_plan import ImageJob
from ansible_collections.airgap.kubernetes.tools.progress import Progress

pytestmark = pytest.mark.skipif(not (shutil.which("skopeo") and shutil.which("docker-registry")),
                                reason="needs skopeo and docker-registry (apt-get install skopeo docker-registry)")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REF = "registry.k8s.io/pause:3.10.1"


def _blob(layout: Path, data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _layer(text: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def oci_index(layout: Path, arches=("amd64", "arm64")) -> str:
    """A two-platform OCI image written by hand into an OCI layout; returns its index digest."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    manifests = []
    for arch in arches:
        layer = _layer(f"built for {arch}\n")
        diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
        config = json.dumps({"architecture": arch, "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": _blob(layout, config, "application/vnd.oci.image.config.v1+json"),
                               "layers": [_blob(layout, layer, "application/vnd.oci.image.layer.v1.tar")]}).encode()
        manifests.append({**_blob(layout, manifest, OCI_MANIFEST), "platform": {"architecture": arch, "os": "linux"}})
    index = _blob(layout, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode(),
                  OCI_INDEX)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {**index, "annotations": {"org.opencontainers.image.ref.name": "3.10.1"}}]}))
    return index["digest"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A loopback registry playing registry.k8s.io, holding one multi-arch image; yields (address, index digest)."""
    root = tmp_path_factory.mktemp("upstream")
    digest = oci_index(root / "layout")
    with bundle_images.local_registry(root / "storage") as address:
        subprocess.run(["skopeo", "copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false",
                        f"oci:{root / 'layout'}:3.10.1", f"docker://{address}/{REF}"], check=True)
        yield address, digest


def job(address: str, digest, arches=("amd64",)) -> ImageJob:
    return ImageJob("pause", "3.10.1", REF, f"{address}/{REF}", digest, True, list(arches))


def test_a_pinned_image_is_copied_by_its_digest_with_every_platform(upstream, tmp_path):
    address, digest = upstream
    got = bundle_images.copy_images([job(address, digest)], tmp_path, ["amd64", "arm64"], [], Progress(io.StringIO()))
    assert got == {REF: digest}
    assert bundlefmt.read_tag_digest(tmp_path, REF) == digest  # the index itself, though one arch was asked for


def test_an_unpinned_image_copies_only_the_asked_arch(upstream, tmp_path):
    address, digest = upstream
    got = bundle_images.copy_images([job(address, None)], tmp_path, ["amd64", "arm64"], [], Progress(io.StringIO()))
    assert got[REF] != digest  # the amd64 manifest, not the index


def test_a_source_that_does_not_serve_the_pinned_digest_fails_by_name(upstream, tmp_path):
    address, _ = upstream
    wrong = "sha256:" + "0" * 64
    with pytest.raises(BuildError) as info:
        bundle_images.copy_images([job(address, wrong)], tmp_path, ["amd64", "arm64"], [], Progress(io.StringIO()))
    assert f"image pause ({address}/{REF}):" in str(info.value)
    assert f"still serves the digest the catalog pins ({wrong})" in str(info.value)


def test_a_pinned_copy_goes_by_digest_without_the_tag():
    pinned = ImageJob("pause", "3.10.1", REF, "127.0.0.1:5001/k8s/pause:3.10.1@sha256:" + "a" * 64,
                      "sha256:" + "a" * 64, True, ["amd64"])
    args = bundle_images.skopeo_copy_args(pinned, "127.0.0.1:9", ["amd64", "arm64"], [])
    assert args[-2] == "docker://127.0.0.1:5001/k8s/pause@sha256:" + "a" * 64
    assert "--all" in args and "--override-arch" not in args


def test_a_source_naming_another_digest_than_the_pin_is_refused():
    odd = ImageJob("pause", "3.10.1", REF, f"{REF}@sha256:" + "b" * 64, "sha256:" + "a" * 64, True, ["amd64"])
    with pytest.raises(BuildError, match="names digest sha256:b+, the catalog pins sha256:a+"):
        bundle_images.copy_source(odd)


def test_a_bundle_holding_other_content_than_the_pin_is_refused():
    pinned = job("127.0.0.1:9", "sha256:" + "a" * 64)
    assert bundle_images.check_pinned(pinned, "sha256:" + "a" * 64) == "sha256:" + "a" * 64
    with pytest.raises(BuildError, match="holds registry.k8s.io/pause:3.10.1 as sha256:c+, but the catalog pins"):
        bundle_images.check_pinned(pinned, "sha256:" + "c" * 64)
