"""The test lab: Debian node images and named labs of systemd nodes on docker, reached over SSH."""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
IMAGE_DIR = HERE / "image"
# The Kubernetes and host settings every lab inventory carries (and the Kubernetes molecule scenarios link).
NODE_SETTINGS = HERE / "node-settings.yml"
CACHE_DIR = Path(os.environ.get("AIRGAP_CACHE",
                               Path.home() / ".cache" / "airgap-kubernetes")) / "lab"
LAB_ROOT = Path(os.environ.get("AIRGAP_LAB_ROOT", REPO / ".lab"))
# The labs' site release key (a gpg home): signs every lab bundle, pinned in the lab inventory. Kept outside any
# bundle and any lab, as a site keeps its key off the medium; made once, shared by all labs.
RELEASE_KEY_HOME = CACHE_DIR / "release-key"

RELEASES = ("bookworm", "trixie")
DEFAULT_RELEASE = "bookworm"
MIRROR = os.environ.get("AIRGAP_LAB_MIRROR", "http://deb.debian.org/debian")
# docs/lab.md's list plus kmod: trixie's systemd-modules-load fails without libkmod, and the roles
# call modprobe, which every real Debian server has.
DEBOOTSTRAP_INCLUDE = (
    "systemd,systemd-sysv,dbus,python3,openssh-server,sudo,iproute2,ca-certificates,gnupg,curl,kmod"
)
IMAGE_REPO = "airgap-lab-node"
BASE_REPO = "airgap-lab-base"
LABEL = "airgap.lab"
# The lab's /24s come from here; the third octet is derived from the lab's name.
LAB_SUPERNET = ipaddress.ip_network("172.30.0.0/16")
BUNDLE_HOST_OCTET = 10
FIRST_NODE_OCTET = 11
MAX_NODES = 200
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")

# docs/lab.md "Running a node": --privileged fails on this host (no CAP_SYS_RESOURCE in the
# bounding set), so every other capability is granted explicitly instead.
NODE_RUN_FLAGS = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined",
    "--device-cgroup-rule", "a *:* rwm",
    "--device", "/dev/kmsg",
    "--cgroupns=private",
    "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
)

SYSTEMD_TIMEOUT = 120.0
SSH_TIMEOUT = 60.0


class LabError(RuntimeError):
    """A lab operation failed; the message names the problem and the fix."""


# --------------------------------------------------------------------------- helpers

def _run(args: Sequence[str], *, check: bool = True, input: Optional[str] = None,
         timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"command failed ({proc.returncode}): {' '.join(args)}\n"
                       f"{proc.stderr.strip()}")
    return proc


def docker(*args: str, check: bool = True, input: Optional[str] = None,
           timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """Runs the docker CLI and returns the finished process."""
    try:
        return _run(("docker",) + args, check=check, input=input, timeout=timeout)
    except FileNotFoundError as exc:
        raise LabError("docker CLI not found: run `bash .ci/setup-host.sh`") from exc


def _log(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Molecule scenarios and tests may ask for the same image at once; one builds, the rest wait.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_docker() -> None:
    """Fails clearly when dockerd does not answer."""
    if docker("info", "--format", "{{.ServerVersion}}", check=False).returncode != 0:
        raise LabError("dockerd does not answer: run `bash .ci/setup-host.sh` (it starts dockerd)")


# --------------------------------------------------------------------------- image

def _check_release(release: str) -> None:
    if release not in RELEASES:
        raise LabError(f"release {release!r} is not supported: pick one of {', '.join(RELEASES)}")


def debootstrap_args(release: str, rootfs: str) -> list[str]:
    """The debootstrap command line for a release (docs/lab.md "The node image")."""
    return ["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_INCLUDE}",
            release, rootfs, MIRROR]


def _debootstrap_key(release: str) -> str:
    return hashlib.sha256(" ".join(debootstrap_args(release, "ROOTFS")).encode()).hexdigest()[:12]


def recipe_hash(release: str, recipe: Optional[Path] = None) -> str:
    """Hash of everything that defines a node image: debootstrap args and the recipe files."""
    h = hashlib.sha256()
    h.update(" ".join(debootstrap_args(release, "ROOTFS")).encode())
    for path in sorted((recipe or IMAGE_DIR).iterdir()):
        if path.is_file():
            h.update(b"\0" + path.name.encode() + b"\0")
            # Only the executable bit: git keeps no more, and a clone's umask must not matter.
            h.update(b"x" if path.stat().st_mode & 0o100 else b"-")
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def image_tag(release: str) -> str:
    """The content-addressed tag of a release's node image."""
    return f"{IMAGE_REPO}:{release}-{recipe_hash(release)}"


def alias_tag(release: str) -> str:
    """The stable tag molecule scenarios use; it points at the newest built recipe."""
    return f"{IMAGE_REPO}:{release}"


def _image_exists(tag: str) -> bool:
    return docker("image", "inspect", "--format", "{{.Id}}", tag, check=False).returncode == 0


def unmount_cgroups() -> list[str]:
    """The cgroup v1 mount names the node image unmounts (tools/lab/image/unmount-cgroups)."""
    lines = (IMAGE_DIR / "unmount-cgroups").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def host_cgroup_controllers() -> tuple[set[str], set[str]]:
    """(controllers the kernel has, controllers the host mounts as cgroup v1)."""
    known = set()
    for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[3] == "1":
            known.add(fields[0])
    mounted = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _, rest = post.partition(" ")
        if fstype == "cgroup":
            opts = rest.split(" ")[-1].split(",")
            mounted.update(o for o in opts if o in known)
    return known, mounted


def check_unmount_list() -> Optional[str]:
    """A warning when the image's unmount list does not match what this host leaves unmounted."""
    known, mounted = host_cgroup_controllers()
    listed = {c for name in unmount_cgroups() for c in name.split(",")}
    expected = known - mounted
    if listed == expected:
        return None
    return (f"tools/lab/image/unmount-cgroups lists {sorted(listed)} but this host leaves "
            f"{sorted(expected)} unmounted: update the file so nodes unmount exactly those")


def _ensure_rootfs(release: str) -> Path:
    tarball = CACHE_DIR / f"rootfs-{release}-{_debootstrap_key(release)}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise LabError("debootstrap is not installed: run `bash .ci/setup-host.sh`")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"rootfs-{release}-", dir=CACHE_DIR))
    try:
        rootfs = work / "rootfs"
        _log(f"debootstrap {release} (about 80 s)")
        t0 = time.monotonic()
        proc = subprocess.run(debootstrap_args(release, str(rootfs)), capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise LabError(f"debootstrap {release} from {MIRROR} failed; check that the mirror "
                           f"answers (set AIRGAP_LAB_MIRROR to use another):\n{tail}")
        # apt's downloaded .debs are a third of the rootfs and no node needs them.
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        partial = work / "rootfs.tar"
        _run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."])
        partial.rename(tarball)
        _log(f"debootstrap {release} done in {time.monotonic() - t0:.0f} s: {tarball}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def _base_tag(release: str) -> str:
    return f"{BASE_REPO}:{release}-{_debootstrap_key(release)}"


def _ensure_base(release: str) -> str:
    tag = _base_tag(release)
    if _image_exists(tag):
        return tag
    tarball = _ensure_rootfs(release)
    with open(tarball, "rb") as fh:
        proc = subprocess.run(["docker", "import", "-", tag], stdin=fh, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"docker import of {tarball} failed: {proc.stderr.strip()}\n"
                       f"delete the tarball to rebuild it from debootstrap")
    return tag


def ensure_image(release: str = DEFAULT_RELEASE) -> str:
    """Builds the node image for a release unless its recipe's tag exists; returns the tag."""
    _check_release(release)
    check_docker()
    tag = image_tag(release)
    with _file_lock(CACHE_DIR / f"image-{release}.lock"):
        build = not _image_exists(tag)
        if build:
            warning = check_unmount_list()
            if warning:
                _log(f"warning: {warning}")
            base = _ensure_base(release)
            _build_image(release, base, tag)
        # The alias moves first, so that pruning leaves no untagged image behind.
        docker("tag", tag, alias_tag(release))
        if build:
            _prune_superseded(release, keep={tag, _base_tag(release)})
    return tag


def _build_image(release: str, base: str, tag: str) -> None:
    with tempfile.TemporaryDirectory(prefix="lab-recipe-") as tmp:
        # Built from a snapshot, so that an edit during the build cannot end up under the tag
        # of the recipe before it.
        context = Path(tmp) / "image"
        shutil.copytree(IMAGE_DIR, context)
        if recipe_hash(release, context) != tag.rsplit("-", 1)[1]:
            raise LabError(f"tools/lab/image/ changed while {tag} was being built: run it again")
        _log(f"building {tag} from {base}")
        # The legacy builder: the Debian docker.io CLI here has no buildx, and FROM a local
        # image must not try a registry.
        env = dict(os.environ, DOCKER_BUILDKIT="0")
        proc = subprocess.run(
            ["docker", "build", "-q", "--build-arg", f"BASE={base}",
             "--label", f"airgap.lab.recipe={tag}", "-t", tag, str(context)],
            capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise LabError(f"building {tag} failed:\n{proc.stdout}{proc.stderr}")


def _prune_superseded(release: str, keep: set[str]) -> None:
    # Each recipe change leaves a 300 MB image and tarball behind; an image a container still
    # uses stays (docker refuses without -f).
    for repo in (IMAGE_REPO, BASE_REPO):
        out = docker("images", "--format", "{{.Repository}}:{{.Tag}}", repo).stdout.split()
        old = [t for t in out if t.split(":", 1)[1].startswith(f"{release}-") and t not in keep]
        if old:
            docker("rmi", *old, check=False)
    current = f"rootfs-{release}-{_debootstrap_key(release)}.tar"
    for tarball in CACHE_DIR.glob(f"rootfs-{release}-*.tar"):
        if tarball.name != current:
            tarball.unlink()


# --------------------------------------------------------------------------- lab plan

@dataclasses.dataclass
class Host:
    """One container of a lab: a node or the bundle host."""
    name: str       # inventory name: node1.., bundle
    container: str
    ip: str
    volume: str


@dataclasses.dataclass
class Lab:
    """What a lab is made of; saved as .lab/NAME/lab.json and read back by `down`."""
    name: str
    release: str
    image: str
    network: str
    subnet: str
    internal: bool
    hosts: list[Host]
    control_planes: list[str]
    etcd: list[str]
    kube_node: list[str]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return lab_dir(self.name)

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def nodes(self) -> list[Host]:
        return [h for h in self.hosts if h.name != "bundle"]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name or h.container == name:
                return h
        raise LabError(f"lab {self.name} has no host {name!r}: pick one of "
                       f"{', '.join(h.name for h in self.hosts)}")

    def ssh_args(self, host: str) -> list[str]:
        """The ssh command line (without a remote command) that reaches a host of this lab."""
        return ["ssh", "-i", str(self.key), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                "-o", f"UserKnownHostsFile={self.dir / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
                f"root@{self.host(host).ip}"]


def check_name(name: str) -> None:
    """Lab names become container, volume and directory names, so they are kept plain."""
    if not NAME_RE.match(name):
        raise LabError(f"lab name {name!r} is not allowed: use 1-30 characters a-z, 0-9 and '-', "
                       f"starting with a letter or digit")


def lab_dir(name: str) -> Path:
    """Where a lab's key, inventory and lab.json live."""
    check_name(name)
    return LAB_ROOT / name


def subnet_for(name: str) -> ipaddress.IPv4Network:
    """The lab's /24: the same every time for the same name."""
    octet = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 256
    return ipaddress.ip_network(f"{LAB_SUPERNET.network_address + octet * 256}/24")


def _docker_subnets() -> dict[str, list[ipaddress.IPv4Network]]:
    ids = docker("network", "ls", "-q").stdout.split()
    if not ids:
        return {}
    fmt = "{{.Name}}|{{range .IPAM.Config}}{{.Subnet}} {{end}}"
    out: dict[str, list[ipaddress.IPv4Network]] = {}
    for line in docker("network", "inspect", "--format", fmt, *ids).stdout.splitlines():
        name, _, subnets = line.partition("|")
        nets = []
        for s in subnets.split():
            try:
                net = ipaddress.ip_network(s, strict=False)
            except ValueError:
                continue
            if net.version == 4:
                nets.append(net)
        out[name] = nets
    return out


def _host_routes() -> list[tuple[str, ipaddress.IPv4Network]]:
    routes = []
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) < 8 or f[1] == "00000000":
            continue
        dest = ipaddress.IPv4Address(bytes.fromhex(f[1])[::-1])
        mask = ipaddress.IPv4Address(bytes.fromhex(f[7])[::-1])
        routes.append((f[0], ipaddress.ip_network(f"{dest}/{mask}", strict=False)))
    return routes


def _subnet_problem(name: str, subnet: ipaddress.IPv4Network,
                    taken: Optional[tuple[dict, list]] = None) -> Optional[str]:
    """Why subnet cannot be the lab's (another docker network or a host route uses it), or None.

    taken: (_docker_subnets(), _host_routes()) when the caller already read them."""
    networks, routes = taken or (_docker_subnets(), _host_routes())
    for net_name, nets in networks.items():
        for net in nets:
            if net.overlaps(subnet):
                return (f"lab {name} needs subnet {subnet}, but docker network {net_name!r} uses {net}: "
                        f"remove that network (`python3 tools/lab/lab.py down ...` if it is a lab)")
    for iface, net in routes:
        if iface.startswith(("br-", "docker")):
            continue  # docker's own bridges were checked above, by network
        if net.overlaps(subnet) and net.prefixlen > 0:
            return f"lab {name} needs subnet {subnet}, but the host routes {net} via {iface}"
    return None


def check_subnet_free(name: str, subnet: ipaddress.IPv4Network) -> None:
    """Fails when another docker network or a host route already uses the lab's subnet."""
    problem = _subnet_problem(name, subnet)
    if problem:
        raise LabError(problem)


def free_subnet(name: str) -> ipaddress.IPv4Network:
    """The /24 derived from the name when it is free, else the next free one in LAB_SUPERNET.

    Names hash into only 256 subnets, so two labs alive at once can want the same one."""
    start = (int(subnet_for(name).network_address) - int(LAB_SUPERNET.network_address)) // 256
    taken = (_docker_subnets(), _host_routes())
    first = None
    for step in range(256):
        octet = (start + step) % 256
        candidate = ipaddress.ip_network(f"{LAB_SUPERNET.network_address + octet * 256}/24")
        problem = _subnet_problem(name, candidate, taken)
        if problem is None:
            return candidate
        first = first or problem
    raise LabError(f"no free /24 left in {LAB_SUPERNET}; the first one tried: {first}")


def plan(name: str, nodes: int, release: str = DEFAULT_RELEASE, internal: bool = False,
         control_planes: int = 1, etcd: Optional[int] = None, image: str = "",
         subnet: Optional[ipaddress.IPv4Network] = None) -> Lab:
    """Decides names, addresses and inventory groups for a lab, without touching docker."""
    check_name(name)
    _check_release(release)
    if not 1 <= nodes <= MAX_NODES:
        raise LabError(f"--nodes {nodes} is out of range: use 1..{MAX_NODES}")
    if not 1 <= control_planes <= nodes:
        raise LabError(f"--control-planes {control_planes} must be between 1 and --nodes ({nodes})")
    if etcd is None:
        etcd = 3 if nodes >= 3 else 1
    if not 1 <= etcd <= nodes or etcd % 2 == 0:
        raise LabError(f"--etcd {etcd} must be odd (so the cluster keeps a quorum) and at most "
                       f"--nodes ({nodes})")
    subnet = subnet or subnet_for(name)
    base = subnet.network_address

    def host(inv: str, octet: int) -> Host:
        return Host(inv, f"{name}-{inv}", str(base + octet), f"{name}-{inv}-containerd")

    hosts = [host(f"node{i}", FIRST_NODE_OCTET + i - 1) for i in range(1, nodes + 1)]
    hosts.append(host("bundle", BUNDLE_HOST_OCTET))
    names = [h.name for h in hosts[:nodes]]
    workers = names[control_planes:] or names
    return Lab(name=name, release=release, image=image, network=f"airgap-lab-{name}",
               subnet=str(subnet), internal=internal, hosts=hosts,
               control_planes=names[:control_planes], etcd=names[:etcd], kube_node=workers)


# --------------------------------------------------------------------------- files

def _group(hosts: list[str], indent: str) -> str:
    if not hosts:
        return "{hosts: {}}"
    return "\n" + indent + "hosts:\n" + "".join(f"{indent}  {h}: {{}}\n" for h in hosts).rstrip("\n")


def render_hosts_yml(lab: Lab) -> str:
    """The lab's inventory in kubespray's groups."""
    lines = [f"# Lab {lab.name}: written by tools/lab/lab.py; removed by `lab.py down {lab.name}`.",
             "all:", "  hosts:"]
    for h in lab.nodes + [lab.host("bundle")]:
        lines.append(f"    {h.name}: {{ansible_host: {h.ip}, ip: {h.ip}}}")
    lines += [
        "  children:",
        "    bundle_server:" + _group(["bundle"], " " * 6),
        "    bastion: {hosts: {}}",
        "    kube_control_plane:" + _group(lab.control_planes, " " * 6),
        "    etcd:" + _group(lab.etcd, " " * 6),
        "    kube_node:" + _group(lab.kube_node, " " * 6),
        "    k8s_cluster:",
        "      children:",
        "        kube_control_plane: {}",
        "        kube_node: {}",
    ]
    return "\n".join(lines) + "\n"


def render_lab_vars(lab: Lab) -> str:
    """group_vars/all/lab.yml: how to reach the nodes, and what the lab's host forces on them (NODE_SETTINGS, which
    the molecule scenarios that run Kubernetes share)."""
    known_hosts = lab.dir / "known_hosts"
    cgroups = "".join(f'  - "{c}"\n' for c in unmount_cgroups())
    # The file without its document start and opening comment, which the header below says for the lab.
    settings = NODE_SETTINGS.read_text().split("\n\n", 1)[1]
    return f"""\
# Lab {lab.name}: written by tools/lab/lab.py. Settings only a lab on this kind of host needs;
# each says why (see docs/lab.md). Production inventories leave them at their defaults.
ansible_user: root
ansible_ssh_private_key_file: {lab.key}
# Host keys are made per node at first boot; this file holds the ones lab.py collected.
# airgap_ssh_args, not ansible_ssh_common_args, so the collection's bastion proxy still applies. Every key is
# known beforehand, so the strict policy: an unknown host is refused.
airgap_ssh_args: "-o UserKnownHostsFile={known_hosts}"
airgap_host_key_policy: strict
ansible_python_interpreter: /usr/bin/python3
airgap_lab: true

{settings}# The bundle server serves time to the lab's network.
bundle_server_ntp_allow: ["{lab.subnet}"]
# Hierarchies the host does not mount would be one tree shared by every node's kubelet.
lab_unmount_cgroups:
{cgroups}"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def save(lab: Lab) -> None:
    """Writes lab.json, so that `down` knows what to remove even after a failed `up`."""
    data = dataclasses.asdict(lab)
    _write(lab.dir / "lab.json", json.dumps(data, indent=2) + "\n")


def load(name: str) -> Lab:
    """Reads a lab's lab.json."""
    path = lab_dir(name) / "lab.json"
    if not path.exists():
        raise LabError(f"lab {name} does not exist here ({path} is missing): "
                       f"`python3 tools/lab/lab.py list` shows the labs")
    data = json.loads(path.read_text())
    data["hosts"] = [Host(**h) for h in data["hosts"]]
    return Lab(**data)


def write_inventory(lab: Lab) -> Path:
    """Writes inventory/hosts.yml and inventory/group_vars/all/lab.yml; returns the inventory dir."""
    inv = lab.dir / "inventory"
    _write(inv / "hosts.yml", render_hosts_yml(lab))
    _write(inv / "group_vars" / "all" / "lab.yml", render_lab_vars(lab))
    return inv


def release_key() -> tuple[Path, str]:
    """(gpg home, fingerprint) of the labs' release key: ed25519 without a passphrase, made on first use."""
    fingerprint = RELEASE_KEY_HOME / "fingerprint"
    with _file_lock(CACHE_DIR / "release-key.lock"):
        if not fingerprint.exists():
            shutil.rmtree(RELEASE_KEY_HOME, ignore_errors=True)
            RELEASE_KEY_HOME.mkdir(parents=True, mode=0o700)
            home = ["gpg", "--homedir", str(RELEASE_KEY_HOME), "--batch"]
            _run(home + ["--passphrase", "", "--quick-gen-key", "airgap.kubernetes lab release key "
                         "<lab-release@airgap.invalid>", "ed25519", "sign", "never"])
            listing = _run(home + ["--with-colons", "--list-secret-keys"]).stdout
            fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
            _run(["gpgconf", "--homedir", str(RELEASE_KEY_HOME), "--kill", "gpg-agent"], check=False)
            fingerprint.write_text(fpr + "\n")
    return RELEASE_KEY_HOME, fingerprint.read_text().strip()


def _make_key(lab: Lab) -> str:
    if not lab.key.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"airgap-lab-{lab.name}",
              "-f", str(lab.key)])
    return Path(str(lab.key) + ".pub").read_text()


# --------------------------------------------------------------------------- up

def _start_host(lab: Lab, host: Host, pubkey: str) -> None:
    labels = ("--label", f"{LABEL}={lab.name}", "--label", f"{LABEL}.host={host.name}")
    # Created with the label first: `docker run -v` would make an unlabelled volume that
    # `down` could not tell apart from someone else's.
    docker("volume", "create", *labels, host.volume)
    docker("run", "-d", "--name", host.container, "--hostname", host.name,
           "--network", lab.network, "--ip", host.ip, "--network-alias", host.name,
           *labels, *NODE_RUN_FLAGS, "-v", f"{host.volume}:/var/lib/containerd", lab.image)
    # `docker cp` cannot be used: it writes below the tmpfs mounts and /root/.ssh must persist.
    docker("exec", "-i", host.container, "sh", "-c",
           "umask 077 && mkdir -p /root/.ssh && cat > /root/.ssh/authorized_keys", input=pubkey)


_BOOTED = ("running", "degraded", "maintenance", "stopping")


def _wait_systemd(host: Host, deadline: float) -> str:
    state = ""
    while state not in _BOOTED and time.monotonic() < deadline:
        # One blocking exec per node: polling with an exec every few ms costs dockerd and runc
        # more CPU than the boot itself when six nodes start on two cores.
        try:
            proc = docker("exec", host.container, "systemctl", "is-system-running", "--wait",
                          check=False, timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            break
        state = proc.stdout.strip()
        if state not in _BOOTED:
            time.sleep(0.2)  # systemd's bus is not up yet
    if state not in _BOOTED:
        raise LabError(f"{host.container}: systemd still {state or 'booting'} after "
                       f"{SYSTEMD_TIMEOUT:.0f} s: `docker logs {host.container}` shows the boot")
    if state != "running":
        failed = docker("exec", host.container, "systemctl", "--failed", "--no-legend", "--plain",
                        check=False).stdout.strip()
        _log(f"{host.container}: systemd is {state}; failed units:\n{failed}")
        if state != "degraded":
            raise LabError(f"{host.container}: systemd is {state}: "
                           f"`docker exec -it {host.container} journalctl -b` shows why")
    return state


def _host_keys(host: Host) -> str:
    proc = docker("exec", host.container, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub")
    return "".join(f"{host.ip} {' '.join(ln.split()[:2])}\n"
                   for ln in proc.stdout.splitlines() if ln.strip())


def _wait_ssh(lab: Lab, host: Host, deadline: float) -> None:
    last = ""
    while time.monotonic() < deadline:
        proc = subprocess.run(lab.ssh_args(host.name) + ["true"], capture_output=True, text=True)
        if proc.returncode == 0:
            return
        last = proc.stderr.strip()
        time.sleep(0.1)
    raise LabError(f"{host.container}: SSH with {lab.key} did not answer at {host.ip} within "
                   f"{SSH_TIMEOUT:.0f} s: {last}")


@dataclasses.dataclass
class _HostResult:
    systemd_at: float
    ssh_at: float


# Every lab node's systemd and kubelet take inotify instances from the host's one per-user budget (128 by default):
# a few labs side by side exhaust it, and a kubelet then dies at start ("inotify_init: too many open files"), so its
# node never registers. The lab raises the host's limits, never lowers them.
INOTIFY_LIMITS = {"fs/inotify/max_user_instances": 8192, "fs/inotify/max_user_watches": 1048576}


def _raise_inotify_limits() -> None:
    for key, wanted in INOTIFY_LIMITS.items():
        path = Path("/proc/sys") / key
        try:
            if int(path.read_text()) < wanted:
                path.write_text(f"{wanted}\n")
                _log(f"raised the host's {key.replace('/', '.')} to {wanted} (lab nodes share it)")
        except (OSError, ValueError) as exc:
            _log(f"could not raise the host's {key.replace('/', '.')} to {wanted}: {exc}; several labs at once may "
                 f"stop kubelets with 'too many open files'")


def up(name: str, nodes: int, release: str = DEFAULT_RELEASE, internal: bool = False,
       control_planes: int = 1, etcd: Optional[int] = None) -> Lab:
    """Creates a lab and returns it once every host runs systemd and answers SSH with the key."""
    check_docker()
    lab = plan(name, nodes, release, internal, control_planes, etcd)
    if (lab.dir / "lab.json").exists() or _labelled("network", name):
        raise LabError(f"lab {name} already exists: `python3 tools/lab/lab.py down {name}` first")
    lab = plan(name, nodes, release, internal, control_planes, etcd, subnet=free_subnet(name))
    lab.image = ensure_image(release)
    lab.dir.mkdir(parents=True, exist_ok=True)
    save(lab)
    pubkey = _make_key(lab)
    net_args = ["network", "create", "--driver", "bridge", "--subnet", lab.subnet,
                "--gateway", str(ipaddress.ip_network(lab.subnet).network_address + 1),
                "--label", f"{LABEL}={name}"]
    if internal:
        # Docker 20.10 still puts the gateway address on the host's end of an internal bridge,
        # so the host reaches the nodes (SSH) directly; only forwarding beyond the subnet is
        # dropped (DOCKER-ISOLATION-STAGE-1). test_lab.py checks both.
        net_args.append("--internal")
    docker(*net_args, lab.network)
    _allow_bridged_pod_traffic(lab.network, add=True)
    _raise_inotify_limits()

    t0 = time.monotonic()
    known_hosts_lock = threading.Lock()

    def bring_up(host: Host) -> _HostResult:
        _start_host(lab, host, pubkey)
        _wait_systemd(host, time.monotonic() + SYSTEMD_TIMEOUT)
        systemd_at = time.monotonic() - t0
        keys = _host_keys(host)
        with known_hosts_lock, open(lab.dir / "known_hosts", "a") as fh:
            fh.write(keys)
        _wait_ssh(lab, host, time.monotonic() + SSH_TIMEOUT)
        return _HostResult(systemd_at, time.monotonic() - t0)

    with ThreadPoolExecutor(max_workers=min(len(lab.hosts), 32)) as pool:
        futures = [pool.submit(bring_up, h) for h in lab.hosts]
        errors = []
        results = []
        for fut in futures:
            try:
                results.append(fut.result())
            except Exception as exc:  # collect every host's failure, not just the first
                errors.append(str(exc))
    if errors:
        raise LabError(f"lab {name} did not come up ({len(errors)} of {len(lab.hosts)} hosts "
                       f"failed); `python3 tools/lab/lab.py down {name}` removes it:\n"
                       + "\n".join(errors))
    lab.timings = {"systemd_running_seconds": round(max(r.systemd_at for r in results), 2),
                   "ssh_answering_seconds": round(max(r.ssh_at for r in results), 2)}
    write_inventory(lab)
    save(lab)
    return lab


# --------------------------------------------------------------------------- down

def _allow_bridged_pod_traffic(network: str, add: bool) -> None:
    """Lets frames between two nodes of the lab's bridge pass the host's firewall whatever their IP addresses.

    The host bridges with br_netfilter on, so docker's internal-network rule (`! -d <subnet> -i br-X -j DROP`) also
    drops node-to-node packets addressed to a pod network (a real L2 segment would deliver them). The rule accepts
    only what enters and leaves the same bridge, so nothing gets a route out."""
    net_id = docker("network", "inspect", "--format", "{{.Id}}", network, check=False).stdout.strip()
    if not net_id:
        return
    rule = ["DOCKER-USER", "-i", f"br-{net_id[:12]}", "-o", f"br-{net_id[:12]}", "-j", "ACCEPT"]
    present = _run(["iptables", "-C", *rule], check=False).returncode == 0
    if add and not present:
        _run(["iptables", "-I", *rule])
    elif not add and present:
        _run(["iptables", "-D", *rule])


def isolation_problems(lab: Lab) -> list[str]:
    """Why lab's network could forward beyond its subnet; empty when it is --internal and docker drops that.

    Checked by inspection, without sending traffic out. Docker 20.10 keeps the gateway address (and the nodes'
    default route) on an internal bridge; DOCKER-ISOLATION-STAGE-1 drops what would leave the subnet."""
    internal, net_id = docker("network", "inspect", "--format", "{{.Internal}} {{.Id}}", lab.network).stdout.split()
    if internal != "true":
        return [f"docker network {lab.network} is not --internal"]
    rules = _run(["iptables", "-S", "DOCKER-ISOLATION-STAGE-1"], check=False).stdout
    rule = f"! -d {lab.subnet} -i br-{net_id[:12]} -j DROP"
    return [] if rule in rules else [f"iptables DOCKER-ISOLATION-STAGE-1 lacks `{rule}`:\n{rules}"]


def _labelled(kind: str, name: str) -> list[str]:
    """Names of containers, volumes or networks labelled as belonging to lab `name`."""
    fmt = "{{.Names}}" if kind == "container" else "{{.Name}}"
    args = ["ps", "-a"] if kind == "container" else [kind, "ls"]
    out = docker(*args, "--filter", f"label={LABEL}={name}", "--format", fmt).stdout
    return [n for n in out.split() if n]


@dataclasses.dataclass
class DownReport:
    """What `down` removed, and what it left because it did not carry the lab's label."""
    containers: list[str]
    volumes: list[str]
    networks: list[str]
    left: list[str]
    seconds: float


def down(name: str) -> DownReport:
    """Removes the lab's containers, volumes, network and directory; nothing without its label."""
    check_name(name)
    check_docker()
    t0 = time.monotonic()
    containers = _labelled("container", name)
    if containers:
        docker("rm", "-f", *containers)
    volumes = _labelled("volume", name)
    if volumes:
        docker("volume", "rm", "-f", *volumes)
    networks = _labelled("network", name)
    for network in networks:
        _allow_bridged_pod_traffic(network, add=False)
    if networks:
        docker("network", "rm", *networks)
    left = []
    path = lab_dir(name)
    if (path / "lab.json").exists():
        try:
            lab = load(name)
        except (ValueError, TypeError, KeyError):
            lab = None
        if lab is not None:
            # Names the lab would have used that exist without its label belong to someone else.
            for kind, objs in (("container", [h.container for h in lab.hosts]),
                               ("volume", [h.volume for h in lab.hosts]),
                               ("network", [lab.network])):
                for obj in objs:
                    if docker(kind, "inspect", obj, check=False).returncode == 0:
                        left.append(f"{kind} {obj}")
    if left:
        _log(f"left in place, not labelled {LABEL}={name}: {', '.join(left)}")
    if path.exists():
        shutil.rmtree(path)
    return DownReport(containers, volumes, networks, left, round(time.monotonic() - t0, 2))


def list_labs() -> list[dict]:
    """Every lab known by its directory or by labelled docker objects."""
    names = set()
    if LAB_ROOT.exists():
        names.update(p.name for p in LAB_ROOT.iterdir() if (p / "lab.json").exists())
    out = docker("ps", "-a", "--filter", f"label={LABEL}", "--format",
                 f'{{{{.Label "{LABEL}"}}}}').stdout
    names.update(n for n in out.split() if n)
    out = docker("network", "ls", "--filter", f"label={LABEL}", "--format",
                 f'{{{{.Label "{LABEL}"}}}}').stdout
    names.update(n for n in out.split() if n)
    labs = []
    for name in sorted(names):
        try:
            lab = load(name)
            info = {"name": name, "nodes": len(lab.nodes), "release": lab.release,
                    "subnet": lab.subnet, "internal": lab.internal}
        except LabError:
            info = {"name": name, "nodes": None, "release": None, "subnet": None,
                    "internal": None, "note": "no lab.json (partial); `down` removes it"}
        running = docker("ps", "--filter", f"label={LABEL}={name}", "-q").stdout.split()
        info["running"] = len(running)
        labs.append(info)
    return labs


# --------------------------------------------------------------------------- CLI

def _cmd_image(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    tag = ensure_image(args.release)
    _log(f"image ready in {time.monotonic() - t0:.1f} s (alias {alias_tag(args.release)})")
    print(tag)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    lab = up(args.name, args.nodes, args.release, args.internal, args.control_planes, args.etcd)
    print(f"lab {lab.name}: {len(lab.nodes)} nodes + bundle on {lab.network} ({lab.subnet}"
          f"{', internal' if lab.internal else ''})")
    for h in lab.hosts:
        print(f"  {h.name:8} {h.ip:15} {h.container}")
    print(f"systemd running on all hosts after {lab.timings['systemd_running_seconds']} s, "
          f"SSH answering after {lab.timings['ssh_answering_seconds']} s")
    print(f"inventory: {lab.dir / 'inventory'}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    rep = down(args.name)
    print(f"lab {args.name} removed in {rep.seconds} s: {len(rep.containers)} containers, "
          f"{len(rep.volumes)} volumes, {len(rep.networks)} networks")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    labs = list_labs()
    if not labs:
        print("no labs")
    for lab in labs:
        extra = f"  {lab['note']}" if "note" in lab else ""
        print(f"{lab['name']:20} nodes={lab['nodes']} running={lab['running']} "
              f"release={lab['release']} subnet={lab['subnet']} internal={lab['internal']}{extra}")
    return 0


def _cmd_ssh(args: argparse.Namespace) -> int:
    lab = load(args.name)
    cmd = lab.ssh_args(args.node)
    if sys.stdin.isatty() and not args.cmd:
        cmd.insert(1, "-t")
    os.execvp("ssh", cmd + list(args.cmd))
    return 0  # not reached


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The lab's command line: image, up, down, list, ssh."""
    p = argparse.ArgumentParser(prog="lab.py", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("image", help="build (or find cached) the node image; print its tag")
    s.add_argument("--release", default=DEFAULT_RELEASE, choices=RELEASES)
    s.set_defaults(func=_cmd_image)
    s = sub.add_parser("up", help="create lab NAME: N nodes + a bundle host, SSH key, inventory")
    s.add_argument("name")
    s.add_argument("--nodes", type=int, required=True)
    s.add_argument("--release", default=DEFAULT_RELEASE, choices=RELEASES)
    s.add_argument("--internal", action="store_true",
                   help="docker network without a route out (proves nothing is downloaded)")
    s.add_argument("--control-planes", type=int, default=1)
    s.add_argument("--etcd", type=int, default=None, help="default: 3 if nodes >= 3, else 1")
    s.set_defaults(func=_cmd_up)
    s = sub.add_parser("down", help="remove lab NAME: its containers, volumes, network and keys")
    s.add_argument("name")
    s.set_defaults(func=_cmd_down)
    s = sub.add_parser("list", help="list labs")
    s.set_defaults(func=_cmd_list)
    s = sub.add_parser("ssh", help="ssh into a host of a lab (node1.., bundle)")
    s.add_argument("name")
    s.add_argument("node")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_ssh)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:
        print(f"lab.py {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
