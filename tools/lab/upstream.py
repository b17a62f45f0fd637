"""The lab's local upstream: a file server and a registry on loopback that play the internet for build-bundle.

Filled from real sources: Debian-packaged etcd, containerd, runc and CNI plugins repacked into the upstream release
layouts, the lab's Kubernetes v1.20.2 build, and images made with `docker import` under their upstream names.

CLI:
  python3 tools/lab/upstream.py up [--dir DIR]    build (cached) and start; writes DIR/upstream.yml for inventories
  python3 tools/lab/upstream.py down [--dir DIR]  stop the servers started by `up`
  python3 tools/lab/upstream.py build             only fill the cache, print its directory
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO / ".collections") not in sys.path:
    sys.path.insert(0, str(REPO / ".collections"))

from ansible_collections.airgap.kubernetes.tools import catalog_overlay, progress  # noqa: E402
from ansible_collections.airgap.kubernetes.tools.bundle_common import BuildError  # noqa: E402
from ansible_collections.airgap.kubernetes.tools.bundle_images import local_registry  # noqa: E402

CACHE = Path(os.environ.get("AIRGAP_CACHE", Path.home() / ".cache" / "airgap-kubernetes")) / "upstream"
DEFAULT_DIR = REPO / ".lab" / "upstream"
ARCH = "amd64"
KUBE_VERSION = "1.20.2"
PAUSE_VERSION = "3.2"
BUSYBOX_VERSION = "1.35.0"
# Bump when the recipe below changes: the cache key includes it.
RECIPE = "5"
# Debian packages that play upstream release files, and the libraries the images need.
FILE_DEBS = ("etcd-server", "etcd-client", "containerd", "runc", "containernetworking-plugins")
PROXY_DEBS = ("libc6", "iptables", "libxtables12", "libip4tc2", "libip6tc2", "libnftnl11", "libmnl0",
              "libnfnetlink0", "libnetfilter-conntrack3", "conntrack", "libnetfilter-cthelper0",
              "libnetfilter-cttimeout1", "libnetfilter-queue1")
ETCD_DEBS = ("libc6", "etcd-server")
PATH_ENV = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = ("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
          "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nnginx:x:101:101:nginx:/nonexistent:/usr/sbin/nologin\n")
GROUP = "root:x:0:\nnogroup:x:65534:\nwww-data:x:33:\nnginx:x:101:\n"


class UpstreamError(Exception):
    """The local upstream cannot be built or started; the message says why and what to do."""


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True, **kw)
    except subprocess.CalledProcessError as exc:
        raise UpstreamError(f"{' '.join(str(c) for c in cmd)} failed ({exc.returncode}): "
                            f"{(exc.stderr or exc.stdout).strip()[-2000:]}") from None


def _log(msg: str) -> None:
    print(f"upstream: {msg}", file=sys.stderr, flush=True)


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- a file server with Range support

class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with `Range: bytes=N-` (resumable downloads), quiet logs."""

    def log_message(self, *args) -> None:  # noqa: D401 - silence per-request logs
        pass

    def send_head(self):  # type: ignore[override]
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().send_head()
        start, size = int(match.group(1)), path.stat().st_size
        if start >= size:
            self.send_error(416, "Requested Range Not Satisfiable")
            return None
        handle = open(path, "rb")
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return handle


def make_file_server(root: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    handler = lambda *a, **kw: RangeHandler(*a, directory=str(root), **kw)  # noqa: E731
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


# --------------------------------------------------------------------------- content

def _kube_bin(log=_log) -> Path:
    """The lab's Kubernetes v1.20.2 build (tools/lab/build-kubernetes.sh; cached, seconds when warm).

    Its progress (a line every 30 s while make runs) is passed to log as it comes: cold, it takes minutes."""
    script = REPO / "tools" / "lab" / "build-kubernetes.sh"
    proc = progress.run_streaming(["bash", script], log)
    if proc.returncode != 0:
        raise UpstreamError(f"bash {script} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    out = proc.stdout.strip().splitlines()
    if not out:
        raise UpstreamError("tools/lab/build-kubernetes.sh printed no build directory")
    path = Path(out[-1]) / "bin"
    if not (path / "kubeadm").is_file():
        raise UpstreamError(f"{path} holds no kubeadm: rerun bash tools/lab/build-kubernetes.sh and read its output")
    return path


def _debs(packages: tuple) -> dict:
    """The host's candidate .debs for packages, downloaded once (apt-get download: the connected host's role)."""
    dest = CACHE / "debs"
    dest.mkdir(parents=True, exist_ok=True)
    found = {}
    missing = []
    for pkg in packages:
        hits = sorted(dest.glob(f"{pkg}_*_{ARCH}.deb")) + sorted(dest.glob(f"{pkg}_*_all.deb"))
        if hits:
            found[pkg] = hits[-1]
        else:
            missing.append(pkg)
    if missing:
        _run(["apt-get", "download", "-q", *missing], cwd=dest)
        return _debs(packages)
    return found


def _deb_version(deb: Path) -> str:
    """Upstream version of a .deb: 1.6.20~ds1-1+deb12u3 -> 1.6.20."""
    version = _run(["dpkg-deb", "--field", deb, "Version"]).stdout.strip()
    version = version.split(":", 1)[-1].split("-")[0]
    return re.split(r"[~+]", version)[0]


def _extract(debs: list, root: Path) -> None:
    for deb in debs:
        _run(["dpkg-deb", "-x", deb, root])


def _tar_gz(dest: Path, members: list) -> None:
    """A reproducible .tar.gz of (arcname, path-or-None for a directory) entries."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for arcname, path in members:
            info = tarfile.TarInfo(arcname)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            if path is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = path.stat().st_size, 0o755
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
    with gzip.GzipFile(dest, "wb", mtime=0) as out:
        out.write(raw.getvalue())


def _copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(0o755)
    return dest


@dataclass
class Content:
    root: Path  # files/<host>/<path> and the registry storage
    files: list  # (component, version, path) for the catalog overlay
    images: dict  # upstream reference -> local docker image
    versions: dict  # version knobs for the inventory


def build_files(kube: Path, files_root: Path) -> tuple:
    """Repack Debian's binaries and the lab's build into the upstream download layouts; returns (entries, versions)."""
    debs = _debs(FILE_DEBS)
    gh = files_root / "github.com"
    entries, versions = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _extract(list(debs.values()), root)
        etcd_v = _deb_version(debs["etcd-server"])
        top = f"etcd-v{etcd_v}-linux-{ARCH}"
        etcd = gh / f"etcd-io/etcd/releases/download/v{etcd_v}/{top}.tar.gz"
        _tar_gz(etcd, [(top, None), (f"{top}/etcd", root / "usr/bin/etcd"), (f"{top}/etcdctl", root / "usr/bin/etcdctl")])
        entries.append(("etcd", etcd_v, etcd))
        containerd_v = _deb_version(debs["containerd"])
        containerd = gh / f"containerd/containerd/releases/download/v{containerd_v}/containerd-{containerd_v}-linux-{ARCH}.tar.gz"
        names = ("containerd", "containerd-shim", "containerd-shim-runc-v1", "containerd-shim-runc-v2", "ctr")
        _tar_gz(containerd, [("bin", None)] + [(f"bin/{n}", root / "usr/bin" / n) for n in names])
        entries.append(("containerd", containerd_v, containerd))
        runc_v = _deb_version(debs["runc"])
        runc = _copy(root / "usr/sbin/runc", gh / f"opencontainers/runc/releases/download/v{runc_v}/runc.{ARCH}")
        entries.append(("runc", runc_v, runc))
        cni_v = _deb_version(debs["containernetworking-plugins"])
        cni = gh / f"containernetworking/plugins/releases/download/v{cni_v}/cni-plugins-linux-{ARCH}-v{cni_v}.tgz"
        plugins = sorted(p for p in (root / "usr/lib/cni").iterdir() if p.is_file())
        _tar_gz(cni, [(f"./{p.name}", p) for p in plugins])
        entries.append(("cni-plugins", cni_v, cni))
        versions.update(etcd_version=etcd_v, containerd_version=containerd_v, runc_version=runc_v, cni_version=cni_v)
    for name in ("kubeadm", "kubelet", "kubectl"):
        path = _copy(kube / name, files_root / f"dl.k8s.io/release/v{KUBE_VERSION}/bin/linux/{ARCH}/{name}")
        entries.append((name, KUBE_VERSION, path))
    return entries, versions


def _rootfs_tar(root: Path, dest: Path) -> None:
    _run(["tar", "-C", root, "--numeric-owner", "--owner=0", "--group=0", "--sort=name", "--mtime=@0", "-cf", dest, "."])


def _etc(root: Path) -> None:
    for d in ("etc", "tmp", "var/run", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/nsswitch.conf").write_text("hosts: files dns\n")


def _import(rootfs: Path, local: str, changes: list) -> None:
    args = [a for change in [PATH_ENV] + changes for a in ("--change", change)]
    if not _run(["docker", "images", "-q", local]).stdout.strip():
        _run(["docker", "import", *args, rootfs, local])


def build_images(kube: Path, key: str) -> tuple:
    """Local docker images under upstream names; returns ({upstream ref: local tag}, versions)."""
    images, versions = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)

        def image(ref: str, fill, changes: list) -> None:
            root = tmpdir / re.sub(r"[^a-z0-9]+", "-", ref)
            root.mkdir()
            _etc(root)
            fill(root)
            tar = root.with_suffix(".tar")
            _rootfs_tar(root, tar)
            local = f"airgap-upstream/{ref.split('/')[-1].split(':')[0]}:{key}"
            _import(tar, local, changes)
            images[ref] = local
            _log(f"  image {ref}")

        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            image(f"registry.k8s.io/{name}:v{KUBE_VERSION}",
                  lambda r, n=name: _copy(kube / n, r / "usr/local/bin" / n), [f'ENTRYPOINT ["/usr/local/bin/{name}"]'])

        def proxy(root: Path) -> None:
            _extract(list(_debs(PROXY_DEBS).values()), root)
            # Debian sets these alternatives at install time; kube-proxy calls iptables*, nodes use the nft variant.
            for tool in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"):
                link = root / "usr/sbin" / tool
                link.unlink(missing_ok=True)
                link.symlink_to("xtables-nft-multi")
            _copy(kube / "kube-proxy", root / "usr/local/bin/kube-proxy")
        image(f"registry.k8s.io/kube-proxy:v{KUBE_VERSION}", proxy, ['ENTRYPOINT ["/usr/local/bin/kube-proxy"]'])
        image(f"registry.k8s.io/pause:{PAUSE_VERSION}", lambda r: _copy(kube / "pause", r / "pause"),
              ['ENTRYPOINT ["/pause"]'])

        def etcd(root: Path) -> None:
            _extract(list(_debs(ETCD_DEBS).values()), root)
        etcd_v = _deb_version(_debs(ETCD_DEBS)["etcd-server"])
        image(f"registry.k8s.io/etcd:{etcd_v}-0", etcd, ['ENTRYPOINT ["/usr/bin/etcd"]'])

        def busybox(root: Path) -> None:
            _copy(Path("/bin/busybox"), root / "bin/busybox")
            for applet in _run(["/bin/busybox", "--list"]).stdout.split():
                if applet != "busybox":
                    (root / "bin" / applet).symlink_to("busybox")
        image(f"docker.io/library/busybox:{BUSYBOX_VERSION}", busybox, ['CMD ["/bin/sh"]'])

    return images, versions


def check_images(images: dict) -> None:
    """Each image's main binary runs (a missing library shows here, not on a node)."""
    probes = {"kube-proxy": ["/usr/sbin/iptables", "--version"], "busybox": ["/bin/sh", "-c", "true"],
              "etcd:": ["/usr/bin/etcd", "--version"]}
    for ref, local in images.items():
        for needle, cmd in probes.items():
            if needle in ref:
                _run(["docker", "run", "--rm", "--network", "none", "--entrypoint", cmd[0], local, *cmd[1:]])
        if "kube-proxy" in ref:
            _run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "conntrack", local, "--version"])


def _key(kube: Path) -> str:
    h = hashlib.sha256(RECIPE.encode())
    for name in sorted(p.name for p in kube.iterdir()):
        st = (kube / name).stat()
        h.update(f"{name}:{st.st_size}:{int(st.st_mtime)}".encode())
    # One apt-cache call prints the same blocks, in the same order, as one call per package (the key is unchanged),
    # in a second instead of one per package.
    h.update(_run(["apt-cache", "policy", *sorted(set(FILE_DEBS + PROXY_DEBS + ETCD_DEBS))]).stdout.encode())
    return h.hexdigest()[:12]


def build(force: bool = False) -> Content:
    """Fill the cache: files in the upstream layout, images pushed into a registry storage; cached by recipe."""
    with progress.heartbeat(f"Kubernetes v{KUBE_VERSION} build (cached: seconds; cold: about 12 min)", _log) as say:
        kube = _kube_bin(say)
    key = _key(kube)
    root = CACHE / key
    state = root / "content.json"
    if state.is_file() and not force:
        data = json.loads(state.read_text())
        return Content(root, [tuple(e) for e in data["files"]], data["images"], data["versions"])
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.monotonic()
    _log(f"filling {root} (once per recipe and Debian package versions)")
    with progress.heartbeat("release files from Debian's packages", _log):
        entries, versions = build_files(kube, root / "files")
    with progress.heartbeat("images under their upstream names (docker import)", _log):
        images, image_versions = build_images(kube, key)
    versions.update(image_versions)
    with progress.heartbeat("each image's binary runs", _log):
        check_images(images)
    with progress.heartbeat("images into the upstream registry", _log) as say, \
            local_registry(root / "registry") as registry:
        for index, (ref, local) in enumerate(images.items(), 1):
            _run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"docker-daemon:{local}",
                  f"docker://{registry}/{ref}"])
            say(f"  {index}/{len(images)} {ref}")
    files = [(name, version, str(path)) for name, version, path in entries]
    state.write_text(json.dumps({"files": files, "images": images, "versions": versions}, indent=2))
    _log(f"built {root} in {time.monotonic() - started:.0f} s")
    return Content(root, [tuple(e) for e in files], images, versions)


# --------------------------------------------------------------------------- overlay and inventory vars

def overlay(content: Content) -> dict:
    """The lab's catalog overlay: sha256 of what the upstream serves, and the lab-only components."""
    data = catalog_overlay.make_overlay([(n, v, ARCH, Path(p)) for n, v, p in content.files])
    data["components"]["busybox"] = {
        "kind": "image", "image": "docker.io/library/busybox", "tag": "{version}", "version": BUSYBOX_VERSION,
        "groups": ["k8s_cluster"]}
    return data


def inventory_vars(content: Content, files_url: str, registry: str, overlay_path: Path) -> dict:
    """What a lab inventory adds so build-bundle fetches from this upstream and the lab config is buildable."""
    reg_base = lambda host: f"{registry}/{host}"  # noqa: E731
    return {
        "upstream_bases": {
            "github.com": f"{files_url}/github.com", "dl.k8s.io": f"{files_url}/dl.k8s.io",
            "registry.k8s.io": reg_base("registry.k8s.io"), "docker.io": reg_base("docker.io")},
        "upstream_insecure_registries": [registry],
        "catalog_overlay_files": [str(overlay_path)],
        "kube_version": f"v{KUBE_VERSION}",
        "kube_network_plugin": "bridge",
        **content.versions,
    }


VARS_HEADER = """\
# The lab's local upstream: written by tools/lab/upstream.py; add it to a lab inventory (-e @this-file).
# build-bundle fetches from loopback servers that serve Debian's binaries and the lab's own v1.20.2 build
# under the upstream names. Versions are what Debian packages. Not obtainable here, so switched off:
#   crictl and nerdctl (not packaged by Debian), CoreDNS and NodeLocal DNSCache images (no source to build from).
crictl_enabled: false
nerdctl_enabled: false
dns_enabled: false
nodelocaldns_enabled: false
"""


@contextlib.contextmanager
def serve(content: Content, workdir: Path) -> Iterator[Path]:
    """Run the file server (thread) and the registry (docker-registry) on loopback; yields the vars file."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = make_file_server(content.root / "files")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with local_registry(content.root / "registry") as registry:
            yield write_vars(content, f"http://127.0.0.1:{server.server_address[1]}", registry, workdir)
    finally:
        server.shutdown()
        server.server_close()


def write_vars(content: Content, files_url: str, registry: str, workdir: Path) -> Path:
    overlay_path = workdir / "upstream-overlay.yml"
    overlay_path.write_text("---\n# Catalog overlay of the lab's local upstream (tools/lab/upstream.py).\n"
                            + yaml.safe_dump(overlay(content), sort_keys=True))
    vars_path = workdir / "upstream.yml"
    vars_path.write_text("---\n" + VARS_HEADER + yaml.safe_dump(
        inventory_vars(content, files_url, registry, overlay_path), sort_keys=True))
    return vars_path


# --------------------------------------------------------------------------- CLI

def _serve_forever(workdir: Path) -> int:
    content = build()
    with serve(content, workdir) as vars_path:
        (workdir / "ready").write_text(str(vars_path))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        signal.signal(signal.SIGINT, lambda *a: stop.set())
        stop.wait()
    return 0


def up(workdir: Path, timeout: float = 1800, log: Callable[[str], None] = _echo) -> Path:
    """Start the upstream in the background (building it first when the cache is cold); returns the vars file.

    Until it is ready, each line of its log is passed to log: a cold build takes minutes, and shows its progress."""
    down(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ready").unlink(missing_ok=True)
    log_path = workdir / "upstream.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, __file__, "_serve", "--dir", str(workdir)], stdout=log_file,
                            stderr=subprocess.STDOUT, start_new_session=True)
    (workdir / "pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    with open(log_path) as follow:
        pending = ""
        while True:
            ready = (workdir / "ready").exists()
            *lines, pending = (pending + follow.read()).split("\n")
            for line in lines:
                log(line)
            if ready:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise UpstreamError(f"the upstream did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
    return Path((workdir / "ready").read_text())


def down(workdir: Path) -> None:
    pid_file = workdir / "pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
    pid_file.unlink()
    (workdir / "ready").unlink(missing_ok=True)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "build", "_serve"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state and vars directory (default: {DEFAULT_DIR})")
    parser.add_argument("--force", action="store_true", help="rebuild the cache")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build(force=args.force).root)
        elif args.command == "up":
            print(up(args.dir))
        elif args.command == "down":
            down(args.dir)
        else:
            return _serve_forever(args.dir)
    except (UpstreamError, BuildError) as exc:
        print(f"upstream: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
