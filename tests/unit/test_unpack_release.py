"""The unpack_release module: one pass over a tarball, a record of what it wrote, and no read of the tarball when the
files on disk still match that record."""
from __future__ import annotations

import grp
import io
import os
import pwd
import tarfile
import time

import pytest

from ansible_collections.airgap.kubernetes.plugins.modules import unpack_release as ur

UID, GID = os.getuid(), os.getgid()
MEMBERS = ["bin/containerd", "bin/ctr"]


def tarball(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), 0o775, 4242, 4242
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def run(src, dest, members=MEMBERS, strip=1, mode=0o755):
    record = f"{src}.unpacked.sha256"
    reason = ur.stale_reason(src, str(dest), record, mode, UID, GID)
    if reason is None:
        return None, []
    return reason, ur.unpack(src, str(dest), members, strip, mode, UID, GID, record)


@pytest.fixture
def release(tmp_path):
    src = tarball(tmp_path / "containerd.tar.gz", {"bin/containerd": b"daemon", "bin/ctr": b"cli",
                                                   "bin/extra": b"not wanted", "README.md": b"doc"})
    dest = tmp_path / "usr-local-bin"
    dest.mkdir()
    return src, dest


def test_unpacks_only_the_members_stripped_with_the_mode_and_records_their_sha256(release):
    src, dest = release
    reason, files = run(src, dest)
    assert reason == "no record" and files == ["containerd", "ctr"]
    assert sorted(p.name for p in dest.iterdir()) == ["containerd", "ctr"]
    assert (dest / "containerd").read_bytes() == b"daemon"
    assert oct((dest / "ctr").stat().st_mode & 0o777) == "0o755"
    record = ur.read_record(f"{src}.unpacked.sha256")
    assert [name for _, name in record] == ["containerd", "ctr"]
    # sha256sum's own format: the coreutils tool checks it.
    assert os.system(f"cd {dest} && sha256sum --status -c {src}.unpacked.sha256") == 0


def test_a_second_run_reads_nothing_and_changes_nothing(release):
    src, dest = release
    run(src, dest)
    inode = (dest / "containerd").stat().st_ino
    assert run(src, dest) == (None, [])
    assert (dest / "containerd").stat().st_ino == inode


@pytest.mark.parametrize("damage, reason", [
    (lambda d: (d / "ctr").write_bytes(b"tampered"), "ctr differs from the record"),
    (lambda d: (d / "ctr").unlink(), "ctr is missing"),
    (lambda d: (d / "ctr").chmod(0o700), "ctr has another mode or owner"),
])
def test_a_changed_missing_or_rechmodded_file_is_unpacked_again(release, damage, reason):
    src, dest = release
    run(src, dest)
    damage(dest)
    assert run(src, dest) == (reason, ["containerd", "ctr"])
    assert (dest / "ctr").read_bytes() == b"cli" and oct((dest / "ctr").stat().st_mode & 0o777) == "0o755"


def test_a_tarball_newer_than_its_record_is_unpacked_again(release):
    src, dest = release
    run(src, dest)
    later = time.time() + 5
    os.utime(src, (later, later))
    assert run(src, dest)[0] == "the tarball is newer than the record"


def test_a_member_the_tarball_lacks_is_named(release):
    src, dest = release
    with pytest.raises(ValueError, match="has no member bin/runc: .*unpack.members"):
        run(src, dest, members=["bin/containerd", "bin/runc"])
    assert not os.path.exists(f"{src}.unpacked.sha256")


def test_without_members_every_regular_file_is_unpacked_as_named(tmp_path):
    src = tarball(tmp_path / "cni.tgz", {"./bridge": b"b", "./loopback": b"l"})
    dest = tmp_path / "cni"
    dest.mkdir()
    assert run(src, dest, members=[], strip=0)[1] == ["./bridge", "./loopback"]
    assert (dest / "bridge").read_bytes() == b"b"
    assert run(src, dest, members=[], strip=0) == (None, [])


def test_the_owner_is_this_hosts_never_the_tarballs_build_uid(release):
    src, dest = release
    run(src, dest)
    st = (dest / "containerd").stat()
    assert (st.st_uid, st.st_gid) == (UID, GID) == (pwd.getpwuid(UID).pw_uid, grp.getgrgid(GID).gr_gid)
