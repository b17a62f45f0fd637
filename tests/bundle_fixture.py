"""Test fixture: builds a small but real bundle (Debian binaries, a signed apt repo, registry storage) in the bundle format.

Every bundle it packs is signed by the fixture's release key (made once, cached outside any bundle): pin it with
release_fingerprint(), or with OUT_DIR/release-key.asc, the public key written beside the tarball.

CLI: python3 tests/bundle_fixture.py OUT_DIR   -> OUT_DIR/airgap-bundle/, OUT_DIR/bundle.tar.gz(.sha256),
                                                 OUT_DIR/release-key.asc
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / ".collections") not in sys.path:
    sys.path.insert(0, str(REPO / ".collections"))

from ansible_collections.airgap.kubernetes.tools import build_bundle as builder  # noqa: E402
from ansible_collections.airgap.kubernetes.tools.bundle_apt import write_apt_repo  # noqa: E402
from ansible_collections.airgap.kubernetes.tools.bundle_images import local_registry  # noqa: E402
from ansible_collections.airgap.kubernetes.tools import bundle_sign  # noqa: E402
from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt  # noqa: E402

CACHE = Path(os.environ.get("AIRGAP_CACHE", Path.home() / ".cache" / "airgap-kubernetes")) / "bundle-fixture"
SUITE = "bookworm"
ARCH = "amd64"
# What the bundle server installs from the bundle; python3-apt and python3-cryptography for Ansible's apt and crypto modules.
APT_PACKAGES = ("nginx", "docker-registry", "chrony", "python3-apt", "python3-cryptography")
# Debian packages whose binaries play the upstream release files.
FILE_PACKAGES = {"etcd-server": "usr/bin/etcd", "etcd-client": "usr/bin/etcdctl"}
BUSYBOX = "/bin/busybox"  # from Debian's busybox-static
IMAGES = {
    "docker.io/library/busybox:1.35.0": 'CMD ["/bin/sh"]',
    "registry.k8s.io/pause:3.10.2": 'ENTRYPOINT ["/bin/sleep", "infinity"]',
}
BUNDLE_NAME = "airgap-bundle"
# The fixture's release key: a throwaway ed25519 key with no passphrase, made once (a short path: gpg-agent's socket).
RELEASE_HOME = CACHE / "release-key"
RELEASE_KEY_FILE = "release-key.asc"


@dataclass
class FixtureBundle:
    dir: Path
    tarball: Path | None
    manifest: dict


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{' '.join(cmd)} failed ({e.returncode}): {e.stderr.strip()[-2000:]}") from e


def _apt_closure(packages: tuple[str, ...]) -> list[str]:
    out = _run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
         "--no-breaks", "--no-replaces", "--no-enhances", *packages]
    ).stdout
    # Virtual packages show as <name>; their providers are listed as well.
    return sorted({line.strip() for line in out.splitlines() if line and not line.startswith((" ", "<"))})


def download_debs(packages: tuple[str, ...], closure: bool) -> list[Path]:
    """The .debs for packages (with their dependency closure), downloaded once into the cache."""
    key = hashlib.sha256(json.dumps([SUITE, ARCH, sorted(packages), closure]).encode()).hexdigest()[:16]
    dest = CACHE / "debs" / f"{SUITE}-{key}"
    stamp = dest / ".complete"
    if not stamp.exists():
        dest.mkdir(parents=True, exist_ok=True)
        names = _apt_closure(packages) if closure else list(packages)
        _run(["apt-get", "download", "-q", *names], cwd=dest)
        stamp.write_text("\n".join(names) + "\n")
    return sorted(dest.glob("*.deb"))


def _deb_field(deb: Path, field: str) -> str:
    return _run(["dpkg-deb", "--field", str(deb), field]).stdout.strip()


def add_files(bundle: Path) -> dict[str, str]:
    """Real binaries in the mirror layout files/<upstream-host>/<upstream-path>; returns versions."""
    versions = {}
    for deb in download_debs(tuple(FILE_PACKAGES), closure=False):
        pkg = _deb_field(deb, "Package")
        version = _deb_field(deb, "Version").split("-")[0].split("+")[0]
        versions["etcd"] = f"v{version}"
        with tempfile.TemporaryDirectory() as tmp:
            _run(["dpkg-deb", "-x", str(deb), tmp])
            src = Path(tmp) / FILE_PACKAGES[pkg]
            dest = bundle / "files" / "github.com" / "etcd-io" / "etcd" / "releases" / "download" / f"v{version}" / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            dest.chmod(0o644)
    return versions


def release_key() -> bundle_sign.SigningKey:
    """The fixture's release key, made on first use (under a lock: tests run side by side)."""
    RELEASE_HOME.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(RELEASE_HOME.parent / "release-key.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (RELEASE_HOME / "fingerprint").exists():
            RELEASE_HOME.chmod(0o700)
            _run(["gpg", "--homedir", str(RELEASE_HOME), "--batch", "--passphrase", "", "--quick-gen-key",
                  "airgap.kubernetes test fixture release key <fixture@airgap.invalid>", "ed25519", "sign", "never"])
            fpr = bundle_sign.signing_key("fixture@airgap.invalid", RELEASE_HOME).fingerprint
            (RELEASE_HOME / "fingerprint").write_text(fpr + "\n")
    return bundle_sign.SigningKey((RELEASE_HOME / "fingerprint").read_text().strip(), RELEASE_HOME)


def release_fingerprint() -> str:
    """What a test inventory pins in bundle_trusted_keys (the bundle carries the public key, keys/release.asc)."""
    return release_key().fingerprint


def sign(bundle: Path) -> None:
    """manifest.json.asc for the bundle's manifest as it is now, by the fixture's release key."""
    bundle_sign.detach_sign(release_key(), bundle / bundlefmt.MANIFEST, bundle / bundlefmt.SIGNATURE)


def add_apt_repo(bundle: Path) -> None:
    """apt/dists/<suite> and apt/pool/<suite>, Release signed with the fixture's release key (keys/bundle-apt.asc)."""
    pool = bundle / "apt" / "pool" / SUITE / "main"
    pool.mkdir(parents=True)
    for deb in download_debs(APT_PACKAGES, closure=True):
        shutil.copyfile(deb, pool / deb.name)
    write_apt_repo(bundle, {SUITE: [ARCH]}, signer=release_key())


def _local_images() -> dict[str, str]:
    """Docker-daemon images built from Debian's static busybox; returns upstream ref -> local tag."""
    busybox = Path(BUSYBOX)
    if not busybox.exists():
        raise RuntimeError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    digest = hashlib.sha256(busybox.read_bytes() + json.dumps(IMAGES).encode()).hexdigest()[:12]
    tags = {}
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            tar.add(busybox, arcname="bin/busybox")
            for applet in ("sh", "sleep", "ls", "cat", "wget", "sha256sum"):
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname, info.mtime = tarfile.SYMTYPE, "busybox", 0
                tar.addfile(info)
        for ref, change in IMAGES.items():
            local = f"airgap-fixture/{ref.split('/')[-1].split(':')[0]}:{digest}"
            if not _run(["docker", "images", "-q", local]).stdout.strip():
                _run(["docker", "import", "--change", change, str(rootfs), local])
            tags[ref] = local
    return tags


def add_registry(bundle: Path) -> dict[str, str]:
    """Push the images into registry/ through a temporary docker-registry on loopback; returns ref -> digest."""
    storage = bundle / bundlefmt.REGISTRY_DIR
    storage.mkdir()
    tags = _local_images()
    with local_registry(storage) as registry:
        for ref, local in tags.items():
            _run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                  f"docker-daemon:{local}", f"docker://{registry}/{ref}"])
    return {ref: bundlefmt.read_tag_digest(bundle, ref) for ref in tags}


def make_tarball(bundle: Path, out: Path) -> Path:
    """bundle.tar.gz with one top-level directory, its manifest signed as it is now by the release key;
    bundle.tar.gz.sha256 (sha256sum format) and the public key (release-key.asc) beside it."""
    sign(bundle)
    (Path(out) / RELEASE_KEY_FILE).write_text(bundle_sign.public_key(release_key()))
    return builder.make_tarball(bundle, out)


def build_bundle(out: Path, tarball: bool = True) -> FixtureBundle:
    """A fresh bundle under out/airgap-bundle (replacing any old one), plus its tarball when asked."""
    out = Path(out)
    bundle = out / BUNDLE_NAME
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True)
    versions = add_files(bundle)
    add_apt_repo(bundle)
    images = add_registry(bundle)
    versions["busybox"] = "1.35.0"
    (bundle / bundlefmt.RELEASE_KEY).write_text(bundle_sign.public_key(release_key()))
    manifest = bundlefmt.write_manifest(bundle, images=images, arches=[ARCH], apt_suites=[SUITE],
                                        versions=versions, config={"source": "tests/bundle_fixture.py"},
                                        signed_by=release_fingerprint())
    sign(bundle)
    return FixtureBundle(bundle, make_tarball(bundle, out) if tarball else None, manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for airgap-bundle/ and bundle.tar.gz")
    parser.add_argument("--no-tarball", action="store_true", help="leave the bundle unpacked only")
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = build_bundle(args.out, tarball=not args.no_tarball)
    print(json.dumps({
        "bundle_dir": str(result.dir),
        "tarball": str(result.tarball) if result.tarball else None,
        "files": len(result.manifest["files"]),
        "images": result.manifest["images"],
        "seconds": round(time.monotonic() - started, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
