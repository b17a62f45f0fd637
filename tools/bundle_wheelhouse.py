"""build-bundle's bootstrap kit: the tool's runtime wheels for the hosts that will run it, and the installer.

wheelhouse/ holds a wheel of every pinned runtime package (requirements-runtime.txt) for the Python of each Debian
release the bundle carries (3.11 on Debian 12, 3.13 on Debian 13) and each node arch, chosen by pip's --platform,
--python-version and --only-binary, never by this host's Python. install.sh (from tools/bundle_install.sh) and
install.json beside it let a bare Debian host inside the air gap verify the bundle, install python3-venv from the
bundle's apt repo, make a venv from the wheelhouse with --no-index and install the collection.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

from ansible_collections.airgap.kubernetes.plugins.module_utils import resolver
from ansible_collections.airgap.kubernetes.plugins.module_utils.digests import sha256_file
from ansible_collections.airgap.kubernetes.tools.bundle_common import CACHE, BuildError, run

REPO = Path(__file__).resolve().parents[1]
RUNTIME_REQUIREMENTS = REPO / "requirements-runtime.txt"
# build-bundle's --requirements still defaults to this file (the runtime plus the test tools): it stands for its
# runtime part, since the hosts need no test tools and some of those have no wheel for every target.
DEVELOPER_REQUIREMENTS = REPO / "requirements.txt"
INSTALLER_SOURCE = REPO / "tools" / "bundle_install.sh"
INSTALLER = "install.sh"
INSTALL_CONFIG = "install.json"
WHEELHOUSE = "wheelhouse"
# The group of the catalog's packages the installer puts on the controller (the host that runs run.sh).
CONTROLLER_GROUP = "controller"

# Debian suite -> (its python3, its glibc): the interpreter the wheels are for, and the newest manylinux they may need.
DEBIAN_PYTHON = {"bookworm": ("3.11", (2, 36)), "trixie": ("3.13", (2, 41))}
# Debian arch -> the machine name in wheel platform tags.
WHEEL_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}
# Pure-Python packages that may come as an sdist because no wheel exists: none today (every pin has a wheel).
SDIST_ALLOWED: frozenset = frozenset()


@dataclass(frozen=True)
class Target:
    """One (Debian release, arch) the wheelhouse serves."""

    suite: str
    python: str   # "3.11"
    glibc: tuple  # (2, 36)
    machine: str  # x86_64

    @property
    def platforms(self) -> list:
        """Every manylinux tag this host's glibc runs, newest first: manylinux_2_36 down to 2_17 and the old aliases."""
        tags = [f"manylinux_{self.glibc[0]}_{minor}_{self.machine}" for minor in range(self.glibc[1], 16, -1)]
        tags.append(f"manylinux2014_{self.machine}")
        if self.machine == "x86_64":
            tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        return tags

    def __str__(self) -> str:
        return f"{self.suite} (Python {self.python}, {self.machine})"


def targets(suites: Iterable[str], arches: Iterable[str]) -> list:
    """The wheelhouse's targets: each suite (both when none) times each arch."""
    suites = list(suites) or list(DEBIAN_PYTHON)
    found = []
    for suite in suites:
        if suite not in DEBIAN_PYTHON:
            raise BuildError(f"no Python is known for Debian suite {suite!r}: the wheelhouse serves "
                             f"{', '.join(DEBIAN_PYTHON)}; add it to DEBIAN_PYTHON in {Path(__file__).name}")
        python, glibc = DEBIAN_PYTHON[suite]
        for arch in arches:
            if arch not in WHEEL_MACHINE:
                raise BuildError(f"cluster arch {arch!r} has no wheel platform: the wheelhouse serves "
                                 f"{', '.join(WHEEL_MACHINE)}; build with --no-wheelhouse for {arch}")
            found.append(Target(suite, python, glibc, WHEEL_MACHINE[arch]))
    return found


def download_command(target: Target, requirements: Path, dest: Path, python: str = sys.executable) -> list:
    """pip download of every pinned package (and dependency) as wheels for target's Python and platform."""
    cmd = [python, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "--dest", str(dest),
           "--only-binary=:all:", "--implementation", "cp", "--python-version", target.python]
    for tag in target.platforms:
        cmd += ["--platform", tag]
    return cmd + ["-r", str(requirements)]


def runtime_requirements(requirements: Optional[Path]) -> Path:
    """The requirements file the wheelhouse is made from: the runtime one unless another file is given."""
    if requirements is None or Path(requirements).resolve() == DEVELOPER_REQUIREMENTS.resolve():
        return RUNTIME_REQUIREMENTS
    return Path(requirements)


def cache_key(requirements_text: str, wanted: Iterable[Target]) -> str:
    """What a wheelhouse is made from: the pins and the targets (not the time, nor this host's Python)."""
    data = {"requirements": requirements_text, "targets": sorted(str(t) for t in wanted)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _missing_wheel(error: str) -> Optional[str]:
    for line in error.splitlines():
        if "No matching distribution found for" in line:
            return line.split("No matching distribution found for", 1)[1].strip()
    return None


def _cached(directory: Path) -> Optional[dict]:
    """{file: sha256} of a complete cached wheelhouse whose files still hash to what was recorded, else None."""
    try:
        files = json.loads((directory / "files.json").read_text())
    except (OSError, ValueError):
        return None
    for name, digest in files.items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            return None
    return files


def fetch(requirements: Path, wanted: list, cache: Path = CACHE / WHEELHOUSE) -> tuple:
    """(cache directory, {file: sha256}) of the wheels for every target: from the cache when the same pins and targets
    were fetched before, else from the index pip is configured for."""
    text = requirements.read_text()
    directory = cache / cache_key(text, wanted)
    files = _cached(directory)
    if files is not None:
        return directory, files
    partial = directory.with_name(directory.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for target in wanted:
        try:
            run(download_command(target, requirements, partial))
        except BuildError as exc:
            name = _missing_wheel(str(exc))
            if name is None:
                raise
            raise BuildError(f"{name} has no wheel for {target} on the index: pin a release of it that has one in "
                             f"{requirements}, or build with --no-wheelhouse") from None
    sdists = sorted(p.name for p in partial.iterdir() if not p.name.endswith(".whl"))
    if any(name.split("-")[0].lower() not in SDIST_ALLOWED for name in sdists):
        raise BuildError(f"pip fetched sdists {sdists}, which a host without a compiler may not build: pin releases "
                         f"with wheels in {requirements}")
    files = {p.name: sha256_file(p) for p in sorted(partial.iterdir())}
    (partial / "files.json").write_text(json.dumps(files, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    partial.replace(directory)
    return directory, files


def controller_packages(catalog: Mapping, config: Mapping, arch: str) -> list:
    """Debian names of the catalog's packages for the controller group, as the resolver gives them."""
    return [a.package for a in resolver.resolve(catalog, config, arch, mode="upstream", kind="package",
                                                os_family="debian") if CONTROLLER_GROUP in a.groups]


def _copy_if_changed(src: Path, dest: Path, digest: Optional[str] = None) -> None:
    if dest.is_file() and sha256_file(dest) == (digest or sha256_file(src)):
        return
    shutil.copyfile(src, dest)


def install_config(packages: list, wanted: list) -> dict:
    """install.json: what install.sh installs, read only after the manifest checked it."""
    return {
        "apt_packages": packages,
        "python": {t.suite: t.python for t in wanted},
        "requirements": f"{WHEELHOUSE}/requirements.txt",
        "wheelhouse": WHEELHOUSE,
    }


def build(bundle: Path, requirements: Optional[Path], arches: list, suites: list, catalog: Mapping,
          config: Mapping, cache: Path = CACHE / WHEELHOUSE) -> list:
    """wheelhouse/ (the wheels and requirements.txt), install.sh and install.json in the bundle; returns the
    wheelhouse's file names. A copy, never a link to the cache: the manifest vouches for these bytes."""
    requirements = runtime_requirements(requirements)
    if not requirements.is_file():
        raise BuildError(f"requirements file {requirements} does not exist: give --requirements FILE")
    wanted = targets(suites, arches)
    packages = controller_packages(catalog, config, arches[0])
    if not packages:
        raise BuildError(f"the catalog has no package for group {CONTROLLER_GROUP}: install.sh needs python3-venv "
                         "there (group_vars/all/catalog.yml)")
    source, files = fetch(requirements, wanted, cache)
    target = bundle / WHEELHOUSE
    target.mkdir(parents=True, exist_ok=True)
    keep = set(files) | {"requirements.txt"}
    for path in target.iterdir():
        if path.name not in keep:
            path.unlink()
    for name, digest in files.items():
        _copy_if_changed(source / name, target / name, digest)
    _copy_if_changed(requirements, target / "requirements.txt")
    _copy_if_changed(INSTALLER_SOURCE, bundle / INSTALLER)
    (bundle / INSTALLER).chmod(0o755)
    config_text = json.dumps(install_config(packages, wanted), indent=2, sort_keys=True) + "\n"
    if not (bundle / INSTALL_CONFIG).is_file() or (bundle / INSTALL_CONFIG).read_text() != config_text:
        (bundle / INSTALL_CONFIG).write_text(config_text)
    return sorted(keep)
