"""Specification: a bundle tarball's signature is checked from the tarball itself, before anything of it is unpacked.
Real gpg, gpgv and tar, with throwaway keys in a GNUPGHOME under tmp_path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle as bf
from ansible_collections.airgap.kubernetes.plugins.module_utils import bundle_trust as bt
from ansible_collections.airgap.kubernetes.tools import bundle_sign
from ansible_collections.airgap.kubernetes.tools.build_bundle import make_tarball
from test_bundle import keys  # noqa: F401 (the fixture: throwaway release keys made with real gpg)

REPO = Path(__file__).resolve().parents[2]
ETCD = "files/github.com/etcd-io/etcd/releases/download/v3.4.23/etcd"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A small unsigned bundle: a mirrored file of 2 MiB of random bytes (so that gzip cannot shrink it away)."""
    root = tmp_path / "build" / "airgap-bundle"
    (root / ETCD).parent.mkdir(parents=True)
    (root / ETCD).write_bytes(os.urandom(2 << 20))
    bf.write_manifest(root, images={}, arches=["amd64"])
    return root


def _sign(root: Path, key: bundle_sign.SigningKey) -> None:
    """What build-bundle --sign-key does: ship the public key, record the signer, sign the manifest."""
    (root / bf.RELEASE_KEY).parent.mkdir(parents=True, exist_ok=True)
    (root / bf.RELEASE_KEY).write_text(bundle_sign.public_key(key))
    bf.write_manifest(root, images={}, arches=["amd64"], signed_by=key.fingerprint)
    bundle_sign.detach_sign(key, root / bf.MANIFEST, root / bf.SIGNATURE)


def _old_layout(root: Path, out: Path) -> Path:
    """A tarball as build-bundle packed it before the trust members led it: the directory first, then readdir order."""
    out.mkdir(parents=True, exist_ok=True)
    tarball = out / "bundle.tar.gz"
    subprocess.run(["tar", "-C", str(root.parent), "--owner=0", "--group=0", "-czf", str(tarball), root.name],
                   check=True)
    return tarball


def test_a_signed_tarball_is_checked_from_its_head_alone(bundle: Path, keys, tmp_path: Path) -> None:
    site = keys("site")
    _sign(bundle, site)
    tarball = make_tarball(bundle, tmp_path)
    assert bt.verify_archive_signature(tarball, [site.fingerprint]) == (site.fingerprint, True)
    # Cut the tarball in half: the check never reads that far, so it cannot tell.
    whole = tarball.read_bytes()
    tarball.write_bytes(whole[:len(whole) // 2])
    assert bt.verify_archive_signature(tarball, [site.fingerprint]) == (site.fingerprint, True)
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(["tar", "-tzf", str(tarball)], check=True, capture_output=True)


def test_an_unsigned_tarball_is_refused_by_name_when_a_key_is_pinned(bundle: Path, keys, tmp_path: Path) -> None:
    site = keys("site")
    tarball = make_tarball(bundle, tmp_path)
    with pytest.raises(bt.TrustError) as err:
        bt.verify_archive_signature(tarball, [site.fingerprint])
    assert (f"{tarball} is unsigned (no {bf.SIGNATURE}), and bundle_trusted_keys pins {site.fingerprint}"
            in str(err.value))
    assert "run.sh build-bundle --sign-key" in str(err.value)


def test_an_unsigned_tarball_is_refused_from_its_head_without_reading_on(bundle: Path, keys, tmp_path: Path) -> None:
    """The manifest says it was never signed (signed_by null), so no signature can come further on."""
    tarball = make_tarball(bundle, tmp_path)
    whole = tarball.read_bytes()
    tarball.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(bt.TrustError, match=f"{tarball} is unsigned"):
        bt.verify_archive_signature(tarball, [keys("site").fingerprint])


def test_a_tarball_signed_by_another_key_is_refused_naming_the_tarball_signer_and_pins(bundle, keys, tmp_path) -> None:
    site, other = keys("site"), keys("other")
    _sign(bundle, other)  # its public half is shipped in the bundle too: it is not used
    tarball = make_tarball(bundle, tmp_path)
    with pytest.raises(bt.TrustError) as err:
        bt.verify_archive_signature(tarball, [site.fingerprint])
    assert (f"{bf.MANIFEST} in {tarball} is signed by key {other.fingerprint}, which is not pinned "
            f"(bundle_trusted_keys pins {site.fingerprint})") in str(err.value)


def test_a_manifest_changed_after_signing_is_refused_naming_the_tarball(bundle: Path, keys, tmp_path: Path) -> None:
    site = keys("site")
    _sign(bundle, site)
    manifest = json.loads((bundle / bf.MANIFEST).read_text())
    manifest["files"][ETCD]["sha256"] = "0" * 64  # what a tamperer who replaced etcd writes
    (bundle / bf.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tarball = make_tarball(bundle, tmp_path)
    with pytest.raises(bt.TrustError, match=rf"{bf.MANIFEST} in {tarball} does not match its signature by key "
                                            r"\w+: it was changed after signing"):
        bt.verify_archive_signature(tarball, [site.fingerprint])


def test_an_older_tarball_is_still_checked_wherever_its_manifest_lies(bundle: Path, keys, tmp_path: Path) -> None:
    site, other = keys("site"), keys("other")
    _sign(bundle, site)
    tarball = _old_layout(bundle, tmp_path / "old")
    assert bt.verify_archive_signature(tarball, [site.fingerprint]) == (site.fingerprint, False)
    with pytest.raises(bt.TrustError, match=f"{bf.MANIFEST} in {tarball} is signed by key {site.fingerprint}, which "
                                            "is not pinned"):
        bt.verify_archive_signature(tarball, [other.fingerprint])
    (bundle / bf.SIGNATURE).unlink()
    tarball = _old_layout(bundle, tmp_path / "old-unsigned")
    with pytest.raises(bt.TrustError, match=f"{tarball} is unsigned"):
        bt.verify_archive_signature(tarball, [site.fingerprint])


def test_a_signature_packed_after_the_rest_by_hand_is_still_found(bundle: Path, keys, tmp_path: Path) -> None:
    """The manifest first, then everything else, the signature last: the manifest says it is signed, so read on."""
    site = keys("site")
    _sign(bundle, site)
    tarball = tmp_path / "bundle.tar.gz"
    names = [f"{bundle.name}/{bf.MANIFEST}", f"{bundle.name}/files", f"{bundle.name}/keys",
             f"{bundle.name}/{bf.SIGNATURE}"]
    subprocess.run(["tar", "-C", str(bundle.parent), "-czf", str(tarball), *names], check=True)
    assert bt.verify_archive_signature(tarball, [site.fingerprint]) == (site.fingerprint, False)


def test_what_is_not_a_bundle_tarball_is_refused_by_name(tmp_path: Path, keys) -> None:
    site = keys("site")
    junk = tmp_path / "bundle.tar.gz"
    junk.write_bytes(b"not a tarball at all")
    with pytest.raises(bf.BundleError, match=f"{junk} cannot be read as a tarball .*re-copy the bundle"):
        bt.verify_archive_signature(junk, [site.fingerprint])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README").write_text("hello")
    subprocess.run(["tar", "-C", str(tmp_path), "-czf", str(junk), "other"], check=True)
    with pytest.raises(bf.BundleError, match=f"{junk} holds no {bf.MANIFEST} under its top-level directory"):
        bt.verify_archive_signature(junk, [site.fingerprint])
    with pytest.raises(bf.BundleError, match=f"{tmp_path / 'missing.tar.gz'} does not exist"):
        bt.verify_archive_signature(tmp_path / "missing.tar.gz", [site.fingerprint])


def test_a_trust_member_that_is_a_link_is_refused(bundle: Path, keys, tmp_path: Path) -> None:
    site = keys("site")
    _sign(bundle, site)
    (bundle / bf.SIGNATURE).unlink()
    (bundle / bf.SIGNATURE).symlink_to("/etc/shadow")
    tarball = _old_layout(bundle, tmp_path / "linked")
    with pytest.raises(bf.BundleError, match=f"{bf.SIGNATURE} in {tarball} is not a regular file"):
        bt.verify_archive_signature(tarball, [site.fingerprint])


def test_the_scratch_directory_is_private_and_removed_after(bundle: Path, keys, tmp_path: Path, monkeypatch) -> None:
    site = keys("site")
    _sign(bundle, site)
    tarball = make_tarball(bundle, tmp_path)
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))  # where mkdtemp puts it: here, to look at it
    modes = []
    real_verify = bt.verify_signature

    def verify_and_look(root, *args, **kw):
        modes.append(os.stat(root).st_mode & 0o777)
        return real_verify(root, *args, **kw)

    monkeypatch.setattr(bt, "verify_signature", verify_and_look)
    bt.verify_archive_signature(tarball, [site.fingerprint])
    with pytest.raises(bt.TrustError):
        bt.verify_archive_signature(tarball, [keys("other").fingerprint])
    assert modes == [0o700, 0o700]
    assert list(scratch_root.iterdir()) == []


# --------------------------------------------------------------------------- the module, run by Ansible on this host

def _module(tmp_path: Path, args: dict, path: str = os.environ.get("PATH", "")) -> dict:
    """airgap.kubernetes.bundle_verify run ad hoc on this host (connection local); its JSON result."""
    venv = Path(sys.executable).parent
    env = {**os.environ, "PATH": path, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json"}
    proc = subprocess.run([str(venv / "ansible"), "localhost", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", "-m", "airgap.kubernetes.bundle_verify",
                           "-a", json.dumps(args)], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    out = proc.stdout  # ansible.cfg's timing callbacks print around the JSON
    return json.loads(out[out.index("{"):out.rindex("}") + 1])["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_the_module_refuses_a_tarball_naming_it_and_saying_nothing_was_changed(bundle, keys, tmp_path) -> None:
    site, other = keys("site"), keys("other")
    _sign(bundle, other)
    tarball = make_tarball(bundle, tmp_path)
    result = _module(tmp_path, {"archive": str(tarball), "trusted_keys": [site.fingerprint]})
    assert result.get("failed"), result
    assert f"{bf.MANIFEST} in {tarball} is signed by key {other.fingerprint}, which is not pinned" in result["msg"]
    assert result["msg"].endswith("Nothing was changed: the tarball was not unpacked.")
    result = _module(tmp_path, {"archive": str(tarball), "trusted_keys": [other.fingerprint], "controller": True})
    assert result["checked"] and result["members_first"] and result["signer"] == other.fingerprint, result
    result = _module(tmp_path, {"archive": str(tarball), "trusted_keys": [site.fingerprint], "controller": True})
    assert result["msg"].endswith("Nothing was changed: the tarball was not copied to the bundle host."), result


def test_a_controller_without_gpgv_or_sqv_leaves_the_check_to_the_bundle_host(bundle, keys, tmp_path) -> None:
    site = keys("site")
    tarball = make_tarball(bundle, tmp_path)  # unsigned: a controller that could check would refuse it
    bare = tmp_path / "bin"  # this host's commands, less gpgv and sqv
    bare.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if tool.name not in ("gpgv", "sqv"):
            (bare / tool.name).symlink_to(tool)
    result = _module(tmp_path, {"archive": str(tarball), "trusted_keys": [site.fingerprint], "controller": True},
                     path=str(bare))
    assert not result.get("failed") and result["checked"] is False, result
    assert result["reason"] == ("neither gpgv nor sqv is installed on the controller: "
                                "the bundle host checks the signature")
    # On the bundle host (no controller: true) the same tarball is refused, with or without a verifier installed.
    result = _module(tmp_path, {"archive": str(tarball), "trusted_keys": [site.fingerprint]}, path=str(bare))
    assert result.get("failed") and f"{tarball} is unsigned" in result["msg"], result
