"""Owner and group names to ids, and files written beside their destination and renamed into place, for the modules
that write files (config_files, unpack_release, bundle_fetch)."""
from __future__ import annotations

import grp
import hashlib
import os
import pwd
import tempfile
from typing import BinaryIO, Callable, Optional

CHUNK = 1 << 20


def ids(owner: str, group: str) -> tuple[int, int]:
    """(uid, gid) of an owner and a group, each a name or a number; a ValueError names one the host lacks."""
    try:
        uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise ValueError(f"no such user or group on this host: {exc.args[0]}") from None
    return uid, gid


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def write_beside(dest: str, data: BinaryIO, mode: int, uid: int, gid: int,
                 verify: Optional[Callable[[str], None]] = None) -> str:
    """Copies the stream DATA to a file beside DEST, hashing it; then VERIFY(sha256) (which raises to keep DEST as it
    was), the owner and mode, and a rename into place, so a running binary is replaced, never overwritten while it
    runs. Returns the sha256."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=f".{os.path.basename(dest)}.")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for block in iter(lambda: data.read(CHUNK), b""):
                digest.update(block)
                out.write(block)
        if verify:
            verify(digest.hexdigest())
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest.hexdigest()
