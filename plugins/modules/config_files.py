#!/usr/bin/python
"""Ansible module: writes a set of directories and small files in one task, changing only what differs."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: config_files
short_description: Write several directories and configuration files in one task
description:
  - Creates each directory and writes each file whose content, mode, owner or group differs from what is asked,
    and leaves the others alone. One module run replaces a task per file (the cost of a deploy on hosts that need
    nothing is mostly per-task overhead).
  - A file is written to a temporary file beside it and renamed into place, so a reader never sees half a file;
    where the rename is refused (a bind-mounted file such as a container's C(/etc/hosts)) it is written in place.
  - Reports which paths changed in C(changed_files), so later tasks can act on one file's change
    (restart a service, rebuild a trust store).
  - Supports check mode and diff mode.
version_added: 0.1.0
author: airgap.kubernetes maintainers
options:
  directories:
    description: Directories to create (with missing parents), before the files.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: The directory., type: path, required: true}
      mode: {description: Its mode (octal string)., type: str, default: "0755"}
      owner: {description: Its owner., type: str, default: root}
      group: {description: Its group., type: str, default: root}
  files:
    description: Files to write. Render templates with C(lookup('ansible.builtin.template', ...)) into C(content).
    type: list
    elements: dict
    default: []
    suboptions:
      dest: {description: The file's path; its directory must exist or be listed in I(directories)., type: path, required: true}
      content: {description: The whole content., type: str, required: true}
      mode: {description: Its mode (octal string)., type: str, default: "0644"}
      owner: {description: Its owner., type: str, default: root}
      group: {description: Its group., type: str, default: root}
      validate:
        description: A command that checks the new content before it replaces the file, with C(%s) for the path of
          the temporary file (as M(ansible.builtin.template)'s). When it fails the task fails, naming the file and
          the command's output, and the file is left as it was. It runs only for a file whose content changed.
        type: str
notes:
  - Meant for configuration files of a few kilobytes: the content travels in the module's arguments.
  - Give secrets C(no_log) on the task.
"""

EXAMPLES = r"""
- name: Write chrony's configuration
  airgap.kubernetes.config_files:
    directories:
      - path: /etc/chrony
    files:
      - dest: /etc/chrony/chrony.conf
        content: "{{ lookup('ansible.builtin.template', 'chrony.conf.j2') }}"
      - dest: /etc/default/chrony
        content: "DAEMON_OPTS=\"-F 1\"\n"
  register: chrony_files

- name: Restart chrony when its configuration changed
  ansible.builtin.systemd_service:
    name: chrony
    state: restarted
  when: "'/etc/chrony/chrony.conf' in chrony_files.changed_files"
"""

RETURN = r"""
changed_files:
  description: The directories and files that were created or changed (or would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: ["/etc/chrony/chrony.conf"]
"""

import errno
import os
import shlex
import subprocess
import tempfile

from ansible_collections.airgap.kubernetes.plugins.module_utils.ownership import ids


def _attrs_differ(st: os.stat_result, mode: int, uid: int, gid: int) -> bool:
    return (st.st_mode & 0o7777) != mode or st.st_uid != uid or st.st_gid != gid


def check_with(validate: str, dest: str, path: str) -> None:
    """Runs VALIDATE (a command with %s) on PATH, the new content of DEST; a ValueError carries its output."""
    if "%s" not in validate:
        raise ValueError(f"{dest}: validate {validate!r} has no %s for the file to check")
    argv = [path if word == "%s" else word.replace("%s", path) for word in shlex.split(validate)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ValueError(f"{dest}: the new content fails `{validate}` (exit {proc.returncode}), so the file is left "
                         f"as it was: {(proc.stderr or proc.stdout).strip()}")


def _write(dest: str, data: bytes, mode: int, uid: int, gid: int, validate: str | None = None) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest) or ".", prefix=f".{os.path.basename(dest)}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if validate:
            check_with(validate, dest, tmp)
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
                raise
            # A bind mount (a container's /etc/hosts) cannot be renamed over: write in place.
            with open(dest, "wb") as fh:
                fh.write(data)
            os.chown(dest, uid, gid)
            os.chmod(dest, mode)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def apply(directories: list[dict], files: list[dict], check: bool = False) -> tuple[list[str], dict]:
    """Makes the host match; returns (changed paths, diff {path: (before, after)} for files whose content changed)."""
    changed, diff = [], {}
    for d in directories:
        path, mode = d["path"], int(str(d.get("mode") or "0755"), 8)
        uid, gid = ids(str(d.get("owner") or "root"), str(d.get("group") or "root"))
        if os.path.isdir(path):
            st = os.stat(path)
            if not _attrs_differ(st, mode, uid, gid):
                continue
        elif os.path.lexists(path):
            raise ValueError(f"{path} exists and is not a directory: move it away, or fix the path")
        changed.append(path)
        if not check:
            os.makedirs(path, mode=mode, exist_ok=True)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
    for f in files:
        dest, mode = f["dest"], int(str(f.get("mode") or "0644"), 8)
        uid, gid = ids(str(f.get("owner") or "root"), str(f.get("group") or "root"))
        data = f["content"].encode()
        before = None
        if os.path.lexists(dest):
            if os.path.islink(dest) or not os.path.isfile(dest):
                raise ValueError(f"{dest} is not a regular file (a link or a directory): remove it, or fix the path")
            with open(dest, "rb") as fh:
                before = fh.read()
            if before == data and not _attrs_differ(os.stat(dest), mode, uid, gid):
                continue
        elif not os.path.isdir(os.path.dirname(dest) or ".") and not check:
            raise ValueError(f"{dest}: its directory does not exist: list it under directories")
        changed.append(dest)
        if before != data:
            diff[dest] = ((before or b"").decode(errors="replace"), f["content"])
        if not check:
            _write(dest, data, mode, uid, gid, f.get("validate") if before != data else None)
    return changed, diff


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    entry = {"mode": {"type": "str"}, "owner": {"type": "str", "default": "root"},
             "group": {"type": "str", "default": "root"}}
    module = AnsibleModule(
        argument_spec={
            "directories": {"type": "list", "elements": "dict", "default": [],
                            "options": {"path": {"type": "path", "required": True}, **entry}},
            "files": {"type": "list", "elements": "dict", "default": [],
                      "options": {"dest": {"type": "path", "required": True},
                                  "content": {"type": "str", "required": True},
                                  "validate": {"type": "str"}, **entry}},
        },
        supports_check_mode=True,
    )
    try:
        changed, diff = apply(module.params["directories"], module.params["files"], module.check_mode)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=str(exc), changed_files=[])
    result = {"changed": bool(changed), "changed_files": changed}
    if module._diff and diff:
        result["diff"] = [{"before_header": p, "after_header": p, "before": b, "after": a} for p, (b, a) in diff.items()]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
