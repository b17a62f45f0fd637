"""Builds the lab's etcd release tarball (upstream layout) from Debian's etcd packages, for the etcd role's tests.

Upstream etcd release tarballs cannot be downloaded here, but Debian packages the real etcd. This repacks
Debian's `etcd` and `etcdctl` into `etcd-v<ver>-linux-<arch>/{etcd,etcdctl}` inside
`etcd-v<ver>-linux-<arch>.tar.gz`, placed at its mirror path (files/<upstream-host>/<upstream-path>), and prints
a JSON description (version, sha256, paths). It also fetches the .debs the etcd role needs on its nodes
(python3-cryptography, for community.crypto), which a real deploy gets from the bundle's apt repository.

The tarball is byte-for-byte reproducible (fixed mtimes, owners and gzip header), so its sha256 only changes
when Debian's packages do. Usage: python3 tests/lab/etcd_fixture.py [--out DIR]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("AIRGAP_CACHE", Path.home() / ".cache" / "airgap-kubernetes")) / "etcd-fixture"
ETCD_DEBS = {"etcd-server": "usr/bin/etcd", "etcd-client": "usr/bin/etcdctl"}
# Not in the lab's minbase image; community.crypto needs them on the etcd members.
NODE_DEBS = ("python3-cryptography", "python3-cffi-backend")
ARCH = "amd64"
UPSTREAM = "github.com/etcd-io/etcd/releases/download/v{version}/etcd-v{version}-linux-{arch}.tar.gz"


def _run(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"etcd_fixture: {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                 "fix: run `apt-get update` on the host (Debian's mirror must be reachable) and retry")
    return proc.stdout


def upstream_version(deb_version: str) -> str:
    """3.4.23-4+b4 -> 3.4.23; an epoch (1:) is dropped too."""
    return deb_version.split(":", 1)[-1].rsplit("-", 1)[0]


def download(packages: tuple[str, ...], dest: Path) -> list[Path]:
    """apt-get download into dest, once: a .deb already there is reused."""
    dest.mkdir(parents=True, exist_ok=True)
    found = []
    for pkg in packages:
        have = sorted(dest.glob(f"{pkg}_*_{ARCH}.deb"))
        if not have:
            _run("apt-get", "download", pkg, cwd=dest)
            have = sorted(dest.glob(f"{pkg}_*_{ARCH}.deb"))
        if not have:
            sys.exit(f"etcd_fixture: apt-get download {pkg} produced no {pkg}_*_{ARCH}.deb in {dest}")
        found.append(have[-1])
    return found


def _member(name: str, data: bytes, mode: int) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    info.uname = info.gname = "root"
    return info, io.BytesIO(data)


def repack(debs: list[Path], version: str, out: Path) -> None:
    """Writes the upstream-layout tarball from the binaries inside the .debs, reproducibly."""
    top = f"etcd-v{version}-linux-{ARCH}"
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        topinfo = tarfile.TarInfo(top)
        topinfo.type, topinfo.mode, topinfo.mtime = tarfile.DIRTYPE, 0o755, 0
        topinfo.uname = topinfo.gname = "root"
        tar.addfile(topinfo)
        for deb in debs:
            _run("dpkg-deb", "-x", str(deb), tmp)
        for rel in ETCD_DEBS.values():
            data = (Path(tmp) / rel).read_bytes()
            tar.addfile(*_member(f"{top}/{Path(rel).name}", data, 0o755))
        tar.addfile(*_member(f"{top}/README-airgap-lab.md",
                             f"etcd {version} repacked from Debian's etcd-server and etcd-client for the lab.\n".encode(),
                             0o644))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    with open(tmp_out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(buf.getvalue())
    tmp_out.replace(out)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build(out: Path = CACHE) -> dict:
    """Ensures the tarball and node .debs under out; returns the fixture's description (also out/fixture.json)."""
    debs = download(tuple(ETCD_DEBS), out / "debs-etcd")
    node_debs = download(NODE_DEBS, out / "debs-node")
    deb_version = _run("dpkg-deb", "-f", str(debs[0]), "Version").strip()
    version = upstream_version(deb_version)
    mirror_path = UPSTREAM.format(version=version, arch=ARCH)
    tarball = out / "mirror" / "files" / mirror_path
    if not tarball.exists():
        repack(debs, version, tarball)
    desc = {
        "version": version,
        "debian_version": deb_version,
        "arch": ARCH,
        "mirror_root": str(out / "mirror"),
        "mirror_path": f"files/{mirror_path}",
        "tarball": str(tarball),
        "sha256": sha256(tarball),
        "node_debs": [str(p) for p in node_debs],
    }
    (out / "fixture.json").write_text(json.dumps(desc, indent=2) + "\n")
    return desc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CACHE, help=f"cache directory (default {CACHE})")
    args = parser.parse_args(argv)
    print(json.dumps(build(args.out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
