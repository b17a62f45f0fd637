"""build-bundle's apt repository: the dependency closure of the catalog's packages, and signed indexes for it."""
from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt
from ansible_collections.airgap.kubernetes.tools.bundle_common import CACHE, BuildError, run
from ansible_collections.airgap.kubernetes.tools.bundle_plan import FileJob
from ansible_collections.airgap.kubernetes.tools.bundle_sign import SigningKey, clear_sign, detach_sign, public_key

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
APT_HELPER = "/usr/lib/apt/apt-helper"


@dataclass(frozen=True)
class AptUri:
    url: str
    filename: str
    size: int
    hash: str  # as apt prints it, e.g. MD5Sum:... or SHA256:...


def parse_print_uris(text: str) -> list:
    """`apt-get install --print-uris` output -> the .debs apt would fetch (the full dependency closure)."""
    uris = []
    for line in text.splitlines():
        if not line.startswith("'"):
            continue
        url, _, rest = line[1:].partition("' ")
        parts = rest.split()
        if len(parts) < 2 or not url.endswith(".deb"):
            continue
        # apt's own name for the file encodes the epoch (zlib1g_1%3a1.2.13...); the pool's name has none.
        filename = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        uris.append(AptUri(url, filename, int(parts[1]), parts[2] if len(parts) > 2 else ""))
    return uris


def index_sha256(packages_text: str) -> dict:
    """A Packages index -> {deb file name: sha256}, for checking each .deb against the signed index apt verified."""
    found: dict = {}
    filename = sha = ""
    for line in packages_text.splitlines() + [""]:
        if not line.strip():
            if filename and sha:
                found[filename.rsplit("/", 1)[-1]] = sha
            filename = sha = ""
        elif line.startswith("Filename:"):
            filename = line.split(":", 1)[1].strip()
        elif line.startswith("SHA256:"):
            sha = line.split(":", 1)[1].strip()
    return found


def sources_list(suite: str, mirror: str, security: str) -> str:
    signed = f"[signed-by={DEBIAN_KEYRING}]"
    return (f"deb {signed} {mirror} {suite} main\n"
            f"deb {signed} {mirror} {suite}-updates main\n"
            f"deb {signed} {security} {suite}-security main\n")


def _apt_options(state: Path, arch: str) -> list:
    """apt-get options that keep every bit of state under `state`: the host's own apt is untouched."""
    opts = {
        "Dir::State": state / "state", "Dir::State::status": state / "state" / "status",
        "Dir::Cache": state / "cache", "Dir::Etc::SourceList": state / "sources.list",
        "Dir::Etc::SourceParts": state / "empty", "Dir::Etc::Preferences": state / "preferences",
        "Dir::Etc::PreferencesParts": state / "empty", "APT::Architecture": arch, "APT::Architectures": arch,
        "Debug::NoLocking": "1", "APT::Install-Recommends": "0", "APT::Get::List-Cleanup": "0",
    }
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]


def apt_closure(packages: list, suite: str, arch: str, mirror: str = DEBIAN_MIRROR,
                security: str = DEBIAN_SECURITY, state_root: Optional[Path] = None) -> list:
    """The .debs (FileJobs into apt/pool/<suite>/main) for packages and every dependency, from an empty system."""
    state = (state_root or CACHE / "apt-state") / f"{suite}-{arch}"
    for sub in ("state/lists/partial", "cache/archives/partial", "empty"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "state" / "status").write_text("")  # nothing installed: the closure is complete on any node
    (state / "sources.list").write_text(sources_list(suite, mirror, security))
    opts = _apt_options(state, arch)
    run(["apt-get", *opts, "-q", "update"])
    out = run(["apt-get", *opts, "-q", "-y", "install", "--print-uris", *packages]).stdout
    uris = parse_print_uris(out)
    sha: dict = {}
    # apt may keep its lists compressed (lz4, gz, ...); apt-helper reads any of them.
    indexes = sorted(p for p in (state / "state" / "lists").glob("*_Packages*") if ".diff" not in p.name)
    if indexes:
        sha.update(index_sha256(run([APT_HELPER, "cat-file", *indexes]).stdout))
    jobs = []
    for uri in uris:
        if uri.filename not in sha:
            raise BuildError(f"{uri.filename} (from {uri.url}) is not in the {suite} indexes apt just read: "
                             f"rerun; if it persists, the mirror {mirror} is inconsistent")
        jobs.append(FileJob(uri.filename, suite, uri.url, f"apt/pool/{suite}/main/{uri.filename}", sha[uri.filename]))
    return jobs


def _gpg(home: str, *args: str) -> subprocess.CompletedProcess:
    return run(["gpg", "--homedir", home, "--batch", "--yes", "--no-tty", *args])


def write_apt_repo(bundle: Path, suites: dict, label: str = "airgap.kubernetes bundle",
                   signer: Optional[SigningKey] = None) -> None:
    """apt/dists/<suite> for each suite ({suite: [arches]}) from apt/pool/<suite>, signed; the public key that
    checks it is keys/bundle-apt.asc.

    With signer (build-bundle --sign-key), the site's release key signs: apt's gpgv checks the same OpenPGP key
    that vouches for the manifest. Without, a key is made for this bundle and its private half thrown away.
    """
    apt = bundle / "apt"
    shutil.rmtree(apt / "dists", ignore_errors=True)
    for suite, arches in suites.items():
        for arch in arches:
            binary = apt / "dists" / suite / "main" / f"binary-{arch}"
            binary.mkdir(parents=True)
            (apt / "pool" / suite / "main").mkdir(parents=True, exist_ok=True)
            packages = run(["apt-ftparchive", "--arch", arch, "packages", f"pool/{suite}"], cwd=apt).stdout
            (binary / "Packages").write_text(packages)
            with gzip.GzipFile(binary / "Packages.gz", "wb", mtime=0) as handle:
                handle.write(packages.encode())
        fields = {"Origin": "airgap.kubernetes", "Label": label, "Suite": suite, "Codename": suite,
                  "Architectures": " ".join(arches), "Components": "main"}
        release = run(["apt-ftparchive", *[f"-oAPT::FTPArchive::Release::{k}={v}" for k, v in fields.items()],
                       "release", "."], cwd=apt / "dists" / suite).stdout
        (apt / "dists" / suite / "Release").write_text(release)
    keys = bundle / "keys"
    keys.mkdir(exist_ok=True)
    if signer is not None:
        (bundle / bundlefmt.APT_KEY).write_text(public_key(signer))
        for suite in suites:
            rel = apt / "dists" / suite
            clear_sign(signer, rel / "Release", rel / "InRelease")
            detach_sign(signer, rel / "Release", rel / "Release.gpg")
        return
    # A short homedir keeps gpg-agent's socket path under the 108-byte limit.
    home = tempfile.mkdtemp(prefix="agpg-", dir="/tmp")
    try:
        _gpg(home, "--passphrase", "", "--quick-gen-key", f"{label} <bundle@airgap.invalid>", "ed25519", "sign", "never")
        (bundle / bundlefmt.APT_KEY).write_text(_gpg(home, "--armor", "--export").stdout)
        for suite in suites:
            rel = apt / "dists" / suite
            _gpg(home, "--clearsign", "-o", str(rel / "InRelease"), str(rel / "Release"))
            _gpg(home, "--armor", "--detach-sign", "-o", str(rel / "Release.gpg"), str(rel / "Release"))
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
