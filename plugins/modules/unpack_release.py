#!/usr/bin/python
"""Ansible module: unpacks chosen members of a release tarball once, and records the sha256 of what it wrote."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: unpack_release
short_description: Unpack a release tarball's members in one pass, and check them against a record on later runs
description:
  - Extracts the regular files of a tarball (all of them, or only O(members)), less O(strip_components) leading
    directories, into O(dest), with the given mode and owner, and writes the sha256 of each file it wrote to
    O(record) (C(sha256sum) format, paths relative to O(dest)).
  - On a later run the files on disk are checked against the record, and nothing is read from the tarball when they
    match. The tarball is unpacked again when the record is missing, a file is missing or differs, the tarball is
    newer than the record, or O(force) is set (the tarball was just downloaded).
  - One pass over the tarball. C(unarchive) read it three times (compare, extract) and a record needed a fourth.
  - Each file is written beside its destination and renamed into place, so a running binary is replaced, never
    overwritten while it runs.
  - Supports check mode.
version_added: 0.1.0
author: airgap.kubernetes maintainers
options:
  src: {description: The tarball on the host (gzip, xz, bzip2 or none)., type: path, required: true}
  dest: {description: The directory to unpack into; it must exist., type: path, required: true}
  members:
    description: The tarball's members to unpack, as the tarball names them; empty for every regular file. A member
      the tarball lacks fails the task, naming it.
    type: list
    elements: str
    default: []
  strip_components: {description: Leading path components to drop from each member's name., type: int, default: 0}
  mode: {description: The unpacked files' mode (octal string)., type: str, default: "0755"}
  owner: {description: Their owner (never the tarball's build uid)., type: str, default: root}
  group: {description: Their group., type: str, default: root}
  record: {description: The record's path; defaults to C(<src>.unpacked.sha256)., type: path}
  force: {description: Unpack even when the files match the record., type: bool, default: false}
"""

EXAMPLES = r"""
- name: Unpack containerd's binaries
  airgap.kubernetes.unpack_release:
    src: /var/cache/airgap-kubernetes/downloads/containerd-2.1.4-linux-amd64.tar.gz
    dest: /usr/local/bin
    members: [bin/containerd, bin/containerd-shim-runc-v2, bin/ctr]
    strip_components: 1
    mode: "0755"
"""

RETURN = r"""
files:
  description: The files written (all of the tarball's chosen members when it was unpacked), relative to O(dest).
  returned: always
  type: list
  elements: str
unpacked:
  description: Whether the tarball was read (or would be, in check mode).
  returned: always
  type: bool
"""

import os
import tarfile
import tempfile

from ansible_collections.airgap.kubernetes.plugins.module_utils.ownership import ids, sha256_file, write_beside


def read_record(record: str) -> list[tuple[str, str]]:
    """(sha256, relative path) of each line of a sha256sum-format record."""
    entries = []
    with open(record, encoding="utf-8") as fh:
        for line in fh:
            digest, sep, name = line.rstrip("\n").partition("  ")
            if sep and name:
                entries.append((digest, name))
    return entries


def stale_reason(src: str, dest: str, record: str, mode: int, uid: int, gid: int) -> str | None:
    """Why the files on disk do not match the record (None when they do)."""
    if not os.path.isfile(record):
        return "no record"
    if os.stat(src).st_mtime > os.stat(record).st_mtime:
        return "the tarball is newer than the record"
    entries = read_record(record)
    if not entries:
        return "an empty record"
    for digest, name in entries:
        path = os.path.join(dest, name)
        if not os.path.isfile(path) or os.path.islink(path):
            return f"{name} is missing"
        st = os.stat(path)
        if (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (mode, uid, gid):
            return f"{name} has another mode or owner"
        if sha256_file(path) != digest:
            return f"{name} differs from the record"
    return None


def _stripped(name: str, strip: int) -> str:
    parts = name.split("/")
    return "/".join(parts[strip:])


def unpack(src: str, dest: str, members: list[str], strip: int, mode: int, uid: int, gid: int,
           record: str) -> list[str]:
    """Extracts the chosen regular members in one pass; writes the record last. Returns the relative paths."""
    wanted, written, lines = set(members), [], []
    missing = set(members)
    with tarfile.open(src, "r:*") as tar:
        for info in tar:
            if not info.isreg() or (wanted and info.name not in wanted):
                continue
            name = _stripped(info.name, strip)
            if not name or name.startswith("/") or ".." in name.split("/"):
                continue
            missing.discard(info.name)
            path = os.path.join(dest, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with tar.extractfile(info) as data:
                digest = write_beside(path, data, mode, uid, gid)
            written.append(name)
            lines.append(f"{digest}  {name}\n")
    if missing:
        raise ValueError(f"{src} has no member {', '.join(sorted(missing))}: the catalog's unpack members do not "
                         "match this release's tarball; fix the component's unpack.members in the catalog")
    if not written:
        raise ValueError(f"{src} has no regular file to unpack")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(record) or ".", prefix=f".{os.path.basename(record)}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    os.chmod(tmp, 0o644)
    os.replace(tmp, record)
    return written


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "src": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
            "members": {"type": "list", "elements": "str", "default": []},
            "strip_components": {"type": "int", "default": 0},
            "mode": {"type": "str", "default": "0755"},
            "owner": {"type": "str", "default": "root"},
            "group": {"type": "str", "default": "root"},
            "record": {"type": "path"},
            "force": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    record = p["record"] or f"{p['src']}.unpacked.sha256"
    try:
        uid, gid = ids(p["owner"], p["group"])
        mode = int(p["mode"], 8)
        if not os.path.isfile(p["src"]):
            raise ValueError(f"{p['src']} does not exist: download the release first")
        if not os.path.isdir(p["dest"]):
            raise ValueError(f"{p['dest']} is not a directory: create it first")
        reason = "forced" if p["force"] else stale_reason(p["src"], p["dest"], record, mode, uid, gid)
        if reason is None:
            module.exit_json(changed=False, unpacked=False, files=[name for _, name in read_record(record)])
        if module.check_mode:
            module.exit_json(changed=True, unpacked=True, files=[], reason=reason)
        files = unpack(p["src"], p["dest"], p["members"], p["strip_components"], mode, uid, gid, record)
    except (OSError, ValueError, tarfile.TarError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=True, unpacked=True, files=files, reason=reason)


if __name__ == "__main__":
    main()
