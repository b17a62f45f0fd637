"""The config_files module: writes only what differs, reports which paths changed, refuses links."""
from __future__ import annotations

import grp
import os
import pwd

import pytest

from ansible_collections.airgap.kubernetes.plugins.modules import config_files as cf

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def spec(dest, content, mode="0644"):
    return {"dest": str(dest), "content": content, "mode": mode, "owner": ME, "group": MY_GROUP}


def test_creates_directories_and_files_then_reports_nothing_on_a_second_run(tmp_path):
    dirs = [{"path": str(tmp_path / "etc" / "app"), "mode": "0750", "owner": ME, "group": MY_GROUP}]
    files = [spec(tmp_path / "etc" / "app" / "a.conf", "a=1\n"), spec(tmp_path / "etc" / "app" / "b.conf", "b\n", "0600")]
    changed, diff = cf.apply(dirs, files)
    assert changed == [dirs[0]["path"], files[0]["dest"], files[1]["dest"]]
    assert (tmp_path / "etc/app/a.conf").read_text() == "a=1\n"
    assert oct((tmp_path / "etc/app/b.conf").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "etc/app").stat().st_mode & 0o777) == "0o750"
    assert set(diff) == {files[0]["dest"], files[1]["dest"]}
    assert cf.apply(dirs, files) == ([], {})


def test_only_the_file_that_differs_is_written(tmp_path):
    files = [spec(tmp_path / "a", "one\n"), spec(tmp_path / "b", "two\n")]
    cf.apply([], files)
    inode_a = (tmp_path / "a").stat().st_ino
    files[1]["content"] = "three\n"
    changed, diff = cf.apply([], files)
    assert changed == [str(tmp_path / "b")]
    assert diff == {str(tmp_path / "b"): ("two\n", "three\n")}
    assert (tmp_path / "a").stat().st_ino == inode_a
    assert (tmp_path / "b").read_text() == "three\n"


def test_a_mode_change_alone_is_a_change_without_a_content_diff(tmp_path):
    files = [spec(tmp_path / "a", "x\n")]
    cf.apply([], files)
    files[0]["mode"] = "0600"
    assert cf.apply([], files) == ([str(tmp_path / "a")], {})
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == "0o600"


def test_check_mode_reports_without_writing(tmp_path):
    changed, _ = cf.apply([{"path": str(tmp_path / "d"), "owner": ME, "group": MY_GROUP}],
                          [spec(tmp_path / "d" / "f", "x\n")], check=True)
    assert changed == [str(tmp_path / "d"), str(tmp_path / "d" / "f")]
    assert not (tmp_path / "d").exists()


def test_a_symlink_in_place_of_a_file_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep\n")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ValueError, match="link.*not a regular file"):
        cf.apply([], [spec(tmp_path / "link", "new\n")])
    assert target.read_text() == "keep\n"


def test_a_missing_directory_and_an_unknown_owner_are_named(tmp_path):
    with pytest.raises(ValueError, match="directory does not exist: list it under directories"):
        cf.apply([], [spec(tmp_path / "nope" / "f", "x\n")])
    with pytest.raises(ValueError, match="no such user or group on this host: .*no-such-user-airgap"):
        cf.apply([], [{**spec(tmp_path / "f", "x\n"), "owner": "no-such-user-airgap"}])


def test_no_temporary_file_is_left_behind(tmp_path):
    cf.apply([], [spec(tmp_path / "a", "x\n")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_new_content_that_fails_its_validate_command_leaves_the_file_as_it_was(tmp_path):
    # The check is a real command on the temporary file: grep for the line a valid config must hold.
    dest = tmp_path / "haproxy.cfg"
    good = {**spec(dest, "global\n  daemon\n"), "validate": "grep -q ^global %s"}
    assert cf.apply([], [good])[0] == [str(dest)]
    bad = {**good, "content": "frontend broken\n"}
    with pytest.raises(ValueError, match=r"haproxy.cfg: the new content fails `grep -q \^global %s` \(exit 1\)"):
        cf.apply([], [bad])
    assert dest.read_text() == "global\n  daemon\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy.cfg"]
    # Unchanged content is not checked again.
    assert cf.apply([], [{**good, "validate": "false %s"}]) == ([], {})
