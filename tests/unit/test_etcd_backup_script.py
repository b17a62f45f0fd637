"""Specification of the etcd backup script (roles/etcd/templates/etcd-backup.sh.j2), rendered by a real
ansible-playbook and run by /bin/sh on real files, with a stand-in etcdctl in etcd_bin_dir that writes <snapshot>.part and
renames it as etcdctl does: retention counts only this member's snapshots, and stale .part files go."""
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from local_play import render_templates

HOST = "node1"
KEEP = 3
STAMP = re.compile(r"^etcd-node1-\d{8}T\d{6}\.\d{9}Z\.db$")
# etcdctl's behaviour that the script relies on: the snapshot appears under its name only once complete.
FAKE_ETCDCTL = """#!/bin/sh
[ "$1 $2" = "snapshot save" ] || { echo "fake etcdctl: unexpected $*" >&2; exit 2; }
[ -n "${ETCDCTL_ENDPOINTS:-}" ] || { echo "fake etcdctl: etcdctl.env was not read" >&2; exit 3; }
printf 'snapshot of %s\\n' "$ETCDCTL_ENDPOINTS" > "$3.part"
if [ "${FAKE_ETCDCTL_FAIL:-}" = 1 ]; then echo "fake etcdctl: context deadline exceeded" >&2; exit 1; fi
mv "$3.part" "$3"
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> dict:
    """The template rendered by ansible-playbook for member node1, with paths that need quoting (spaces)."""
    root = tmp_path_factory.mktemp("etcd backup")
    paths = {name: root / name for name in ("config dir", "bin dir", "backup dir")}
    for path in paths.values():
        path.mkdir()
    (paths["config dir"] / "etcdctl.env").write_text("ETCDCTL_API=3\nETCDCTL_ENDPOINTS=https://127.0.0.1:2379\n")
    etcdctl = paths["bin dir"] / "etcdctl"
    etcdctl.write_text(FAKE_ETCDCTL)
    etcdctl.chmod(0o755)
    rendered = root / "etcd-backup"
    render_templates(root, HOST, {"etcd_config_dir": str(paths["config dir"]), "etcd_bin_dir": str(paths["bin dir"]),
                                  "etcd_backup_dir": str(paths["backup dir"]), "etcd_backup_retention": KEEP},
                     {"etcd/templates/etcd-backup.sh.j2": rendered})
    return {"script": rendered, "dir": paths["backup dir"]}


@pytest.fixture
def backups(script) -> Path:
    directory = script["dir"]
    for path in directory.iterdir():
        path.unlink()
    return directory


def run(script: dict, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", str(script["script"])], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **env})


def touch(directory: Path, name: str, age_minutes: float = 0) -> Path:
    path = directory / name
    path.write_text("old\n")
    when = time.time() - age_minutes * 60
    os.utime(path, (when, when))
    return path


def snapshots(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir() if STAMP.match(p.name))


def test_the_rendered_script_is_valid_sh(script):
    assert subprocess.run(["/bin/sh", "-n", str(script["script"])], capture_output=True).returncode == 0


def test_a_run_saves_a_snapshot_named_after_the_member_and_the_time(script, backups):
    proc = run(script)
    assert proc.returncode == 0, proc.stderr
    [saved] = snapshots(backups)
    assert (backups / saved).read_text() == "snapshot of https://127.0.0.1:2379\n"
    assert f"etcd-backup: saved {backups / saved}" in proc.stdout
    assert oct((backups / saved).stat().st_mode & 0o777) == "0o600"


def test_retention_keeps_this_members_newest_and_leaves_every_other_file_alone(script, backups):
    old = [f"etcd-node1-2026010{i}T000000.000000000Z.db" for i in range(1, 6)]
    others = ["etcd-node2-20260101T000000.000000000Z.db",  # another member's snapshot in a shared directory
              "etcd-node1-2-20260101T000000.000000000Z.db",  # member node1-2, whose name starts like node1's
              "etcd-node1-restore.db", "etcd-restored.db",  # copies kept by hand
              "removed-member-20260101T000000Z"]
    for name in old + others:
        touch(backups, name)
    proc = run(script)
    assert proc.returncode == 0, proc.stderr
    kept = snapshots(backups)
    assert len(kept) == KEEP and kept[:2] == old[-2:]  # the two newest old ones and the new one
    assert all((backups / name).exists() for name in others)
    assert [line for line in proc.stdout.splitlines() if "removed" in line] == [
        f"etcd-backup: removed {backups / name} (retention {KEEP})" for name in old[:3]]


def test_fewer_snapshots_than_the_retention_are_all_kept(script, backups):
    touch(backups, "etcd-node1-20260101T000000.000000000Z.db")
    assert run(script).returncode == 0
    assert len(snapshots(backups)) == 2


def test_a_stale_part_of_this_member_goes_but_a_fresh_one_and_another_members_stay(script, backups):
    stale = touch(backups, "etcd-node1-20260101T000000.000000000Z.db.part", age_minutes=61)
    fresh = touch(backups, "etcd-node1-20260102T000000.000000000Z.db.part", age_minutes=5)  # a save still running
    other = touch(backups, "etcd-node2-20260101T000000.000000000Z.db.part", age_minutes=120)
    proc = run(script)
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and fresh.exists() and other.exists()
    assert f"etcd-backup: removed {stale} (an interrupted save, older than 60 minutes)" in proc.stdout


def test_a_failed_save_exits_non_zero_and_prunes_nothing(script, backups):
    old = [touch(backups, f"etcd-node1-2026010{i}T000000.000000000Z.db") for i in range(1, 6)]
    proc = run(script, FAKE_ETCDCTL_FAIL="1")
    assert proc.returncode != 0 and "context deadline exceeded" in proc.stderr
    assert all(path.exists() for path in old)
    assert [p.name for p in backups.iterdir() if p.name.endswith(".part")]  # left for a later run to clean
