"""Engine of `./run.sh build-bundle`: fetches everything the config needs (the resolver's lists) into one bundle tarball."""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import gzip
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, TextIO

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt
from ansible_collections.airgap.kubernetes.tools import list_artifacts
from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("AIRGAP_CACHE", Path.home() / ".cache" / "airgap-kubernetes"))
BUNDLE_NAME = "airgap-bundle"
TARBALL = "bundle.tar.gz"
# --os names, and the apt suite (Debian codename) each one gets in the bundle.
OS_SUITES = {"debian12": "bookworm", "debian13": "trixie"}
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
APT_HELPER = "/usr/lib/apt/apt-helper"
# Packages the bundle itself needs beyond the catalog's: none today; the catalog lists the bundle server's own.
CHUNK = 1 << 20
USER_AGENT = "airgap.kubernetes-build-bundle"


class BuildError(Exception):
    """build-bundle cannot go on; the message names the artifact or step and the fix."""


class ChecksumError(BuildError):
    """A download does not hash to the catalog's sha256."""


class _Incomplete(OSError):
    """The server closed the connection before Content-Length bytes arrived; the retry continues the .part file."""


# ----------------------------------------------------------------------------- the plan (pure)

@dataclass(frozen=True)
class FileJob:
    name: str
    version: str
    url: str  # where to fetch it: the upstream URL after upstream_bases
    path: str  # bundle-relative: files/<upstream-host>/<upstream-path> (or apt/pool/... for packages)
    sha256: str


@dataclass
class ImageJob:
    name: str
    version: str
    canonical: str  # registry.k8s.io/pause:3.2: its name in the bundle's registry storage and in manifest.json
    source: str  # where to copy it from: the upstream reference after upstream_bases
    digest: Optional[str]  # the catalog's digest, when it pins one
    multiarch: bool
    arches: list = field(default_factory=list)


@dataclass
class Plan:
    files: list
    images: list
    packages: list  # Debian package names
    arches: list
    suites: list
    versions: dict
    config: dict


def make_plan(catalog: Mapping, config: Mapping, arches: Iterable[str], suites: Iterable[str]) -> Plan:
    """What the bundle holds for these arches and apt suites, straight from the resolver's lists."""
    arches = [resolver.normalize_arch(catalog, a) for a in arches]
    files: dict = {}
    images: dict = {}
    packages: list = []
    versions: dict = {}
    for arch in arches:
        for art in resolver.resolve(catalog, config, arch, mode="upstream", os_family="debian"):
            if art.kind == "file":
                path = "files/" + art.mirror_path
                files.setdefault(path, FileJob(art.name, art.version, art.upstream_url, path, art.sha256))
                versions[art.name] = art.version
            elif art.kind == "image":
                job = images.setdefault(art.canonical, ImageJob(art.name, art.version, art.canonical, art.upstream,
                                                                art.digest, art.multiarch))
                job.arches.append(arch)
                versions[art.name] = art.version
            elif art.package not in packages:
                packages.append(art.package)
    keys = resolver.config_keys(catalog) | {"cluster_arches", "upstream_insecure_registries"}
    recorded = {k: config[k] for k in sorted(keys) if k in config}
    return Plan(list(files.values()), list(images.values()), packages, arches, list(suites), versions, recorded)


def suites_for(os_names: Iterable[str]) -> list:
    """--os debian12,debian13 (or codenames) -> apt suites, in the order given."""
    suites = []
    for name in os_names:
        name = name.strip().lower()
        if not name:
            continue
        suite = OS_SUITES.get(name, name if name in OS_SUITES.values() else None)
        if suite is None:
            raise BuildError(f"--os {name!r} is not supported: pick from {', '.join(OS_SUITES)}")
        if suite not in suites:
            suites.append(suite)
    return suites


# ----------------------------------------------------------------------------- progress

def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_status(phase: str, done: int, total: int, nbytes: int, elapsed: float, unit: str = "items",
                  final: bool = False) -> str:
    """One progress line: `files  3/9 items  120.5 MiB  10.0 MiB/s  12s`, or the phase's summary when final."""
    rate = f"  {human_bytes(nbytes / elapsed)}/s" if nbytes and elapsed > 0 else ""
    size = f"  {human_bytes(nbytes)}" if nbytes else ""
    if final:
        return f"[{phase}] {done}/{total} {unit}{size} in {elapsed:.1f} s"
    return f"{phase}  {done}/{total} {unit}{size}{rate}  {elapsed:.0f}s"


class Progress:
    """A live line on a terminal; otherwise one line per finished phase. Thread-safe."""

    def __init__(self, stream: Optional[TextIO] = None, live: Optional[bool] = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._lock = threading.Lock()
        self.phase, self.unit, self.total, self.done, self.bytes = "", "items", 0, 0, 0
        self.started = self._drawn = 0.0
        self.timings: dict = {}

    def start(self, phase: str, total: int, unit: str = "items") -> None:
        with self._lock:
            self.phase, self.unit, self.total, self.done, self.bytes = phase, unit, total, 0, 0
            self.started = time.monotonic()
        self._draw(force=True)

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.done += items
            self.bytes += nbytes
        self._draw()

    def finish(self) -> float:
        elapsed = time.monotonic() - self.started
        self.timings[self.phase] = round(elapsed, 1)
        line = format_status(self.phase, self.done, self.total, self.bytes, elapsed, self.unit, final=True)
        with self._lock:
            self.stream.write(("\r\033[K" if self.live else "") + line + "\n")
            self.stream.flush()
        return elapsed

    def _draw(self, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._drawn < 0.2:
                return
            self._drawn = now
            line = format_status(self.phase, self.done, self.total, self.bytes, now - self.started, self.unit)
            self.stream.write("\r\033[K" + line)
            self.stream.flush()


# ----------------------------------------------------------------------------- downloads

def sha256_file(path: Path) -> str:
    return bundlefmt.sha256_file(path)


def _fetch(url: str, part: Path, timeout: float, on_bytes: Callable[[int], None]) -> bool:
    """Fetch url into part, continuing it with an HTTP Range request when it exists; returns True if it resumed."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return True  # nothing left to fetch; the checksum decides whether the part is whole
        raise
    with response:
        resumed = bool(have) and response.status == 206
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        got = 0
        # A server that ignores Range answers 200 with the whole file: start over.
        with open(part, "ab" if resumed else "wb") as out:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                got += len(chunk)
                on_bytes(len(chunk))
        if expected is not None and got < expected:
            raise _Incomplete(f"connection closed after {got} of {expected} bytes")
    return resumed


def _from_cache(cache: Optional[Path], sha256: str, dest: Path) -> bool:
    """Copy a verified earlier download of the same content to dest; a damaged cache entry is dropped."""
    entry = cache / sha256[:2] / sha256 if cache else None
    if entry is None or not entry.is_file():
        return False
    if sha256_file(entry) != sha256:
        entry.unlink()
        return False
    tmp = dest.with_name(dest.name + ".cache")
    shutil.copyfile(entry, tmp)
    tmp.replace(dest)
    return True


def _to_cache(cache: Optional[Path], sha256: str, src: Path) -> None:
    if cache:
        entry = cache / sha256[:2] / sha256
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{sha256}.{os.getpid()}.{threading.get_ident()}")
        shutil.copyfile(src, tmp)
        tmp.replace(entry)


def download(url: str, dest: Path, sha256: str, name: str, retries: int = 4, timeout: float = 60,
             on_bytes: Callable[[int], None] = lambda n: None, backoff: float = 1.0,
             cache: Optional[Path] = None) -> str:
    """Download url to dest and check its sha256; returns 'present', 'cached', 'downloaded' or 'resumed'.

    A verified dest is kept as it is, and content already verified once is copied from cache (keyed by sha256).
    A dest.part left by an interrupted attempt (this run or an earlier one) is continued with an HTTP Range
    request. Network errors are retried; a checksum mismatch is not.
    """
    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == sha256:
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _from_cache(cache, sha256, dest):
        return "cached"
    part = dest.with_name(dest.name + ".part")
    resumed = part.exists() and part.stat().st_size > 0
    attempt = 0
    while True:
        try:
            _fetch(url, part, timeout, on_bytes)
            break
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                raise BuildError(f"{name}: {url} answered {exc.code} {exc.reason}: check that this version exists "
                                 "there, or point upstream_bases at a mirror that has it") from None
            error: Exception = exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            error = exc
        attempt += 1
        if attempt > retries:
            raise BuildError(f"{name}: downloading {url} failed {attempt} times (last: {error}): check the network "
                             f"or upstream_bases, then rerun; it continues from {part}") from None
        time.sleep(backoff * 2 ** (attempt - 1))
    got = sha256_file(part)
    if got != sha256:
        part.unlink()
        raise ChecksumError(checksum_message(name, url, sha256, got))
    part.replace(dest)
    _to_cache(cache, sha256, dest)
    return "resumed" if resumed else "downloaded"


def checksum_message(name: str, url: str, expected: str, got: str) -> str:
    return (f"{name}: {url} has sha256 {got}, the catalog expects {expected}: the download was damaged or the "
            "upstream file changed; rerun to download it again, and if it persists, check the upstream and fix "
            "the checksum with a catalog overlay (catalog_overlay_files)")


def parallel(fn: Callable, jobs: list, progress: Progress, workers: int) -> list:
    """fn(job) for every job on a thread pool, a progress item each; returns the results in job order.

    Every failure is collected and raised together, so one run shows all that is wrong.
    """
    results: dict = {}
    errors: list = []
    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(fn, job): index for index, job in enumerate(jobs)}
        for future in cf.as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except BuildError as exc:
                errors.append(str(exc))
            progress.advance(items=1)
    if errors:
        raise BuildError("\n".join(sorted(errors)))
    return [results[i] for i in range(len(jobs))]


def download_all(jobs: list, root: Path, progress: Progress, workers: int = 4, retries: int = 4,
                 cache: Optional[Path] = None) -> dict:
    """Every job in parallel into root/<job.path>; returns {path: status}. All failures are reported together."""
    def one(job: FileJob) -> str:
        return download(job.url, root / job.path, job.sha256, job.name, retries,
                        on_bytes=lambda n: progress.advance(nbytes=n), cache=cache)
    return dict(zip((job.path for job in jobs), parallel(one, jobs, progress, workers)))


def prune(directory: Path, keep: set, root: Path) -> list:
    """Remove files under directory that are not in keep (bundle-relative paths), and emptied directories."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.rglob("*"), reverse=True):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif rel not in keep:
            path.unlink()
            removed.append(rel)
    return removed


# ----------------------------------------------------------------------------- helpers for commands

def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True, **kw)
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]} is not installed: apt-get install {_PROVIDERS.get(str(cmd[0]), cmd[0])}") from None
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{' '.join(str(c) for c in cmd)} failed ({exc.returncode}): "
                         f"{(exc.stderr or exc.stdout or '').strip()[-2000:]}") from None


_PROVIDERS = {"skopeo": "skopeo", "docker-registry": "docker-registry", "apt-ftparchive": "apt-utils",
              "gpg": "gnupg", "apt-get": "apt"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- images

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
    if not job.multiarch or set(job.arches) >= set(all_arches):
        # Every platform (or an arch-specific image): the index and its digest stay as upstream has them.
        cmd += ["--all", "--preserve-digests"]
    else:
        # One arch of a multi-arch image: the tag points at that platform's manifest.
        cmd += ["--override-os", "linux", "--override-arch", job.arches[0]]
    source = job.source.rsplit(":", 1)[0] + "@" + job.digest if job.digest else job.source
    return cmd + [f"docker://{source}", f"docker://{registry}/{job.canonical}"]


def copy_images(jobs: list, bundle: Path, all_arches: Iterable[str], insecure: Iterable[str], progress: Progress,
                workers: int = 2) -> dict:
    """Copy every image into bundle/registry through a local docker-registry; returns {canonical ref: digest}."""
    with local_registry(bundle / bundlefmt.REGISTRY_DIR) as registry:
        def one(job: ImageJob) -> str:
            try:
                run(skopeo_copy_args(job, registry, all_arches, insecure))
            except BuildError as exc:
                raise BuildError(f"image {job.name} ({job.source}): {exc}: check the image exists there, "
                                 "or upstream_bases / upstream_insecure_registries") from None
            return bundlefmt.read_tag_digest(bundle, job.canonical)

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


# ----------------------------------------------------------------------------- apt repository

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


def write_apt_repo(bundle: Path, suites: dict, label: str = "airgap.kubernetes bundle") -> None:
    """apt/dists/<suite> for each suite ({suite: [arches]}) from apt/pool/<suite>, signed with a new key.

    The key is made for this bundle; its public half is keys/bundle-apt.asc and the private half is thrown away.
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
    # A short homedir keeps gpg-agent's socket path under the 108-byte limit.
    home = tempfile.mkdtemp(prefix="agpg-", dir="/tmp")
    try:
        _gpg(home, "--passphrase", "", "--quick-gen-key", f"{label} <bundle@airgap.invalid>", "ed25519", "sign", "never")
        keys = bundle / "keys"
        keys.mkdir(exist_ok=True)
        (bundle / bundlefmt.APT_KEY).write_text(_gpg(home, "--armor", "--export").stdout)
        for suite in suites:
            rel = apt / "dists" / suite
            _gpg(home, "--clearsign", "-o", str(rel / "InRelease"), str(rel / "Release"))
            _gpg(home, "--armor", "--detach-sign", "-o", str(rel / "Release.gpg"), str(rel / "Release"))
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


# ----------------------------------------------------------------------------- the tool itself

def _source_tree(repo: Path, exclude: Iterable[Path], dest: Path) -> None:
    """Copy the collection's source (git's view when it is a checkout) to dest, leaving out build outputs."""
    excluded = [Path(p).resolve() for p in exclude]
    if (repo / ".git").exists():
        names = run(["git", "-C", repo, "ls-files", "-co", "--exclude-standard", "-z"]).stdout.split("\0")
    else:
        names = [p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file() and not p.is_symlink()]
    for name in names:
        if not name:
            continue
        src = repo / name
        if not src.is_file() or any(src.resolve().is_relative_to(e) for e in excluded):
            continue
        if name.split("/", 1)[0] in (".lab", ".collections", ".airgap", ".cache", ".git"):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _tree_sha256(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + sha256_file(path).encode())
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


def build_wheelhouse(bundle: Path, requirements: Path) -> list:
    """wheelhouse/: every wheel (or sdist) pip needs to install requirements offline, for this host's Python."""
    target = bundle / "wheelhouse"
    target.mkdir(parents=True, exist_ok=True)
    out = run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-r", requirements,
               "-d", target]).stdout
    shutil.copyfile(requirements, target / "requirements.txt")
    keep = {"requirements.txt"}
    for line in out.splitlines():
        line = line.strip()
        for prefix in ("Saved ", "File was already downloaded "):
            if line.startswith(prefix):
                keep.add(Path(line[len(prefix):]).name)
    if len(keep) > 1:
        for path in target.iterdir():
            if path.name not in keep:
                path.unlink()
    return sorted(keep)


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


@dataclass
class Result:
    bundle_dir: Path
    tarball: Optional[Path]
    manifest: dict
    timings: dict
    sizes: dict


def make_tarball(bundle: Path, out: Path) -> Path:
    """out/bundle.tar.gz with the bundle as its one top-level directory, and bundle.tar.gz.sha256 beside it."""
    tarball = out / TARBALL
    tmp = out / (TARBALL + ".tmp")
    run(["tar", "-C", bundle.parent, "--owner=0", "--group=0", "-czf", tmp, bundle.name])
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


def build(catalog: Mapping, config: Mapping, options: Options, progress: Optional[Progress] = None) -> Result:
    """Build (or bring up to date) out/airgap-bundle and pack it; a rerun reuses what is already verified there."""
    progress = progress or Progress()
    out = Path(options.out).resolve()
    bundle = out / BUNDLE_NAME
    bundle.mkdir(parents=True, exist_ok=True)
    state = _load_state(out)
    (out / STATE).unlink(missing_ok=True)  # written again only when this build succeeds
    (bundle / bundlefmt.MANIFEST).unlink(missing_ok=True)
    plan = make_plan(catalog, config, options.arches, options.suites)
    insecure = [str(h) for h in (config.get("upstream_insecure_registries") or [])]

    progress.start("files", len(plan.files), "files")
    download_all(plan.files, bundle, progress, options.jobs, options.retries, options.cache)
    prune(bundle / "files", {job.path for job in plan.files}, bundle)
    progress.finish()

    progress.start("images", len(plan.images), "images")
    prune_repositories(bundle, [job.canonical for job in plan.images])
    digests = copy_images(plan.images, bundle, catalog.get("arches", []), insecure, progress)
    progress.finish()

    debs: dict = {}
    if plan.suites and plan.packages:
        progress.start("apt closure", len(plan.suites) * len(plan.arches), "suites")
        for suite in plan.suites:
            for arch in plan.arches:
                for job in apt_closure(plan.packages, suite, arch, options.debian_mirror, options.debian_security):
                    debs.setdefault(job.path, job)
                progress.advance(items=1)
        progress.finish()
        progress.start("apt packages", len(debs), "debs")
        download_all(list(debs.values()), bundle, progress, options.jobs, options.retries, options.cache)
        prune(bundle / "apt" / "pool", set(debs), bundle)
        apt_print = _fingerprint([plan.suites, plan.arches, sorted((j.path, j.sha256) for j in debs.values())])
        # The same debs keep the same signed indexes and key: a rerun leaves the bundle unchanged.
        if state.get("apt") != apt_print or not (bundle / bundlefmt.APT_KEY).is_file():
            write_apt_repo(bundle, {suite: plan.arches for suite in plan.suites})
        state["apt"] = apt_print
        progress.finish()
    else:
        shutil.rmtree(bundle / "apt", ignore_errors=True)
        shutil.rmtree(bundle / "keys", ignore_errors=True)

    if options.wheelhouse:
        progress.start("wheelhouse", 1, "steps")
        build_wheelhouse(bundle, options.requirements)
        progress.advance(items=1)
        progress.finish()
    else:
        shutil.rmtree(bundle / "wheelhouse", ignore_errors=True)
    if options.collection:
        progress.start("collection", 1, "steps")
        build_collection(bundle, out, state)
        progress.advance(items=1)
        progress.finish()
    else:
        shutil.rmtree(bundle / "collection", ignore_errors=True)

    progress.start("manifest", 1, "steps")
    leftovers = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*.part"))
    for rel in leftovers:
        (bundle / rel).unlink()
    def write(created: Optional[str] = None) -> dict:
        return bundlefmt.write_manifest(bundle, images=digests, arches=plan.arches,
                                        apt_suites=plan.suites if debs else [], versions=plan.versions,
                                        config={**plan.config, "apt_packages": plan.packages}, created=created)

    manifest = write()
    content = _fingerprint({k: v for k, v in manifest.items() if k != "created"})
    if state.get("manifest") == content and state.get("created"):
        manifest = write(state["created"])  # unchanged content keeps its date: the same bytes, the same tarball
    state.update(manifest=content, created=manifest["created"])
    # A blob damaged in registry storage by an earlier run would be kept by skopeo (it skips known blobs).
    problems = bundlefmt.verify_bundle(bundle)
    if problems:
        raise BuildError(f"{bundle} does not match its own manifest: {'; '.join(map(str, problems[:5]))}: "
                         f"remove {bundle} and build again")
    progress.advance(items=1)
    progress.finish()

    tarball = None
    if options.tarball:
        progress.start("tarball", 1, "steps")
        tarball = out / TARBALL
        packed = _fingerprint(sha256_file(bundle / bundlefmt.MANIFEST))
        sha_file = out / (TARBALL + ".sha256")
        if (state.get("tarball") != packed or not tarball.is_file() or not sha_file.is_file()
                or sha_file.read_text().split()[:1] != [sha256_file(tarball)]):
            make_tarball(bundle, out)
        state["tarball"] = packed
        progress.advance(items=1)
        progress.finish()
    (out / STATE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    sizes = {part: _du(bundle / part) for part in ("files", "registry", "apt", "wheelhouse", "collection")}
    sizes["bundle"] = _du(bundle)
    if tarball:
        sizes["tarball"] = tarball.stat().st_size
    return Result(bundle, tarball, manifest, dict(progress.timings), sizes)


# ----------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.sh build-bundle",
        description="On a connected host: download, verify and pack everything the inventory's config needs "
                    "(files, images, an apt repo for Debian, the tool's wheelhouse) into one bundle tarball.")
    parser.add_argument("-i", "--inventory", help="inventory file or directory (default: $AIRGAP_INVENTORY, "
                        "else inventory/local/hosts.yml if present, else the defaults)")
    parser.add_argument("-e", "--extra-vars", action="append", default=[], metavar="VARS",
                        help="KEY=VALUE, @file or a JSON mapping, as for ansible-playbook")
    parser.add_argument("--arch", choices=["amd64", "arm64", "all"],
                        help="node arches to carry (default: the inventory's cluster_arches)")
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
    parser.add_argument("--progress", choices=["auto", "live", "lines"], default="auto",
                        help="live line (terminal) or one line per phase (default: auto)")
    return parser


def main(argv: Optional[list] = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    try:
        catalog, config = list_artifacts.load(args.inventory or list_artifacts._default_inventory(), args.extra_vars)
        if args.arch == "all":
            arches = list(catalog.get("arches", []))
        elif args.arch:
            arches = [args.arch]
        else:
            arches = [resolver.normalize_arch(catalog, a) for a in (config.get("cluster_arches") or ["amd64"])]
        options = Options(out=args.out, arches=arches, suites=suites_for(args.os.split(",")), jobs=args.jobs,
                          wheelhouse=not args.no_wheelhouse, collection=not args.no_collection,
                          tarball=not args.no_tarball, requirements=args.requirements,
                          debian_mirror=args.debian_mirror, debian_security=args.debian_security,
                          cache=None if args.no_cache else CACHE / "downloads")
        live = {"auto": None, "live": True, "lines": False}[args.progress]
        result = build(catalog, config, options, Progress(live=live))
    except (resolver.CatalogError, BuildError, bundlefmt.BundleError) as exc:
        print(f"build-bundle: error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "bundle_dir": str(result.bundle_dir),
        "tarball": str(result.tarball) if result.tarball else None,
        "arches": result.manifest["arches"],
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
