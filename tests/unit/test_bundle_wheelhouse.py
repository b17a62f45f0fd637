"""The bundle's bootstrap kit: wheelhouse targets and pip command lines, the manifest's entries for its files, and
install.sh's checks (run for real under bash with gpgv, --check-only) on a small signed bundle."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt
from ansible_collections.airgap.kubernetes.tools import build_bundle, bundle_sign, list_artifacts
from ansible_collections.airgap.kubernetes.tools import bundle_wheelhouse as wh
from ansible_collections.airgap.kubernetes.tools.bundle_common import BuildError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bundle_fixture  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WHEELS = ("ansible_core-2.19.14-py3-none-any.whl", "pyyaml-6.0.4-cp311-cp311-manylinux2014_x86_64.whl")


def flip(path: Path, offset: int) -> None:
    """One bit of one byte of the file changed, as a bad copy would."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def pins(path: Path) -> dict:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)",
                                                                   path.read_text(), re.M)}


# ----------------------------------------------------------------------------- what the wheelhouse is for

def test_each_debian_release_gets_its_python_for_each_arch():
    found = wh.targets(["bookworm", "trixie"], ["amd64", "arm64"])
    assert [(t.suite, t.python, t.machine) for t in found] == [
        ("bookworm", "3.11", "x86_64"), ("bookworm", "3.11", "aarch64"),
        ("trixie", "3.13", "x86_64"), ("trixie", "3.13", "aarch64")]


def test_no_suite_means_both_debian_releases():
    assert [t.python for t in wh.targets([], ["amd64"])] == ["3.11", "3.13"]


def test_platforms_are_every_manylinux_the_releases_glibc_runs():
    bookworm, trixie = wh.targets(["bookworm", "trixie"], ["arm64"])
    assert bookworm.platforms[0] == "manylinux_2_36_aarch64" and trixie.platforms[0] == "manylinux_2_41_aarch64"
    assert "manylinux_2_17_aarch64" in bookworm.platforms and "manylinux2014_aarch64" in bookworm.platforms
    assert "manylinux_2_37_aarch64" not in bookworm.platforms
    assert not any("x86_64" in tag for tag in bookworm.platforms)


def test_an_arch_without_a_wheel_platform_is_refused_with_the_fix():
    with pytest.raises(BuildError, match=r"cluster arch 'riscv64' has no wheel platform.*--no-wheelhouse"):
        wh.targets(["bookworm"], ["riscv64"])


def test_an_unknown_suite_is_refused_by_name():
    with pytest.raises(BuildError, match="no Python is known for Debian suite 'sid'"):
        wh.targets(["sid"], ["amd64"])


def test_pip_downloads_wheels_only_for_the_targets_python_and_platform_not_this_hosts():
    target = wh.targets(["trixie"], ["amd64"])[0]
    cmd = wh.download_command(target, Path("/r.txt"), Path("/d"), python="/venv/bin/python")
    assert cmd[:4] == ["/venv/bin/python", "-m", "pip", "download"]
    assert "--only-binary=:all:" in cmd and cmd[cmd.index("--python-version") + 1] == "3.13"
    assert cmd[cmd.index("--implementation") + 1] == "cp" and cmd[cmd.index("--dest") + 1] == "/d"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"] == target.platforms
    assert cmd[-2:] == ["-r", "/r.txt"] and "--no-binary" not in " ".join(cmd)


def test_the_developers_requirements_stand_for_the_runtime_ones():
    assert wh.runtime_requirements(REPO / "requirements.txt") == wh.RUNTIME_REQUIREMENTS
    assert wh.runtime_requirements(None) == wh.RUNTIME_REQUIREMENTS
    assert wh.runtime_requirements(Path("/site/reqs.txt")) == Path("/site/reqs.txt")


def test_the_runtime_requirements_pin_every_package_as_requirements_txt_does_and_no_test_tool():
    runtime, developer = pins(wh.RUNTIME_REQUIREMENTS), pins(REPO / "requirements.txt")
    lines = [ln for ln in wh.RUNTIME_REQUIREMENTS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == len(runtime), "every requirement is pinned with =="
    assert {"ansible", "ansible-core", "jmespath", "netaddr"} <= set(runtime)
    assert {k: runtime[k] for k in runtime if k in developer} == {k: developer[k] for k in runtime if k in developer}
    assert not set(runtime) & {"pytest", "molecule", "ansible-lint", "yamllint", "kubernetes-validate"}


def test_the_cache_key_follows_the_pins_and_the_targets_only():
    both = wh.targets(["bookworm", "trixie"], ["amd64"])
    assert wh.cache_key("a==1\n", both) == wh.cache_key("a==1\n", list(reversed(both)))
    assert wh.cache_key("a==1\n", both) != wh.cache_key("a==2\n", both)
    assert wh.cache_key("a==1\n", both) != wh.cache_key("a==1\n", both[:1])


def test_a_package_without_a_wheel_is_named_from_pips_message():
    message = "ERROR: Could not find a version that satisfies the requirement foo==1.0\n" \
              "ERROR: No matching distribution found for foo==1.0"
    assert wh._missing_wheel(message) == "foo==1.0"
    assert wh._missing_wheel("ERROR: something else") is None


def test_the_controller_packages_come_from_the_catalogs_controller_group():
    catalog, config = list_artifacts.load(None)
    assert wh.controller_packages(catalog, config, "amd64") == ["python3-venv", "openssh-client"]


# ----------------------------------------------------------------------------- the kit in a bundle

def fill_cache(cache: Path, requirements: Path, suites: list) -> None:
    """A cached wheelhouse as fetch() leaves it: the files and files.json (their sha256), under the key of the pins."""
    directory = cache / wh.cache_key(requirements.read_text(), wh.targets(suites, ["amd64"]))
    directory.mkdir(parents=True)
    for name in WHEELS:
        (directory / name).write_bytes(f"wheel {name}\n".encode() * 100)
    files = {name: wh.sha256_file(directory / name) for name in WHEELS}
    (directory / "files.json").write_text(json.dumps(files))


@pytest.fixture()
def kit(tmp_path):
    """A bundle with the bootstrap kit from a filled cache, its manifest signed, packed with its .sha256."""
    bundle, cache = tmp_path / "out" / "airgap-bundle", tmp_path / "cache"
    bundle.mkdir(parents=True)
    fill_cache(cache, wh.RUNTIME_REQUIREMENTS, ["bookworm"])
    catalog, config = list_artifacts.load(None)
    (bundle / "wheelhouse").mkdir()
    (bundle / "wheelhouse" / "stale-1.0-py3-none-any.whl").write_text("from an older build")
    names = wh.build(bundle, None, ["amd64"], ["bookworm"], catalog, config, cache=cache)
    key = bundle_fixture.release_key()
    (bundle / bundlefmt.RELEASE_KEY).parent.mkdir(parents=True)
    (bundle / bundlefmt.RELEASE_KEY).write_text(bundle_sign.public_key(key))
    manifest = bundlefmt.write_manifest(bundle, images={}, arches=["amd64"], signed_by=key.fingerprint)
    bundle_fixture.sign(bundle)
    build_bundle.make_tarball(bundle, bundle.parent)
    return bundle, names, manifest


def test_the_wheelhouse_holds_the_cached_wheels_and_the_pins_and_nothing_stale(kit):
    bundle, names, _ = kit
    assert sorted(p.name for p in (bundle / "wheelhouse").iterdir()) == sorted(names) == sorted(
        [*WHEELS, "requirements.txt"])
    assert (bundle / "wheelhouse" / "requirements.txt").read_text() == wh.RUNTIME_REQUIREMENTS.read_text()


def test_install_sh_is_the_tools_script_executable_at_the_top_of_the_bundle(kit):
    bundle, _, _ = kit
    assert (bundle / "install.sh").read_bytes() == wh.INSTALLER_SOURCE.read_bytes()
    assert (bundle / "install.sh").stat().st_mode & 0o111 == 0o111
    config = json.loads((bundle / "install.json").read_text())
    assert config == {"apt_packages": ["python3-venv", "openssh-client"], "python": {"bookworm": "3.11"},
                      "requirements": "wheelhouse/requirements.txt", "wheelhouse": "wheelhouse"}


def test_the_manifest_lists_every_file_of_the_kit_with_its_sha256(kit):
    bundle, names, manifest = kit
    for rel in [f"wheelhouse/{n}" for n in names] + ["install.sh", "install.json"]:
        assert manifest["files"][rel]["sha256"] == wh.sha256_file(bundle / rel)


def test_a_flipped_byte_in_a_wheel_is_refused_by_verify_bundle_by_name(kit):
    bundle, _, _ = kit
    flip(bundle / "wheelhouse" / WHEELS[0], 10)
    assert [(p.kind, p.name) for p in bundlefmt.verify_bundle(bundle)] == [("modified", f"wheelhouse/{WHEELS[0]}")]


def test_a_rebuild_from_the_same_cache_leaves_every_file_as_it_was(kit, tmp_path):
    bundle, _, _ = kit
    before = {p: p.stat().st_mtime_ns for p in bundle.rglob("*") if p.is_file()}
    catalog, config = list_artifacts.load(None)
    wh.build(bundle, None, ["amd64"], ["bookworm"], catalog, config, cache=tmp_path / "cache")
    assert {p: p.stat().st_mtime_ns for p in bundle.rglob("*") if p.is_file()} == before


def test_a_cached_wheel_that_no_longer_hashes_is_not_reused(tmp_path):
    fill_cache(tmp_path, wh.RUNTIME_REQUIREMENTS, ["bookworm"])
    directory = next(tmp_path.iterdir())
    assert wh._cached(directory) is not None
    (directory / WHEELS[0]).write_text("damaged")
    assert wh._cached(directory) is None


# ----------------------------------------------------------------------------- install.sh's checks, for real

def install(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(bundle / "install.sh"), "--check-only", *args], text=True,
                          capture_output=True, timeout=120)


def test_install_sh_accepts_the_bundle_signed_by_the_pinned_key(kit):
    bundle, _, _ = kit
    proc = install(bundle, "--trusted-key", bundle_fixture.release_fingerprint())
    assert proc.returncode == 0, proc.stderr
    assert f"manifest.json is signed by {bundle_fixture.release_fingerprint()}" in proc.stdout
    assert "files match manifest.json" in proc.stdout


def test_install_sh_refuses_a_flipped_byte_in_the_wheelhouse_by_name(kit):
    bundle, _, _ = kit
    flip(bundle / "wheelhouse" / WHEELS[1], 0)
    proc = install(bundle, "--trusted-key", bundle_fixture.release_fingerprint())
    assert proc.returncode == 2
    assert f"wheelhouse/{WHEELS[1]}: modified" in proc.stderr


def test_install_sh_refuses_a_file_the_manifest_does_not_list(kit):
    bundle, _, _ = kit
    (bundle / "wheelhouse" / "extra-1.0-py3-none-any.whl").write_text("slipped in")
    proc = install(bundle, "--trusted-key", bundle_fixture.release_fingerprint())
    assert proc.returncode == 2 and "wheelhouse/extra-1.0-py3-none-any.whl: unexpected" in proc.stderr


def test_install_sh_refuses_a_signature_by_a_key_that_is_not_pinned(kit):
    bundle, _, _ = kit
    proc = install(bundle, "--trusted-key", "0" * 40)
    assert proc.returncode == 2
    assert f"signed by {bundle_fixture.release_fingerprint()}, not by the pinned key {'0' * 40}" in proc.stderr


def test_install_sh_accepts_an_armored_keyring_file(kit, tmp_path):
    bundle, _, _ = kit
    keyring = tmp_path / "site-release.asc"
    keyring.write_text(bundle_sign.public_key(bundle_fixture.release_key()))
    proc = install(bundle, "--keyring", str(keyring))
    assert proc.returncode == 0, proc.stderr


def test_install_sh_refuses_an_unpacked_manifest_that_is_not_the_tarballs(kit):
    bundle, _, _ = kit
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps(manifest))  # the same entries, other bytes
    proc = install(bundle, "--trusted-key", bundle_fixture.release_fingerprint())
    assert proc.returncode == 2 and "manifest.json is modified: it differs from the one in bundle.tar.gz" in proc.stderr


def test_install_sh_refuses_a_tarball_that_does_not_match_its_sha256(kit):
    bundle, _, _ = kit
    sha = bundle.parent / "bundle.tar.gz.sha256"
    sha.write_text("0" * 64 + "  bundle.tar.gz\n")
    proc = install(bundle, "--trusted-key", bundle_fixture.release_fingerprint())
    assert proc.returncode == 2 and "bundle.tar.gz is modified: its sha256 is" in proc.stderr


def test_install_sh_with_no_key_needs_the_tarballs_sha256_from_another_channel(kit):
    bundle, _, _ = kit
    refused = install(bundle)
    assert refused.returncode == 2 and "nothing to trust the bundle by" in refused.stderr
    actual = (bundle.parent / "bundle.tar.gz.sha256").read_text().split()[0]
    assert install(bundle, "--sha256", actual).returncode == 0
    wrong = install(bundle, "--sha256", "f" * 64)
    assert wrong.returncode == 2 and "not the --sha256 you gave" in wrong.stderr


# ----------------------------------------------------------------------------- a real download (PyPI)

@pytest.mark.pypi
def test_a_real_download_has_a_wheel_of_every_pin_for_each_python_and_arch(tmp_path):
    """pip fetches from the index it is configured for (PyPI), into a fresh cache: CI's setup phase may run it."""
    wanted = wh.targets(["bookworm", "trixie"], ["amd64", "arm64"])
    directory, files = wh.fetch(wh.RUNTIME_REQUIREMENTS, wanted, cache=tmp_path)
    assert all(name.endswith(".whl") for name in files), "no sdist"
    names = {n.split("-")[0].lower().replace("_", "-") for n in files}
    assert set(pins(wh.RUNTIME_REQUIREMENTS)) == names
    for pkg in ("pyyaml", "markupsafe", "cffi"):
        for tag in ("cp311-cp311", "cp313-cp313"):
            for machine in ("x86_64", "aarch64"):
                assert any(n.startswith(f"{pkg}-") and tag in n and machine in n for n in files), (pkg, tag, machine)
    assert wh.fetch(wh.RUNTIME_REQUIREMENTS, wanted, cache=tmp_path) == (directory, files)


# ----------------------------------------------------------------------------- the execution environment

def test_the_execution_environment_pins_the_wheelhouses_toolchain_and_carries_this_collection():
    ee = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    runtime = pins(wh.RUNTIME_REQUIREMENTS)
    deps = ee["dependencies"]
    assert ee["version"] == 3 and deps["python"] == "requirements-runtime.txt"
    assert deps["ansible_core"]["package_pip"] == f"ansible-core=={runtime['ansible-core']}"
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    assert [c["name"].rsplit("/", 1)[1] for c in deps["galaxy"]["collections"]] == [
        f"airgap-kubernetes-{version}.tar.gz"]
    # ansible-builder's introspection reads the collection's own list: the runtime one, not the test tools.
    meta = yaml.safe_load((REPO / "meta" / "execution-environment.yml").read_text())
    assert meta["dependencies"]["python"] == "requirements-runtime.txt"
