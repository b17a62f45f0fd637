"""Test fixture for layer 01: the bundle fixture plus containerd, runc and CNI plugin release files, the OS packages.

Builds on tests/bundle_fixture.py (apt repo, files, registry with a tiny image under an upstream name) and adds:
- containerd, runc and the CNI plugins, repacked from Debian's packages into the upstream release layouts
  (containerd-<v>-linux-amd64.tar.gz with bin/, runc.amd64, cni-plugins-linux-amd64-v<v>.tgz) at their mirror paths;
- an apt repo with every OS package of the catalog (and what Ansible's modules need) for each Debian suite the
  nodes run (bookworm and trixie), signed with a new key;
- a catalog overlay declaring the repacked versions and their sha256, as a site brings its own builds.

CLI: python3 tests/runtime_fixture.py [--reuse] OUT_DIR
  -> OUT_DIR/bundle.tar.gz(.sha256), OUT_DIR/runtime-overlay.yml, OUT_DIR/fixture.json (also on stdout)
"""
from __future__ import annotations

import argparse
import gzip
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
from lab import upstream  # noqa: E402

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt  # noqa: E402
from ansible_collections.airgap.kubernetes.plugins.module_utils import catalog_overlay  # noqa: E402
from ansible_collections.airgap.kubernetes.plugins.module_utils import config as cfg  # noqa: E402
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver  # noqa: E402

SUITES = ("bookworm", "trixie")
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Packages Ansible's own modules need on the nodes (apt, community.crypto), beside the catalog's.
TOOL_PACKAGES = ("python3-apt", "python3-cryptography")
# Debian package -> the catalog component whose upstream release file it plays.
RUNTIME_DEBS = {"containerd": "containerd", "runc": "runc", "containernetworking-plugins": "cni-plugins"}
CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")


def catalog_packages() -> list[str]:
    """Every Debian package name the catalog lists, whatever group or switch enables it."""
    catalog = cfg.load_defaults(fixture.REPO)["airgap_catalog"]
    return sorted({c["packages"]["debian"] for c in catalog["components"].values()
                   if c.get("kind") == "package" and c.get("packages", {}).get("debian")})


def _apt_root(suite: str) -> tuple[Path, list[str]]:
    """A private apt configuration for one Debian suite (the host's sources stay out of it), updated once."""
    root = fixture.CACHE / "apt" / suite
    opts = [f"-oDir::Etc::SourceList={root / 'sources.list'}", "-oDir::Etc::SourceParts=-",
            f"-oDir::State={root / 'state'}", f"-oDir::State::status={root / 'status'}",
            f"-oDir::Cache={root / 'cache'}", "-oAPT::Architecture=amd64", "-oAPT::Architectures=amd64",
            "-oAPT::Get::AllowUnauthenticated=false"]
    if not (root / ".updated").exists():
        for sub in ("state/lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        (root / "sources.list").write_text(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n")
        fixture._run(["apt-get", *opts, "update", "-q"])
        (root / ".updated").touch()
    return root, opts


def download_suite(suite: str, packages: tuple[str, ...], closure: bool = True) -> list[Path]:
    """The .debs of packages (with their dependency closure) from one suite, downloaded once into the cache."""
    key = hashlib.sha256(json.dumps([suite, sorted(packages), closure]).encode()).hexdigest()[:16]
    dest = fixture.CACHE / "debs" / f"{suite}-runtime-{key}"
    if not (dest / ".complete").exists():
        _, opts = _apt_root(suite)
        names = list(packages)
        if closure:
            out = fixture._run(["apt-cache", *opts, "depends", "--recurse", "--no-recommends", "--no-suggests",
                                "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages]).stdout
            names = sorted({ln.strip() for ln in out.splitlines() if ln and not ln.startswith((" ", "<"))})
        dest.mkdir(parents=True, exist_ok=True)
        fixture._run(["apt-get", *opts, "download", "-q", *names], cwd=dest)
        (dest / ".complete").write_text("\n".join(names) + "\n")
    return sorted(dest.glob("*.deb"))


def add_runtime_files(bundle: Path, catalog: dict) -> dict[str, tuple[str, Path]]:
    """containerd, runc and CNI plugins at their mirror paths, repacked the way the lab's upstream does
    (tests/lab/upstream.py); returns component -> (version, path)."""
    debs = upstream._debs(RUNTIME_DEBS)
    versions = {component: upstream._deb_version(debs[deb]) for deb, component in RUNTIME_DEBS.items()}

    def dest(component: str) -> Path:
        url = resolver._render(catalog["components"][component]["url"],
                               {"version": versions[component], "arch": fixture.ARCH, "arch_suffix": ""}, component)
        return bundle / "files" / resolver.mirror_path(url)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        upstream._extract(list(debs.values()), root)
        upstream._tar_gz(dest("containerd"), [("bin", None)] + [(f"bin/{name}", root / "usr/bin" / name)
                                                                for name in CONTAINERD_BINARIES])
        upstream._copy(root / "usr/sbin/runc", dest("runc")).chmod(0o644)
        plugins = sorted(p for p in (root / "usr/lib/cni").iterdir() if p.is_file())
        upstream._tar_gz(dest("cni-plugins"), [(f"./{p.name}", p) for p in plugins])
    return {component: (versions[component], dest(component)) for component in versions}


def write_apt_repo(bundle: Path, suites: dict[str, list[Path]]) -> None:
    """apt/dists/<suite> and apt/pool/<suite> for each suite, signed with one new key (keys/bundle-apt.asc)."""
    apt = bundle / "apt"
    shutil.rmtree(apt, ignore_errors=True)
    shutil.rmtree(bundle / "keys", ignore_errors=True)
    for suite, debs in suites.items():
        pool = apt / "pool" / suite / "main"
        pool.mkdir(parents=True)
        for deb in debs:
            shutil.copyfile(deb, pool / deb.name)
        binary = apt / "dists" / suite / "main" / f"binary-{fixture.ARCH}"
        binary.mkdir(parents=True)
        packages = fixture._run(["apt-ftparchive", "packages", f"pool/{suite}"], cwd=apt).stdout
        (binary / "Packages").write_text(packages)
        with gzip.open(binary / "Packages.gz", "wt") as handle:
            handle.write(packages)
        opts = {"Origin": "airgap.kubernetes", "Label": "airgap.kubernetes bundle", "Suite": suite,
                "Codename": suite, "Architectures": fixture.ARCH, "Components": "main"}
        release = fixture._run(
            ["apt-ftparchive", *[f"-oAPT::FTPArchive::Release::{k}={v}" for k, v in opts.items()], "release", "."],
            cwd=apt / "dists" / suite).stdout
        (apt / "dists" / suite / "Release").write_text(release)
    home = tempfile.mkdtemp(prefix="agpg-", dir="/tmp")
    try:
        fixture._gpg(home, "--passphrase", "", "--quick-gen-key", "airgap.kubernetes bundle <bundle@airgap.invalid>",
                     "ed25519", "sign", "never")
        (bundle / "keys").mkdir()
        (bundle / bundlefmt.APT_KEY).write_text(fixture._gpg(home, "--armor", "--export").stdout)
        for suite in suites:
            rel = apt / "dists" / suite
            fixture._gpg(home, "--clearsign", "-o", str(rel / "InRelease"), str(rel / "Release"))
            fixture._gpg(home, "--armor", "--detach-sign", "-o", str(rel / "Release.gpg"), str(rel / "Release"))
    finally:
        fixture.subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def build(out: Path) -> dict:
    """The bundle fixture extended for layer 01, as bundle.tar.gz, and the catalog overlay for its versions."""
    out = Path(out)
    base = fixture.build_bundle(out, tarball=False)
    catalog = cfg.load_defaults(fixture.REPO)["airgap_catalog"]
    runtime = add_runtime_files(base.dir, catalog)
    packages = tuple(sorted(set(catalog_packages()) | set(fixture.APT_PACKAGES) | set(TOOL_PACKAGES)))
    write_apt_repo(base.dir, {suite: download_suite(suite, packages) for suite in SUITES})
    overlay = catalog_overlay.make_overlay((name, version, fixture.ARCH, path)
                                           for name, (version, path) in runtime.items())
    overlay_file = out / "runtime-overlay.yml"
    overlay_file.write_text("---\n# Catalog overlay for the repacked Debian runtime (tests/runtime_fixture.py).\n"
                            + yaml.safe_dump(overlay, default_flow_style=False, sort_keys=True))
    versions = dict(base.manifest.get("versions") or {})
    versions.update({f"{name.replace('-plugins', '')}": version for name, (version, _) in runtime.items()})
    images = {ref: entry["digest"] for ref, entry in base.manifest["images"].items()}
    bundlefmt.write_manifest(base.dir, images=images, arches=[fixture.ARCH], apt_suites=list(SUITES),
                             versions=versions, config={"source": "tests/runtime_fixture.py"})
    tarball = fixture.make_tarball(base.dir, out)
    return {
        "bundle_dir": str(base.dir),
        "tarball": str(tarball),
        "overlay": str(overlay_file),
        "versions": {f"{name.replace('-plugins', '')}_version": version for name, (version, _) in runtime.items()},
        "images": sorted(base.manifest["images"]),
        "apt_suites": list(SUITES),
    }


def recipe_hash() -> str:
    """Hash of the code that builds the fixture: a reused fixture is one this very code built."""
    digest = hashlib.sha256()
    for path in (Path(__file__), Path(fixture.__file__), Path(upstream.__file__)):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for airgap-bundle/, bundle.tar.gz and runtime-overlay.yml")
    parser.add_argument("--reuse", action="store_true", help="keep a fixture in OUT built by the same code")
    args = parser.parse_args(argv)
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
