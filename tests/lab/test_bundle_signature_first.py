"""Specification: the bundle_server role checks a new tarball's signature from the tarball itself, first: an unsigned
or wrongly signed one, while a key is pinned, is refused by name before <bundle dir>.new exists, with the served tree
untouched; and a controller with gpgv refuses it before copying it to the bundle host at all."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bundlefmt
from ansible_collections.airgap.kubernetes.tools import build_bundle as builder
from ansible_collections.airgap.kubernetes.tools import bundle_sign

from .served_bundle import changes, docker, write_sha256
from .test_bundle_tamper import ARCHIVE_ON_HOST, BUNDLE_ON_HOST, _host, _serve

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import bundle_fixture  # noqa: E402

pytestmark = pytest.mark.lab
SIGNATURE_TASK = "Check the bundle tarball's signature before unpacking it"
TREE = f"cd {BUNDLE_ON_HOST} && find . -print0 | sort -z | xargs -0 sha256sum 2>/dev/null; ls -a /srv/airgap"


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture bundle, unpacked and signed by the fixture's release key (the one the tests pin)."""
    return bundle_fixture.build_bundle(tmp_path_factory.mktemp("signed"), tarball=False).dir


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory):
    """A release key nobody pinned, in a GNUPGHOME of this module; its agent is stopped after."""
    home = tmp_path_factory.mktemp("other-gnupg")
    home.chmod(0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quick-gen-key",
                    "other release <other@airgap.invalid>", "ed25519", "sign", "never"], check=True,
                   capture_output=True)
    yield bundle_sign.signing_key("other@airgap.invalid", home)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def _tarball(signed: Path, out: Path, key=None) -> Path:
    """A tarball of a copy of the signed bundle, as build-bundle packs it: unsigned (key None) or signed by key."""
    copy = out / "bundle" / signed.name
    shutil.copytree(signed, copy, symlinks=True)
    (copy / bundlefmt.SIGNATURE).unlink()
    if key is not None:
        bundle_sign.detach_sign(key, copy / bundlefmt.MANIFEST, copy / bundlefmt.SIGNATURE)
    tarball = builder.make_tarball(copy, out)
    write_sha256(tarball)
    return tarball


@pytest.fixture
def host(signed: Path):
    """A lab node with no network, serving the signed bundle at /srv/airgap/bundle (as after an earlier run)."""
    name = f"t{os.getpid()}-signature-first"
    try:
        docker("cp", str(signed), f"{_host(name)}:{BUNDLE_ON_HOST}")
        yield name
    finally:
        docker("rm", "-f", name, check=False)


def _refused_before_unpacking(host: str, out: str, before_tree: str, before: set) -> None:
    assert "Nothing was changed" in out, out[-3000:]
    for task in ("Create the directory for the new bundle", "Extract the bundle tarball", "Swap the new bundle in"):
        assert task not in out, f"{task} ran: {out[-3000:]}"
    assert docker("exec", host, "test", "-e", f"{BUNDLE_ON_HOST}.new", check=False).returncode != 0, \
        f"{BUNDLE_ON_HOST}.new was created"
    assert docker("exec", host, "sh", "-c", TREE).stdout == before_tree, "the served tree changed"
    # Nothing at all: not even the scratch directory the signature was checked in is left in /tmp.
    assert changes(host) == before, changes(host) ^ before


@pytest.mark.parametrize("signer", ["unsigned", "another key"])
def test_a_tarball_no_pinned_key_signed_is_refused_before_anything_is_unpacked(
    signer: str, signed: Path, other_key, host: str, tmp_path: Path
) -> None:
    tarball = _tarball(signed, tmp_path, None if signer == "unsigned" else other_key)
    for suffix in ("", ".sha256"):
        docker("cp", f"{tarball}{suffix}", f"{host}:{ARCHIVE_ON_HOST}{suffix}")
    before_tree, before = docker("exec", host, "sh", "-c", TREE).stdout, changes(host)
    out = _serve(tmp_path, host, {"bundle_server_bundle_archive": ARCHIVE_ON_HOST})
    refusal = out.split(f"TASK [airgap.kubernetes.bundle_server : {SIGNATURE_TASK}]", 1)[-1]
    assert "fatal:" in refusal, out[-3000:]
    if signer == "unsigned":
        assert (f"{ARCHIVE_ON_HOST} is unsigned (no {bundlefmt.SIGNATURE}), and bundle_trusted_keys pins "
                f"{bundle_fixture.release_fingerprint()}") in refusal, refusal[-3000:]
        assert "run.sh build-bundle --sign-key" in refusal
    else:
        assert (f"{bundlefmt.MANIFEST} in {ARCHIVE_ON_HOST} is signed by key {other_key.fingerprint}, which is not "
                f"pinned (bundle_trusted_keys pins {bundle_fixture.release_fingerprint()})") in refusal, refusal[-3000:]
    assert "Nothing was changed: the tarball was not unpacked." in refusal
    _refused_before_unpacking(host, out, before_tree, before)


def test_a_controller_with_gpgv_refuses_a_wrongly_signed_tarball_before_copying_it(
    signed: Path, other_key, host: str, tmp_path: Path
) -> None:
    assert shutil.which("gpgv"), "gpgv is missing on this controller: .ci/setup-host.sh installs it"
    tarball = _tarball(signed, tmp_path / "controller", other_key)
    before_tree, before = docker("exec", host, "sh", "-c", TREE).stdout, changes(host)
    out = _serve(tmp_path, host, {"bundle_server_bundle_archive": ARCHIVE_ON_HOST,
                                  "bundle_server_bundle_upload": str(tarball)})
    assert "Check the bundle tarball's signature on the controller" in out, out[-3000:]
    assert (f"{bundlefmt.MANIFEST} in {tarball} is signed by key {other_key.fingerprint}, which is not pinned"
            in out), out[-3000:]
    assert "Nothing was changed: the tarball was not copied to the bundle host." in out
    assert "Copy the bundle tarball and its checksum file" not in out
    for path in (ARCHIVE_ON_HOST, f"{ARCHIVE_ON_HOST}.sha256"):
        assert docker("exec", host, "test", "-e", path, check=False).returncode != 0, f"{path} was copied"
    _refused_before_unpacking(host, out, before_tree, before)

