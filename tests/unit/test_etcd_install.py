"""Specification of roles/etcd/tasks/install.yml's unpack task, run as it is written by a real ansible-playbook:
the binaries root later runs belong to root:root, whatever uid built the tarball."""
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"
TASK = "Unpack the etcd release"
MEMBERS = ["etcd-v3.4.23-linux-amd64/etcd", "etcd-v3.4.23-linux-amd64/etcdctl"]
BUILD_UID = 4242  # the release builder's uid, as upstream tarballs carry it


def _tarball(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name in MEMBERS + ["etcd-v3.4.23-linux-amd64/README.md"]:
            data = b"#!/bin/sh\n"
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), 0o775, BUILD_UID, BUILD_UID
            tar.addfile(info, io.BytesIO(data))


def _unpack_task() -> dict:
    tasks = yaml.safe_load((REPO / "roles/etcd/tasks/install.yml").read_text())
    return next(t for t in tasks if t.get("name") == TASK)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's tar keeps the archive's owners")
def test_the_unpacked_etcd_binaries_belong_to_root_not_to_the_tarballs_build_uid(tmp_path):
    _tarball(tmp_path / "etcd-v3.4.23-linux-amd64.tar.gz")
    release = tmp_path / "v3.4.23"
    release.mkdir()
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [_unpack_task()], "vars": {
        "etcd_install_dir": str(tmp_path), "etcd_release_dir": str(release),
        "etcd_artifact": {"url": "https://bundle/files/etcd-v3.4.23-linux-amd64.tar.gz", "mode": "0755",
                          "unpack": {"members": MEMBERS, "strip_components": 1}}}}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={VENV_BIN / 'python'}", str(tmp_path / "play.yml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in release.iterdir()) == ["etcd", "etcdctl"]
    for path in release.iterdir():
        st = path.stat()
        assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (0, 0, "0o755"), path
