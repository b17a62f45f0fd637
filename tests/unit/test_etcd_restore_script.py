"""Specification of etcd-restore (roles/etcd/templates/etcd-restore.sh.j2) with the etcd.env it sources, both rendered
by a real ansible-playbook with paths that need quoting, and run by /bin/sh on real files. etcdutl and systemctl are
stand-ins that record their arguments (no etcd runs here; molecule/etcd restores a real cluster)."""
import shutil
import subprocess
from pathlib import Path

import pytest
from local_play import render_templates

PEER = "https://10.0.0.1:2380"
CLUSTER = f"node1={PEER},node2=https://10.0.0.2:2380"
# etcdutl's offline commands as etcd-restore uses them: status reads the file, restore writes <data-dir>/member.
FAKE_ETCDUTL = """#!/bin/sh
echo "etcdutl ETCDCTL_API=${ETCDCTL_API-unset} $*" >> "$CALLS"
[ "$1" = snapshot ] || exit 2
case "$2" in
status) grep -q '^snapshot' "$3" ;;
restore)
    while [ $# -gt 0 ]; do [ "$1" = --data-dir ] && dir=$2; shift; done
    mkdir -p "$dir/member/snap" && echo restored > "$dir/member/snap/db" ;;
*) exit 2 ;;
esac
"""
FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$CALLS"
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("etcd member")
    paths = {name: tmp_path / name for name in ("etc dir", "bin dir", "pki dir", "tools")}
    for path in paths.values():
        path.mkdir()
    data = tmp_path / "data dir"
    _executable(paths["bin dir"] / "etcdutl", FAKE_ETCDUTL)
    _executable(paths["tools"] / "systemctl", FAKE_SYSTEMCTL)
    variables = {"etcd_config_dir": str(paths["etc dir"]), "etcd_bin_dir": str(paths["bin dir"]),
                 "etcd_pki_dir": str(paths["pki dir"]), "etcd_data_dir": str(data), "etcd_user": "root",
                 "etcd_client_url": "https://10.0.0.1:2379", "etcd_client_port": 2379, "etcd_peer_url": PEER,
                 "etcd_initial_cluster": CLUSTER, "etcd_cluster_token": "airgap etcd",
                 "etcd_heartbeat_interval": 100, "etcd_election_timeout": 1000, "etcd_quota_backend_bytes": 2147483648,
                 "etcd_auto_compaction_retention": "8", "etcd_extra_env": {"ETCD_LOG_LEVEL": "warn"}}
    templates = {"etcd/templates/etcd-restore.sh.j2": tmp_path / "etcd-restore",
                 "etcd/templates/etcd.env.j2": paths["etc dir"] / "etcd.env"}
    render_templates(tmp_path, "node1", variables, templates)
    return {"script": templates["etcd/templates/etcd-restore.sh.j2"], "snapshot": tmp_path / "etcd-node1-20260101T000000.000000000Z.db",
            "data": data, "calls": tmp_path / "calls", "path": f"{paths['tools']}:/usr/bin:/bin",
            "bin": paths["bin dir"]}


@pytest.fixture
def member(rendered) -> dict:
    """The rendered member with fresh state: old data in place, etcdutl installed, no calls recorded."""
    data = rendered["data"]
    for old in [data] + list(data.parent.glob("data dir.*")):
        shutil.rmtree(old, ignore_errors=True)
    (data / "member" / "wal").mkdir(parents=True)
    (data / "member" / "wal" / "0.wal").write_text("old data\n")
    rendered["snapshot"].write_text("snapshot bytes\n")
    rendered["calls"].unlink(missing_ok=True)
    if (rendered["bin"] / "etcdctl").exists():
        (rendered["bin"] / "etcdctl").rename(rendered["bin"] / "etcdutl")
    return rendered


def restore(member: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", str(member["script"]), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": member["path"], "CALLS": str(member["calls"])})


def test_a_restore_swaps_in_the_snapshot_keeps_the_old_data_and_starts_etcd(member):
    proc = restore(member, str(member["snapshot"]))
    assert proc.returncode == 0, proc.stderr
    data = member["data"]
    assert (data / "member" / "snap" / "db").read_text() == "restored\n"
    [saved] = [p for p in data.parent.iterdir() if p.name.startswith("data dir.before-restore-")]
    assert (saved / "member" / "wal" / "0.wal").read_text() == "old data\n"
    calls = member["calls"].read_text().splitlines()
    assert calls[0] == f"etcdutl ETCDCTL_API= snapshot status {member['snapshot']}"
    assert calls[1] == "systemctl stop etcd.service"
    # The values etcd.env holds reach etcdutl whole, a token with a space included.
    assert calls[2].startswith(f"etcdutl ETCDCTL_API= snapshot restore {member['snapshot']} --name node1 "
                               f"--initial-cluster {CLUSTER} --initial-cluster-token airgap etcd-restored-")
    assert f"--initial-advertise-peer-urls {PEER} --data-dir {data}.restore-" in calls[2]
    assert calls[3] == "systemctl start --no-block etcd.service"
    assert f"set -a; . '{member['script'].parent / 'etc dir' / 'etcdctl.env'}'; set +a" in proc.stdout


def test_without_etcdutl_the_restore_uses_etcdctl_with_the_v3_api(member):
    (member["bin"] / "etcdutl").rename(member["bin"] / "etcdctl")
    proc = restore(member, "--no-start", str(member["snapshot"]))
    assert proc.returncode == 0, proc.stderr
    calls = member["calls"].read_text().splitlines()
    assert calls[0] == f"etcdutl ETCDCTL_API=3 snapshot status {member['snapshot']}"  # the stand-in, as etcdctl
    assert "systemctl start --no-block etcd.service" not in calls


def test_a_file_that_is_no_snapshot_is_refused_before_etcd_stops(member):
    member["snapshot"].write_text("not a snapshot\n")
    proc = restore(member, str(member["snapshot"]))
    assert proc.returncode == 1 and f"etcd-restore: {member['snapshot']} is not a valid snapshot" in proc.stderr
    assert "systemctl" not in member["calls"].read_text()
