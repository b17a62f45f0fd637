"""Specification of single role tasks that guard ownership, each run as written by a real ansible-playbook as root
on this host: the etcd unpack (binaries root runs belong to root) and the bundle server's chown of registry
storage (a link is never followed)."""
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("AIRGAP_VENV", Path.home() / ".cache" / "airgap-kubernetes" / "venv")) / "bin"
ETCD_MEMBERS = ["etcd-v3.4.23-linux-amd64/etcd", "etcd-v3.4.23-linux-amd64/etcdctl"]
BUILD_UID = 4242  # the release builder's uid, as upstream tarballs carry it

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


def role_task(tasks_file: str, name: str) -> dict:
    tasks = yaml.safe_load((REPO / "roles" / tasks_file).read_text())
    return next(t for t in tasks if t.get("name") == name)


def run_task(tmp_path: Path, task: dict, variables: dict) -> None:
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [task], "vars": variables}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={VENV_BIN / 'python'}", str(tmp_path / "play.yml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _etcd_tarball(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name in ETCD_MEMBERS + ["etcd-v3.4.23-linux-amd64/README.md"]:
            data = b"#!/bin/sh\n"
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), 0o775, BUILD_UID, BUILD_UID
            tar.addfile(info, io.BytesIO(data))


def test_the_unpacked_etcd_binaries_belong_to_root_not_to_the_tarballs_build_uid(tmp_path):
    _etcd_tarball(tmp_path / "etcd-v3.4.23-linux-amd64.tar.gz")
    release = tmp_path / "v3.4.23"
    release.mkdir()
    run_task(tmp_path, role_task("etcd/tasks/install.yml", "Unpack the etcd release"), {
        "etcd_install_dir": str(tmp_path), "etcd_release_dir": str(release), "etcd_download": {"changed": True},
        "etcd_artifact": {"url": "https://bundle/files/etcd-v3.4.23-linux-amd64.tar.gz", "mode": "0755",
                          "unpack": {"members": ETCD_MEMBERS, "strip_components": 1}}})
    assert sorted(p.name for p in release.iterdir()) == ["etcd", "etcdctl"]
    for path in release.iterdir():
        st = path.stat()
        assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (0, 0, "0o755"), path


def test_the_registry_storage_chown_changes_a_link_itself_never_its_target(tmp_path):
    # As written, but to nobody: this host has no docker-registry user.
    task = role_task("bundle_server/tasks/services.yml", "Give the registry storage to docker-registry so local "
                                                         "pushes can write")
    task["ansible.builtin.file"].update(owner="nobody", group="nogroup")
    storage = tmp_path / "bundle" / "registry" / "docker"
    storage.mkdir(parents=True)
    (storage / "blob").write_bytes(b"data")
    target = tmp_path / "outside"
    target.write_text("root's file")
    (storage / "shadow").symlink_to(target)
    run_task(tmp_path, task, {"bundle_server_bundle_dir": str(tmp_path / "bundle"),
                              "bundle_server_registry_readonly": False})
    nobody = (storage / "blob").stat()
    assert nobody.st_uid != 0 and (storage / "shadow").lstat().st_uid == nobody.st_uid
    assert (target.stat().st_uid, target.stat().st_gid) == (0, 0)


def test_chrony_serves_the_bundle_hosts_own_subnet_by_default_as_a_list_of_subnets(tmp_path):
    # As a string, chrony.conf got one allow line per character and chrony refused to start.
    defaults = yaml.safe_load((REPO / "roles/bundle_server/defaults/main.yml").read_text())
    task = {"name": "Show the default", "ansible.builtin.copy": {
        "content": "{{ {'type': bundle_server_ntp_allow | type_debug, 'value': bundle_server_ntp_allow} | to_json }}",
        "dest": str(tmp_path / "out.json"), "mode": "0644"}}
    run_task(tmp_path, task, {"bundle_server_ntp_allow": defaults["bundle_server_ntp_allow"],
                              "ansible_facts": {"default_ipv4": {"network": "10.1.2.0", "prefix": "24"}}})
    assert yaml.safe_load((tmp_path / "out.json").read_text()) == {"type": "list", "value": ["10.1.2.0/24"]}
